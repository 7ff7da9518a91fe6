"""Benchmark ``awm shard`` against the codec floor measured in the same run (run by hand).

Inputs: generated wallpapers at 1920x1080 and 3840x2160 (cached under $TMPDIR since generating is
slow; each unique image is repeated under several names so a run is long enough to time), plus
../shared/data/real when present. For each set and repeat, interleaved so machine load hits all alike:
- floor: read + decode each source once, + encode what must be encoded (LR JPEG q85 per scale, and
  the HR PNG only when the source bytes cannot be kept);
- shard, 1 and 2 workers: the full stage (``awm.shard.shard``: listing, decode, degrade, encode, tar,
  stats, index) in-process; 2 workers include the spawn start-up of the pool;
- seed's way: decode, degrade, write the LR as loose JPEG files and copy the HR file beside them.
Prints medians as one JSON object, last. Usage: python tests/benchmarks/bench_shard.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from awm import io
from awm.degrade import degrade, encode_lr, get_preset
from awm.shard import ShardConfig, _is_plain_png, shard
from awm.synth import generate

SCALES = (2, 4)
REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def cached_sources(cache: Path, size: tuple[int, int], unique: int, copies: int, dest: Path) -> Path:
    """A folder of ``unique * copies`` PNGs of ``size`` (unique ones generated once into ``cache``)."""
    w, h = size
    dest.mkdir(parents=True, exist_ok=True)
    for i in range(unique):
        src = cache / f"gen_{w}x{h}_{i}.png"
        if not src.exists():
            io.atomic_write_bytes(src, io.encode_image(generate(1000 + i, w, h), "png"))
        for c in range(copies):
            target = dest / f"w{w}_{i}_{c}.png"
            if not target.exists():
                os.link(src, target) if src.stat().st_dev == dest.stat().st_dev else shutil.copyfile(src, target)
    return dest


def floor_seconds(files: list[Path]) -> float:
    """Decode each source once and encode only the outputs that must be encoded."""
    preset = get_preset("seed")
    work = []
    for p in files:  # LRs prepared untimed: the floor counts codecs only
        data = p.read_bytes()
        img = io.to_rgb8(io.decode_image(data))
        h, w = (d - d % max(SCALES) for d in img.shape[:2])
        keep = (w, h) == img.shape[1::-1] and _is_plain_png(data)
        lrs = [degrade(img[:h, :w], s, preset, 0, p.stem) for s in SCALES]
        work.append((p, None if keep else img[:h, :w], lrs))
    t = time.perf_counter()
    for p, hr, lrs in work:
        cv2.imdecode(np.frombuffer(p.read_bytes(), np.uint8), cv2.IMREAD_UNCHANGED)
        for lr, params in lrs:
            encode_lr(lr, params)
        if hr is not None:
            io.encode_image(hr, "png", 3)
    return time.perf_counter() - t


def shard_seconds(src: Path, out: Path, workers: int) -> float:
    shutil.rmtree(out, ignore_errors=True)
    n = len(io.list_images([src]))
    cfg = ShardConfig(inp=src, out=out, split="eval", workers=workers, shard_size=max(1, -(-n // 4)),
                      part="0/1", scales=list(SCALES))
    t = time.perf_counter()
    shard(cfg)
    return time.perf_counter() - t


def seed_way_seconds(files: list[Path], out: Path) -> float:
    """The seed's scripts: decode, degrade, loose LR JPEG files next to a copied HR file."""
    shutil.rmtree(out, ignore_errors=True)
    preset = get_preset("seed")
    t = time.perf_counter()
    for d in ("hr", *(f"lr_x{s}" for s in SCALES)):
        (out / d).mkdir(parents=True)
    for p in files:
        img = io.to_rgb8(io.read_image(p))
        h, w = (d - d % max(SCALES) for d in img.shape[:2])
        shutil.copyfile(p, out / "hr" / p.name)
        for s in SCALES:
            lr, _ = degrade(img[:h, :w], s, preset, 0, p.stem)
            cv2.imwrite(str(out / f"lr_x{s}" / (p.stem + ".jpg")), lr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])
    return time.perf_counter() - t


def cli_startup_seconds() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "awm", "shard", "--help"], check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unique", type=int, default=4, help="generated images per size")
    ap.add_argument("--copies", type=int, default=6, help="names per 1080p image (half for 4K)")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "awm-bench-shard-cache")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="awm-bench-shard-"))
    sets = {"1920x1080": cached_sources(args.cache, (1920, 1080), args.unique, args.copies, work / "in1080"),
            "3840x2160": cached_sources(args.cache, (3840, 2160), args.unique, max(1, args.copies // 2),
                                        work / "in4k")}
    if REAL.is_dir():
        sets["real"] = REAL
    results = {}
    try:
        for name, src in sets.items():
            files = io.list_images([src])
            runs: dict[str, list[float]] = {"floor": [], "shard_w1": [], "shard_w2": [], "seed_way": []}
            for _ in range(args.repeats):
                runs["floor"].append(floor_seconds(files))
                runs["shard_w1"].append(shard_seconds(src, work / "out", 1))
                runs["shard_w2"].append(shard_seconds(src, work / "out", 2))
                runs["seed_way"].append(seed_way_seconds(files, work / "seed"))
            med = {k: statistics.median(v) for k, v in runs.items()}
            n = len(files)
            results[name] = {
                "images": n,
                "floor_img_s": round(n / med["floor"], 2),
                "shard_w1_img_s_per_core": round(n / med["shard_w1"], 2),
                "shard_w2_img_s_per_core": round(n / med["shard_w2"] / 2, 2),
                "seed_way_img_s": round(n / med["seed_way"], 2),
                "ratio_w1_to_floor": round(med["floor"] / med["shard_w1"], 3),
                "speedup_w2": round(med["shard_w1"] / med["shard_w2"], 3),
                "ratio_seed_way_to_floor": round(med["floor"] / med["seed_way"], 3),
                "median_s": {k: round(v, 3) for k, v in med.items()},
            }
            print(name, json.dumps(results[name]), file=sys.stderr)
        results["cli_startup_s"] = round(cli_startup_seconds(), 3)
        results["loadavg_end"] = os.getloadavg()
        results["cpu_count"] = os.cpu_count()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
