"""Evaluation: `awm eval` with 2 processes (torchrun, CPU) vs 1 process, per-image scores compared.

Run by hand: .venv/bin/python tests/benchmarks/bench_eval.py [--samples 16] [--repeats 2]
The baseline is what a user gets without torchrun: one process with PyTorch's default threads
(all cores; OMP_NUM_THREADS unset). The 2-process run uses torchrun's default of one thread per
process. The headline is the wall-clock speedup of the whole command (process start, imports,
scoring, gather and writing the results). The scoring-loop figure (images/s that awm eval
measures itself, eval_stats.json, slowest rank) is reported beside it. Medians over --repeats,
runs interleaved; the JSON line printed last holds them. Scores are compared per image (largest
absolute difference: the two thread layouts may order float sums differently).
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests"))
from pairs import make_pair_shards  # noqa: E402


def run_eval(data: Path, out: Path, nproc: int, metrics: str) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    args = ["eval", "--data", str(data), "--scale", "2", "--models", "bicubic,lanczos", "--metrics", metrics,
            "--out", str(out)]
    cmd = ([sys.executable, "-m", "awm", *args] if nproc == 1 else
           [str(Path(sys.executable).parent / "torchrun"), "--standalone", f"--nproc_per_node={nproc}",
            "-m", "awm", *args])
    t = time.perf_counter()
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if res.returncode != 0:
        sys.exit(f"eval failed ({nproc} proc):\n{res.stderr[-3000:]}")
    stats = json.loads((out / "eval_stats.json").read_text())
    return stats["images_per_s"], wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--size", default="512,384")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--metrics", default="psnry,ssim,niqe_anime")
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        half = a.samples // 2
        data = make_pair_shards(tmp / "data", [half + 1, a.samples - half - 1], size=(w, h), split="eval", seed=11)
        ips = {1: [], 2: []}
        wall = {1: [], 2: []}
        for r in range(a.repeats):
            for n in (1, 2):
                v, t = run_eval(data, tmp / f"out{n}_{r}", n, a.metrics)
                ips[n].append(v)
                wall[n].append(t)
                print(f"repeat {r}: {n} proc: {v:.3f} images/s (loop), {t:.1f} s wall", file=sys.stderr)
        ref = _per_image(tmp / "out1_0")
        diffs = [_max_diff(ref, _per_image(tmp / f"out{n}_{r}")) for n in (1, 2) for r in range(a.repeats)]
    m1, m2 = statistics.median(ips[1]), statistics.median(ips[2])
    w1, w2 = statistics.median(wall[1]), statistics.median(wall[2])
    print(json.dumps({"samples": a.samples, "size": [w, h], "models": 2, "metrics": a.metrics,
                      "baseline": "1 process, default threads", "cpu_count": os.cpu_count(),
                      "wall_s_1proc": round(w1, 2), "wall_s_2proc": round(w2, 2), "wall_speedup": round(w1 / w2, 3),
                      "loop_images_per_s_1proc": round(m1, 4), "loop_images_per_s_2proc": round(m2, 4),
                      "loop_speedup": round(m2 / m1, 3), "goal_speedup": 1.8,
                      "per_image_max_abs_diff": max(diffs),
                      "per_image_equal_within_1e-4": max(diffs) <= 1e-4}))


def _per_image(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (out / "per_image.csv").open() as f:
        return {(r["model"], r["id"]): r for r in csv.DictReader(f)}


def _max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference of any score between two runs' rows (the same rows required).

    Not bit-equality: the 1-process baseline runs 2 threads and the ranks 1 each, so float
    reductions may be ordered differently.
    """
    if a.keys() != b.keys():
        return math.inf
    return max((abs(float(ra[k]) - float(b[key][k])) for key, ra in a.items() for k in ra
                if k not in ("model", "id") and ra[k] not in ("", None)), default=0.0)


if __name__ == "__main__":
    main()
