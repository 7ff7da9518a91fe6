"""The CPU fast path of the default metrics gives pyiqa's values (within 1e-4) on degraded images.

(psnry is training validation's own function on every device: tests/unit/eval/test_metrics.py.)"""

from pathlib import Path

import cv2
import numpy as np
import pytest

from awm.data.synth import generate
from awm.eval import metrics
from awm.imageio import read_image, to_rgb8

REAL = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "real"
NAMES = ("ssim", "niqe_anime")


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


def _assert_same(pairs: list[tuple[np.ndarray, np.ndarray]]) -> None:
    for name in NAMES:
        fast, ref = metrics.create(name), metrics.create(name, pyiqa_only=True)
        assert fast.fast is not None and ref.fast is None
        assert (fast.full_reference, fast.lower_better) == (ref.full_reference, ref.lower_better)
        for i, (sr, hr) in enumerate(pairs):
            other = hr if fast.full_reference else None
            a, b = fast(sr, other), ref(sr, other)
            assert a == pytest.approx(b, abs=1e-4), f"{name} on pair {i} ({sr.shape[1]}x{sr.shape[0]})"


def test_fast_path_equals_pyiqa_on_generated_images():
    # odd sizes (NIQE crops to 96 px blocks, SSIM's valid window), one with a single NIQE block row
    sizes = [(256, 160), (231, 197), (300, 96), (192, 192)]
    _assert_same(_pairs([generate(40 + i, w, h) for i, (w, h) in enumerate(sizes)]))


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


def test_luma_is_pyiqas_bit_for_bit_on_every_colour():
    """The fast path's luma equals pyiqa's torch luma for all 2^24 RGB colours (one image of them)."""
    from pyiqa.utils.color_util import to_y_channel

    from awm.eval.fast_metrics import luma
    from awm.imageio import to_tensor

    for red in range(0, 256, 64):  # in 4 slices of 2^22 colours, to bound memory
        idx = np.arange(red << 16, (red + 64) << 16, dtype=np.uint32)
        rgb = np.stack([idx >> 16, (idx >> 8) & 255, idx & 255], -1).astype(np.uint8).reshape(2048, 2048, 3)
        for space, rounded in (("yiq", True), ("ycbcr", False)):
            ref = to_y_channel(to_tensor(rgb), 255 if rounded else 1, space)[0, 0].double().numpy()
            assert np.array_equal(luma(rgb, space, rounded), ref), (space, red)
