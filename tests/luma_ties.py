"""Luma as pyiqa computes it, and what any CPU's float32 arithmetic may make of it.

pyiqa's luma is a float32 3-term dot product whose order (and fused multiply-adds) BLAS picks per
CPU; every such evaluation lies within ``exact``'s bound of the exact value, so CPUs round a colour
to different 8-bit levels only where that value lies within the bound of a .5 tie (``levels``).
Used by tests/unit/eval/test_fast_metrics.py and tests/integration/test_eval.py.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

U = 2.0 ** -24  # float32 unit roundoff
REL64 = 1e-9  # claim 1, see the module docstring
# The luma rows of pyiqa's matrices (pyiqa.utils.color_util), and the bias YCbCr adds before /255.
WEIGHTS = {"yiq": ((0.299, 0.587, 0.114), 0.0), "ycbcr": ((65.481, 128.553, 24.966), 16.0)}


def exact(rgb: np.ndarray, space: str, scale255: bool) -> tuple[np.ndarray, np.ndarray]:
    """The real value of pyiqa's luma (before rounding) and the bound on any float32 evaluation's error.

    The input pyiqa sees, float32(c / 255), and the float32 weights are exact in float64, and so
    are their products (24 + 24 bits); the 3-term sum adds ~1e-16 relative. Any float32 order,
    FMA or not, errs by at most gamma_3 = 3u/(1-3u) of the sum of the (positive) terms; YCbCr's
    +16, /255 and x255 and YIQ's x255 add one rounding (u) each: 8u of the value covers them all.
    """
    x = (rgb.astype(np.float32) / np.float32(255.0)).astype(np.float64)
    w, bias = WEIGHTS[space]
    s = x @ np.array([np.float32(v) for v in w], np.float64)
    if space == "yiq":
        value = s * 255.0 if scale255 else s
    else:
        value = s + bias if scale255 else (s + bias) / 255.0
    return value, 8 * U * value


def levels(rgb: np.ndarray, space: str) -> tuple[np.ndarray, np.ndarray]:
    """The 8-bit luma every CPU agrees on (NaN at tie colours), and the mask of tie colours."""
    value, bound = exact(rgb, space, True)
    tie = np.abs(value - np.floor(value) - 0.5) <= bound
    return np.where(tie, np.nan, np.round(value)), tie


def check_luma(candidate: np.ndarray, rgb: np.ndarray, space: str, scale255: bool, what: str) -> None:
    value, bound = exact(rgb, space, scale255)
    if not scale255:
        bad = np.abs(candidate - value) > bound
        assert not bad.any(), f"{what}: {bad.sum()} colours off the exact luma by more than 8u, e.g. {rgb[bad][:3]}"
        return
    agreed, tie = levels(rgb, space)
    bad = ~tie & (candidate != agreed)
    assert not bad.any(), f"{what}: {bad.sum()} non-tie colours at another level, e.g. {rgb[bad][:3]}"
    off = tie & ((candidate < np.floor(value)) | (candidate > np.ceil(value)))
    assert not off.any(), f"{what}: tie colours beyond their two neighbouring levels, e.g. {rgb[off][:3]}"


def float32_luma(rgb: np.ndarray, space: str, scale255: bool, order: str) -> np.ndarray:
    """pyiqa's luma steps in float32 with the dot product in another legal order: what other BLAS paths do."""
    w = [np.float32(v) for v in WEIGHTS[space][0]]
    x = [c.astype(np.float32) / np.float32(255.0) for c in np.moveaxis(rgb, -1, 0)]

    def fma(a, b, c):  # one rounding of a*b + c (the float64 sum of float32 products is exact to 2^-53)
        return (a.astype(np.float64) * b + c).astype(np.float32)

    if order == "fma":
        y = fma(x[2], w[2], fma(x[1], w[1], x[0] * w[0]))
    else:  # right to left
        y = x[0] * w[0] + (x[1] * w[1] + x[2] * w[2])
    if space == "ycbcr":
        y = (y + np.float32(16.0)) / np.float32(255.0)
    return np.round(y * np.float32(255.0)).astype(np.float64) if scale255 else y.astype(np.float64)


def colours() -> np.ndarray:
    """A structured sample of the 2^24 colours as one 1xN image: a grid with the extremes and the
    mid-range steps on every channel, and 2^18 random colours (tests/benchmarks/bench_luma.py
    checks all 2^24)."""
    g = np.array(sorted(set(range(0, 256, 5)) | {1, 2, 3, 126, 127, 128, 129, 252, 253, 254}), np.uint8)
    grid = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    rnd = np.random.default_rng(0).integers(0, 256, (1 << 18, 3), dtype=np.uint8)
    return np.concatenate([grid, rnd])[None]


def pyiqa_on_luma(arch, ys: list[np.ndarray]) -> tuple[float, list[np.ndarray]]:
    """pyiqa's metric ``arch`` on 8-bit luma planes (1-channel input: it skips its own luma and
    rounds Y/255*255 back to Y), and its gradient with respect to each plane, per level."""
    import torch

    ts = [torch.from_numpy(y / 255.0)[None, None].requires_grad_(True) for y in ys]
    value = arch(*ts).double().sum()
    value.backward()
    return float(value.detach()), [t.grad[0, 0].numpy() / 255.0 for t in ts]


def tie_tolerance(score: Callable[[list[np.ndarray]], float], images: list[np.ndarray], ys: list[np.ndarray],
                  grads: list[np.ndarray]) -> float:
    """How far ``score`` (a metric of 8-bit luma planes ``ys``) can move when any subset of the tie
    pixels of ``images`` takes its other level (``grads``: the metric's gradient, for the sign).

    Linearised, the extremes are flipping the pixels whose flip raises the metric, and those whose
    flip lowers it; NIQE's grid search for the AGGD shape makes it piecewise, so each extreme is
    evaluated, not extrapolated, and doubled."""
    ties = [levels(im, "yiq")[1] for im in images]
    if not any(t.any() for t in ties):
        return 0.0
    alt, ups, downs = [], [], []
    for im, y, g, tie in zip(images, ys, grads, ties, strict=True):
        step = np.where(y > exact(im, "yiq", True)[0], -1.0, 1.0)  # towards the other neighbour
        effect = g * step
        alt.append(y + step)
        ups.append(tie & (effect > 0))
        downs.append(tie & (effect <= 0))
    a = score(ys)
    moved = [score([np.where(m, z, y) for m, z, y in zip(ms, alt, ys, strict=True)]) for ms in (ups, downs)]
    return 2 * max(abs(v - a) for v in moved)
