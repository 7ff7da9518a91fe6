"""pyiqa's ``ssim`` and ``niqe`` (so ``niqe_anime``) on the CPU at the cost of their arithmetic.

pyiqa computes these with float64 ``torch.conv2d`` on full-size images (an 11x11 window for SSIM,
7x7 for NIQE's normalisation), which on a CPU costs ~1-2 s per 0.5-MP image: more than the
model being judged. The same definitions, step by step as pyiqa 0.1.16 computes them, run here
with OpenCV's float64 filters (the 2-D kernels as pyiqa rounds them to float32) and numpy.
Given the same 8-bit luma the values equal pyiqa's to float64 rounding
(``ssim_luma``/``niqe_luma``; tests/unit/eval/test_fast_metrics.py checks 1e-9 relative); from RGB
they can differ only where pyiqa's float32 luma lands within float32 rounding of a .5 tie, which a
CPU's BLAS path (FMA, summation order) rounds either way. ``tests/benchmarks/bench_eval.py``
measures both. What each step copies from pyiqa:

- Luma: pyiqa converts the float32 image (uint8 / 255) with a float32 matrix product; SSIM and
  NIQE then scale by 255 and round (``preprocess_rgb``/``to_y_channel``), PSNR keeps [0, 1].
- SSIM (``ssim_arch.ssim``, ``downsample=False`` in pyiqa's ``ssim`` entry): Y of YIQ, rounded,
  Gaussian 11x11 sigma 1.5 ('valid' region only), C1/C2 on a 255 range, the contrast-structure
  map clipped at 0 (``relu``) before the product, mean over the map.
- NIQE (``niqe_arch.niqe``): blocks of 96 px at full and half scale (MATLAB-style antialiased
  bicubic halving, pyiqa's own ``imresize``), MSCN normalisation with replicate padding, the 18
  AGGD features per block (pyiqa's ``compute_feature``, batched over all blocks), NaN-aware
  mean/covariance and the Mahalanobis-like distance to the pristine model.
"""

from __future__ import annotations

from functools import cache, lru_cache
from pathlib import Path

import cv2
import numpy as np

# The luma rows of pyiqa's colour matrices (rgb2yiq, rgb2ycbcr in pyiqa.utils.color_util), float32.
_YIQ_Y = tuple(np.float32(w) for w in (0.299, 0.587, 0.114))
_YCBCR_Y = tuple(np.float32(w) for w in (65.481, 128.553, 24.966))


def luma(img: np.ndarray, color_space: str, scale255: bool) -> np.ndarray:
    """pyiqa's ``to_y_channel`` of an 8-bit RGB image, as float64, the same on every CPU.

    pyiqa multiplies the float32 image (uint8 / 255) by a float32 matrix in torch: BLAS computes
    that 3-term dot product in an order (and with or without fused multiply-adds) that depends on
    the CPU. Here it is ``(r*w0 + g*w1) + b*w2`` in float32, element-wise numpy operations that
    every IEEE CPU rounds alike (what torch gives on an AVX2 path). Both lie within float32
    rounding of the exact value, so they round to the same level except for colours within
    that bound of a .5 tie (tests/unit/eval/test_fast_metrics.py).
    """
    if color_space == "yiq":
        w, bias = _YIQ_Y, None
    elif color_space == "ycbcr":
        w, bias = _YCBCR_Y, np.float32(16.0)
    else:
        raise ValueError(f"color space {color_space!r}: the fast path knows yiq and ycbcr")
    x = img.astype(np.float32) / np.float32(255.0)
    y = x[..., 0] * w[0] + x[..., 1] * w[1]
    y += x[..., 2] * w[2]
    if bias is not None:
        y += bias
        y /= np.float32(255.0)
    if scale255:
        y = np.round(y * np.float32(255.0))
    return y.astype(np.float64)


def _crop(a: np.ndarray, border: int) -> np.ndarray:
    return a[border:-border, border:-border] if border else a


@cache
def _fspecial(size: int, sigma: float) -> np.ndarray:
    """pyiqa's ``fspecial`` Gaussian exactly: float64 formula, rounded to float32, used as float64."""
    m = (size - 1) / 2.0
    y, x = np.ogrid[-m:m + 1, -m:m + 1]
    h = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
    h[h < np.finfo(h.dtype).eps * h.max()] = 0
    h /= h.sum()
    return h.astype(np.float32).astype(np.float64)


def ssim_y(img: np.ndarray, ref: np.ndarray, color_space: str = "yiq", crop_border: int = 0) -> float:
    """pyiqa ``SSIM(test_y_channel=True, downsample=False)`` (its ``ssim`` metric)."""
    return ssim_luma(luma(_crop(img, crop_border), color_space, True), luma(_crop(ref, crop_border), color_space, True))


def ssim_luma(x: np.ndarray, y: np.ndarray) -> float:
    """pyiqa's SSIM of two 8-bit luma planes (float64, 0..255): all float64 from here on."""
    k = _fspecial(11, 1.5)  # pyiqa's window as float32 rounds it (a float64 separable one reads ~1e-7 off)
    r = 5  # 'valid' region of the 11x11 window

    def blur(a: np.ndarray) -> np.ndarray:
        return cv2.filter2D(a, cv2.CV_64F, k, borderType=cv2.BORDER_REFLECT)[r:-r, r:-r]

    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    mu1, mu2 = blur(x), blur(y)
    mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
    s1, s2, s12 = blur(x * x) - mu1_sq, blur(y * y) - mu2_sq, blur(x * y) - mu12
    cs = np.maximum((2 * s12 + c2) / (s1 + s2 + c2), 0.0)
    return float(np.mean((2 * mu12 + c1) / (mu1_sq + mu2_sq + c1) * cs))


@lru_cache(maxsize=8)
def _pristine(path: str) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io

    params = scipy.io.loadmat(path)
    return np.ravel(params["mu_prisparam"]).astype(np.float64), np.asarray(params["cov_prisparam"], np.float64)


def _mscn(img: np.ndarray) -> np.ndarray:
    """pyiqa ``normalize_img_with_gauss(padding='replicate')``: 7x7, sigma 7/6, C = 1."""
    k = _fspecial(7, 7.0 / 6)
    mu = cv2.filter2D(img, cv2.CV_64F, k, borderType=cv2.BORDER_REPLICATE)
    var = cv2.filter2D(img * img, cv2.CV_64F, k, borderType=cv2.BORDER_REPLICATE)
    sigma = np.sqrt(np.abs(var - mu * mu) + np.finfo(np.float64).eps)
    return (img - mu) / (sigma + 1)


@lru_cache(maxsize=1)
def _gamma_table():
    """pyiqa's AGGD shape grid (float32 arange, used as float64) and its r(gamma), increasing in gamma."""
    import torch

    gam = torch.arange(0.2, 10 + 0.001, 0.001).double()
    r_gam = (2 * torch.lgamma(2.0 / gam) - (torch.lgamma(1.0 / gam) + torch.lgamma(3.0 / gam))).exp()
    return gam, r_gam


def _aggd(block):
    """pyiqa ``estimate_aggd_param`` over a batch (n, 1, h, w): the same sums, and the nearest grid
    entry found by binary search (r(gamma) increases strictly) instead of a 9,801-wide argmin per block."""
    import torch

    gam, r_gam = _gamma_table()
    mask_left, mask_right = block < 0, block > 0
    count_left = mask_left.sum(dim=(-1, -2), dtype=torch.float32)
    count_right = mask_right.sum(dim=(-1, -2), dtype=torch.float32)
    left_std = torch.sqrt((block * mask_left).pow(2).sum(dim=(-1, -2)) / count_left)
    right_std = torch.sqrt((block * mask_right).pow(2).sum(dim=(-1, -2)) / count_right)
    gammahat = left_std / right_std
    rhat = block.abs().mean(dim=(-1, -2)).pow(2) / block.pow(2).mean(dim=(-1, -2))
    rhatnorm = ((rhat * (gammahat.pow(3) + 1) * (gammahat + 1)) / (gammahat.pow(2) + 1).pow(2)).squeeze(-1)
    hi = torch.searchsorted(r_gam, rhatnorm.contiguous()).clamp(1, len(r_gam) - 1)
    lo = hi - 1
    # argmin keeps the first of equal distances; NaN (an empty side) gives pyiqa's index 0.
    pos = torch.where((r_gam[hi] - rhatnorm).abs() < (r_gam[lo] - rhatnorm).abs(), hi, lo)
    pos = torch.where(torch.isnan(rhatnorm), torch.zeros_like(pos), pos)
    alpha = gam[pos]
    scale = (torch.lgamma(1 / alpha) - torch.lgamma(3 / alpha)).exp().sqrt()
    return alpha, left_std.squeeze(-1) * scale, right_std.squeeze(-1) * scale


def _block_features(img: np.ndarray, bh: int, bw: int):
    """pyiqa ``blockproc(img, [bh, bw], compute_feature)``: NIQE's 18 features of every block, batched."""
    import torch

    nh, nw = img.shape[0] // bh, img.shape[1] // bw
    blocks = img[:nh * bh, :nw * bw].reshape(nh, bh, nw, bw).transpose(2, 0, 1, 3).reshape(nh * nw, 1, bh, bw)
    block = torch.from_numpy(np.ascontiguousarray(blocks))
    alpha, beta_l, beta_r = _aggd(block)
    feat = [alpha, (beta_l + beta_r) / 2]
    for shift in ([0, 1], [1, 0], [1, 1], [1, -1]):
        alpha, beta_l, beta_r = _aggd(block * torch.roll(block, shift, dims=(2, 3)))
        mean = (beta_r - beta_l) * (torch.lgamma(2 / alpha) - torch.lgamma(1 / alpha)).exp()
        feat.extend((alpha, mean, beta_l, beta_r))
    return torch.cat([f.reshape(-1, 1) for f in feat], dim=-1)


def niqe(img: np.ndarray, model_path: str | Path, color_space: str = "yiq", crop_border: int = 0) -> float:
    """pyiqa ``NIQE(pretrained_model_path=model_path)`` of an 8-bit RGB image."""
    return niqe_luma(_crop(luma(img, color_space, True), crop_border), model_path)


def niqe_luma(y: np.ndarray, model_path: str | Path) -> float:
    """pyiqa's NIQE of an 8-bit luma plane (float64, 0..255): all float64 from here on."""
    import torch
    from pyiqa.matlab_utils import imresize, nancov, nanmean

    b = 96
    h, w = (y.shape[0] // b) * b, (y.shape[1] // b) * b
    y = y[:h, :w]
    feats = [_block_features(_mscn(y), b, b)]
    half = imresize(torch.from_numpy(y / 255.0)[None, None], scale=0.5, antialiasing=True) * 255.0
    feats.append(_block_features(_mscn(half[0, 0].numpy()), b // 2, b // 2))
    dist = torch.cat(feats, -1)[None]
    mu_p, cov_p = (torch.from_numpy(a) for a in _pristine(str(model_path)))
    mu_d, cov_d = nanmean(dist, dim=1), nancov(dist)
    inv = torch.linalg.pinv((cov_p[None] + cov_d) / 2)
    diff = (mu_p[None] - mu_d).unsqueeze(1)
    return float(torch.sqrt(torch.bmm(torch.bmm(diff, inv), diff.transpose(1, 2)).squeeze()))
