"""Near-duplicate search over 64-bit perceptual hashes: multi-index hashing (pigeonhole bands).

Two hashes within Hamming distance ``r`` differ in at most ``r`` bits, so when the 64 bits are
cut into ``r + 1`` disjoint bands at least one band is *identical* in both (the pigeonhole
principle; Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing",
CVPR 2012). The index keeps one exact-match table per band; a lookup gathers the items sharing
any band with the query and verifies only those. With ``r = 4`` the bands are 12-13 bits, so a
lookup touches about ``5 * n / 2**13`` candidates instead of all ``n`` (at 10^6 kept hashes:
~600 instead of 10^6; measured in tests/benchmarks/bench_dedup.py). Answers are exactly those
of a linear scan: the earliest added item within the radius (tests/unit/acquire/test_nearindex.py).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

BITS = 64


def bands(radius: int) -> list[tuple[int, int]]:
    """``radius + 1`` (shift, mask) pairs that cut 64 bits into near-equal disjoint bands."""
    n = radius + 1
    sizes = [BITS // n + (1 if i < BITS % n else 0) for i in range(n)]
    out, shift = [], 0
    for size in sizes:
        out.append((shift, (1 << size) - 1))
        shift += size
    return out


class HammingIndex:
    """Items ``(hash, item_id)`` in insertion order; ``nearest_first(h)`` gives the earliest added
    item within ``radius`` bits of ``h`` (the dedup winner rule: first kept wins)."""

    def __init__(self, radius: int):
        if not 0 <= radius < BITS // 2:
            raise ValueError(f"radius {radius}: 0..{BITS // 2 - 1} (each band needs at least 2 bits)")
        self.radius = radius
        self._bands = bands(radius)
        self._tables: list[defaultdict[int, list[int]]] = [defaultdict(list) for _ in self._bands]
        self._hashes: list[int] = []
        self._ids: list[int] = []

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, h: int, item_id: int) -> None:
        pos = len(self._hashes)
        self._hashes.append(h)
        self._ids.append(item_id)
        for (shift, mask), table in zip(self._bands, self._tables, strict=True):
            table[(h >> shift) & mask].append(pos)

    def nearest_first(self, h: int) -> int | None:
        """The id of the earliest added item within the radius, or None."""
        best = None
        hashes, r = self._hashes, self.radius
        for (shift, mask), table in zip(self._bands, self._tables, strict=True):
            for pos in table.get((h >> shift) & mask, ()):
                if best is not None and pos >= best:
                    break  # positions in a bucket ascend: nothing earlier follows
                if (hashes[pos] ^ h).bit_count() <= r:
                    best = pos
                    break
        return None if best is None else self._ids[best]


def linear_nearest_first(hashes: np.ndarray, h: int, radius: int) -> int | None:
    """The reference answer: position of the first of ``hashes`` (uint64) within ``radius`` of ``h``."""
    if len(hashes) == 0:
        return None
    x = np.bitwise_xor(hashes, np.uint64(h))
    counts = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
    hits = np.flatnonzero(counts <= radius)
    return int(hits[0]) if len(hits) else None
