import numpy as np

from awm.data import synth


def test_same_seed_same_pixels_and_variety():
    a = synth.generate(3, 160, 90)
    assert np.array_equal(a, synth.generate(3, 160, 90))
    assert not np.array_equal(a, synth.generate(4, 160, 90))
    assert a.shape == (90, 160, 3) and a.dtype == np.uint8
    assert len(np.unique(a.reshape(-1, 3), axis=0)) > 50  # gradients and anti-aliasing, not flat fills


def test_alpha_and_dataset(tmp_path):
    rgba = synth.generate(1, 64, 64, alpha=True)
    assert rgba.shape == (64, 64, 4) and 0 < rgba[..., 3].mean() < 255
    paths = synth.write_dataset(tmp_path, 3, seed=1, long_side=(64, 96))
    again = synth.write_dataset(tmp_path / "b", 3, seed=1, long_side=(64, 96))
    assert [p.read_bytes() for p in paths] == [p.read_bytes() for p in again]
