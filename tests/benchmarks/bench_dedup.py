"""Near-duplicate lookup: the multi-index (awm.acquire.nearindex) against the linear scan it
replaced (a vectorised popcount over every kept hash), at 10^4, 10^5 and 10^6 kept hashes.

Queries are half random hashes (no neighbour: the common case, a new image) and half planted
neighbours within the radius. Both methods' answers are compared on every query the linear scan
runs. Hashes are uniform random: real perceptual hashes are less even, which fills some
buckets more than others (the answers stay exact; the speed-up shrinks accordingly).
Prints one JSON object last.

    .venv/bin/python tests/benchmarks/bench_dedup.py [--sizes 10000,100000,1000000] [--radius 4]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np

from awm.acquire.nearindex import HammingIndex, linear_nearest_first


def queries(rng: np.random.Generator, kept: np.ndarray, n: int, radius: int) -> list[int]:
    out = rng.integers(0, 2**63, n // 2, dtype=np.uint64).tolist()
    for i in rng.integers(0, len(kept), n - n // 2).tolist():
        bits = rng.choice(64, rng.integers(1, radius + 1), replace=False)
        out.append(int(kept[i]) ^ sum(1 << int(b) for b in bits))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--radius", type=int, default=4)
    ap.add_argument("--queries", type=int, default=4000)
    ap.add_argument("--linear-queries", type=int, default=200, help="the linear scan is slow: fewer queries")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    result: dict = {"radius": a.radius, "cpus": os.cpu_count(), "hashes": "uniform random 64-bit", "sizes": {}}
    for n in map(int, a.sizes.split(",")):
        kept = rng.integers(0, 2**63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(0, 2, n, dtype=np.uint64)
        t = time.perf_counter()
        idx = HammingIndex(a.radius)
        for i, h in enumerate(kept.tolist()):
            idx.add(h, i)
        build = time.perf_counter() - t
        qs = queries(rng, kept, a.queries, a.radius)
        t = time.perf_counter()
        answers = [idx.nearest_first(q) for q in qs]
        mih = (time.perf_counter() - t) / len(qs)
        sub = qs[:a.linear_queries // 2] + qs[-(a.linear_queries // 2):]
        t = time.perf_counter()
        linear_answers = [linear_nearest_first(kept, q, a.radius) for q in sub]
        linear = (time.perf_counter() - t) / len(sub)
        assert linear_answers == answers[:len(sub) // 2] + answers[-(len(sub) // 2):], "answers differ"
        result["sizes"][str(n)] = {"index_us_per_lookup": round(mih * 1e6, 1),
                                   "linear_us_per_lookup": round(linear * 1e6, 1),
                                   "speedup": round(linear / mih, 1), "index_build_s": round(build, 2),
                                   "found": sum(x is not None for x in answers), "queries": len(qs),
                                   "same_answers_on": len(sub)}
        print(n, result["sizes"][str(n)], flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
