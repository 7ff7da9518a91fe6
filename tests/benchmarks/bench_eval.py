"""Evaluation: `awm eval` with 2 processes (torchrun, CPU) vs 1 process, per-image scores compared.

Run by hand: .venv/bin/python tests/benchmarks/bench_eval.py [--samples 16] [--repeats 2]
Baselines: one process with 1 thread (what each rank gets) and one process with 2 threads (the
same two cores as the 2-process run; on a 2-core machine also PyTorch's default). The 2-process
run uses torchrun's default of one thread per process. The load average before and after is
printed: on a shared machine the ratios say little. The headline is the wall-clock speedup of the whole command (process start, imports,
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


def run_eval(data: Path, out: Path, nproc: int, metrics: str, threads: int = 1) -> tuple[float, float]:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    if nproc == 1:
        env["OMP_NUM_THREADS"] = str(threads)
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
        layouts = {"1x1": (1, 1), "1x2": (1, 2), "2x1": (2, 1)}  # processes x threads
        ips: dict[str, list[float]] = {k: [] for k in layouts}
        wall: dict[str, list[float]] = {k: [] for k in layouts}
        load_start = os.getloadavg()
        for r in range(a.repeats):
            for k, (n, t_) in layouts.items():
                v, t = run_eval(data, tmp / f"out{k}_{r}", n, a.metrics, t_)
                ips[k].append(v)
                wall[k].append(t)
                print(f"repeat {r}: {k}: {v:.3f} images/s (loop), {t:.1f} s wall", file=sys.stderr)
        ref = _per_image(tmp / "out1x1_0")
        diffs = [_max_diff(ref, _per_image(tmp / f"out{k}_{r}")) for k in layouts for r in range(a.repeats)]
    m = {k: statistics.median(v) for k, v in ips.items()}
    wl = {k: statistics.median(v) for k, v in wall.items()}
    print(json.dumps({"samples": a.samples, "size": [w, h], "models": 2, "metrics": a.metrics,
                      "cpu_count": os.cpu_count(), "loadavg_start": load_start, "loadavg_end": os.getloadavg(),
                      "wall_s": {k: round(v, 2) for k, v in wl.items()},
                      "loop_images_per_s": {k: round(v, 4) for k, v in m.items()},
                      "wall_speedup_2x1_vs": {k: round(wl[k] / wl["2x1"], 3) for k in ("1x1", "1x2")},
                      "loop_speedup_2x1_vs": {k: round(m["2x1"] / m[k], 3) for k in ("1x1", "1x2")},
                      "goal_speedup": 1.8,
                      "per_image_max_abs_diff": max(diffs),
                      "per_image_equal_within_1e-4": max(diffs) <= 1e-4}))


def _per_image(out: Path) -> dict[tuple[str, str], dict[str, str]]:
    with (out / "per_image.csv").open() as f:
        return {(r["model"], r["id"]): r for r in csv.DictReader(f)}


def _max_diff(a: dict, b: dict) -> float:
    """Largest absolute difference of any score between two runs' rows (the same rows required).

    Not bit-equality: thread layouts may order float reductions differently.
    """
    if a.keys() != b.keys():
        return math.inf
    return max((abs(float(ra[k]) - float(b[key][k])) for key, ra in a.items() for k in ra
                if k not in ("model", "id") and ra[k] not in ("", None)), default=0.0)


if __name__ == "__main__":
    main()
