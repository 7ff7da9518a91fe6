"""The CPU fast path of the default metrics against pyiqa, with claims that hold on every CPU.

Two claims, tested separately because only the second depends on the CPU:

1. Given the same 8-bit luma, the fast path's SSIM and NIQE equal pyiqa's to float64 rounding
   (both compute in float64 from there; 1e-9 relative is six orders above the rounding of their
   49- and 121-term filter sums, and four below what a one-level change of one pixel moves).
2. The luma itself: pyiqa computes it as a float32 3-term dot product whose order and fused
   multiply-adds BLAS picks per CPU (MKL on an AVX-512 Xeon differs from an AMD EPYC in the last
   bit), so every float32 evaluation lies within ``_bound`` of the exact value and two of them
   round to different levels only for colours within that bound of a .5 tie.

From RGB the two paths therefore differ only through the pixels of tie colours: the tolerance
of the RGB comparisons is how far flipping those pixels to their other level moves the metric
(tests/luma_ties.py), plus claim 1's. tests/unit/eval/test_simd_paths.py reruns
this file under other BLAS/ATen/NumPy code paths. (psnry is training validation's own function
on every device: tests/unit/eval/test_metrics.py.)
"""

import sys
from functools import partial
from pathlib import Path

import cv2
import numpy as np
import pytest

from awm.data.synth import generate
from awm.eval import fast_metrics, metrics
from awm.eval.niqe import default_model_path
from awm.imageio import read_image, to_rgb8, to_tensor

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from luma_ties import REL64, check_luma, colours, exact, float32_luma, levels, pyiqa_on_luma, tie_tolerance  # noqa: E402

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "real"
NAMES = ("ssim", "niqe_anime")


def test_luma_lies_within_float32_rounding_of_exact_on_a_colour_sample():
    """Ours, pyiqa's on this CPU, and two other float32 orders all round to the same level off the ties."""
    from pyiqa.utils.color_util import to_y_channel

    rgb = colours()
    for space in ("yiq", "ycbcr"):
        ties = levels(rgb, space)[1]
        assert ties.mean() < 1e-2, f"{space}: {ties.sum()} tie colours of {ties.size}"
        for scale255 in (True, False):
            ours = fast_metrics.luma(rgb, space, scale255)
            torch_y = to_y_channel(to_tensor(rgb), 255 if scale255 else 1, space)[0, 0].double().numpy()
            check_luma(ours, rgb, space, scale255, f"fast_metrics.luma {space}")
            check_luma(torch_y, rgb, space, scale255, f"pyiqa on this CPU {space}")
            for order in ("fma", "reversed"):
                check_luma(float32_luma(rgb, space, scale255, order), rgb, space, scale255, f"{order} {space}")


def test_luma_check_catches_a_luma_carried_in_half_precision():
    """The check can fail: float16 (11 bits) moves non-tie colours to another level."""
    rgb = colours()
    value, _ = exact(rgb, "yiq", True)
    with pytest.raises(AssertionError, match="non-tie colours at another level"):
        check_luma(np.round(value.astype(np.float16).astype(np.float64)), rgb, "yiq", True, "float16")


def _degraded(hr: np.ndarray, kind: str, seed: int) -> np.ndarray:
    """What eval compares against HR: a bicubic round trip, JPEG, blur, noise."""
    h, w = hr.shape[:2]
    if kind == "bicubic":
        lr = cv2.resize(hr, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        return cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)
    if kind == "jpeg":
        return cv2.imdecode(cv2.imencode(".jpg", hr, [cv2.IMWRITE_JPEG_QUALITY, 40])[1], cv2.IMREAD_UNCHANGED)
    if kind == "blur":
        return cv2.GaussianBlur(hr, (0, 0), 1.3)
    noise = np.random.default_rng(seed).normal(0, 6, hr.shape)
    return np.clip(hr + noise, 0, 255).round().astype(np.uint8)


def _pairs(images: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    kinds = ("bicubic", "jpeg", "blur", "noise")
    return [(_degraded(hr, kinds[i % len(kinds)], i), hr) for i, hr in enumerate(images)]


def _on_luma(name: str, ys: list[np.ndarray]) -> float:
    if name == "ssim":
        return fast_metrics.ssim_luma(*ys)
    return fast_metrics.niqe_luma(ys[0], default_model_path())


def _assert_same(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for name in NAMES:
        fast, ref = metrics.create(name), metrics.create(name, pyiqa_only=True)
        assert fast.fast is not None and ref.fast is None
        assert (fast.full_reference, fast.lower_better) == (ref.full_reference, ref.lower_better)
        for i, (sr, hr) in enumerate(pairs):
            images = [sr, hr] if fast.full_reference else [sr]
            where = f"{name} on pair {i} ({sr.shape[1]}x{sr.shape[0]})"
            ys = [fast_metrics.luma(im, "yiq", True) for im in images]
            # claim 1: the same luma, float64 from there on
            on_luma, grads = pyiqa_on_luma(ref.net.net, ys)
            assert _on_luma(name, ys) == pytest.approx(on_luma, rel=REL64, abs=REL64), where
            # from RGB: only tie pixels may differ, by one level
            a, b = fast(*images), ref(*images)
            assert a == _on_luma(name, ys)
            tol = tie_tolerance(partial(_on_luma, name), images, ys, grads) + REL64 * max(1.0, abs(a))
            assert a == pytest.approx(b, rel=0, abs=tol), f"{where}: tolerance {tol:.3g} from the tie pixels"


def test_fast_path_equals_pyiqa_on_generated_images():
    # odd sizes (NIQE crops to 96 px blocks, SSIM's valid window), one with a single NIQE block row
    sizes = [(256, 160), (231, 197), (300, 96), (192, 192)]
    _assert_same(_pairs([generate(40 + i, w, h) for i, (w, h) in enumerate(sizes)]))


def test_tie_tolerance_covers_a_cpu_whose_blas_fuses_multiply_adds(monkeypatch):
    """pyiqa's luma as MKL computes it on an AVX-512 Xeon (fused multiply-adds, emulated here): NIQE
    moves by 1.04e-4 on this image, as measured there (over the 1e-4 this test once had), and stays
    within the tolerance its tie pixels give."""
    import pyiqa.utils.color_util as color_util
    import torch

    original = color_util.rgb2yiq

    def rgb2yiq_fma(x: torch.Tensor) -> torch.Tensor:
        out = original(x).clone()
        rgb = (x[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        out[0, 0] = torch.from_numpy(float32_luma(rgb, "yiq", False, "fma").astype(np.float32))
        return out

    monkeypatch.setattr(color_util, "rgb2yiq", rgb2yiq_fma)
    img = _degraded(generate(41, 231, 197), "jpeg", 1)  # pair 1 of the generated images
    fast, ref = metrics.create("niqe_anime"), metrics.create("niqe_anime", pyiqa_only=True)
    a, b = fast(img), ref(img)
    assert abs(a - b) > 1e-4
    y = fast_metrics.luma(img, "yiq", True)
    grads = pyiqa_on_luma(ref.net.net, [y])[1]
    assert abs(a - b) <= tie_tolerance(partial(_on_luma, "niqe_anime"), [img], [y], grads)


def test_fast_path_equals_pyiqa_on_real_images():
    """../shared/data/real: real anime art (photos of line art, flat fills, screentone)."""
    files = sorted(p for p in REAL.glob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg")) if REAL.is_dir() else []
    if not files:
        pytest.skip(f"{REAL} is absent")
    images = []
    for p in files[:3]:
        img = to_rgb8(read_image(p))
        h, w = img.shape[:2]
        s = min(1.0, 256 / max(h, w))  # pyiqa's SSIM takes seconds on full-size images
        images.append(cv2.resize(img, (round(w * s), round(h * s)), interpolation=cv2.INTER_AREA) if s < 1 else img)
    _assert_same(_pairs(images))


def test_fast_path_keeps_the_size_floor_and_crop_border():
    m = metrics.create("niqe_anime")
    assert m.fast is not None
    assert np.isnan(m(generate(1, 300, 95)))
    img = generate(2, 128, 96)
    shifted = np.roll(img, 1, axis=1)
    fast = metrics._fast("ssim", "ssim", {"crop_border": 4})
    import pyiqa

    ref = metrics.Metric("ssim", True, False, pyiqa.create_metric("ssim", crop_border=4))
    assert fast(shifted, img) == pytest.approx(ref(shifted, img), abs=1e-4)
    assert fast(shifted, img) != pytest.approx(metrics.create("ssim")(shifted, img), abs=1e-4)
