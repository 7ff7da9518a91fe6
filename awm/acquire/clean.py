"""Filters shared by ``awm crawl`` and ``awm ingest``: image checks, caps, exact and near dedup.

Both stages must agree on what an acceptable HR original is, so the rules live here once:
the bytes' real type (sniffed, never a suffix or an API's ``file_ext``), a pixel cap checked
from the header before decoding (decompression bombs), a minimum side, a full decode (truncated
or corrupt files), and dedup by md5 (exact) and by a 64-bit DCT perceptual hash (near, searched
with the multi-index in ``awm.acquire.nearindex``). Two measures feed curation: an image
complexity score (``complexity``) and a JPEG quality estimate read from the file's own
quantisation tables (``jpeg_quality``), so already-degraded "originals" can be flagged.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from awm.acquire.nearindex import HammingIndex
from awm.imageio import IMAGE_FORMATS, ImageError, check_image_bytes, decode_image, format_of_suffix, to_rgb8

# What we keep as HR originals: imageio's one format list, webp only when asked (lossy webp makes poor HR).
BASE_FORMATS = tuple(f for f in IMAGE_FORMATS if f != "webp")


def allowed_formats(webp: bool) -> tuple[str, ...]:
    return tuple(IMAGE_FORMATS) if webp else BASE_FORMATS


def type_skip_reason(ext: object, formats: tuple[str, ...]) -> str | None:
    """A declared extension (``file_ext`` or a file suffix) outside the kept formats -> a skip reason."""
    if not isinstance(ext, str) or format_of_suffix(ext) not in formats:
        return "unsupported_type"
    return None


def dims_skip_reason(width: int, height: int, max_pixels: int, min_side: int) -> str | None:
    """Declared (or probed) dimensions against the caps; None when they pass."""
    if width <= 0 or height <= 0:
        return "bad_size"
    if width * height > max_pixels:
        return "too_many_pixels"
    if min(width, height) < min_side:
        return "too_small"
    return None


@dataclass(frozen=True)
class Checked:
    """An image that passed every content check, with what dedup and the metadata need."""

    format: str
    width: int
    height: int
    md5: str
    phash: int
    complexity: float = 0.0
    jpeg_quality: int | None = None

    def metadata(self) -> dict:
        """What the measures add to a sample's json (phash as 16 hex digits: the merge reads it back)."""
        return {"phash": f"{self.phash:016x}", "complexity": round(self.complexity, 4),
                "jpeg_quality": self.jpeg_quality}


def check_image(data: bytes, formats: tuple[str, ...], max_pixels: int, min_side: int,
                md5: str | None = None) -> Checked:
    """Validate downloaded/read bytes fully; raise ``ImageError`` with a skip reason otherwise.

    The header is probed (type, dimensions, pixel cap) before any pixel is decoded, then the
    whole image is decoded so truncated or corrupt files never reach a shard. ``md5``: the bytes'
    md5 when the caller verified it already (a crawl checks the site's).
    """
    probe = check_image_bytes(data, max_pixels=max_pixels, min_side=1)
    if probe.format not in formats:
        raise ImageError("unsupported_type", probe.format)
    reason = dims_skip_reason(probe.width, probe.height, max_pixels, min_side)
    if reason:
        raise ImageError(reason, f"{probe.width}x{probe.height}")
    img = decode_image(data, max_pixels=max_pixels, bgr=True)
    gray = to_gray8(img)
    return Checked(probe.format, probe.width, probe.height, md5 or hashlib.md5(data).hexdigest(), phash_gray(gray),
                   complexity(gray), jpeg_quality(data) if probe.format == "jpg" else None)


def to_gray8(img: np.ndarray) -> np.ndarray:
    """8-bit luma of a ``decode_image(..., bgr=True)`` array: for 8-bit colour straight from BGR
    (the same values as through RGB, without a full-size RGB copy), else through ``to_rgb8``."""
    if img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3:
        return cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB if img.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return cv2.cvtColor(to_rgb8(img), cv2.COLOR_RGB2GRAY)


LOSSLESS_FORMATS = ("png",)


def keep_rank(width: int, height: int, fmt: str, jpeg_quality: int | None, stable: int | str) -> tuple:
    """Sort key of a duplicate group's members, the copy to keep first: the most pixels (a resize
    lost detail), lossless over lossy, the higher JPEG quality (a re-encode lost more), then
    ``stable`` (an id from content or the listing, never a path): ingest, split and the merge all
    keep the same copy whatever the files are called or the order they came in."""
    lossless = fmt in LOSSLESS_FORMATS
    return (-width * height, not lossless, -(jpeg_quality or 0) if not lossless else 0, stable)


def curation_skip_reason(c: Checked, min_complexity: float, min_jpeg_quality: int) -> str | None:
    """The curation thresholds (0 = off) against a checked image's measures."""
    if c.complexity < min_complexity:
        return "low_complexity"
    if c.jpeg_quality is not None and c.jpeg_quality < min_jpeg_quality:
        return "low_jpeg_quality"
    return None


COMPLEXITY_SIDE = 512


def complexity(gray: np.ndarray) -> float:
    """Image complexity in [0, 1]: mean gradient magnitude (Sobel, a unit step scores 1) of the luma
    at 512 px on the long side (smaller images as they are).

    APISR (Wang et al., CVPR 2024) builds its anime SR training set from the most *complex*
    images (scored by the IC9600 complexity network) because flat frames teach an SR model little.
    This is a cheap, model-free stand-in with the same intent: flat colour fields score near 0,
    dense line art and texture score high. A fixed analysis size makes scores comparable across
    resolutions (a 4K and a 1080p copy of one picture score about the same).
    """
    h, w = gray.shape[:2]
    f = COMPLEXITY_SIDE / max(h, w)
    if f < 1:
        gray = cv2.resize(gray, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA)
    g = gray.astype(np.float32) / 255.0
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 4
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 4
    return float(np.sqrt(gx * gx + gy * gy).mean())


# The JPEG standard's (Annex K) luminance table in natural order; DQT segments store zigzag order.
_STD_LUMA = np.array([16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57,
                      69, 56, 14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64,
                      81, 104, 113, 92, 49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99])
_ZIGZAG = np.array([0, 1, 8, 16, 9, 2, 3, 10, 17, 24, 32, 25, 18, 11, 4, 5, 12, 19, 26, 33, 40, 48, 41, 34, 27,
                    20, 13, 6, 7, 14, 21, 28, 35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
                    58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63])


def _ijg_table(q: int) -> np.ndarray:
    s = 5000 // q if q < 50 else 200 - 2 * q
    return np.clip((_STD_LUMA * s + 50) // 100, 1, 255)


_IJG = np.stack([_ijg_table(q) for q in range(1, 101)])


def luma_table(data: bytes) -> np.ndarray | None:
    """The luminance (id 0) quantisation table of a JPEG in natural order, or None if there is none."""
    i = 2 if data[:2] == b"\xff\xd8" else len(data)
    while i + 4 <= len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        if marker in (0xDA, 0xD9):  # start of scan / end of image: no table before it
            return None
        length = int.from_bytes(data[i + 2:i + 4], "big")
        if marker == 0xDB:
            j, end = i + 4, min(i + 2 + length, len(data))
            while j < end:
                precision, table_id = data[j] >> 4, data[j] & 15
                size = 128 if precision else 64
                raw = data[j + 1:j + 1 + size]
                if len(raw) < size:
                    return None
                values = np.frombuffer(raw, ">u2" if precision else np.uint8).astype(np.int64)
                if table_id == 0:
                    out = np.empty(64, np.int64)
                    out[_ZIGZAG] = values
                    return out
                j += 1 + size
        i += 2 + length
    return None


def jpeg_quality(data: bytes) -> int | None:
    """The IJG quality (1-100) whose scaled standard table is closest to the file's luminance table.

    Exact for libjpeg-family encoders (OpenCV, Pillow, GIMP, most sites' re-encoders); for other
    encoders' own tables it is the nearest IJG equivalent. A low value on an "original" means the
    file was already compressed hard, so it would teach the model its artefacts as detail.
    """
    table = luma_table(data)
    if table is None:
        return None
    return int(np.abs(_IJG - table).sum(axis=1).argmin()) + 1


def phash(img: np.ndarray) -> int:
    """64-bit DCT perceptual hash: signs of the 8x8 lowest frequencies of a 32x32 gray thumbnail
    against their median. Re-encodes and resizes of one picture land within a few bits."""
    return phash_gray(cv2.cvtColor(to_rgb8(img), cv2.COLOR_RGB2GRAY))


def phash_gray(gray: np.ndarray) -> int:
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(np.packbits(bits, bitorder="little").view("<u8")[0])  # bit i = coefficient i


def to_signed64(h: int) -> int:
    """SQLite integers are signed 64-bit; hashes are stored in that form."""
    return h - (1 << 64) if h >= 1 << 63 else h


def from_signed64(h: int) -> int:
    return h + (1 << 64) if h < 0 else h


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


class Dedup:
    """Exact (md5) and near (perceptual hash within ``threshold`` bits) duplicate detection over
    everything kept so far, answering with the id of the kept item a candidate duplicates
    (the earliest kept one); ``threshold < 0`` turns near-dup detection off."""

    def __init__(self, threshold: int = 4):
        self.threshold = threshold
        self.md5s: dict[str, int] = {}
        self.index = HammingIndex(threshold) if threshold >= 0 else None

    def __len__(self) -> int:
        return len(self.md5s)

    def seen_md5(self, md5: str) -> int | None:
        """The id of the kept item with these bytes, or None."""
        return self.md5s.get(md5)

    def near(self, h: int) -> int | None:
        """The id of the earliest kept item within the threshold, or None."""
        return None if self.index is None else self.index.nearest_first(h)

    def skip_reason(self, md5: str, h: int | None) -> tuple[str, int] | None:
        """``(reason, id it duplicates)`` or None when the item is new."""
        if (of := self.seen_md5(md5)) is not None:
            return "duplicate_md5", of
        if h is not None and (of := self.near(h)) is not None:
            return "near_duplicate", of
        return None

    def add(self, md5: str, h: int | None, item_id: int) -> None:
        self.md5s.setdefault(md5, item_id)
        if h is not None and self.index is not None:
            self.index.add(h, item_id)



def duplicate_groups(md5s: list[str], hashes: list[int | None], radius: int) -> list[int]:
    """A group number per image such that exact (same md5) and near duplicates (perceptual hashes
    within ``radius`` bits; ``radius < 0``: exact only) share a group, transitively.

    Union-find over every pair within the radius, the rule ``Dedup`` applies while crawling, so a
    train/eval split by group never puts a copy, a re-encode or a resize of one picture on both
    sides. Groups are numbered by their first image. O(n^2) popcounts, vectorised per image:
    ~1 s for 10,000 images (a multi-index over hash bands would replace the scan for millions).
    """
    parent = list(range(len(md5s)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    for i, m in enumerate(md5s):
        union(i, first.setdefault(m, i))
    have = [i for i, h in enumerate(hashes) if h is not None]
    if radius >= 0 and len(have) > 1:
        hs = np.array([hashes[i] for i in have], np.uint64)
        for k in range(len(have) - 1):
            x = np.bitwise_xor(hs[k + 1:], hs[k])
            bits = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
            for j in np.flatnonzero(bits <= radius):
                union(have[k], have[k + 1 + int(j)])
    return [find(i) for i in range(len(md5s))]
