"""(LR, HR 256) training pairs per second per loader core: train shards vs the seed's loose files.

Both sides see the same generated wallpapers (4x, seed degradation preset, LR JPEG q85):
- loose files (the seed's way): for every pair, read the HR PNG and LR JPEG files, decode both
  whole images, cut one aligned random crop, flip;
- awm.data from `awm shard --tile` train shards: random access into the tar, decode each tile
  once for ``patches_per_image`` batches (one aligned crop per batch), collate uint8 batches with
  per-sample flip/rot90 codes; measured in-process (one core) and through a DataLoader with one
  worker process. The flips/rot90 themselves run on the training device (awm.data.augment); their
  CPU cost, for CPU-only training, is reported separately.
Run by hand: .venv/bin/python tests/benchmarks/bench_loader.py [--images 8 --tile 512 --ppi 4]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from awm.data import DataConfig, PairStream, TarReader, augment, shard_list, train_loader  # noqa: E402
from awm.degrade import degrade, encode_lr, get_preset  # noqa: E402
from awm.io import encode_image  # noqa: E402
from awm.shard import ShardConfig, shard  # noqa: E402
from awm.synth import generate  # noqa: E402


def make_data(root: Path, n: int, w: int, h: int, scale: int) -> None:
    preset = get_preset("seed")
    (root / "hr").mkdir(parents=True)
    (root / "lr").mkdir()
    for i in range(n):
        hr = generate(1000 + i, w, h)
        (root / "hr" / f"{i:04d}.png").write_bytes(encode_image(hr, "png"))
        lr, params = degrade(hr, scale, preset, 0, f"{i:04d}")
        (root / "lr" / f"{i:04d}.jpg").write_bytes(encode_lr(lr, params))


def loose_pairs(root: Path, patch: int, scale: int, seconds: float) -> float:
    """The seed's loader: decode the whole HR and LR files for every training pair."""
    names = sorted(p.name.removesuffix(".png") for p in (root / "hr").glob("*.png"))
    rng, q, n, t0 = np.random.default_rng(0), patch // scale, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        name = names[int(rng.integers(len(names)))]
        hr = cv2.imread(str(root / "hr" / f"{name}.png"), cv2.IMREAD_COLOR)
        lr = cv2.imread(str(root / "lr" / f"{name}.jpg"), cv2.IMREAD_COLOR)
        y, x = int(rng.integers(lr.shape[0] - q + 1)), int(rng.integers(lr.shape[1] - q + 1))
        hp = np.ascontiguousarray(hr[y * scale:(y + q) * scale, x * scale:(x + q) * scale, ::-1][:, ::-1])
        lp = np.ascontiguousarray(lr[y:y + q, x:x + q, ::-1][:, ::-1])
        assert hp.shape[0] == patch and lp.shape[0] == q
        n += 1
    return n / (time.perf_counter() - t0)


def shard_pairs_in_process(cfg: DataConfig, seconds: float) -> float:
    stream = PairStream(cfg, shard_list(cfg.train), seed=0, rank=0)
    reader, skipped, cache, n, i = TarReader(), Counter(), {}, 0, 0
    for path, _ in shard_list(cfg.train):  # index the shard files once, as a worker does
        reader.read(path, 0)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += stream.make_batch(i, reader, skipped, cache)["hr"].shape[0]
        i += 1
    assert not skipped, skipped
    return n / (time.perf_counter() - t0)


def shard_pairs_one_worker(cfg: DataConfig, seconds: float) -> float:
    it = iter(train_loader(cfg, seed=0, rank=0))
    next(it)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += next(it)["hr"].shape[0]
    return n / (time.perf_counter() - t0)


def augment_on_cpu(cfg: DataConfig, seconds: float) -> float:
    b = PairStream(cfg, shard_list(cfg.train), seed=0, rank=0).make_batch(0, TarReader(), Counter())
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        augment(b["hr"], b["aug"])
        augment(b["lr"], b["aug"])
        n += b["hr"].shape[0]
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", default="1920x1080")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--ppi", type=int, default=8, help="patches cut per decoded tile (data.patches_per_image)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    cv2.setNumThreads(1)
    w, h = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        t0 = time.perf_counter()
        make_data(root, a.images, w, h, a.scale)
        shard(ShardConfig(inp=root / "hr", out=root / "shards", scales=[a.scale], tile=a.tile, shard_size=4))
        print(f"data ready in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        cfg = DataConfig(train=str(root / "shards"), scale=a.scale, patch=a.patch, batch_size=16,
                         patches_per_image=a.ppi, streams=1, workers=0)
        runs: dict[str, list[float]] = {"loose_files": [], "shards_in_process": [], "shards_1_worker": [],
                                        "augment_on_cpu": []}
        for _ in range(a.repeats):
            runs["loose_files"].append(loose_pairs(root, a.patch, a.scale, a.seconds))
            runs["shards_in_process"].append(shard_pairs_in_process(cfg, a.seconds))
            runs["shards_1_worker"].append(shard_pairs_one_worker(
                DataConfig(**{**cfg.__dict__, "workers": 1}), a.seconds))
            runs["augment_on_cpu"].append(augment_on_cpu(cfg, a.seconds / 3))
            print({k: round(v[-1], 1) for k, v in runs.items()}, file=sys.stderr)
    med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    print(json.dumps({
        "benchmark": "loader", "unit": "(LR, HR) pairs/s per core", "hr_patch": a.patch, "scale": a.scale,
        "source": a.size, "tile": a.tile, "patches_per_image": a.ppi, "images": a.images, "repeats": a.repeats,
        "median": med, "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "speedup_in_process": round(med["shards_in_process"] / med["loose_files"], 1),
        "speedup_1_worker": round(med["shards_1_worker"] / med["loose_files"], 1),
        "goals": {"pairs_per_s": 1000, "speedup": 20}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
