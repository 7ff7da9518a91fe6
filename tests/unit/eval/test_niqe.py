"""niqe-fit: sharp-patch selection and a pristine model that pyiqa's NIQE reads unchanged."""

from __future__ import annotations

import math

import numpy as np
import pytest

from awm.data.synth import generate
from awm.eval import niqe


def test_patch_selection_drops_flat_blocks() -> None:
    flat = np.full((192, 288, 3), 128, np.uint8)
    assert niqe.patch_features(flat).shape == (0, 36)
    img = generate(7, 384, 288)
    strict, loose = niqe.patch_features(img, sharpness=0.75), niqe.patch_features(img, sharpness=0.0)
    assert strict.shape[1] == 36 and 1 <= len(strict) < len(loose) <= 12
    assert np.isfinite(strict).all()


def test_fit_writes_a_model_pyiqa_reads(tmp_path) -> None:
    import pyiqa
    import torch

    from awm.imageio import to_tensor

    imgs = [generate(100 + i, 384, 288) for i in range(10)]
    mu, cov, n = niqe.fit(imgs, sharpness=0.0)
    assert mu.shape == (1, 36) and cov.shape == (36, 36) and n >= 37
    assert np.allclose(cov, cov.T)
    path = niqe.save_model(tmp_path / "m.mat", mu, cov)
    metric = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(path))
    with torch.inference_mode():
        value = float(metric(to_tensor(generate(999, 384, 288))))
    assert math.isfinite(value) and value > 0


def test_fit_refuses_too_few_patches() -> None:
    with pytest.raises(ValueError, match="sharp patches"):
        niqe.fit([generate(1, 192, 96)])
