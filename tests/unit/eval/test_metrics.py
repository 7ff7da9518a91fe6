"""Metrics: size-floor failures vs errors, and expectations computed independently of awm (by hand, published)."""

import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from awm.data.synth import generate
from awm.eval import metrics


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

    from awm.eval.psnr_ssim import psnr_ssim_y

    a = np.zeros((32, 32, 3), np.uint8) + np.array([100, 150, 200], np.uint8)
    b = np.zeros((32, 32, 3), np.uint8) + np.array([110, 150, 200], np.uint8)
    assert metrics.create("psnry")(a, b) == pytest.approx(39.9393, abs=1e-4)
    t = [torch.from_numpy(x).permute(2, 0, 1)[None].double() / 255 for x in (a, b)]
    assert float(psnr_ssim_y(t[0], t[1], border=0)[0]) == pytest.approx(39.9393, abs=1e-4)


# pyiqa's published values on the five image pairs it ships (IQA-PyTorch, ResultsCalibra/
# calibration_summary.csv, rows "psnr(ours)", "ssim(ours)", "niqe(ours)"; images I03, I04, I06, I08, I19)
CALIBRATION = {"psnr": (21.1136, 20.9872, 27.0139, 23.3002, 21.6186),
               "ssim": (0.6997, 0.9978, 0.9989, 0.9671, 0.6522),
               "niqe": (15.6538, 3.6549, 3.2342, 3.1921, 9.0722)}
SHARED_WEIGHTS = Path(__file__).resolve().parents[4] / "shared" / "data" / "weights"


def _calibration_pairs() -> list[tuple[np.ndarray, np.ndarray]]:
    import pyiqa

    from awm.imageio import read_image

    d = Path(pyiqa.__file__).resolve().parent.parent / "ResultsCalibra"
    names = ("I03.bmp", "I04.bmp", "I06.bmp", "I08.bmp", "I19.bmp")
    return [(read_image(d / "dist_dir" / n), read_image(d / "ref_dir" / n)) for n in names]


@pytest.mark.parametrize("name", ["psnr", "ssim", "niqe"])
def test_published_calibration_values(name, tmp_path, monkeypatch):
    """awm's metric plumbing (decode, RGB order, scaling) reproduces pyiqa's published numbers; niqe
    with the standard pristine model staged from ../shared/data/weights (staging it is tested too)."""
    if name == "niqe":
        if not (SHARED_WEIGHTS / "niqe_modelparameters.mat").is_file():
            pytest.skip(f"{SHARED_WEIGHTS} is absent")
        monkeypatch.setenv("TORCH_HOME", str(tmp_path))
        (tmp_path / "hub" / "pyiqa").mkdir(parents=True)
        shutil.copy(SHARED_WEIGHTS / "niqe_modelparameters.mat", tmp_path / "hub" / "pyiqa")
    m = metrics.create(name)
    got = [m(dist, ref if m.full_reference else None) for dist, ref in _calibration_pairs()]
    assert got == pytest.approx(CALIBRATION[name], abs=5e-3 if name == "niqe" else 5e-4)


def test_psnry_in_eval_and_validation_is_one_convention():
    """A small image (where a border of `scale` pixels matters): awm eval's psnry with the scale as
    border equals training validation's PSNR-Y exactly; without the crop they would differ."""
    import torch

    from awm.eval.psnr_ssim import psnr_ssim_y

    hr = generate(3, 40, 32)
    sr = hr.copy()
    sr[:, :2] = 255 - sr[:, :2]  # errors only in the border strip a x2 crop removes
    sr[10:20, 10:20] //= 2
    t = [torch.from_numpy(x).permute(2, 0, 1)[None].double() / 255 for x in (sr, hr)]
    validation = float(psnr_ssim_y(t[0], t[1], border=2)[0][0])
    assert metrics.create("psnry", border=2)(sr, hr) == pytest.approx(validation, abs=1e-4)
    assert metrics.create("psnry", border=0)(sr, hr) < validation - 1
