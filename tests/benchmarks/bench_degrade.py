"""On-the-fly degradation: (LR, HR) pairs/s of the worker path (per loader core) vs the device path.

Both sides make the same batches from the same HR-only shards (generated wallpapers), HR patch
``--patch``, ``--batch`` crops, each decode reused ``--ppi`` times, the same per-sample params:

- ``worker``: the loader makes the LR in-process with OpenCV (awm.data.degrade), one core: what
  ``data.degrade_on=worker`` costs per loader core (decode and crop included).
- ``loader_hr_only``: the loader side of ``data.degrade_on=device`` (decode, crop, draw params),
  one core.
- ``device``: :func:`awm.data.degrade_device.degrade_batch` on the training device (CUDA when present,
  else this CPU with ``--device-threads``), on batches already made, synchronised per batch.

The baseline is ``worker`` in the same run: ``device_vs_worker_core`` is how many loader cores the
device path replaces. Run by hand: .venv/bin/python tests/benchmarks/bench_degrade.py
Prints one JSON object last (medians over --repeats interleaved runs).
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
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

from awm.data.degrade_device import degrade_batch  # noqa: E402
from awm.data.loader import DataConfig, PairStream, TarReader, shard_list  # noqa: E402


def loader_pairs(cfg: DataConfig, seconds: float) -> float:
    """In-process loader batches per second x batch size (one core)."""
    stream = PairStream(cfg, shard_list(cfg.train), seed=0, rank=0)
    reader, skipped, cache, n, i = TarReader(), Counter(), {}, 0, 0
    stream.make_batch(0, reader, skipped, cache)
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        n += stream.make_batch(i, reader, skipped, cache)["hr"].shape[0]
        i += 1
    assert not skipped, skipped
    return n / (time.perf_counter() - t0)


def device_pairs(batches: list[dict], scale: int, dev: torch.device, seconds: float) -> float:
    """degrade_batch on HR batches already on the device, cycling through them."""
    hrs = [(b["hr"].to(dev), b["degrade"]) for b in batches]
    degrade_batch(*hrs[0], scale)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    sync()
    n, i, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds or n == 0:
        hr, params = hrs[i % len(hrs)]
        n += degrade_batch(hr, params, scale).shape[0]
        sync()
        i += 1
    return n / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", default="realesrgan,seed")
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", default="768x512", help="generated HR wallpaper size")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--patch", type=int, default=256)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--ppi", type=int, default=8, help="batches each decode serves (data.patches_per_image)")
    ap.add_argument("--seconds", type=float, default=8.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--device-threads", type=int, default=1, help="torch threads of the device path on CPU")
    a = ap.parse_args()
    cv2.setNumThreads(1)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if dev.type == "cpu":
        torch.set_num_threads(a.device_threads)
    w, h = (int(v) for v in a.size.split("x"))
    presets = a.presets.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        d = make_pair_shards(Path(tmp) / "hr", [a.images], scales=(a.scale,), size=(w, h), hr_only=True)

        def cfg(name: str, on: str) -> DataConfig:
            return DataConfig(train=str(d), scale=a.scale, patch=a.patch, batch_size=a.batch,
                              patches_per_image=a.ppi, streams=1, workers=0, degrade=name, degrade_on=on)

        made = {name: [PairStream(cfg(name, "device"), shard_list(d), 0, 0).make_batch(i, TarReader(), Counter())
                       for i in range(0, 4 * a.ppi, a.ppi)] for name in presets}
        sides = {}
        for name in presets:
            sides[f"{name}/worker"] = lambda n=name: loader_pairs(cfg(n, "worker"), a.seconds)
            sides[f"{name}/loader_hr_only"] = lambda n=name: loader_pairs(cfg(n, "device"), a.seconds / 2)
            sides[f"{name}/device"] = lambda n=name: device_pairs(made[n], a.scale, dev, a.seconds)
        runs: dict[str, list[float]] = {k: [] for k in sides}
        for _ in range(a.repeats):
            for k, f in sides.items():
                runs[k].append(f())
            print({k: round(v[-1], 1) for k, v in runs.items()}, file=sys.stderr)
    med = {k: round(statistics.median(v), 1) for k, v in runs.items()}
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else f"cpu, {a.device_threads} thread(s)"
    print(json.dumps({
        "benchmark": "degrade", "unit": "(LR, HR) pairs/s (worker, loader_hr_only: one core)",
        "device": name, "hr_patch": a.patch, "scale": a.scale, "batch": a.batch, "ppi": a.ppi,
        "repeats": a.repeats, "median": med, "runs": {k: [round(x, 1) for x in v] for k, v in runs.items()},
        "device_vs_worker_core": {n: round(med[f"{n}/device"] / med[f"{n}/worker"], 2) for n in presets},
        "hr_only_loader_vs_worker": {n: round(med[f"{n}/loader_hr_only"] / med[f"{n}/worker"], 2)
                                     for n in presets}}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
