"""Evaluation throughput: images/s for 1 process vs 2 (torchrun, CPU), summary equality checked.

Run by hand: .venv/bin/python tests/benchmarks/bench_eval.py [--samples 16] [--repeats 2]
Both runs use one thread per process (OMP_NUM_THREADS=1; torchrun's default), so the ratio is
the scaling across ranks on a 2-core machine. images/s is measured by awm eval itself over its
scoring loop (eval_stats.json: slowest rank); wall seconds include process start and pyiqa import.
The JSON line printed last holds medians and ratios.
"""

from __future__ import annotations

import argparse
import json
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
    env = dict(os.environ, OMP_NUM_THREADS="1")
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
        s1 = json.loads((tmp / "out1_0" / "summary.json").read_text())["models"]
        equal = all(json.loads((tmp / f"out{n}_{r}" / "summary.json").read_text())["models"] == s1
                    for n in (1, 2) for r in range(a.repeats))
        rows_equal = all((tmp / f"out{n}_{r}" / "per_image.csv").read_text()
                         == (tmp / "out1_0" / "per_image.csv").read_text() for n in (1, 2) for r in range(a.repeats))
    m1, m2 = statistics.median(ips[1]), statistics.median(ips[2])
    w1, w2 = statistics.median(wall[1]), statistics.median(wall[2])
    print(json.dumps({"samples": a.samples, "size": [w, h], "models": 2, "metrics": a.metrics,
                      "images_per_s_1proc": round(m1, 4), "images_per_s_2proc": round(m2, 4),
                      "speedup": round(m2 / m1, 3), "goal_speedup": 1.8,
                      "wall_s_1proc": round(w1, 2), "wall_s_2proc": round(w2, 2), "wall_speedup": round(w1 / w2, 3),
                      "summary_equal": equal, "per_image_equal": rows_equal, "cpu_count": os.cpu_count()}))


if __name__ == "__main__":
    main()
