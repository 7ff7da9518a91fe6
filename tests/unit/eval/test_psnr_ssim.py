"""Training validation's Y-channel PSNR/SSIM (the psnry convention is checked in test_metrics)."""

import math

import pytest
import torch

from awm.eval.psnr_ssim import psnr_ssim_y, rgb_to_y


def test_psnr_ssim_on_y():
    torch.manual_seed(0)
    hr = torch.randint(0, 256, (2, 3, 40, 40)).float() / 255  # 8-bit, like decoded eval images
    p, s = psnr_ssim_y(hr, hr, border=2)
    assert (p > 100).all() and torch.allclose(s, torch.ones(2))
    shifted = (hr + 10 / 255).clamp(0, 1)  # still on the 8-bit grid
    y_err = (rgb_to_y(shifted.double()) - rgb_to_y(hr.double()))[..., 2:-2, 2:-2]
    expected = 10 * math.log10(1 / float(y_err.pow(2).mean()))
    p2, s2 = psnr_ssim_y(shifted, hr, border=2)
    assert float(p2.mean()) == pytest.approx(expected, abs=0.05)
    noisy = (hr + 0.2 * torch.randn_like(hr)).clamp(0, 1)
    p3, s3 = psnr_ssim_y(noisy, hr, border=2)
    assert (p3 < p2).all() and (s3 < s2).all() and (s3 < 0.99).all()
