"""Evaluation: each default metric's CPU fast path vs pyiqa, then `awm eval` with 2 processes vs 1.

Run by hand: .venv/bin/python tests/benchmarks/bench_eval.py [--samples 16] [--repeats 2]
    [--metric-images 4] [--metric-size 992,558] [--threads 2] [--skip-runs]

Per metric: ms per image of awm.eval.fast_metrics and of pyiqa's own code (metrics.create(...,
pyiqa_only=True)) on the same bicubic-restored generated images (992x558, ~0.55 MP, as a 2x eval
set of 1080p wallpapers halved), both in this process at --threads torch/OpenCV threads; the
median over images after one warm-up (wall and CPU time: on a shared machine the CPU time is the
steadier figure), their ratios, and the largest difference of the values.
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


def per_metric(names: list[str], n_images: int, size: tuple[int, int], threads: int) -> dict:
    """ms/image of the fast path and of pyiqa for each metric, same images, same threads."""
    import cv2
    import torch

    from awm.data.synth import generate
    from awm.eval import metrics

    torch.set_num_threads(threads)
    cv2.setNumThreads(threads)
    w, h = size
    pairs = []
    for i in range(n_images):
        hr = generate(100 + i, w, h)
        lr = cv2.resize(hr, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
        pairs.append((cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC), hr))
    out = {}
    for name in names:
        row, values = {}, {}
        for label, m in (("fast", metrics.create(name)), ("pyiqa", _pyiqa(name))):
            sr, hr = pairs[0]
            m(sr, hr if m.full_reference else None)  # warm-up (caches, lazy imports)
            times, cpu, vals = [], [], []
            for sr, hr in pairs:
                t, c = time.perf_counter(), time.process_time()
                vals.append(m(sr, hr if m.full_reference else None))
                times.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            row[f"{label}_ms_per_image"] = round(1000 * statistics.median(times), 2)
            row[f"{label}_cpu_ms_per_image"] = round(1000 * statistics.median(cpu), 2)
            values[label] = vals
            print(f"{name} {label}: {row[f'{label}_ms_per_image']:.1f} ms/image wall, "
                  f"{row[f'{label}_cpu_ms_per_image']:.1f} ms CPU", file=sys.stderr)
        row["speedup"] = round(row["pyiqa_ms_per_image"] / row["fast_ms_per_image"], 1)
        row["cpu_speedup"] = round(row["pyiqa_cpu_ms_per_image"] / row["fast_cpu_ms_per_image"], 1)
        row["max_abs_diff"] = max(abs(a - b) for a, b in zip(values["fast"], values["pyiqa"], strict=True))
        out[name] = row
    return out


def _pyiqa(name: str):
    """pyiqa's own code for a metric; for psnry (validation's torch PSNR-Y in awm) pyiqa's psnry in the
    same BT.601 convention."""
    from awm.eval import metrics

    if name == "psnry":
        import pyiqa

        return metrics.Metric(name, True, False, pyiqa.create_metric("psnry", color_space="ycbcr"))
    return metrics.create(name, pyiqa_only=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--size", default="512,384")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--metrics", default="psnry,ssim,niqe_anime")
    ap.add_argument("--metric-images", type=int, default=4)
    ap.add_argument("--metric-size", default="992,558")
    ap.add_argument("--threads", type=int, default=2, help="torch and OpenCV threads for the per-metric part")
    ap.add_argument("--skip-runs", action="store_true", help="only the per-metric comparison")
    a = ap.parse_args()
    w, h = (int(x) for x in a.size.split(","))
    mw, mh = (int(x) for x in a.metric_size.split(","))
    metric_rows = per_metric(a.metrics.split(","), a.metric_images, (mw, mh), a.threads)
    head = {"per_metric": metric_rows, "metric_size": [mw, mh], "metric_images": a.metric_images,
            "threads": a.threads}
    if a.skip_runs:
        print(json.dumps(head))
        return
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
    print(json.dumps({**head, "samples": a.samples, "size": [w, h], "models": 2, "metrics": a.metrics,
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
                if k not in ("model", "image", "id") and ra[k] not in ("", None)), default=0.0)


if __name__ == "__main__":
    main()
