import numpy as np
import pytest
import torch

from awm import imageio


def _rgb():
    img = np.zeros((8, 10, 3), np.uint8)
    img[..., 0] = 200  # red channel only
    return img


def test_rgb_order_through_encode_decode_and_tensor():
    img = _rgb()
    for fmt in ("png", "webp"):
        back = imageio.decode_image(imageio.encode_image(img, fmt, 100 if fmt == "webp" else None))
        assert back.shape == img.shape and back[..., 0].mean() > 190 and back[..., 2].mean() < 10
    t = imageio.to_tensor(img)
    assert t.shape == (1, 3, 8, 10) and torch.allclose(t[0, 0], torch.full((8, 10), 200 / 255))
    assert t[0, 2].abs().max() == 0
    assert np.array_equal(imageio.from_tensor(t), img)


def test_sixteen_bit_gray_and_rgba():
    img16 = (np.arange(12 * 9 * 3).reshape(12, 9, 3) * 600 % 65535).astype(np.uint16)
    back = imageio.decode_image(imageio.encode_image(img16, "png"))
    assert back.dtype == np.uint16 and np.array_equal(back, img16)
    assert np.array_equal(imageio.from_tensor(imageio.to_tensor(img16), np.uint16), img16)
    gray = np.tile(np.arange(16, dtype=np.uint8) * 16, (5, 1))
    g = imageio.decode_image(imageio.encode_image(gray, "png"))
    assert g.ndim == 2 and np.array_equal(g, gray)
    rgba = np.dstack([_rgb(), np.full((8, 10), 128, np.uint8)])
    r = imageio.decode_image(imageio.encode_image(rgba, "png"))
    assert r.shape == (8, 10, 4) and np.array_equal(r, rgba)
    flat = imageio.to_rgb8(r, background=0)
    assert flat.shape == (8, 10, 3) and abs(int(flat[0, 0, 0]) - 100) <= 1
    assert imageio.to_rgb8(img16).dtype == np.uint8


def test_probe_matches_decoded_size():
    img = np.zeros((33, 47, 3), np.uint8)
    for fmt in ("png", "jpg", "webp"):
        p = imageio.probe(imageio.encode_image(img, fmt))
        assert (p.format, p.width, p.height) == (fmt, 47, 33)


@pytest.mark.parametrize("data,reason", [
    (b"", "empty_file"),
    (b"<html>503</html>", "not_an_image"),
])
def test_bad_bytes(data, reason):
    with pytest.raises(imageio.ImageError) as e:
        imageio.decode_image(data)
    assert e.value.reason == reason


def test_truncated_and_bomb():
    data = imageio.encode_image(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8), "jpg")
    with pytest.raises(imageio.ImageError):
        imageio.decode_image(data[: len(data) // 2])
    big = imageio.encode_image(np.zeros((100, 100, 3), np.uint8), "png")
    with pytest.raises(imageio.ImageError) as e:
        imageio.decode_image(big, max_pixels=5000)
    assert e.value.reason == "too_many_pixels"


def test_bytes_after_the_end_marker_are_not_truncation():
    """Some tools append data after a JPEG's EOI or a PNG's IEND; the image itself is complete."""
    img = np.random.default_rng(1).integers(0, 255, (40, 48, 3), np.uint8)
    for fmt in ("jpg", "png"):
        data = imageio.encode_image(img, fmt)
        back = imageio.decode_image(data + b"appended by some tool\xff\xd8")
        assert np.array_equal(back, imageio.decode_image(data))
        assert not imageio.truncated(data + b"\x00" * 64, fmt)
        for cut in (len(data) - 2, len(data) // 2):
            assert imageio.truncated(data[:cut], fmt)
            with pytest.raises(imageio.ImageError) as e:
                imageio.decode_image(data[:cut])
            assert e.value.reason == "truncated"  # whether or not the decoder would cope (awm.skips)


def test_a_cut_jpeg_is_truncated_even_when_its_exif_thumbnail_ends_earlier():
    thumb = imageio.encode_image(np.zeros((8, 8, 3), np.uint8), "jpg")
    main = imageio.encode_image(np.random.default_rng(2).integers(0, 255, (64, 64, 3), np.uint8), "jpg")
    app1 = b"Exif\x00\x00" + thumb  # a thumbnail's full JPEG (SOS ... EOI) inside an APP1 segment
    data = main[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + main[2:]
    assert imageio.decode_image(data).shape == (64, 64, 3)
    assert imageio.truncated(data[: len(data) - 100], "jpg")


def test_atomic_write(tmp_path):
    p = imageio.atomic_write_bytes(tmp_path / "a" / "b.bin", b"xyz")
    assert p.read_bytes() == b"xyz" and not list(p.parent.glob("*.tmp"))


def test_atomic_write_respects_umask(tmp_path):
    import os
    import stat

    p = imageio.atomic_write_bytes(tmp_path / "m.bin", b"1")
    assert stat.S_IMODE(p.stat().st_mode) == 0o666 & ~imageio._UMASK
    assert os.access(p, os.R_OK)
