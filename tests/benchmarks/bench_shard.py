"""Benchmark ``awm shard`` against the codec floor measured in the same run (run by hand).

Inputs: generated wallpapers at 1920x1080 and 3840x2160 (cached under $TMPDIR since generating is
slow), plus ../shared/data/real when present; each unique image is repeated under several names
(hard links) so a run is long enough to time. For each set and repeat, interleaved so machine load hits all alike:
- floor: read + decode each source once (with the stage's decoder: libspng for plain PNGs when
  pyspng is installed), + encode what must be encoded (LR JPEG q85 per scale, and the HR PNG only
  when the source bytes cannot be kept);
- shard, 1 and 2 workers: the full stage (``awm.data.shard.shard``: listing, decode, degrade, encode, tar,
  stats, index) in-process, eval split (whole images: the HR source bytes pass through unchanged);
  2 workers include starting the pool (fork on Linux);
- shard_train_tiled, 1 worker: the train split with ``--tile 512`` (HR cut into 512 px tiles,
  each tile's PNG encoded and its LRs made: what training shards cost);
- seed's way: decode, degrade, write the LR as loose JPEG files and copy the HR file beside them.
Prints medians as one JSON object, last. Usage: python tests/benchmarks/bench_shard.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from awm import imageio
from awm.data.degrade import degrade, encode_lr, get_preset
from awm.data.shard import ShardConfig, _is_plain_png, _spng, decode_source, shard
from awm.data.synth import generate

SCALES = (2, 4)
REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real"


def cached_sources(cache: Path, size: tuple[int, int], unique: int, copies: int, dest: Path) -> Path:
    """A folder of ``unique * copies`` PNGs of ``size`` (unique ones generated once into ``cache``)."""
    w, h = size
    for i in range(unique):
        src = cache / f"gen_{w}x{h}_{i}.png"
        if not src.exists():
            imageio.atomic_write_bytes(src, imageio.encode_image(generate(1000 + i, w, h), "png"))
    return repeated(sorted(cache.glob(f"gen_{w}x{h}_*.png"))[:unique], copies, dest)


def repeated(files: list[Path], copies: int, dest: Path) -> Path:
    """``copies`` names for each file (hard links where possible): long enough runs to time."""
    dest.mkdir(parents=True, exist_ok=True)
    for f in files:
        for c in range(copies):
            target = dest / f"{f.stem}_{c}{f.suffix}"
            try:
                os.link(f, target)
            except OSError:
                shutil.copyfile(f, target)
    return dest


def _cpu() -> float:
    """CPU seconds of this process and its finished children (robust to other load on the machine)."""
    ch = resource.getrusage(resource.RUSAGE_CHILDREN)
    return time.process_time() + ch.ru_utime + ch.ru_stime


def timed(fn, *args) -> tuple[float, float]:
    """(wall, cpu) seconds of one call."""
    w, c = time.perf_counter(), _cpu()
    fn(*args)
    return time.perf_counter() - w, _cpu() - c


def prepare_floor(files: list[Path]) -> list:
    """Untimed: the LRs to encode and, where the source bytes cannot be kept, the HR to encode."""
    preset = get_preset("seed")
    work = []
    for p in files:
        data = p.read_bytes()
        img = imageio.to_rgb8(imageio.decode_image(data))
        h, w = (d - d % max(SCALES) for d in img.shape[:2])
        keep = (w, h) == img.shape[1::-1] and _is_plain_png(data)
        lrs = [degrade(img[:h, :w], s, preset, 0, p.stem) for s in SCALES]
        bgr = np.ascontiguousarray(img[:h, :w, ::-1])
        work.append((p, None if keep else bgr, [(np.ascontiguousarray(lr[..., ::-1]), par) for lr, par in lrs]))
    return work


def run_floor(work: list) -> None:
    """Decode each source once (with the stage's decoder) and encode only what must be."""
    for p, hr, lrs in work:
        decode_source(p.read_bytes(), imageio.MAX_PIXELS_DEFAULT)
        for lr, params in lrs:  # OpenCV's own order: no conversion counted in the floor
            encode_lr(lr, params, bgr=True)
        if hr is not None:
            cv2.imencode(".png", hr, [cv2.IMWRITE_PNG_COMPRESSION, 3])


def shard_config(src: Path, out: Path, workers: int, tile: int = 0) -> ShardConfig:
    shutil.rmtree(out, ignore_errors=True)
    n = len(imageio.list_images([src]))
    return ShardConfig(inp=src, out=out, split="train" if tile else "eval", tile=tile, workers=workers,
                       shard_size=max(1, -(-n // 8)), part="0/1", scales=list(SCALES))


def seed_way(files: list[Path], out: Path) -> None:
    """The seed's scripts: decode, degrade, loose LR JPEG files next to a copied HR file."""
    preset = get_preset("seed")
    for d in ("hr", *(f"lr_x{s}" for s in SCALES)):
        (out / d).mkdir(parents=True)
    for p in files:
        img = imageio.to_rgb8(imageio.read_image(p))
        h, w = (d - d % max(SCALES) for d in img.shape[:2])
        shutil.copyfile(p, out / "hr" / p.name)
        for s in SCALES:
            lr, _ = degrade(img[:h, :w], s, preset, 0, p.stem)
            cv2.imwrite(str(out / f"lr_x{s}" / (p.stem + ".jpg")), lr[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 85])


def cli_startup_seconds() -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "awm", "shard", "--help"], check=True, capture_output=True)
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unique", type=int, default=4, help="generated images per size")
    ap.add_argument("--copies", type=int, default=12, help="names per 1080p image (a third for 4K)")
    ap.add_argument("--sets", default="1920x1080,3840x2160,real", help="which input sets")
    ap.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "awm-bench-shard-cache")
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="awm-bench-shard-"))
    sets = {"1920x1080": cached_sources(args.cache, (1920, 1080), args.unique, args.copies, work / "in1080"),
            "3840x2160": cached_sources(args.cache, (3840, 2160), args.unique, max(1, args.copies // 3),
                                        work / "in4k")}
    sets = {k: v for k, v in sets.items() if k in args.sets.split(",")}
    if REAL.is_dir() and "real" in args.sets.split(","):
        sets["real"] = repeated(imageio.list_images([REAL]), args.copies, work / "real")
    results: dict = {}
    load_start = os.getloadavg()
    try:
        for name, src in sets.items():
            files = imageio.list_images([src])
            runs: dict[str, list[tuple[float, float]]] = {
                k: [] for k in ("floor", "shard_w1", "shard_w2", "shard_train_tiled", "seed_way")}
            work_floor = prepare_floor(files)
            for _ in range(args.repeats):
                runs["floor"].append(timed(run_floor, work_floor))
                for w in (1, 2):
                    runs[f"shard_w{w}"].append(timed(shard, shard_config(src, work / "out", w)))
                runs["shard_train_tiled"].append(timed(shard, shard_config(src, work / "out", 1, tile=512)))
                shutil.rmtree(work / "seed", ignore_errors=True)
                runs["seed_way"].append(timed(seed_way, files, work / "seed"))
            wall = {k: statistics.median(t[0] for t in v) for k, v in runs.items()}
            cpu = {k: statistics.median(t[1] for t in v) for k, v in runs.items()}
            n = len(files)
            results[name] = {
                "images": n,
                "floor_img_s": round(n / wall["floor"], 2),
                "shard_w1_img_s_per_core": round(n / wall["shard_w1"], 2),
                "shard_w2_img_s_per_core": round(n / wall["shard_w2"] / 2, 2),
                "shard_train_tiled_img_s": round(n / wall["shard_train_tiled"], 2),
                "seed_way_img_s": round(n / wall["seed_way"], 2),
                "ratio_w1_to_floor": round(wall["floor"] / wall["shard_w1"], 3),
                "ratio_w1_to_floor_cpu": round(cpu["floor"] / cpu["shard_w1"], 3),
                "speedup_w2": round(wall["shard_w1"] / wall["shard_w2"], 3),
                "cpu_w2_over_w1": round(cpu["shard_w2"] / cpu["shard_w1"], 3),
                "ratio_seed_way_to_floor": round(wall["floor"] / wall["seed_way"], 3),
                "median_wall_s": {k: round(v, 3) for k, v in wall.items()},
                "median_cpu_s": {k: round(v, 3) for k, v in cpu.items()},
            }
            print(name, json.dumps(results[name]), file=sys.stderr)
        results["cli_startup_s"] = round(cli_startup_seconds(), 3)
        results["png_decoder"] = "libspng (pyspng)" if _spng is not None else "opencv"
        results["loadavg_start"] = load_start
        results["loadavg_end"] = os.getloadavg()
        results["cpu_count"] = os.cpu_count()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
