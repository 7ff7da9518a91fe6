"""A validation that repeats the previous numbers exactly while the weights moved is flagged: the
model's output no longer follows its weights (issue 30: a collapsed run gave 31.097078 / 0.885844
at steps 1000 and 1500)."""

import torch

from awm.train.trainer import validation_stuck

VAL = {"psnr_y": 31.097078, "ssim_y": 0.885844, "bicubic_psnr_y": 32.7, "images": 16}


def test_same_numbers_with_moved_weights_is_stuck():
    w0, w1 = [torch.tensor(1.0), torch.tensor(2.0)], [torch.tensor(1.0), torch.tensor(2.5)]
    assert validation_stuck(VAL, w0, dict(VAL), w1)
    assert not validation_stuck(VAL, w0, dict(VAL), [w.clone() for w in w0])  # same weights: same numbers
    assert not validation_stuck(VAL, w0, {**VAL, "psnr_y": 31.097079}, w1)  # the numbers moved
    assert not validation_stuck(VAL, w0, {**VAL, "ssim_y": 0.885845}, w1)
    assert not validation_stuck({}, None, dict(VAL), w1)  # the first validation
    assert not validation_stuck({**VAL, "images": 0}, w0, dict(VAL), w1)
