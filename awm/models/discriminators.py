"""GAN discriminators: Real-ESRGAN's U-Net with spectral norm and a multi-scale PatchGAN.

Both written from their published structure. The U-Net keeps Real-ESRGAN's layer names
(conv0..conv9), so its released ``netD`` weights load into it; it gives a per-pixel realness map,
which suits line art (local decisions). The PatchGAN judges patches at several scales.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils import spectral_norm

from awm.config import check

DiscriminatorName = Literal["unet-sn", "patchgan-ms"]


@dataclass
class DiscriminatorConfig:
    """Which discriminator and its width; the training recipe embeds this."""

    name: DiscriminatorName = field(default="unet-sn", metadata={"help": "unet-sn or patchgan-ms"})
    num_feat: int = field(default=64, metadata={"help": "channels of the first layer"})
    skip_connection: bool = field(default=True, metadata={"help": "unet-sn: U-Net skip connections"})
    num_scales: int = field(default=3, metadata={"help": "patchgan-ms: number of image scales"})
    num_layers: int = field(default=3, metadata={"help": "patchgan-ms: stride-2 layers per scale"})

    def __post_init__(self):
        check(self.num_feat >= 1, "num_feat", self.num_feat, "an integer >= 1")
        check(self.num_scales >= 1, "num_scales", self.num_scales, "an integer >= 1")
        check(self.num_layers >= 1, "num_layers", self.num_layers, "an integer >= 1")


def upsample2x(t: torch.Tensor) -> torch.Tensor:
    """Bilinear 2x upsampling (``align_corners=False``, edges clamped), as Real-ESRGAN's U-Net uses.

    F.interpolate's CUDA backward accumulates with atomics and has no deterministic kernel, so
    ``deterministic=true`` failed on a GPU; under ``torch.use_deterministic_algorithms`` the same
    weights (1/4, 3/4) are applied with slices and sums, whose backward is deterministic (equal to
    F.interpolate up to float rounding).
    """
    if not torch.are_deterministic_algorithms_enabled():
        return F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=False)
    return _lerp2x(_lerp2x(t, t.dim() - 2), t.dim() - 1)


def _lerp2x(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Doubles axis ``dim``: output 2i = x[i-1]/4 + 3x[i]/4, 2i+1 = 3x[i]/4 + x[i+1]/4 (clamped)."""
    n = t.shape[dim]
    before = torch.cat([t.narrow(dim, 0, 1), t.narrow(dim, 0, n - 1)], dim)
    after = torch.cat([t.narrow(dim, 1, n - 1), t.narrow(dim, n - 1, 1)], dim)
    even, odd = 0.25 * before + 0.75 * t, 0.75 * t + 0.25 * after
    return torch.stack([even, odd], dim + 1).flatten(dim, dim + 1)


class UNetDiscriminatorSN(nn.Module):
    """Real-ESRGAN's U-Net discriminator: spectral-normed encoder/decoder, one logit per pixel.

    Input sides must be multiples of 8 (three stride-2 downsamplings).
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, skip_connection: bool = True):
        super().__init__()
        self.skip_connection = skip_connection
        nf = num_feat
        self.conv0 = nn.Conv2d(num_in_ch, nf, 3, 1, 1)
        self.conv1 = spectral_norm(nn.Conv2d(nf, nf * 2, 4, 2, 1, bias=False))
        self.conv2 = spectral_norm(nn.Conv2d(nf * 2, nf * 4, 4, 2, 1, bias=False))
        self.conv3 = spectral_norm(nn.Conv2d(nf * 4, nf * 8, 4, 2, 1, bias=False))
        self.conv4 = spectral_norm(nn.Conv2d(nf * 8, nf * 4, 3, 1, 1, bias=False))
        self.conv5 = spectral_norm(nn.Conv2d(nf * 4, nf * 2, 3, 1, 1, bias=False))
        self.conv6 = spectral_norm(nn.Conv2d(nf * 2, nf, 3, 1, 1, bias=False))
        self.conv7 = spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv8 = spectral_norm(nn.Conv2d(nf, nf, 3, 1, 1, bias=False))
        self.conv9 = nn.Conv2d(nf, 1, 3, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        def act(t: torch.Tensor) -> torch.Tensor:
            return F.leaky_relu(t, 0.2, inplace=True)

        x0 = act(self.conv0(x))
        x1 = act(self.conv1(x0))
        x2 = act(self.conv2(x1))
        x3 = act(self.conv3(x2))
        x4 = act(self.conv4(upsample2x(x3)))
        if self.skip_connection:
            x4 = x4 + x2
        x5 = act(self.conv5(upsample2x(x4)))
        if self.skip_connection:
            x5 = x5 + x1
        x6 = act(self.conv6(upsample2x(x5)))
        if self.skip_connection:
            x6 = x6 + x0
        out = act(self.conv7(x6))
        out = act(self.conv8(out))
        return self.conv9(out)


class PatchDiscriminatorSN(nn.Module):
    """One PatchGAN (pix2pix): stride-2 4x4 convs, spectral norm, a logit per receptive-field patch."""

    def __init__(self, num_in_ch: int, num_feat: int, num_layers: int):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(num_in_ch, num_feat, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = num_feat
        for i in range(1, num_layers + 1):
            nxt = num_feat * min(2 ** i, 8)
            stride = 2 if i < num_layers else 1
            layers += [spectral_norm(nn.Conv2d(ch, nxt, 4, stride, 1, bias=False)), nn.LeakyReLU(0.2, True)]
            ch = nxt
        layers.append(nn.Conv2d(ch, 1, 4, 1, 1))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class MultiScalePatchGAN(nn.Module):
    """PatchGANs on the image and its 2x, 4x... downscales (pix2pixHD); returns one map per scale.

    The coarsest scale needs sides >= 2 ** (num_layers + 2) px, e.g. 128 px input for 3 scales x 3 layers.
    """

    def __init__(self, num_in_ch: int = 3, num_feat: int = 64, num_scales: int = 3, num_layers: int = 3):
        super().__init__()
        self.scales = nn.ModuleList(PatchDiscriminatorSN(num_in_ch, num_feat, num_layers)
                                    for _ in range(num_scales))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        outs = []
        for i, d in enumerate(self.scales):
            if i:
                x = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=False)
            outs.append(d(x))
        return outs


def build_discriminator(name: DiscriminatorName | DiscriminatorConfig = "unet-sn", num_in_ch: int = 3,
                        **kwargs) -> nn.Module:
    """A discriminator by name (or from a DiscriminatorConfig); kwargs are DiscriminatorConfig fields."""
    cfg = name if isinstance(name, DiscriminatorConfig) else DiscriminatorConfig(name=name, **kwargs)
    check(cfg.name in ("unet-sn", "patchgan-ms"), "name", cfg.name, "'unet-sn' or 'patchgan-ms'")
    if cfg.name == "unet-sn":
        return UNetDiscriminatorSN(num_in_ch, cfg.num_feat, cfg.skip_connection)
    return MultiScalePatchGAN(num_in_ch, cfg.num_feat, cfg.num_scales, cfg.num_layers)
