"""Each artifact loss against an independent computation: numpy with explicit loops over pixels,
windows and frequencies, written from the papers' definitions (not from the code under test)."""

import math

import numpy as np
import pytest
import torch

from awm.config import from_dict
from awm.errors import ConfigError
from awm.models.artifact_losses import (
    color_consistency_loss,
    focal_frequency_loss,
    ldl_loss,
    ms_ssim,
    ms_ssim_scales,
)
from awm.models.losses import LossConfig, build_artifact_loss


def _images(seed, shape):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(shape, generator=g, dtype=torch.float64)


def _reflect(i, n):
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


def _var(values):
    m = sum(values) / len(values)
    return sum((v - m) ** 2 for v in values) / (len(values) - 1)


def test_ldl_matches_hand_computed_artifact_map():
    n, c, h, w, k = 2, 3, 9, 8, 7
    hr, sr, ema = (_images(s, (n, c, h, w)) for s in (1, 2, 3))
    ema = 0.5 * ema + 0.5 * hr  # closer to HR in places, further in others: the mask matters
    H, S, E = hr.numpy(), sr.numpy(), ema.numpy()
    total, masked = 0.0, 0
    for b in range(n):
        r = [[sum(abs(H[b, ch, y, x] - S[b, ch, y, x]) for ch in range(c)) for x in range(w)] for y in range(h)]
        r_ema = [[sum(abs(H[b, ch, y, x] - E[b, ch, y, x]) for ch in range(c)) for x in range(w)] for y in range(h)]
        patch = _var([r[y][x] for y in range(h) for x in range(w)]) ** 0.2
        for y in range(h):
            for x in range(w):
                window = [r[_reflect(y + dy, h)][_reflect(x + dx, w)]
                          for dy in range(-(k // 2), k // 2 + 1) for dx in range(-(k // 2), k // 2 + 1)]
                m = 0.0 if r[y][x] < r_ema[y][x] else patch * _var(window)
                masked += m == 0.0
                for ch in range(c):
                    total += abs(m * S[b, ch, y, x] - m * H[b, ch, y, x])
    expected = total / (n * c * h * w)
    assert 0 < masked < n * h * w
    got = float(ldl_loss(sr.float(), ema.float(), hr.float(), k))
    assert math.isclose(got, expected, rel_tol=1e-4)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_focal_frequency_loss_matches_explicit_dft(alpha):
    n, c, h, w = 2, 2, 5, 6
    sr, hr = _images(4, (n, c, h, w)), _images(5, (n, c, h, w))
    D = (sr - hr).numpy()
    total = 0.0
    for b in range(n):
        for ch in range(c):
            d = np.zeros((h, w))
            for u in range(h):
                for v in range(w):
                    f = sum(D[b, ch, y, x] * complex(math.cos(-2 * math.pi * (u * y / h + v * x / w)),
                                                     math.sin(-2 * math.pi * (u * y / h + v * x / w)))
                            for y in range(h) for x in range(w)) / math.sqrt(h * w)
                    d[u, v] = abs(f) ** 2
            weight = np.sqrt(d) ** alpha
            weight = weight / weight.max()
            total += sum(weight[u, v] * d[u, v] for u in range(h) for v in range(w))
    expected = total / (n * c * h * w)
    assert math.isclose(float(focal_frequency_loss(sr.float(), hr.float(), alpha)), expected, rel_tol=1e-4)
    assert float(focal_frequency_loss(hr.float(), hr.float())) == 0.0


def _hand_ms_ssim(x, y, scales):
    """MS-SSIM of one channel, loops only: Gaussian 11x11 sigma 1.5 valid window, 2x2 mean pooling."""
    g = [math.exp(-((i - 5) ** 2) / (2 * 1.5 ** 2)) for i in range(11)]
    s = sum(g)
    win = [[g[i] * g[j] / s / s for j in range(11)] for i in range(11)]
    weights = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333][:scales]
    weights = [v / sum(weights) for v in weights]
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    result = 1.0
    for j in range(scales):
        h, w = len(x), len(x[0])
        cs_sum = ssim_sum = 0.0
        count = 0
        for y0 in range(h - 10):
            for x0 in range(w - 10):
                mx = sum(win[i][k] * x[y0 + i][x0 + k] for i in range(11) for k in range(11))
                my = sum(win[i][k] * y[y0 + i][x0 + k] for i in range(11) for k in range(11))
                sxx = sum(win[i][k] * x[y0 + i][x0 + k] ** 2 for i in range(11) for k in range(11)) - mx * mx
                syy = sum(win[i][k] * y[y0 + i][x0 + k] ** 2 for i in range(11) for k in range(11)) - my * my
                sxy = sum(win[i][k] * x[y0 + i][x0 + k] * y[y0 + i][x0 + k]
                          for i in range(11) for k in range(11)) - mx * my
                cs = (2 * sxy + c2) / (sxx + syy + c2)
                cs_sum += cs
                ssim_sum += cs * (2 * mx * my + c1) / (mx * mx + my * my + c1)
                count += 1
        factor = (ssim_sum if j == scales - 1 else cs_sum) / count
        result *= max(factor, 1e-6) ** weights[j]
        x = [[(x[2 * a][2 * b] + x[2 * a + 1][2 * b] + x[2 * a][2 * b + 1] + x[2 * a + 1][2 * b + 1]) / 4
              for b in range(w // 2)] for a in range(h // 2)]
        y = [[(y[2 * a][2 * b] + y[2 * a + 1][2 * b] + y[2 * a][2 * b + 1] + y[2 * a + 1][2 * b + 1]) / 4
              for b in range(w // 2)] for a in range(h // 2)]
    return result


def test_ms_ssim_matches_hand_computation_with_scales_limited_by_the_patch():
    assert [ms_ssim_scales(s, s) for s in (11, 21, 22, 44, 88, 176, 512)] == [1, 1, 2, 3, 4, 5, 5]
    assert ms_ssim_scales(512, 512, at_most=3) == 3
    with pytest.raises(ConfigError, match="11 px"):
        ms_ssim_scales(10, 64)
    n, c, h, w = 1, 2, 24, 23
    hr = _images(6, (n, c, h, w))
    sr = (0.7 * hr + 0.3 * _images(7, (n, c, h, w)))
    got = ms_ssim(sr.float(), hr.float())
    assert got.shape == (n,) and ms_ssim_scales(h, w) == 2
    expected = sum(_hand_ms_ssim(sr[0, ch].tolist(), hr[0, ch].tolist(), 2) for ch in range(c)) / c
    assert 0.2 < expected < 0.99
    assert math.isclose(float(got[0]), expected, rel_tol=1e-4)
    assert math.isclose(float(ms_ssim(hr.float(), hr.float())[0]), 1.0, rel_tol=1e-5)


def test_color_consistency_matches_hand_computation_and_ignores_luma_detail():
    n, h, w, pool = 2, 8, 12, 4
    sr, hr = _images(8, (n, 3, h, w)), _images(9, (n, 3, h, w))
    S, H = sr.numpy(), hr.numpy()

    def ycbcr(img, b, y, x):
        r, g, bl = img[b, 0, y, x], img[b, 1, y, x], img[b, 2, y, x]
        return (0.299 * r + 0.587 * g + 0.114 * bl, 0.5 - 0.168736 * r - 0.331264 * g + 0.5 * bl,
                0.5 + 0.5 * r - 0.418688 * g - 0.081312 * bl)

    chroma, cells, luma = 0.0, 0, 0.0
    for b in range(n):
        for ch in (1, 2):
            for a in range(h // pool):
                for q in range(w // pool):
                    block = [(y, x) for y in range(a * pool, (a + 1) * pool) for x in range(q * pool, (q + 1) * pool)]
                    ms = sum(ycbcr(S, b, y, x)[ch] for y, x in block) / len(block)
                    mh = sum(ycbcr(H, b, y, x)[ch] for y, x in block) / len(block)
                    chroma += abs(ms - mh)
                    cells += 1
        ys = sum(ycbcr(S, b, y, x)[0] for y in range(h) for x in range(w)) / (h * w)
        yh = sum(ycbcr(H, b, y, x)[0] for y in range(h) for x in range(w)) / (h * w)
        luma += abs(ys - yh)
    expected = chroma / cells + luma / n
    assert math.isclose(float(color_consistency_loss(sr.float(), hr.float(), pool)), expected, rel_tol=1e-4)
    # a grey, zero-mean luma pattern added to HR changes neither pooled chroma nor mean Y
    pattern = torch.zeros(1, 1, h, w, dtype=torch.float64)
    pattern[..., ::2, :], pattern[..., 1::2, :] = 0.01, -0.01
    assert float(color_consistency_loss((hr + pattern).float(), hr.float(), pool)) < 1e-6


def test_artifact_terms_are_weighted_need_ema_for_ldl_and_carry_gradients():
    assert build_artifact_loss(LossConfig()) is None  # all off by default
    cfg = from_dict(LossConfig, {"ldl": {"weight": 2.0}, "ffl": {"weight": 0.5}, "msssim": {"weight": 0.25},
                                 "color": {"weight": 3.0}})
    loss = build_artifact_loss(cfg)
    assert loss.needs_ema
    sr = _images(10, (2, 3, 32, 32)).float().requires_grad_(True)
    hr, ema = _images(11, (2, 3, 32, 32)).float(), _images(12, (2, 3, 32, 32)).float()
    with pytest.raises(ValueError, match="EMA"):
        loss(sr, hr)
    terms = loss(sr, hr, ema)
    assert sorted(terms) == ["color", "ffl", "ldl", "msssim"]
    x = sr.detach()
    value = {k: float(v.detach()) for k, v in terms.items()}
    assert math.isclose(value["ldl"], 2.0 * float(ldl_loss(x, ema, hr)), rel_tol=1e-6)
    assert math.isclose(value["ffl"], 0.5 * float(focal_frequency_loss(x, hr)), rel_tol=1e-6)
    assert math.isclose(value["msssim"], 0.25 * (1 - float(ms_ssim(x, hr).mean())), rel_tol=1e-6)
    assert math.isclose(value["color"], 3.0 * float(color_consistency_loss(x, hr)), rel_tol=1e-6)
    sum(terms.values()).backward()
    assert torch.isfinite(sr.grad).all() and sr.grad.abs().sum() > 0
    with pytest.raises(ConfigError, match="ldl.kernel"):
        from_dict(LossConfig, {"ldl": {"weight": 1.0, "kernel": 4}})


def test_ms_ssim_and_colour_terms_build_their_constants_once_per_device():
    """MS-SSIM's scale weights and the colour term's YCbCr matrix were tensors made from Python
    numbers at every step (on a GPU a copy from pageable host memory, waiting for the stream); they
    are built once per device now, so a later step creates no tensor from host data."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from awm.models.artifact_losses import color_consistency_loss, ms_ssim

    class HostTensors(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.count += func is torch.ops.aten.lift_fresh.default
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    sr, hr = torch.rand(2, 3, 48, 48), torch.rand(2, 3, 48, 48)
    first = (ms_ssim(sr, hr), color_consistency_loss(sr, hr))
    with HostTensors() as mode:
        again = (ms_ssim(sr, hr), color_consistency_loss(sr, hr))
    assert mode.count == 0
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
