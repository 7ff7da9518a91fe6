"""PSNR and SSIM on Y in torch, batched on the device: training validation's numbers.

The convention is the SR benchmarks' (BT.601 Y in 16..235 as MATLAB's rgb2ycbcr, SR rounded to
8 bits, ``border`` pixels cropped, an 11x11 Gaussian window of sigma 1.5), the same as the
``psnry`` metric of :mod:`awm.eval.metrics`, so a run's validation PSNR and ``awm eval``'s agree.
It lives apart from ``metrics`` because that module must start without torch (its name checks
fail fast before pyiqa or torch are imported).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def rgb_to_y(x: torch.Tensor) -> torch.Tensor:
    """BT.601 luma of RGB in [0, 1], in [16/255, 235/255] as in MATLAB's rgb2ycbcr (the SR convention)."""
    w = x.new_tensor([65.481, 128.553, 24.966]).view(1, 3, 1, 1)
    return ((x * w).sum(1, keepdim=True) + 16.0) / 255.0


def _gauss(size: int = 11, sigma: float = 1.5) -> torch.Tensor:
    g = torch.exp(-((torch.arange(size, dtype=torch.float64) - size // 2) ** 2) / (2 * sigma**2))
    g = g / g.sum()
    return (g[:, None] @ g[None, :]).view(1, 1, size, size)


def psnr_ssim_y(sr: torch.Tensor, hr: torch.Tensor, border: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image PSNR (dB) and SSIM on Y, ``border`` pixels cropped: the usual SR benchmark numbers."""
    a = rgb_to_y(sr.double().clamp(0, 1).mul(255).round().div(255))
    b = rgb_to_y(hr.double())
    if border:
        a, b = a[..., border:-border, border:-border], b[..., border:-border, border:-border]
    mse = (a - b).pow(2).flatten(1).mean(1)
    psnr = 10 * torch.log10(1.0 / mse.clamp_min(1e-12))
    a, b = a * 255, b * 255
    k = _gauss().to(a)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu_a, mu_b = F.conv2d(a, k), F.conv2d(b, k)
    s_aa = F.conv2d(a * a, k) - mu_a**2
    s_bb = F.conv2d(b * b, k) - mu_b**2
    s_ab = F.conv2d(a * b, k) - mu_a * mu_b
    ssim = ((2 * mu_a * mu_b + c1) * (2 * s_ab + c2)) / ((mu_a**2 + mu_b**2 + c1) * (s_aa + s_bb + c2))
    return psnr.float(), ssim.flatten(1).mean(1).float()
