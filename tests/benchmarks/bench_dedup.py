"""Near-duplicate lookup: the multi-index (awm.acquire.nearindex) against the best linear scan
NumPy offers (XOR + ``np.bitwise_count`` over every kept hash, into preallocated buffers), at
10^4, 10^5 and 10^6 kept hashes; the older ``np.unpackbits`` scan is reported too.

Hashes are real perceptual hashes (awm.acquire.clean's DCT phash: 32x32 INTER_AREA thumbnail,
8x8 DCT signs against the median) of crops of generated anime-style images (awm.data.synth), kept
as a crawl keeps them: a hash within the radius of an earlier one is dropped. Crops of one
picture share structure, so the hashes cluster as real ones do, unlike uniform random hashes (the
index's best case). Queries: half from pictures never kept (new images), half real near-duplicates
of kept crops (JPEG q60 re-encode and a 0.7x resize, then hashed). Both methods' answers are
compared on every query the scan runs. The hash sets are cached under ~/.cache/awm-bench.
Rounds interleave the two methods; figures are medians. Prints one JSON object last.

    .venv/bin/python tests/benchmarks/bench_dedup.py [--sizes 10000,100000,1000000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np

from awm.acquire.nearindex import HammingIndex, linear_nearest_first
from awm.data import synth

CACHE = Path(os.environ.get("AWM_BENCH_CACHE", Path.home() / ".cache" / "awm-bench"))
W, H = 384, 216
_D = cv2.dct(np.eye(32, dtype=np.float32), flags=cv2.DCT_ROWS)  # cv2.dct(x) == _D.T @ x @ _D


def phashes(thumbs: np.ndarray) -> np.ndarray:
    """awm.acquire.clean.phash_gray over a stack of 32x32 float32 thumbnails, vectorised."""
    low = (_D.T @ thumbs @ _D)[:, :8, :8].reshape(len(thumbs), 64)
    bits = low > np.median(low[:, 1:], axis=1, keepdims=True)
    return np.packbits(bits, axis=1, bitorder="little").view("<u8")[:, 0].copy()


def thumb(gray: np.ndarray) -> np.ndarray:
    return cv2.resize(gray, (32, 32), interpolation=cv2.INTER_AREA).astype(np.float32)


def crops(rng: np.random.Generator, n: int) -> np.ndarray:
    w = rng.integers(64, W + 1, n)
    h = np.minimum(H, (w * rng.uniform(0.45, 0.8, n)).astype(int))
    return np.stack([rng.integers(0, W - w + 1), rng.integers(0, H - h + 1), w, h], axis=1)


def hash_sets(n: int, radius: int, queries: int) -> dict[str, np.ndarray]:
    """``n`` kept hashes (deduplicated at ``radius``) and the two query sets, cached."""
    path = CACHE / f"dedup-phash-v1-{n}-r{radius}-q{queries}.npz"
    if path.exists():
        return dict(np.load(path))
    rng = np.random.default_rng(0)
    idx, kept, where, seed = HammingIndex(radius, capacity=n), [], [], 0
    grays: dict[int, np.ndarray] = {}
    per_image = max(200, min(4000, n // 150))
    while len(kept) < n:
        gray = cv2.cvtColor(synth.generate(seed, W, H), cv2.COLOR_RGB2GRAY)
        boxes = crops(rng, per_image)
        hs = phashes(np.stack([thumb(gray[y:y + h, x:x + w]) for x, y, w, h in boxes]))
        for h, box in zip(hs.tolist(), boxes, strict=True):
            if len(kept) < n and idx.nearest_first(h) is None:
                idx.add(h, len(kept))
                kept.append(h)
                where.append((seed, *box))
        grays[seed] = gray
        seed += 1
    new: list[int] = []
    while len(new) < queries // 2:
        gray = cv2.cvtColor(synth.generate(10**6 + seed, W, H), cv2.COLOR_RGB2GRAY)
        new += phashes(np.stack([thumb(gray[y:y + h, x:x + w]) for x, y, w, h in crops(rng, 50)])).tolist()
        seed += 1
    dup = []
    for i in rng.choice(len(kept), queries - queries // 2, replace=False):
        s, x, y, w, h = where[i]
        crop = grays[s][y:y + h, x:x + w]
        crop = cv2.imdecode(cv2.imencode(".jpg", crop, [cv2.IMWRITE_JPEG_QUALITY, 60])[1], cv2.IMREAD_GRAYSCALE)
        crop = cv2.resize(crop, (max(8, int(w * 0.7)), max(8, int(h * 0.7))), interpolation=cv2.INTER_AREA)
        dup.append(int(phashes(thumb(crop)[None])[0]))
    out = {"kept": np.array(kept, dtype=np.uint64), "new": np.array(new[:queries // 2], dtype=np.uint64),
           "dup": np.array(dup, dtype=np.uint64), "images": np.array(seed)}
    CACHE.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, **out)
    tmp.replace(path)
    return out


class BitwiseCountScan:
    """The fastest plain-NumPy linear scan: XOR and popcount into reused buffers, first hit."""

    def __init__(self, kept: np.ndarray, radius: int):
        self.kept, self.radius = kept, radius
        self.x = np.empty_like(kept)
        self.c = np.empty(len(kept), dtype=np.uint8)

    def nearest_first(self, h: int) -> int | None:
        np.bitwise_xor(self.kept, np.uint64(h), out=self.x)
        np.bitwise_count(self.x, out=self.c)
        hit = np.flatnonzero(self.c <= self.radius)
        return int(hit[0]) if len(hit) else None


def per_query(fn, qs: list[int]) -> tuple[float, list]:
    t = time.perf_counter()
    out = [fn(q) for q in qs]
    return (time.perf_counter() - t) / len(qs), out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="10000,100000,1000000")
    ap.add_argument("--radius", type=int, default=4)
    ap.add_argument("--queries", type=int, default=2000)
    ap.add_argument("--scan-queries", type=int, default=400, help="queries the scans run (a subset, both kinds)")
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    result: dict = {"radius": a.radius, "cpus": os.cpu_count(), "rounds": a.rounds, "numpy": np.__version__,
                    "hashes": "DCT phashes of crops of generated images, deduplicated; queries half new, half re-encoded near-duplicates",
                    "sizes": {}}
    for n in map(int, a.sizes.split(",")):
        sets = hash_sets(n, a.radius, a.queries)
        kept = sets["kept"]
        t = time.perf_counter()
        idx = HammingIndex(a.radius)
        for i, h in enumerate(kept.tolist()):
            idx.add(h, i)
        build = time.perf_counter() - t
        qs = sets["new"].tolist() + sets["dup"].tolist()
        half = a.scan_queries // 2
        sub = qs[:half] + qs[-half:]
        scan = BitwiseCountScan(kept, a.radius)
        times: dict[str, list[float]] = {"index": [], "bitwise_count": [], "unpackbits": []}
        for _ in range(a.rounds):
            t_idx, answers = per_query(idx.nearest_first, qs)
            t_bc, bc = per_query(scan.nearest_first, sub)
            t_up, up = per_query(lambda q, kept=kept: linear_nearest_first(kept, q, a.radius), sub[:max(20, half // 4)] if n > 100000 else sub)
            want = answers[:half] + answers[-half:]
            assert bc == want, "bitwise_count scan and index answers differ"
            assert up == want[:len(up)], "unpackbits scan and index answers differ"
            for k, v in (("index", t_idx), ("bitwise_count", t_bc), ("unpackbits", t_up)):
                times[k].append(v)
        med = {k: statistics.median(v) for k, v in times.items()}
        result["sizes"][str(n)] = {
            "index_us_per_lookup": round(med["index"] * 1e6, 2),
            "bitwise_count_us_per_lookup": round(med["bitwise_count"] * 1e6, 2),
            "unpackbits_us_per_lookup": round(med["unpackbits"] * 1e6, 2),
            "speedup_vs_bitwise_count": round(med["bitwise_count"] / med["index"], 3),
            "speedup_vs_unpackbits": round(med["unpackbits"] / med["index"], 2),
            "index_build_s": round(build, 2), "found_dup_queries": sum(x is not None for x in answers[len(sets["new"]):]),
            "found_new_queries": sum(x is not None for x in answers[:len(sets["new"])]), "queries": len(qs),
            "same_answers_on": len(sub), "source_images": int(sets["images"])}
        print(n, result["sizes"][str(n)], flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
