"""Losses aimed at what GAN fine-tuning breaks: artifacts (LDL), lost frequencies (focal frequency),
structure (MS-SSIM) and colour drift (luma/chroma consistency).

Each term has a weight in :class:`awm.models.losses.LossConfig` (default 0: off) and applies in
both training stages, added to the pixel loss (warm-up) or the GAN stage's terms. Everything is
batched tensor arithmetic with shapes known from Python ints: no term makes the host wait for the
device. Tensors are RGB in [0, 1], NCHW; every term is computed in float32.
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn import functional as F

from awm.config import check

# MS-SSIM scale weights of Wang, Simoncelli & Bovik (2003), finest scale first.
MS_SSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
SSIM_WINDOW, SSIM_SIGMA = 11, 1.5


@dataclass
class LDLConfig:
    weight: float = field(default=0.0, metadata={"help": "weight of the LDL artifact term (0 = off; needs ema)"})
    kernel: int = field(default=7, metadata={"help": "local variance window (the paper's 7)"})

    def __post_init__(self) -> None:
        check(self.weight >= 0, "ldl.weight", self.weight, "a number >= 0")
        check(self.kernel >= 3 and self.kernel % 2 == 1, "ldl.kernel", self.kernel, "an odd number >= 3")


@dataclass
class FFLConfig:
    weight: float = field(default=0.0, metadata={"help": "weight of the focal frequency loss (0 = off)"})
    alpha: float = field(default=1.0, metadata={"help": "focusing exponent of the spectrum weight"})

    def __post_init__(self) -> None:
        check(self.weight >= 0, "ffl.weight", self.weight, "a number >= 0")
        check(self.alpha > 0, "ffl.alpha", self.alpha, "a number > 0")


@dataclass
class MSSSIMConfig:
    weight: float = field(default=0.0, metadata={"help": "weight of the 1 - MS-SSIM term (0 = off)"})
    scales: int = field(default=5, metadata={
        "help": "scales at most (fewer on small patches: the coarsest must still hold an 11 px window)"})

    def __post_init__(self) -> None:
        check(self.weight >= 0, "msssim.weight", self.weight, "a number >= 0")
        check(1 <= self.scales <= 5, "msssim.scales", self.scales, "1..5")


@dataclass
class ColorConfig:
    weight: float = field(default=0.0, metadata={"help": "weight of the luma/chroma consistency term (0 = off)"})
    pool: int = field(default=4, metadata={"help": "average-pool factor before comparing chroma"})

    def __post_init__(self) -> None:
        check(self.weight >= 0, "color.weight", self.weight, "a number >= 0")
        check(self.pool >= 1, "color.pool", self.pool, ">= 1")


def _reflect_pad(x: torch.Tensor, pad: int) -> torch.Tensor:
    """``F.pad(x, mode="reflect")`` from slices and flips: CUDA's ReflectionPad2d backward is
    nondeterministic (refused under ``deterministic=true``); these ops' backward is not."""
    x = torch.cat([x[..., 1:pad + 1].flip(-1), x, x[..., -pad - 1:-1].flip(-1)], -1)
    return torch.cat([x[..., 1:pad + 1, :].flip(-2), x, x[..., -pad - 1:-1, :].flip(-2)], -2)


def ldl_artifact_map(sr: torch.Tensor, ema: torch.Tensor, hr: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """LDL's refined artifact map M (N,1,H,W): Liang, Zeng & Zhang, "Details or Artifacts: A Locally
    Discriminative Learning Approach to Realistic Image Super-Resolution", CVPR 2022.

    With the residual R = sum_c |HR - SR|, M = var(R over the patch)^(1/5) * var(R over a
    ``kernel`` x ``kernel`` window, reflect-padded), both unbiased, and M = 0 where the EMA model's
    residual is larger (there the current output is the more stable one). As in the authors'
    code, M keeps its gradient. The local variance is computed from window means (E[x^2] - E[x]^2),
    which equals the unfolded variance without materialising k^2 copies of the image.
    """
    r = (hr - sr).abs().sum(1, keepdim=True)
    r_ema = (hr - ema).abs().sum(1, keepdim=True)
    patch = r.var(dim=(1, 2, 3), keepdim=True) ** 0.2
    rp = _reflect_pad(r, kernel // 2)
    mean = F.avg_pool2d(rp, kernel, stride=1)
    mean_sq = F.avg_pool2d(rp * rp, kernel, stride=1)
    k2 = kernel * kernel
    local = (mean_sq - mean * mean).clamp_min(0) * (k2 / (k2 - 1))
    return torch.where(r < r_ema, torch.zeros_like(local), patch * local)


def ldl_loss(sr: torch.Tensor, ema: torch.Tensor, hr: torch.Tensor, kernel: int = 7) -> torch.Tensor:
    """LDL's artifact term: mean |M * SR - M * HR| (L1), with M from :func:`ldl_artifact_map`."""
    sr, ema, hr = sr.float(), ema.float(), hr.float()
    m = ldl_artifact_map(sr, ema, hr, kernel)
    return (m * sr - m * hr).abs().mean()


def focal_frequency_loss(sr: torch.Tensor, hr: torch.Tensor, alpha: float = 1.0) -> torch.Tensor:
    """Focal frequency loss: Jiang, Dai, Wu & Loy, "Focal Frequency Loss for Image Reconstruction and
    Synthesis", ICCV 2021.

    Per image and channel, the orthonormal 2-D DFT F of both images; d = |F_sr - F_hr|^2; the
    spectrum weight w = d^(alpha/2) / max over frequencies (in [0, 1], no gradient: the authors'
    ``matrix`` is detached); loss = mean(w * d). (The authors' defaults: one patch, no log,
    per-image normalisation.)
    """
    diff = torch.fft.fft2(sr.float(), norm="ortho") - torch.fft.fft2(hr.float(), norm="ortho")
    dist = diff.real ** 2 + diff.imag ** 2
    with torch.no_grad():
        w = dist.sqrt() ** alpha
        w = (w / w.amax(dim=(-2, -1), keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)).clamp(0, 1)
    return (w * dist).mean()


# The constants below are built once per device (functools.cache): a tensor made from Python
# numbers at every step is a copy from pageable host memory that waits for the device's stream.
@functools.cache
def _gauss_1d(size: int, sigma: float, device: torch.device) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float32, device=device) - size // 2) ** 2) / (2 * sigma ** 2))
    return g / g.sum()


@functools.cache
def _ms_ssim_weights(scales: int, device: torch.device) -> torch.Tensor:
    """The paper's weights of the first ``scales`` scales, renormalised to sum to 1."""
    weights = torch.tensor(MS_SSIM_WEIGHTS[:scales], device=device)
    return weights / weights.sum()


@functools.cache
def _ycbcr(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """JPEG's RGB -> YCbCr matrix (3, 3) and offset (1, 3, 1, 1), float32."""
    m = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]], device=device)
    return m, torch.tensor([0.0, 0.5, 0.5], device=device).view(1, 3, 1, 1)


def ms_ssim_scales(height: int, width: int, at_most: int = 5) -> int:
    """How many scales fit: the coarsest (side halved per scale) must still hold the 11 px window."""
    side = min(height, width)
    check(side >= SSIM_WINDOW, "msssim", f"{height}x{width} patches", f"HR patches of >= {SSIM_WINDOW} px")
    return min(at_most, 1 + int(math.floor(math.log2(side / SSIM_WINDOW))))


def ms_ssim(x: torch.Tensor, y: torch.Tensor, scales: int = 5) -> torch.Tensor:
    """Multi-scale SSIM (N,): Wang, Simoncelli & Bovik, "Multiscale structural similarity for image
    quality assessment", Asilomar 2003.

    Per channel (then averaged), data range 1, an 11x11 Gaussian window (sigma 1.5) with no
    padding, 2x2 average pooling between scales. MS-SSIM = prod_j cs_j^w_j over the finer scales
    times ssim_M^w_M at the coarsest, with the paper's weights renormalised over the scales that
    fit the patch (:func:`ms_ssim_scales`). Factors are clamped to >= 1e-6 before the fractional
    powers, so a negative correlation gives a small value, never NaN.
    """
    x, y = x.float(), y.float()
    m = ms_ssim_scales(x.shape[-2], x.shape[-1], scales)
    weights = _ms_ssim_weights(m, x.device)
    c = x.shape[1]
    g = _gauss_1d(SSIM_WINDOW, SSIM_SIGMA, x.device)
    kh, kw = g.view(1, 1, -1, 1).repeat(c, 1, 1, 1), g.view(1, 1, 1, -1).repeat(c, 1, 1, 1)

    def blur(t: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.conv2d(t, kh, groups=c), kw, groups=c)

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    factors = []
    for j in range(m):
        mx, my = blur(x), blur(y)
        sxx, syy, sxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
        cs = (2 * sxy + c2) / (sxx + syy + c2)
        if j < m - 1:
            factors.append(cs.flatten(2).mean(2))
            x, y = F.avg_pool2d(x, 2), F.avg_pool2d(y, 2)
        else:
            lum = (2 * mx * my + c1) / (mx * mx + my * my + c1)
            factors.append((lum * cs).flatten(2).mean(2))
    f = torch.stack(factors, -1).clamp_min(1e-6)  # (N, C, scales)
    return (f ** weights).prod(-1).mean(1)


def rgb_to_ycbcr(x: torch.Tensor) -> torch.Tensor:
    """Full-range BT.601 YCbCr (JPEG's) of RGB in [0, 1]; Cb and Cr centred on 0.5."""
    m, offset = _ycbcr(x.device)
    return torch.einsum("ij,njhw->nihw", m.to(x.dtype), x) + offset.to(x.dtype)


def color_consistency_loss(sr: torch.Tensor, hr: torch.Tensor, pool: int = 4) -> torch.Tensor:
    """Luma/chroma consistency: L1 between the ``pool``-times average-pooled Cb, Cr of SR and HR
    (local colour), plus L1 between the images' mean Y (global brightness).

    Colour shift is the common complaint after GAN fine-tuning: the pixel and perceptual terms
    weigh it lightly next to texture. Comparing low-pass chroma follows the colour loss of
    Ignatov et al., "DSLR-Quality Photos on Mobile Devices with Deep Convolutional Networks",
    ICCV 2017 (distance between blurred images), restricted here to chroma so that luma
    detail, which the other terms own, is left alone; the mean-Y term catches a brightness drift.
    """
    a, b = rgb_to_ycbcr(sr.float()), rgb_to_ycbcr(hr.float())
    chroma = (F.avg_pool2d(a[:, 1:], pool) - F.avg_pool2d(b[:, 1:], pool)).abs().mean()
    luma = (a[:, 0].mean(dim=(1, 2)) - b[:, 0].mean(dim=(1, 2))).abs().mean()
    return chroma + luma


class ArtifactLoss(nn.Module):
    """The configured terms of this module, each weighted: {"ldl", "ffl", "msssim", "color"}.

    Terms with weight 0 are absent; ``needs_ema`` says whether the caller must pass the EMA
    generator's output (LDL's reference).
    """

    def __init__(self, ldl: LDLConfig, ffl: FFLConfig, msssim: MSSSIMConfig, color: ColorConfig):
        super().__init__()
        self.ldl, self.ffl, self.msssim, self.color = ldl, ffl, msssim, color

    @property
    def needs_ema(self) -> bool:
        return self.ldl.weight > 0

    @property
    def active(self) -> bool:
        return any(c.weight > 0 for c in (self.ldl, self.ffl, self.msssim, self.color))

    def forward(self, sr: torch.Tensor, hr: torch.Tensor, ema: torch.Tensor | None = None
                ) -> dict[str, torch.Tensor]:
        # fp32 whatever the step's autocast: variances (E[x^2] - E[x]^2) cancel badly in bf16
        device = sr.device.type
        with torch.autocast(device, enabled=False) if device in ("cpu", "cuda") else contextlib.nullcontext():
            return self._terms(sr, hr, ema)

    def _terms(self, sr: torch.Tensor, hr: torch.Tensor, ema: torch.Tensor | None) -> dict[str, torch.Tensor]:
        terms: dict[str, torch.Tensor] = {}
        if self.ldl.weight > 0:
            if ema is None:
                raise ValueError("the LDL term is on (ldl.weight > 0): pass the EMA generator's output")
            terms["ldl"] = self.ldl.weight * ldl_loss(sr, ema, hr, self.ldl.kernel)
        if self.ffl.weight > 0:
            terms["ffl"] = self.ffl.weight * focal_frequency_loss(sr, hr, self.ffl.alpha)
        if self.msssim.weight > 0:
            terms["msssim"] = self.msssim.weight * (1 - ms_ssim(sr, hr, self.msssim.scales).mean())
        if self.color.weight > 0:
            terms["color"] = self.color.weight * color_consistency_loss(sr, hr, self.color.pool)
        return terms
