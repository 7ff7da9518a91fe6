"""Near-duplicate search over 64-bit perceptual hashes: multi-index hashing (pigeonhole bands).

Cut the 64 bits into ``m`` disjoint bands. Two hashes within Hamming distance ``r`` differ in
at most ``r`` bits, so at least one band differs in at most ``r // m`` bits (the pigeonhole
principle; Norouzi, Punjani and Fleet, "Fast Search in Hamming Space with Multi-Index Hashing",
CVPR 2012). The index keeps one exact-match table per band; a lookup probes, in each band, the
query's band value and every value within ``r // m`` bits of it, and verifies only the items
found there. ``m`` is chosen for the expected size so that buckets stay small: for ``r = 4`` and
~10^6 hashes, 3 bands of 21-22 bits probed within 1 bit (66 probes, < 1 item per bucket). The
probe count does not depend on the number of kept hashes, but real perceptual hashes cluster
(crops and edits of similar pictures), so buckets fill unevenly: against the best NumPy linear
scan (XOR + ``np.bitwise_count``) on deduplicated phashes of generated pictures the index is no
faster at 10^4 kept hashes and ~4x faster at 10^5 (tests/benchmarks/bench_dedup.py; the README's
Performance table has the figures of the current tree). Answers are exactly those of a
linear scan: the earliest added item within the radius (tests/unit/acquire/test_nearindex.py).
"""

from __future__ import annotations

import itertools
import math
from collections import defaultdict

import numpy as np

BITS = 64


def bands(count: int) -> list[tuple[int, int]]:
    """``count`` (shift, mask) pairs that cut 64 bits into near-equal disjoint bands."""
    sizes = [BITS // count + (1 if i < BITS % count else 0) for i in range(count)]
    out, shift = [], 0
    for size in sizes:
        out.append((shift, (1 << size) - 1))
        shift += size
    return out


def choose_bands(radius: int, capacity: int) -> int:
    """The band count with the fewest expected probes + candidate checks per lookup at ``capacity`` items."""
    def cost(m: int) -> float:
        width = BITS // m
        probes = sum(math.comb(width, k) for k in range(radius // m + 1))
        return m * probes * (1 + capacity / 2 ** width)
    return min(range(1, radius + 2), key=cost)


def _flips(width: int, within: int) -> list[int]:
    """Every ``width``-bit mask with at most ``within`` bits set."""
    return [sum(1 << b for b in bits) for k in range(within + 1) for bits in itertools.combinations(range(width), k)]


class HammingIndex:
    """Items ``(hash, item_id)`` in insertion order; ``nearest_first(h)`` gives the earliest added
    item within ``radius`` bits of ``h`` (the dedup winner rule: first kept wins)."""

    def __init__(self, radius: int, capacity: int = 1 << 20):
        if not 0 <= radius < BITS // 2:
            raise ValueError(f"radius {radius}: 0..{BITS // 2 - 1}")
        self.radius = radius
        m = choose_bands(radius, capacity)
        self._bands = [(shift, mask, _flips(mask.bit_length(), radius // m)) for shift, mask in bands(m)]
        self._tables: list[defaultdict[int, list[int]]] = [defaultdict(list) for _ in self._bands]
        self._hashes: list[int] = []
        self._ids: list[int] = []

    def __len__(self) -> int:
        return len(self._hashes)

    def add(self, h: int, item_id: int) -> None:
        pos = len(self._hashes)
        self._hashes.append(h)
        self._ids.append(item_id)
        for (shift, mask, _), table in zip(self._bands, self._tables, strict=True):
            table[(h >> shift) & mask].append(pos)

    def nearest_first(self, h: int) -> int | None:
        """The id of the earliest added item within the radius, or None."""
        best = None
        hashes, r = self._hashes, self.radius
        for (shift, mask, flips), table in zip(self._bands, self._tables, strict=True):
            v = (h >> shift) & mask
            for f in flips:
                for pos in table.get(v ^ f, ()):
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
