"""PSNR and SSIM on Y in torch, batched on the device: training validation's numbers.

The convention is the SR benchmarks' (BT.601 Y in 16..235 as MATLAB's rgb2ycbcr, SR rounded to
8 bits, ``border`` = scale pixels cropped, an 11x11 Gaussian window of sigma 1.5). ``awm eval``'s
``psnry`` metric (:mod:`awm.eval.metrics`) is :class:`PsnrY`, this module's PSNR with the same
border, so a run's validation PSNR and ``awm eval``'s agree.
``ssimy`` is :class:`SsimY`, validation's SSIM-Y, and :func:`bicubic` is the one bicubic
baseline of both (PIL's, the MATLAB/SR convention), so for the same model, eval shards and crop
(``validation.crop`` = ``awm eval --crop``) validation and ``awm eval`` report the same numbers.
It lives apart from ``metrics`` because that module must start without torch (its name checks
fail fast before pyiqa or torch are imported).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def bicubic(lr: np.ndarray, scale: int) -> np.ndarray:
    """The bicubic baseline of validation and ``awm eval``: PIL's bicubic (a = -0.5, MATLAB's
    imresize kernel, the SR papers' baseline) of 8-bit RGB, 8-bit out, as a user's own resize
    would give it. Torch's bicubic (a = -0.75, float) reads ~0.2 dB higher on anime content."""
    from PIL import Image

    h, w = lr.shape[:2]
    return np.array(Image.fromarray(lr).resize((w * scale, h * scale), Image.Resampling.BICUBIC))


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB in [0, 1], in [16/255, 235/255] as in MATLAB's rgb2ycbcr (the SR convention)."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return ((x * w).sum(1, keepdim=True) + 16.0) / 255.0


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).view(1, 1, size, size)


def _y_pair(sr: torch.Tensor, hr: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Y of SR (rounded to 8 bits) and HR, ``border`` pixels cropped on each side (float64)."""
    a = rgb_to_y(sr.double().clamp(0, 1).mul(255).round().div(255))
    b = rgb_to_y(hr.double())
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    return a, b


def _psnr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    mse = (a - b).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-12))


def psnr_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> torch.Tensor:
    """Per-image PSNR (dB) on Y, ``border`` pixels cropped: ``awm eval``'s ``psnry`` (border = scale)."""
    return _psnr(*_y_pair(sr, hr, border)).float()


class PsnrY(torch.nn.Module):
    """:func:`psnr_y` as a full-reference metric module (``net(x, ref)``, RGB [0, 1] NCHW), so
    ``awm eval``'s ``psnry`` and training validation are one function with one border."""

    def __init__(self, border: int, device: str | torch.device = "cpu"):
        super().__init__()
        self.border = border
        self.register_buffer("anchor", torch.empty(0, device=device), persistent=False)  # the metric's device

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return psnr_y(x, ref, self.border)


class SsimY(torch.nn.Module):
    """SSIM of :func:`psnr_ssim_y` as a metric module: ``awm eval``'s ``ssimy``, validation's SSIM-Y."""

    def __init__(self, border: int, device: str | torch.device = "cpu"):
        super().__init__()
        self.border = border
        self.register_buffer("anchor", torch.empty(0, device=device), persistent=False)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        return psnr_ssim_y(x, ref, self.border)[1]


def psnr_ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM on Y, ``border`` pixels cropped: the usual SR benchmark numbers."""
    a, b = _y_pair(sr, hr, border)
    psnr = _psnr(a, b)
    a, b = a * 255, b * 255
    k = _gauss().to(a)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, k), F.conv2d(b, k)
    s_aa = F.conv2d(a * a, k) - mu_a**2
    s_bb = F.conv2d(b * b, k) - mu_b**2
    s_ab = F.conv2d(a * b, k) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return psnr.float(), ssim.flatten(1).mean(1).float()
