"""Training losses from typed config: pixel, perceptual (VGG19 + anime ResNet50), GAN, and the
artifact terms of :mod:`awm.models.artifact_losses` (LDL, focal frequency, MS-SSIM, colour).

Every term has an explicit weight; a weight of 0 switches a term off visibly, and layer names are
checked against the backbone, so a typo fails at load time instead of silently training without
the term. Both perceptual backbones carry gradients to the generator: APISR's Danbooru loss
detached the generated features in its forward hooks, so that half never trained anything.

Backbone weights cannot be downloaded at run time on offline nodes: they are read from a local
path in the config or from the torch hub cache, and a missing file fails immediately with the
path to put it at (:data:`BACKBONE_WEIGHTS`, also listed by ``awm weights``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torchvision
from torch import nn
from torch.nn import functional as F

from awm.config import check
from awm.models.artifact_losses import ArtifactLoss, ColorConfig, FFLConfig, LDLConfig, MSSSIMConfig
from awm.models.discriminators import DiscriminatorConfig, build_discriminator

__all__ = ["BACKBONE_WEIGHTS", "ArtifactLoss", "BackboneWeights", "ColorConfig", "DiscriminatorConfig", "FFLConfig",
           "GANConfig", "LDLConfig", "LossConfig", "MSSSIMConfig", "PerceptualConfig", "PixelConfig",
           "build_artifact_loss", "build_discriminator", "build_discriminator_loss", "build_generator_loss",
           "build_pixel_loss"]


@dataclass(frozen=True)
class BackboneWeights:
    """A weights file a loss needs: where it is expected and where it comes from."""

    name: str
    filename: str
    url: str
    sha256_prefix: str | None
    used_by: str

    def default_path(self) -> Path:
        """The torch hub cache location (``$TORCH_HOME/hub/checkpoints``), where torch itself looks."""
        return Path(torch.hub.get_dir()) / "checkpoints" / self.filename

    def resolve(self, path: str | Path | None = None) -> Path:
        """The file to read: ``path`` if given, else the cache; missing -> FileNotFoundError saying where."""
        p = Path(path).expanduser() if path else self.default_path()
        if not p.is_file():
            raise FileNotFoundError(
                f"backbone weights '{self.name}' ({self.used_by}) not found at {p}. Download {self.url} on a "
                f"machine with internet and copy it to {self.default_path()} (or point the config at it); "
                "`awm weights` lists every file AWM needs")
        return p

    def verify(self, path: str | Path) -> bool:
        """True if the file's sha256 starts with the published prefix (or no prefix is published)."""
        if not self.sha256_prefix:
            return True
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest().startswith(self.sha256_prefix)


BACKBONE_WEIGHTS: dict[str, BackboneWeights] = {b.name: b for b in (
    BackboneWeights("vgg19", "vgg19-dcbb9e9d.pth", "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                    "dcbb9e9d", "perceptual loss, VGG19 (ImageNet, torchvision)"),
    BackboneWeights("danbooru-resnet50", "resnet50-13306192.pth",
                    "https://github.com/RF5/danbooru-pretrained/releases/download/v0.1/resnet50-13306192.pth",
                    None, "perceptual loss, ResNet50 trained on Danbooru tags (APISR's anime backbone)"),
)}

# VGG19 layer names (BasicSR convention: convX_Y is the conv output before its ReLU) -> features index.
_VGG_CFG = torchvision.models.vgg.cfgs["E"]


def _vgg_names() -> dict[str, int]:
    names, idx, block, conv = {}, 0, 1, 1
    for v in _VGG_CFG:
        if v == "M":
            names[f"pool{block}"] = idx
            idx, block, conv = idx + 1, block + 1, 1
        else:
            names[f"conv{block}_{conv}"], names[f"relu{block}_{conv}"] = idx, idx + 1
            idx, conv = idx + 2, conv + 1
    return names


VGG_LAYERS = _vgg_names()
# ResNet50 body = [conv1, bn1, relu, maxpool, layer1..layer4] as in APISR: "0" is conv1's output,
# "S_B_conv3" is conv3 of bottleneck B in stage S (4..7), before its BatchNorm.
RESNET_BLOCKS = {4: 3, 5: 4, 6: 6, 7: 3}
RESNET_LAYERS = ["0"] + [f"{s}_{b}_conv{c}" for s, n in RESNET_BLOCKS.items() for b in range(n) for c in (1, 2, 3)]


@dataclass
class PixelConfig:
    type: Literal["l1", "charbonnier", "l2"] = field(default="l1", metadata={
        "help": "pixel loss; l2 (mean squared error) for a from-scratch model on flat-dominated content, "
                "where L1 pulls the residual to exactly zero (nearest-neighbour)"})
    weight: float = field(default=1.0, metadata={"help": "weight of the pixel loss (0 = off)"})
    eps: float = field(default=1e-3, metadata={"help": "charbonnier epsilon"})

    def __post_init__(self):
        check(self.weight >= 0, "weight", self.weight, "a number >= 0")
        check(self.eps > 0, "eps", self.eps, "a number > 0")


@dataclass
class PerceptualConfig:
    """Twin perceptual loss (APISR's 'balanced' VGG19 + Danbooru ResNet50), per-layer weights."""

    vgg_weight: float = field(default=0.5, metadata={"help": "weight of the VGG19 term (0 = off)"})
    vgg_layers: dict[str, float] = field(default_factory=lambda: {
        "conv1_2": 0.1, "conv2_2": 0.1, "conv3_4": 1.0, "conv4_4": 1.0, "conv5_4": 1.0})
    vgg_path: str | None = field(default=None, metadata={"help": "VGG19 weights file (default: torch hub cache)"})
    anime_weight: float = field(default=0.5, metadata={"help": "weight of the anime ResNet50 term (0 = off)"})
    anime_layers: dict[str, float] = field(default_factory=lambda: {
        "0": 0.1, "4_2_conv3": 20.0, "5_3_conv3": 25.0, "6_5_conv3": 1.0, "7_2_conv3": 1.0})
    anime_path: str | None = field(default=None,
                                   metadata={"help": "Danbooru ResNet50 weights file (default: torch hub cache)"})
    criterion: Literal["l1", "l2"] = "l1"

    def __post_init__(self):
        for key, layers, valid in (("vgg_layers", self.vgg_layers, VGG_LAYERS),
                                   ("anime_layers", self.anime_layers, RESNET_LAYERS)):
            for name, w in layers.items():
                check(name in valid, f"{key}.{name}", w, "layer names " + ", ".join(valid))
                check(w >= 0, f"{key}.{name}", w, "a weight >= 0")
        for key, w, layers in (("vgg_weight", self.vgg_weight, self.vgg_layers),
                               ("anime_weight", self.anime_weight, self.anime_layers)):
            check(w >= 0, key, w, "a number >= 0")
            check(w == 0 or any(v > 0 for v in layers.values()), key, w,
                  "0, or a positive weight with at least one layer weighted > 0")


@dataclass
class GANConfig:
    type: Literal["vanilla", "lsgan", "hinge"] = field(default="vanilla", metadata={"help": "GAN loss"})
    weight: float = field(default=0.2, metadata={"help": "weight of the generator's GAN term (0 = off)"})

    def __post_init__(self):
        check(self.weight >= 0, "weight", self.weight, "a number >= 0")


@dataclass
class LossConfig:
    """All generator loss terms; defaults are the seed's GAN stage (APISR weights).

    ``ldl``, ``ffl``, ``msssim`` and ``color`` (:mod:`awm.models.artifact_losses`, off by default)
    apply in both stages; perceptual and GAN terms in the GAN stage only.
    """

    pixel: PixelConfig = field(default_factory=PixelConfig)
    perceptual: PerceptualConfig = field(default_factory=PerceptualConfig)
    gan: GANConfig = field(default_factory=GANConfig)
    ldl: LDLConfig = field(default_factory=LDLConfig)
    ffl: FFLConfig = field(default_factory=FFLConfig)
    msssim: MSSSIMConfig = field(default_factory=MSSSIMConfig)
    color: ColorConfig = field(default_factory=ColorConfig)

    def __post_init__(self):
        total = (self.pixel.weight + self.perceptual.vgg_weight + self.perceptual.anime_weight + self.gan.weight
                 + self.ldl.weight + self.ffl.weight + self.msssim.weight + self.color.weight)
        check(total > 0, "loss", "all weights 0", "at least one term with weight > 0")


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    data = torch.load(path, map_location="cpu", weights_only=True)
    return data.get("state_dict", data) if isinstance(data, dict) else data


class VGGFeatures(nn.Module):
    """Frozen VGG19 up to the deepest requested layer; returns the requested activations."""

    def __init__(self, layers: list[str], weights: Path):
        super().__init__()
        self.index = {VGG_LAYERS[n]: n for n in layers}
        features = torchvision.models.vgg.make_layers(_VGG_CFG)[: max(self.index) + 1]
        state = _read_state(weights)
        wanted = {k.removeprefix("features."): v for k, v in state.items() if k.startswith("features.")}
        features.load_state_dict({k: v for k, v in wanted.items() if k in features.state_dict()}, strict=True)
        self.features = features.eval().requires_grad_(False)
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        # in the backbone's dtype (settle_backbones): under DeepSpeed no autocast casts for it
        x, out = ((x.float() - self.mean) / self.std).to(self.features[0].weight.dtype), {}
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.index:
                out[self.index[i]] = x
        return out


def _danbooru_body(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """RF5's file is Sequential(body, head): keep the body ("0.*"), drop the tag head ("1.*")."""
    if any(k.startswith("0.0.") for k in state):
        return {k[2:]: v for k, v in state.items() if k.startswith("0.")}
    return state


class ResNetFeatures(nn.Module):
    """Frozen Danbooru ResNet50 body up to the deepest requested stage; returns requested activations."""

    def __init__(self, layers: list[str], weights: Path):
        super().__init__()
        r = torchvision.models.resnet50(weights=None)
        body = nn.Sequential(r.conv1, r.bn1, r.relu, r.maxpool, r.layer1, r.layer2, r.layer3, r.layer4)
        missing, unexpected = body.load_state_dict(_danbooru_body(_read_state(weights)), strict=False)
        missing = [k for k in missing if not k.endswith("num_batches_tracked")]  # older torch did not save it
        if missing or unexpected:
            raise ValueError(f"{weights}: not a Danbooru ResNet50 body (missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]})")
        deepest = max(int(n.split("_")[0]) for n in layers)
        self.body = body[: deepest + 1].eval().requires_grad_(False)
        self.layers = layers
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), persistent=False)

    def _module(self, name: str) -> nn.Module:
        if name == "0":
            return self.body[0]
        stage, block, conv = name.split("_")
        return getattr(self.body[int(stage)][int(block)], conv)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        out: dict[str, torch.Tensor] = {}
        hooks = [self._module(n).register_forward_hook(lambda _m, _i, o, n=n: out.__setitem__(n, o))
                 for n in self.layers]
        try:
            self.body(((x.float() - self.mean) / self.std).to(self.body[0].weight.dtype))  # as VGGFeatures
        finally:
            for h in hooks:
                h.remove()
        return out


class PerceptualLoss(nn.Module):
    """Weighted feature distance; generated features keep their graph, targets are computed without it."""

    def __init__(self, extractor: nn.Module, layer_weights: dict[str, float], criterion: str):
        super().__init__()
        self.extractor, self.layer_weights, self.criterion = extractor, layer_weights, criterion

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        fs = self.extractor(sr)
        with torch.no_grad():
            fh = self.extractor(hr)
        dist = F.l1_loss if self.criterion == "l1" else F.mse_loss
        return sum(w * dist(fs[n].float(), fh[n].float()) for n, w in self.layer_weights.items() if w > 0)


def _gan_logits(x: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return [t.float() for t in (x if isinstance(x, (list, tuple)) else [x])]


def gan_generator_term(kind: str, fake: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
    """Generator side: push D's logits on generated images toward "real" (mean over scales)."""
    terms = []
    for f in _gan_logits(fake):
        if kind == "vanilla":
            terms.append(F.binary_cross_entropy_with_logits(f, torch.ones_like(f)))
        elif kind == "lsgan":
            terms.append(F.mse_loss(f, torch.ones_like(f)))
        else:
            terms.append(-f.mean())
    return sum(terms) / len(terms)


def gan_discriminator_terms(kind: str, real: torch.Tensor | list[torch.Tensor],
                            fake: torch.Tensor | list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Discriminator side, (real half, fake half): real -> 1, fake -> 0 (hinge: margins at +-1)."""
    r_terms, f_terms = [], []
    for r, f in zip(_gan_logits(real), _gan_logits(fake), strict=True):
        if kind == "vanilla":
            r_terms.append(F.binary_cross_entropy_with_logits(r, torch.ones_like(r)))
            f_terms.append(F.binary_cross_entropy_with_logits(f, torch.zeros_like(f)))
        elif kind == "lsgan":
            r_terms.append(F.mse_loss(r, torch.ones_like(r)))
            f_terms.append(F.mse_loss(f, torch.zeros_like(f)))
        else:
            r_terms.append(F.relu(1 - r).mean())
            f_terms.append(F.relu(1 + f).mean())
    return sum(r_terms) / len(r_terms), sum(f_terms) / len(f_terms)


class PixelLoss(nn.Module):
    """L1, Charbonnier or L2, unweighted: the L1 warm-up stage trains on this term alone.

    On anime content most HR pixels equal their nearest-neighbour LR pixel (flat fills), so the
    residual a net like Compact must add is zero there. L1's gradient there is +-1 however small
    the residual: a from-scratch net that cannot yet tell flats from edges is pulled to output zero
    everywhere (measured, tiny-cpu on 282 real tiles: 99.8% of output pixels equal to
    nearest-neighbour by step 150, -0.24 dB vs bicubic), and stays. L2's gradient vanishes with
    the residual, so the edges' errors lead (+0.31 dB vs bicubic at step 150)."""

    def __init__(self, cfg: PixelConfig):
        super().__init__()
        self.type, self.eps = cfg.type, cfg.eps

    def forward(self, sr: torch.Tensor, hr: torch.Tensor) -> torch.Tensor:
        diff = sr.float() - hr.float()
        if self.type == "l1":
            return diff.abs().mean()
        if self.type == "l2":
            return (diff * diff).mean()
        return torch.sqrt(diff * diff + self.eps ** 2).mean()


class GeneratorLoss(nn.Module):
    """The configured terms, each already weighted: {"pixel", "perceptual_vgg", "perceptual_anime", "gan"}.

    Terms with weight 0 are absent; the training loss is ``sum(terms.values())``.
    """

    def __init__(self, cfg: LossConfig):
        super().__init__()
        self.cfg = cfg
        p = cfg.perceptual
        self.pixel = PixelLoss(cfg.pixel)
        self.vgg = self.anime = None
        if p.vgg_weight > 0:
            layers = [n for n, w in p.vgg_layers.items() if w > 0]
            self.vgg = PerceptualLoss(VGGFeatures(layers, BACKBONE_WEIGHTS["vgg19"].resolve(p.vgg_path)),
                                      p.vgg_layers, p.criterion)
        if p.anime_weight > 0:
            layers = [n for n, w in p.anime_layers.items() if w > 0]
            weights = BACKBONE_WEIGHTS["danbooru-resnet50"].resolve(p.anime_path)
            self.anime = PerceptualLoss(ResNetFeatures(layers, weights), p.anime_layers, p.criterion)

    def settle_backbones(self, dtype: torch.dtype | None, memory_format: torch.memory_format) -> None:
        """Cast the frozen backbones to the autocast dtype and the generator's memory format once.

        Autocast caches its casts only for weights that require grad, so frozen fp32 convolutions
        were re-cast to bf16 (and relaid out for a channels_last input) at every step. The
        normalisation buffers stay float32; the features are compared in float32.
        """
        for loss in (self.vgg, self.anime):
            if loss is None:
                continue
            body = loss.extractor.features if isinstance(loss.extractor, VGGFeatures) else loss.extractor.body
            body.to(memory_format=memory_format)
            if dtype is not None:
                body.to(dtype)

    @property
    def uses_gan(self) -> bool:
        return self.cfg.gan.weight > 0

    def forward(self, sr: torch.Tensor, hr: torch.Tensor,
                fake_logits: torch.Tensor | list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        cfg, terms = self.cfg, {}
        if cfg.pixel.weight > 0:
            terms["pixel"] = cfg.pixel.weight * self.pixel(sr, hr)
        if self.vgg is not None:
            terms["perceptual_vgg"] = cfg.perceptual.vgg_weight * self.vgg(sr, hr)
        if self.anime is not None:
            terms["perceptual_anime"] = cfg.perceptual.anime_weight * self.anime(sr, hr)
        if self.uses_gan:
            if fake_logits is None:
                raise ValueError("the GAN term is on (gan.weight > 0): pass the discriminator's logits on sr")
            terms["gan"] = cfg.gan.weight * gan_generator_term(cfg.gan.type, fake_logits)
        return terms


class DiscriminatorLoss(nn.Module):
    """The configured GAN loss for the discriminator step (unweighted: it is D's only loss).

    Call with (real_logits, fake_logits), or with D's logits on ``torch.cat([real, fake])`` alone
    (one D forward for both; the batch is split in half). Returns {"d_real", "d_fake"}.
    """

    def __init__(self, cfg: GANConfig):
        super().__init__()
        self.kind = cfg.type

    def forward(self, real_logits: torch.Tensor | list[torch.Tensor],
                fake_logits: torch.Tensor | list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        if fake_logits is None:
            both = _gan_logits(real_logits)
            if any(t.shape[0] % 2 for t in both):
                raise ValueError(f"odd discriminator batch {both[0].shape[0]}: pass (real, fake) logits, "
                                 "or logits on torch.cat([real, fake])")
            real_logits = [t[: t.shape[0] // 2] for t in both]
            fake_logits = [t[t.shape[0] // 2:] for t in both]
        real, fake = gan_discriminator_terms(self.kind, real_logits, fake_logits)
        return {"d_real": real, "d_fake": fake}


def build_pixel_loss(cfg: LossConfig) -> PixelLoss:
    """The unweighted pixel loss, for the L1 warm-up stage (no backbone needed)."""
    return PixelLoss(cfg.pixel)


def build_generator_loss(cfg: LossConfig) -> GeneratorLoss:
    """Generator loss; loads only the backbones whose weight is > 0 (missing files fail here)."""
    return GeneratorLoss(cfg)


def build_artifact_loss(cfg: LossConfig) -> ArtifactLoss | None:
    """The LDL / focal frequency / MS-SSIM / colour terms, or None when all their weights are 0."""
    loss = ArtifactLoss(cfg.ldl, cfg.ffl, cfg.msssim, cfg.color)
    return loss if loss.active else None


def build_discriminator_loss(cfg: LossConfig) -> DiscriminatorLoss:
    return DiscriminatorLoss(cfg.gan)
