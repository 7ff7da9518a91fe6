"""Super-resolution architectures by name, built from spandrel's classes with explicit hyperparameters.

Why spandrel: its classes are the ones chaiNNer, APISR's community ports and our converter target,
so a model trained here loads elsewhere with no glue. Every name in :data:`ARCHS` maps to one
spandrel class and a complete set of default hyperparameters; only hyperparameters that spandrel
can read back from a state dict are exposed, so "save -> convert -> spandrel" reproduces the model.

Tensors are RGB, float in [0, 1], NCHW, at every model boundary in this project.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from spandrel import MAIN_REGISTRY, ImageModelDescriptor
from spandrel.architectures.Compact import Compact
from spandrel.architectures.DAT import DAT
from spandrel.architectures.ESRGAN import ESRGAN
from spandrel.architectures.GRL import GRL
from spandrel.architectures.HAT import HAT
from spandrel.architectures.SPAN import SPAN
from spandrel.architectures.SwinIR import SwinIR
from torch import nn

from awm.config import check
from awm.errors import ConfigError

Builder = Callable[[int, dict[str, Any]], nn.Module]


@dataclass(frozen=True)
class ArchSpec:
    """One registered architecture: which spandrel class, which scales, which defaults."""

    name: str
    spandrel_id: str
    scales: tuple[int, ...]
    defaults: dict[str, Any]
    build: Builder
    description: str


@dataclass(frozen=True)
class ModelInfo:
    """What callers need to plan batches, precision and tiles without reading model code.

    ``size_multiple``: input sides that are a multiple of this need no internal padding (window
    attention pads to its window; pixel-unshuffle to its factor). ``size_min``: smallest side.
    """

    arch: str
    scale: int
    num_params: int
    supports_bf16: bool
    supports_fp16: bool
    size_multiple: int
    size_min: int


def _rrdb(scale: int, hp: dict[str, Any]) -> nn.Module:
    check(hp["num_grow_ch"] == 32, "hparams.num_grow_ch", hp["num_grow_ch"],
          "32 (spandrel's RRDBNet and every released RRDB checkpoint fix the growth channels at 32)")
    # Real-ESRGAN/APISR: 2x and 1x run the 4x body on a pixel-unshuffled input.
    shuffle = {1: 4, 2: 2, 4: None}[scale]
    return ESRGAN(in_nc=3 * (shuffle or 1) ** 2, out_nc=3, num_filters=hp["num_feat"],
                  num_blocks=hp["num_block"], scale=4, shuffle_factor=shuffle)


COMPACT_LAST_GAIN = 0.1


def _compact(scale: int, hp: dict[str, Any]) -> nn.Module:
    net = Compact(num_in_ch=3, num_out_ch=3, num_feat=hp["num_feat"], num_conv=hp["num_conv"],
                  upscale=scale, act_type="prelu")
    init_compact(net)
    return net


def init_compact(net: nn.Module) -> None:
    """He (Kaiming) initialisation for Compact's plain stack of convolutions and PReLUs, biases zero,
    the last conv scaled by :data:`COMPACT_LAST_GAIN`.

    With PyTorch's default conv init each of the 14+ layers shrinks the signal's variance ~5x, so a
    fresh Compact's body passes almost nothing of its input (the input-dependent part of the residual
    ~2e-6 at 32x12): the output is nearest-neighbour plus a constant, the gradients of every weight
    but the biases vanish, and a from-scratch run stays at nearest-neighbour, below bicubic (issue 30:
    ``tiny-cpu`` on real tiles, residual ~1e-5, validation identical at consecutive steps). He init
    with the PReLU slope keeps the variance through the depth; the small last layer starts the
    residual near zero (output ~ nearest) without cutting the gradient path."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    slope = 0.25  # PReLU's initial slope
    with torch.no_grad():
        for conv in convs:
            nn.init.kaiming_normal_(conv.weight, a=slope, nonlinearity="leaky_relu")
            nn.init.zeros_(conv.bias)
        convs[-1].weight.mul_(COMPACT_LAST_GAIN)


def _swinir(scale: int, hp: dict[str, Any]) -> nn.Module:
    check(hp["window_size"] != 7, "hparams.window_size", 7,
          "any other size (spandrel assumes img_range 255 for window 7, so a converted model would differ)")
    return SwinIR(img_size=hp["img_size"], in_chans=3, embed_dim=hp["embed_dim"], depths=list(hp["depths"]),
                  num_heads=list(hp["num_heads"]), window_size=hp["window_size"], mlp_ratio=hp["mlp_ratio"],
                  upscale=scale, img_range=1.0, upsampler="pixelshuffle" if scale > 1 else "",
                  resi_connection="1conv")


def _hat(scale: int, hp: dict[str, Any]) -> nn.Module:
    return HAT(img_size=hp["img_size"], in_chans=3, embed_dim=hp["embed_dim"], depths=list(hp["depths"]),
               num_heads=list(hp["num_heads"]), window_size=hp["window_size"],
               compress_ratio=hp["compress_ratio"], squeeze_factor=hp["squeeze_factor"],
               overlap_ratio=hp["overlap_ratio"], mlp_ratio=hp["mlp_ratio"], upscale=scale,
               img_range=1.0, upsampler="pixelshuffle", resi_connection="1conv", num_feat=hp["num_feat"])


def _dat(scale: int, hp: dict[str, Any]) -> nn.Module:
    return DAT(img_size=hp["img_size"], in_chans=3, embed_dim=hp["embed_dim"], split_size=list(hp["split_size"]),
               depth=list(hp["depth"]), num_heads=list(hp["num_heads"]),
               expansion_factor=hp["expansion_factor"], upscale=scale, img_range=1.0,
               resi_connection="1conv", upsampler="pixelshuffle")


def _grl(scale: int, hp: dict[str, Any]) -> nn.Module:
    check(hp["upsampler"] != "nearest+conv" or scale == 4, "hparams.upsampler", hp["upsampler"],
          "'pixelshuffle' for scales other than 4 ('nearest+conv' is 4x only)")
    check(hp["upsampler"] in ("pixelshuffle", "nearest+conv"), "hparams.upsampler", hp["upsampler"],
          "'pixelshuffle' or 'nearest+conv'")
    return GRL(img_size=hp["img_size"], in_channels=3, out_channels=3, embed_dim=hp["embed_dim"], upscale=scale,
               upsampler=hp["upsampler"], depths=list(hp["depths"]),
               num_heads_window=list(hp["num_heads"]), num_heads_stripe=list(hp["num_heads"]),
               window_size=hp["window_size"], stripe_size=list(hp["stripe_size"]),
               stripe_shift=hp["stripe_shift"], mlp_ratio=hp["mlp_ratio"], qkv_proj_type="linear",
               anchor_proj_type="avgpool", anchor_window_down_factor=hp["anchor_window_down_factor"],
               out_proj_type="linear", conv_type="1conv", init_method="n")


def _span(scale: int, hp: dict[str, Any]) -> nn.Module:
    model = SPAN(num_in_ch=3, num_out_ch=3, feature_channels=hp["feature_channels"], upscale=scale)
    # eval_conv is re-derived from the training branches at every eval forward: it takes no
    # gradient, and leaving it trainable would trip DDP's unused-parameter check.
    for m in model.modules():
        if hasattr(m, "eval_conv"):
            m.eval_conv.requires_grad_(False)
    return model


_RRDB = {"num_feat": 64, "num_block": 23, "num_grow_ch": 32}
_SWINIR = {"img_size": 64, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 8,
           "mlp_ratio": 2.0}
_HAT = {"img_size": 64, "embed_dim": 180, "depths": [6] * 6, "num_heads": [6] * 6, "window_size": 16,
        "compress_ratio": 3, "squeeze_factor": 30, "overlap_ratio": 0.5, "mlp_ratio": 2.0, "num_feat": 64}
_DAT = {"img_size": 64, "embed_dim": 180, "split_size": [8, 32], "depth": [6] * 6, "num_heads": [6] * 6,
        "expansion_factor": 2.0}
# GRL defaults are APISR's released "tiny2" GRL, except stripe_shift=True which spandrel assumes.
_GRL = {"img_size": 64, "embed_dim": 64, "depths": [4] * 4, "num_heads": [2] * 4, "window_size": 8,
        "stripe_size": [8, 8], "stripe_shift": True, "mlp_ratio": 2.0, "anchor_window_down_factor": 2,
        "upsampler": "pixelshuffle"}


def _spec(name: str, sid: str, scales: tuple[int, ...], defaults: dict, build: Builder, desc: str) -> ArchSpec:
    return ArchSpec(name, sid, scales, defaults, build, desc)


ARCHS: dict[str, ArchSpec] = {s.name: s for s in (
    _spec("rrdb", "ESRGAN", (1, 2, 4), _RRDB, _rrdb, "ESRGAN RRDBNet (23 blocks), pixel-unshuffle for 2x/1x"),
    _spec("rrdb-6b", "ESRGAN", (1, 2, 4), {**_RRDB, "num_block": 6}, _rrdb,
          "RRDBNet 6 blocks: Real-ESRGAN anime 6B and APISR's RRDB"),
    _spec("rrdb-tiny", "ESRGAN", (1, 2, 4), {"num_feat": 16, "num_block": 1, "num_grow_ch": 32}, _rrdb,
          "RRDBNet for tests"),
    _spec("compact", "Compact", (1, 2, 3, 4), {"num_feat": 64, "num_conv": 16}, _compact,
          "SRVGGNetCompact (Real-ESRGAN compact), cheap enough to train on CPU"),
    _spec("compact-tiny", "Compact", (1, 2, 3, 4), {"num_feat": 16, "num_conv": 2}, _compact, "Compact for tests"),
    _spec("swinir", "SwinIR", (1, 2, 3, 4), _SWINIR, _swinir, "SwinIR (classical, pixel-shuffle)"),
    _spec("swinir-tiny", "SwinIR", (1, 2, 3, 4),
          {"img_size": 16, "embed_dim": 16, "depths": [2], "num_heads": [2], "window_size": 4, "mlp_ratio": 2.0},
          _swinir, "SwinIR for tests"),
    _spec("hat", "HAT", (1, 2, 3, 4), _HAT, _hat, "HAT (hybrid attention transformer)"),
    _spec("hat-tiny", "HAT", (1, 2, 3, 4),
          {"img_size": 16, "embed_dim": 16, "depths": [2], "num_heads": [2], "window_size": 4,
           "compress_ratio": 4, "squeeze_factor": 4, "overlap_ratio": 0.5, "mlp_ratio": 2.0, "num_feat": 16},
          _hat, "HAT for tests"),
    _spec("dat", "DAT", (2, 3, 4), _DAT, _dat, "DAT (dual aggregation transformer)"),
    _spec("dat-tiny", "DAT", (2, 3, 4),
          {"img_size": 16, "embed_dim": 16, "split_size": [2, 4], "depth": [3], "num_heads": [2],
           "expansion_factor": 2.0}, _dat, "DAT for tests"),
    _spec("grl", "GRL", (2, 3, 4), _GRL, _grl, "GRL (APISR's tiny2 size)"),
    _spec("grl-tiny", "GRL", (2, 3, 4),
          {"img_size": 16, "embed_dim": 16, "depths": [4], "num_heads": [2], "window_size": 4,
           "stripe_size": [4, 4], "stripe_shift": True, "mlp_ratio": 2.0, "anchor_window_down_factor": 2,
           "upsampler": "pixelshuffle"}, _grl, "GRL for tests"),
    _spec("span", "SPAN", (1, 2, 3, 4), {"feature_channels": 48}, _span, "SPAN (fast, NTIRE 2024 winner)"),
    _spec("span-tiny", "SPAN", (1, 2, 3, 4), {"feature_channels": 8}, _span, "SPAN for tests"),
)}


def get_spec(arch: str) -> ArchSpec:
    """The registry entry for ``arch``; unknown names raise ConfigError listing the valid ones."""
    if arch not in ARCHS:
        raise ConfigError("arch", arch, "one of " + ", ".join(ARCHS))
    return ARCHS[arch]


def resolve_hparams(arch: str, **hparams: Any) -> dict[str, Any]:
    """Defaults merged with ``hparams``; unknown keys raise ConfigError instead of being ignored."""
    spec = get_spec(arch)
    unknown = sorted(set(hparams) - set(spec.defaults))
    if unknown:
        raise ConfigError(f"hparams.{unknown[0]}", hparams[unknown[0]],
                          f"hyperparameters of {arch}: " + ", ".join(spec.defaults))
    return {**spec.defaults, **hparams}


def build_model(arch: str, scale: int, **hparams: Any) -> nn.Module:
    """A freshly initialised ``arch`` model for ``scale`` (RGB [0,1] NCHW in and out)."""
    spec = get_spec(arch)
    if scale not in spec.scales:
        raise ConfigError("scale", scale, f"one of {list(spec.scales)} for {arch}")
    return spec.build(scale, resolve_hparams(arch, **hparams))


def extra_buffers(model: nn.Module) -> dict[str, torch.Tensor]:
    """Non-persistent buffers spandrel reads to detect hyperparameters (GRL's window/stripe tables).

    spandrel's GRL does not save them, yet needs them in a file to recover window and stripe size;
    the original GRL code (and APISR's checkpoints) store them, so exported files include them.
    """
    if not isinstance(model, GRL):
        return {}
    persistent = set(model.state_dict())
    return {k: v for k, v in model.named_buffers() if "." not in k and k not in persistent}


def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict plus :func:`extra_buffers`: everything spandrel needs to rebuild ``model``."""
    return {**model.state_dict(), **extra_buffers(model)}


def describe(state_dict: dict[str, torch.Tensor]) -> ImageModelDescriptor:
    """spandrel's descriptor for a state dict (detects architecture, scale, precision, size needs)."""
    desc = MAIN_REGISTRY.load(dict(state_dict))
    if not isinstance(desc, ImageModelDescriptor):
        raise ValueError(f"{desc.architecture.name} is not an image-to-image model")
    return desc


def _pad_multiple(model: nn.Module) -> int:
    """Side multiple that avoids a model's internal padding (window attention, unshuffle)."""
    if isinstance(model, GRL):
        return int(model.pad_size)
    if isinstance(model, (SwinIR, HAT)):
        return int(model.window_size)
    if isinstance(model, DAT):
        return max(max(layer.blocks[0].attn.split_size) for layer in model.layers)
    if isinstance(model, ESRGAN) and model.shuffle_factor:
        return int(model.shuffle_factor)
    return 1


def info_from_model(model: nn.Module, arch: str, scale: int, desc: ImageModelDescriptor) -> ModelInfo:
    """ModelInfo from a built model and spandrel's descriptor of its weights."""
    req = desc.size_requirements
    mult = math.lcm(int(req.multiple_of), _pad_multiple(model))
    return ModelInfo(arch=arch, scale=scale, num_params=sum(p.numel() for p in model.parameters()),
                     supports_bf16=bool(desc.supports_bfloat16), supports_fp16=bool(desc.supports_half),
                     size_multiple=mult, size_min=max(int(req.minimum), mult))


@functools.lru_cache(maxsize=64)
def _info_cached(arch: str, scale: int, hp_json: str) -> ModelInfo:
    # The builds draw initial weights: from a forked RNG, so that whether this call was cached
    # (a second run in one process, e.g. a sweep's points) does not change what a seeded run draws next.
    with torch.random.fork_rng(devices=[]):
        model = build_model(arch, scale, **json.loads(hp_json))
        desc = describe(export_state_dict(model))
    spec = get_spec(arch)
    if desc.architecture.id != spec.spandrel_id or desc.scale != scale:
        raise ValueError(f"spandrel reads {arch} x{scale} back as {desc.architecture.id} x{desc.scale}; "
                         "these hyperparameters would not survive conversion")
    return info_from_model(model, arch, scale, desc)


def model_info(arch: str, scale: int, **hparams: Any) -> ModelInfo:
    """Scale, parameter count, precision support and input size needs, as spandrel reports them.

    Builds the model (twice: ours, then spandrel's read-back) once per process; results are cached.
    """
    return _info_cached(arch, scale, json.dumps(resolve_hparams(arch, **hparams), sort_keys=True))
