"""(LR, HR) training pairs per second per loader core: train shards vs loose files, like for like.

All sides see the same generated wallpapers (4x, seed degradation preset, LR JPEG q85) and build
the same thing: uint8 batches of ``batch`` aligned (LR, HR) crops plus flip/rot90 codes (the flips
themselves run on the training device, awm.data.loader.augment; their CPU cost is reported apart).

- ``same_work``: loose tile files vs shards. The loose side reads the very tiles that
  ``awm shard --tile`` wrote (the same PNG/JPEG bytes, extracted to files) and reuses each decode
  for ``ppi`` batches, as the shard loader does. Same pixels, same reuse: the ratio is what the
  shard format and loader themselves buy (file opens vs one indexed tar).
- ``end_to_end``: the seed's way (every pair decodes a whole ``--size`` HR PNG + LR JPEG, reuse 1)
  vs shards of ``--tile`` tiles reused ``--ppi`` times. This ratio is mostly the workload (far
  fewer decoded pixels per pair), named with its settings; ``whole_images_same_reuse`` (whole
  images, reuse ``ppi``) splits it into the reuse part and the tile part.
- ``tiling_offline``: the one-off cost of ``awm shard --tile`` (degrade, encode, write), paid
  before training and not part of any pairs/s figure.
- ``remote``: the same shards served over HTTP on loopback (a real server in this process) and
  read through awm.shardio's cache, cold (emptied before each repeat) and warm, beside the local
  folder: steady pairs/s in process, plus the set-up seconds before the first batch (index fetch,
  shard downloads when cold, tar indexing).

Run by hand: .venv/bin/python tests/benchmarks/bench_loader.py [--images 8 --tile 512 --ppi 8]
Prints one JSON object last (medians over --repeats, interleaved runs).
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from awm.data.degrade import degrade, encode_lr, get_preset  # noqa: E402
from awm.data.loader import DataConfig, PairStream, TarReader, augment, shard_list, train_loader  # noqa: E402
from awm.data.shard import ShardConfig, shard  # noqa: E402
from awm.data.synth import generate  # noqa: E402
from awm.imageio import encode_image  # noqa: E402
from awm.shardio.cache import CACHE_ENV  # noqa: E402
from awm.shardio.read import iter_tar  # noqa: E402
from awm.shardwrite import list_shards  # noqa: E402


def make_whole(root: Path, n: int, w: int, h: int, scale: int) -> None:
    """Whole HR PNGs and their LR JPEGs as loose files (the seed's layout, paired by name)."""
    preset = get_preset("seed")
    (root / "hr").mkdir(parents=True)
    (root / "lr").mkdir()
    for i in range(n):
        hr = generate(1000 + i, w, h)
        (root / "hr" / f"{i:04d}.png").write_bytes(encode_image(hr, "png"))
        lr, params = degrade(hr, scale, preset, 0, f"{i:04d}")
        (root / "lr" / f"{i:04d}.jpg").write_bytes(encode_lr(lr, params))


def extract_tiles(shards: Path, dst: Path, scale: int) -> int:
    """The shards' tiles as loose files, byte for byte (HR PNG, LR JPEG, paired by name)."""
    (dst / "hr").mkdir(parents=True)
    (dst / "lr").mkdir()
    n = 0
    for tar in list_shards(shards, "train-"):
        for s in iter_tar(tar):
            (dst / "hr" / f"{s['__key__']}.png").write_bytes(s["hr.png"])
            (dst / "lr" / f"{s['__key__']}.jpg").write_bytes(s[f"lr_x{scale}.jpg"])
            n += 1
    return n


def loose_pairs(root: Path, patch: int, scale: int, batch: int, reuse: int, seconds: float) -> float:
    """Loose files: decode ``batch`` (HR, LR) files, cut one aligned crop of each for ``reuse`` batches."""
    names = sorted(p.stem for p in (root / "hr").glob("*.png"))
    rng, q, n, t0 = np.random.default_rng(0), patch // scale, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        group = []
        for _ in range(batch):
            name = names[int(rng.integers(len(names)))]
            hr = cv2.cvtColor(cv2.imread(str(root / "hr" / f"{name}.png"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            lr = cv2.cvtColor(cv2.imread(str(root / "lr" / f"{name}.jpg"), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
            group.append((hr, lr))
        for _ in range(reuse):
            hr_b = np.empty((batch, patch, patch, 3), np.uint8)
            lr_b = np.empty((batch, q, q, 3), np.uint8)
            for k, (hr, lr) in enumerate(group):
                y, x = int(rng.integers(lr.shape[0] - q + 1)), int(rng.integers(lr.shape[1] - q + 1))
                hr_b[k] = hr[y * scale:(y + q) * scale, x * scale:(x + q) * scale]
                lr_b[k] = lr[y:y + q, x:x + q]
            codes = rng.integers(8, size=batch)
            assert codes.shape[0] == hr_b.shape[0]
            n += batch
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


def shard_pairs_timed_setup(cfg: DataConfig, seconds: float) -> tuple[float, float]:
    """(pairs/s after set-up, set-up seconds): index, fetch (remote, cold cache) and index every shard."""
    t0 = time.perf_counter()
    shards = shard_list(cfg.train)
    stream = PairStream(cfg, shards, seed=0, rank=0)
    reader, skipped, cache, n, i = TarReader(), Counter(), {}, 0, 0
    for path, _ in shards:
        reader.read(path, 0)
    setup = time.perf_counter() - t0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += stream.make_batch(i, reader, skipped, cache)["hr"].shape[0]
        i += 1
    reader.close()
    assert not skipped, skipped
    return n / (time.perf_counter() - t0), setup


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def remote_side(cfg: DataConfig, url: str, cache: Path, cold: bool, seconds: float) -> tuple[float, float]:
    if cold:
        shutil.rmtree(cache, ignore_errors=True)
    os.environ[CACHE_ENV] = str(cache)
    return shard_pairs_timed_setup(DataConfig(**{**cfg.__dict__, "train": url}), seconds)


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
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--ppi", type=int, default=8, help="batches each decode serves (data.patches_per_image)")
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    cv2.setNumThreads(1)
    w, h = (int(v) for v in a.size.split("x"))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_whole(root / "whole", a.images, w, h, a.scale)
        t0 = time.perf_counter()
        shard(ShardConfig(inp=root / "whole" / "hr", out=root / "shards", scales=[a.scale], tile=a.tile,
                          shard_size=4, workers=1))
        tiling_s = time.perf_counter() - t0
        tiles = extract_tiles(root / "shards", root / "tiles", a.scale)
        print(f"data ready: {tiles} tiles, tiling {tiling_s:.1f} s", file=sys.stderr)
        cfg = DataConfig(train=str(root / "shards"), scale=a.scale, patch=a.patch, batch_size=a.batch,
                         patches_per_image=a.ppi, streams=1, workers=0)
        sides = {
            "whole_images_reuse_1": lambda: loose_pairs(root / "whole", a.patch, a.scale, a.batch, 1, a.seconds),
            "whole_images_same_reuse": lambda: loose_pairs(root / "whole", a.patch, a.scale, a.batch, a.ppi,
                                                           a.seconds),
            "loose_tiles_same_reuse": lambda: loose_pairs(root / "tiles", a.patch, a.scale, a.batch, a.ppi,
                                                          a.seconds),
            "shards_in_process": lambda: shard_pairs_in_process(cfg, a.seconds),
            "shards_1_worker": lambda: shard_pairs_one_worker(DataConfig(**{**cfg.__dict__, "workers": 1}),
                                                              a.seconds),
            "augment_on_cpu": lambda: augment_on_cpu(cfg, a.seconds / 3),
        }
        handler = functools.partial(QuietHandler, directory=str(root / "shards"))
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        url = f"http://127.0.0.1:{server.server_address[1]}/index.json"
        remote = {"local_folder": lambda: shard_pairs_timed_setup(cfg, a.seconds),
                  "http_cold_cache": lambda: remote_side(cfg, url, root / "cache", True, a.seconds),
                  "http_warm_cache": lambda: remote_side(cfg, url, root / "cache", False, a.seconds)}
        runs: dict[str, list[float]] = {k: [] for k in sides}
        remote_runs: dict[str, list[tuple[float, float]]] = {k: [] for k in remote}
        for _ in range(a.repeats):
            for k, f in sides.items():
                runs[k].append(f())
            for k, f in remote.items():
                remote_runs[k].append(f())
            print({k: round(v[-1], 1) for k, v in runs.items()},
                  {k: [round(x, 2) for x in v[-1]] for k, v in remote_runs.items()}, file=sys.stderr)
        server.shutdown()
        server.server_close()
    med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    remote_med = {k: {"pairs_per_s": round(statistics.median(x for x, _ in v), 1),
                      "setup_s": round(statistics.median(t for _, t in v), 3)} for k, v in remote_runs.items()}
    print(json.dumps({
        "benchmark": "loader", "unit": "(LR, HR) pairs/s on one core (shards_1_worker: one loader process)",
        "hr_patch": a.patch, "scale": a.scale, "batch": a.batch, "images": a.images, "repeats": a.repeats,
        "median": med, "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "same_work": {"settings": f"the same {a.tile} px tiles, each decode reused for {a.ppi} batches",
                      "ratio_shards_vs_loose_tiles": round(med["shards_in_process"] / med["loose_tiles_same_reuse"], 2)},
        "end_to_end": {"settings": f"loose: whole {a.size} images, reuse 1; shards: {a.tile} px tiles, reuse {a.ppi}",
                       "ratio": round(med["shards_in_process"] / med["whole_images_reuse_1"], 1),
                       "ratio_1_worker": round(med["shards_1_worker"] / med["whole_images_reuse_1"], 1),
                       "of_which_reuse": round(med["whole_images_same_reuse"] / med["whole_images_reuse_1"], 1)},
        "tiling_offline": {"images": a.images, "tiles": tiles, "seconds": round(tiling_s, 2),
                           "s_per_image": round(tiling_s / a.images, 3), "workers": 1},
        "remote": {"settings": "the same shards: local folder vs HTTP on 127.0.0.1 through the shard cache, "
                               "in process (one core); setup_s = index + fetch (cold) + tar indexing",
                   **remote_med,
                   "ratio_http_warm_vs_local": round(remote_med["http_warm_cache"]["pairs_per_s"]
                                                     / remote_med["local_folder"]["pairs_per_s"], 2),
                   "ratio_http_cold_vs_local": round(remote_med["http_cold_cache"]["pairs_per_s"]
                                                     / remote_med["local_folder"]["pairs_per_s"], 2)}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
