"""Metric failures: an image below a metric's size floor is a counted failure, anything else stops."""

import math

import numpy as np
import pytest

from awm import metrics
from awm.synth import generate


@pytest.mark.parametrize("name", ["niqe_anime", "ms_ssim"])
def test_image_below_the_size_floor_is_counted_as_failed(name):
    m = metrics.create(name)
    side = metrics.MIN_SIDE[name]
    small, ok = generate(1, 300, side - 1), generate(1, 300, side)
    ref = (lambda x: x) if m.full_reference else (lambda x: None)
    assert math.isnan(m(small, ref(small)))
    assert math.isfinite(m(ok, ref(ok)))  # the floor is exact: one pixel more scores


def test_any_other_metric_error_raises_naming_image_and_metric():
    m = metrics.create("psnry")
    img = generate(2, 64, 48)
    with pytest.raises(metrics.MetricError, match=r"metric psnry failed on sample k7 \(64x48, reference 32x24\)"):
        m(img, img[:24, :32], image="sample k7")


def test_psnr_y_is_bt601_by_hand():
    """Independent expectation: Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255 on [0, 255] data.

    Two flat images: (R, G, B) = (100, 150, 200) vs (110, 150, 200). Y differs by 65.481 * 10 / 255
    = 2.567882 (the offset cancels), so MSE on the [0, 1] scale is (2.567882 / 255) ** 2 and
    PSNR-Y = 10 log10(1 / MSE) = 39.9393 dB. (pyiqa's default YIQ Y would give 38.6171.)
    Training validation uses the same definition, so its numbers and awm eval's agree.
    """
    import torch

    from awm.train_utils import psnr_ssim_y

    a = np.zeros((32, 32, 3), np.uint8) + np.array([100, 150, 200], np.uint8)
    b = np.zeros((32, 32, 3), np.uint8) + np.array([110, 150, 200], np.uint8)
    assert metrics.create("psnry")(a, b) == pytest.approx(39.9393, abs=2e-3)  # pyiqa computes in float32
    t = [torch.from_numpy(x).permute(2, 0, 1)[None].double() / 255 for x in (a, b)]
    assert float(psnr_ssim_y(t[0], t[1], border=0)[0]) == pytest.approx(39.9393, abs=1e-4)
