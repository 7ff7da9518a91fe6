"""Filters shared by ``awm crawl`` and ``awm ingest``: image checks, caps, exact and near dedup.

Both stages must agree on what an acceptable HR original is, so the rules live here once:
the bytes' real type (sniffed, never a suffix or an API's ``file_ext``), a pixel cap checked
from the header before decoding (decompression bombs), a minimum side, a full decode (truncated
or corrupt files), and dedup by md5 (exact) and by a 64-bit DCT perceptual hash (near).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import cv2
import numpy as np

from awm.imageio import ImageError, check_image_bytes, decode_image, to_rgb8

# What we keep as HR originals; webp only when asked (lossy webp makes poor HR).
BASE_FORMATS = ("png", "jpg")
EXT_ALIASES = {"jpeg": "jpg", "jpe": "jpg", "png": "png", "jpg": "jpg", "webp": "webp"}


def allowed_formats(webp: bool) -> tuple[str, ...]:
    return (*BASE_FORMATS, "webp") if webp else BASE_FORMATS


def type_skip_reason(ext: object, formats: tuple[str, ...]) -> str | None:
    """A declared extension (``file_ext`` or a file suffix) outside the kept formats -> a skip reason."""
    if not isinstance(ext, str) or EXT_ALIASES.get(ext.lower().lstrip(".")) not in formats:
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


def check_image(data: bytes, formats: tuple[str, ...], max_pixels: int, min_side: int) -> Checked:
    """Validate downloaded/read bytes fully; raise ``ImageError`` with a skip reason otherwise.

    The header is probed (type, dimensions, pixel cap) before any pixel is decoded, then the
    whole image is decoded so truncated or corrupt files never reach a shard.
    """
    probe = check_image_bytes(data, max_pixels=max_pixels, min_side=1)
    if probe.format not in formats:
        raise ImageError("unsupported_type", probe.format)
    reason = dims_skip_reason(probe.width, probe.height, max_pixels, min_side)
    if reason:
        raise ImageError(reason, f"{probe.width}x{probe.height}")
    img = decode_image(data, max_pixels=max_pixels)
    return Checked(probe.format, probe.width, probe.height, hashlib.md5(data).hexdigest(), phash(img))


def phash(img: np.ndarray) -> int:
    """64-bit DCT perceptual hash: signs of the 8x8 lowest frequencies of a 32x32 gray thumbnail
    against their median. Re-encodes and resizes of one picture land within a few bits."""
    gray = cv2.cvtColor(to_rgb8(img), cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:8, :8].flatten()
    bits = low > np.median(low[1:])
    return int(sum(1 << i for i, b in enumerate(bits) if b))


def to_signed64(h: int) -> int:
    """SQLite integers are signed 64-bit; hashes are stored in that form."""
    return h - (1 << 64) if h >= 1 << 63 else h


def from_signed64(h: int) -> int:
    return h + (1 << 64) if h < 0 else h


def hamming(a: int, b: int) -> int:
    return bin(a ^ b).count("1")


class Dedup:
    """Exact (md5) and near (perceptual hash within ``threshold`` bits) duplicate detection over
    everything kept so far; ``threshold < 0`` turns near-dup detection off."""

    def __init__(self, threshold: int = 4):
        self.threshold = threshold
        self.md5s: set[str] = set()
        self._hashes = np.zeros(1024, np.uint64)
        self._n = 0

    def __len__(self) -> int:
        return len(self.md5s)

    def seen_md5(self, md5: str) -> bool:
        return md5 in self.md5s

    def near(self, h: int) -> bool:
        """True when a kept image lies within the threshold (vectorised popcount over all kept)."""
        if self.threshold < 0 or self._n == 0:
            return False
        x = np.bitwise_xor(self._hashes[:self._n], np.uint64(h))
        counts = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
        return bool(counts.min() <= self.threshold)

    def skip_reason(self, md5: str, h: int | None) -> str | None:
        if self.seen_md5(md5):
            return "duplicate_md5"
        if h is not None and self.near(h):
            return "near_duplicate"
        return None

    def add(self, md5: str, h: int | None) -> None:
        self.md5s.add(md5)
        if h is None:
            return
        if self._n == len(self._hashes):
            self._hashes = np.concatenate([self._hashes, np.zeros_like(self._hashes)])
        self._hashes[self._n] = np.uint64(h)
        self._n += 1



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
