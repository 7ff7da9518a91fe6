import numpy as np

from awm import imageio
from awm.data import shard
from awm.data.synth import generate


def test_plain_png_decodes_through_libspng_like_opencv():
    """The 'fast' extra is part of the test environment, so its decoder path runs in CI."""
    assert shard._spng is not None, "pyspng missing: make test installs .[dev,video,fast]"
    img = generate(3, 64, 48)
    px, bgr = shard.decode_source(imageio.encode_image(img, "png"), imageio.MAX_PIXELS_DEFAULT)
    assert not bgr and px.dtype == np.uint8 and np.array_equal(px, img)
    rgba = np.dstack([img, np.full(img.shape[:2], 255, np.uint8)])  # not a plain PNG: OpenCV, BGR order
    px, bgr = shard.decode_source(imageio.encode_image(rgba, "png"), imageio.MAX_PIXELS_DEFAULT)
    assert bgr and np.array_equal(px[..., 2::-1], img)
