import hashlib
import struct
import zlib

import cv2
import numpy as np
import pytest

from awm.acquire import booru, clean
from awm.acquire.fetch import FetchSettings, HttpClient, parse_retry_after
from awm.data.synth import generate
from awm.imageio import ImageError, decode_image, encode_image


def _png(seed: int, w: int = 72, h: int = 48) -> bytes:
    return encode_image(generate(seed, w, h), "png")


def test_declared_type_and_dims():
    formats = clean.allowed_formats(webp=False)
    assert clean.type_skip_reason("png", formats) is None
    assert clean.type_skip_reason(".JPEG", formats) is None
    for bad in ("../../x", "gif", "webp", "", None, 3):
        assert clean.type_skip_reason(bad, formats) == "unsupported_type"
    assert clean.type_skip_reason("webp", clean.allowed_formats(webp=True)) is None
    assert clean.dims_skip_reason(1920, 1080, 25_600_000, 1080) is None
    assert clean.dims_skip_reason(1920, 1000, 25_600_000, 1080) == "too_small"
    assert clean.dims_skip_reason(10000, 10000, 25_600_000, 0) == "too_many_pixels"
    assert clean.dims_skip_reason(-1, 10, 25_600_000, 0) == "bad_size"


def test_check_image_reasons():
    formats = clean.allowed_formats(False)
    good = _png(1)
    c = clean.check_image(good, formats, 25_600_000, 40)
    assert (c.format, c.width, c.height, c.md5) == ("png", 72, 48, hashlib.md5(good).hexdigest())
    ihdr = b"IHDR" + struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0)
    bomb = b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + ihdr + struct.pack(">I", zlib.crc32(ihdr))
    cases = {b"": "empty_file", b"<html>challenge</html>": "not_an_image", bomb: "too_many_pixels",
             good[:len(good) // 2]: "truncated", _png(2, 30, 20): "too_small",
             encode_image(generate(3, 64, 64), "webp"): "unsupported_type"}
    for data, reason in cases.items():
        with pytest.raises(ImageError) as e:
            clean.check_image(data, formats, 25_600_000, 40)
        assert e.value.reason == reason


def test_phash_and_dedup():
    img = generate(5, 160, 90)
    h = clean.phash(img)
    again = clean.phash(decode_image(encode_image(img, "jpg", 75)))
    assert clean.hamming(h, again) <= 4
    assert clean.hamming(h, clean.phash(generate(6, 160, 90))) > 10
    assert clean.from_signed64(clean.to_signed64(h)) == h and -(1 << 63) <= clean.to_signed64(h) < 1 << 63
    d = clean.Dedup(threshold=4)
    assert d.skip_reason("m1", h) is None
    d.add("m1", h, 7)
    d.add("m3", h ^ 0b1, 8)  # a later near copy: lookups still name the first kept
    assert d.skip_reason("m1", None) == ("duplicate_md5", 7)
    assert d.skip_reason("m2", h ^ 0b111) == ("near_duplicate", 7)
    assert d.skip_reason("m2", h ^ 0b111111) is None
    off = clean.Dedup(threshold=-1)
    off.add("m1", h, 1)
    assert off.skip_reason("m2", h) is None and len(off) == 1
    many = clean.Dedup(0)
    for i in range(3000):
        many.add(str(i), i * 0x9E3779B97F4A7C15 % (1 << 64), i)
    assert many.near(2999 * 0x9E3779B97F4A7C15 % (1 << 64)) == 2999


def test_jpeg_quality_from_quantisation_tables():
    img = generate(5, 160, 90)
    for q in (30, 75, 95):
        assert clean.jpeg_quality(encode_image(img, "jpg", q)) == q
    assert clean.jpeg_quality(encode_image(img, "png")) is None
    assert clean.jpeg_quality(b"\xff\xd8\xff\xdb\x00") is None  # cut inside the table
    low = clean.check_image(encode_image(img, "jpg", 40), clean.allowed_formats(False), 25_600_000, 0)
    assert low.jpeg_quality == 40 and low.metadata()["jpeg_quality"] == 40
    assert clean.curation_skip_reason(low, 0.0, 60) == "low_jpeg_quality"
    assert clean.curation_skip_reason(low, 0.0, 30) is None


def test_complexity_orders_flat_below_detailed():
    flat = np.full((300, 400), 128, np.uint8)
    edges = np.tile(np.array([0, 0, 255, 255], np.uint8), (300, 100))  # 2-px stripes: a step everywhere
    scene = cv2.cvtColor(generate(1, 400, 300), cv2.COLOR_RGB2GRAY)
    assert clean.complexity(flat) == 0.0
    assert 0.0 < clean.complexity(scene) < clean.complexity(edges) <= 1.0
    big = cv2.resize(scene, (1600, 1200), interpolation=cv2.INTER_CUBIC)  # scored at 512 px: same range
    assert abs(clean.complexity(big) - clean.complexity(cv2.resize(scene, (512, 384)))) < 0.01
    c = clean.check_image(_png(3), clean.allowed_formats(False), 25_600_000, 0)
    assert clean.curation_skip_reason(c, c.complexity + 0.01, 0) == "low_complexity"
    assert clean.curation_skip_reason(c, c.complexity, 0) is None


def test_booru_normalise_both_dialects():
    moe = {"id": 5, "tags": "a b", "md5": "A" * 32, "width": 10, "height": "20", "file_size": 3,
           "file_ext": "png", "file_url": "//cdn.example/x.png", "rating": "s", "parent_id": 2,
           "score": 4, "status": "active", "has_children": False, "jpeg_url": "http://x/j.jpg"}
    p = booru.normalise("moebooru", moe, "https://konachan.com")
    assert (p.id, p.height, p.md5, p.family, p.file_url) == (5, 20, "a" * 32, 2, "https://cdn.example/x.png")
    dan = {"id": 9, "tag_string": "t", "md5": "b" * 32, "image_width": 3, "image_height": 4,
           "file_size": 1, "file_ext": "jpg", "file_url": "https://d/x.jpg", "rating": "g",
           "is_deleted": True, "parent_id": None}
    q = booru.normalise("danbooru", dan, "https://danbooru.donmai.us")
    assert (q.width, q.status, q.family) == (3, "deleted", 9)
    for bad in ({**moe, "md5": "../../etc"}, {**moe, "width": "wide"}, {**moe, "width": True},
                {**moe, "file_url": 7}, {"id": "12"}, {"id": -1}, "text"):
        with pytest.raises(booru.BadPost) as e:
            booru.normalise("moebooru", bad, "https://konachan.com")
        assert e.value.reason == "bad_metadata"


def test_listing_keyset_and_urls():
    url, params = booru.listing_request("moebooru", "https://konachan.com/", "scenic rating:s", 500, 100)
    assert url == "https://konachan.com/post.json" and params == {"tags": "scenic rating:s id:<500", "limit": "100"}
    assert booru.listing_request("moebooru", "https://k.com", "x", None, 5)[1]["tags"] == "x"
    url, params = booru.listing_request("danbooru", "https://d.org", "x", 77, 200)
    assert url == "https://d.org/posts.json" and params["page"] == "b77"
    assert booru.url_allowed("https://a/b") and booru.url_allowed("http://a:8/b")
    for bad in ("file:///etc/passwd", "ftp://a/b", "data:image/png;base64,xx", "javascript:x", "http:///x", None):
        assert not booru.url_allowed(bad)


def test_retry_after_and_backoff():
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # a date in the past
    client = HttpClient(FetchSettings(backoff=1.0, backoff_max=8.0), seed=0)
    for attempt, full in ((0, 1.0), (2, 4.0), (10, 8.0)):
        delays = [client.backoff_delay(attempt) for _ in range(50)]
        assert all(full / 2 <= d <= full for d in delays) and len(set(delays)) > 1  # jittered
