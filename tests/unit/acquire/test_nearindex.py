"""The multi-index near-duplicate search gives exactly the linear scan's answers."""

import numpy as np
import pytest

from awm.acquire.nearindex import HammingIndex, bands, choose_bands, linear_nearest_first


def test_bands_cover_64_bits_disjointly():
    for m in (1, 2, 3, 5, 32):
        covered = 0
        for shift, mask in bands(m):
            assert covered & (mask << shift) == 0
            covered |= mask << shift
        assert covered == (1 << 64) - 1 and len(bands(m)) == m
    assert choose_bands(4, 10**6) == 3 and choose_bands(0, 10**6) == 1
    with pytest.raises(ValueError):
        HammingIndex(32)


@pytest.mark.parametrize("radius,capacity", [(0, 2000), (4, 2000), (4, 10**6), (8, 10**6)])
def test_same_answers_as_linear_scan(radius, capacity):
    rng = np.random.default_rng(radius)
    kept = rng.integers(0, 2**63, 2000, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, 2000, dtype=np.uint64)
    # Planted neighbours: copies of kept hashes at distance radius-1, radius, radius+1, and a
    # second kept copy near the first, so "the earliest within the radius" is tested too.
    kept[100] = kept[10] ^ np.uint64(0b1)
    idx = HammingIndex(radius, capacity)  # capacity picks the band layout; answers must not change
    for i, h in enumerate(kept.tolist()):
        idx.add(h, i)
    queries = rng.integers(0, 2**63, 600, dtype=np.uint64).tolist()
    for i in rng.integers(0, len(kept), 250).tolist():
        for d in (max(radius - 1, 0), radius, radius + 1):
            bits = rng.choice(64, d, replace=False)
            queries.append(int(kept[i]) ^ sum(1 << int(b) for b in bits))
    hits = 0
    for q in queries:
        want = linear_nearest_first(kept, q, radius)
        assert idx.nearest_first(q) == want, hex(q)
        hits += want is not None
    assert hits >= 500  # the planted ones (within the radius) were found
    assert idx.nearest_first(int(kept[100])) == (10 if radius >= 1 else 100)
