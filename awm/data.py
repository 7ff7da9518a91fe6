"""Training and validation data from pair shards: random access, aligned crops, exact resume.

Design (why it looks like this):
- **Resampled, indexed, per-batch seeded.** Every micro-batch ``i`` of rank ``r`` is drawn from
  ``np.random.default_rng([seed, r, i])``: samples are picked uniformly (with replacement) over
  all samples of all shards and read by random access (each worker indexes a tar's members once,
  then seeks). A rank never runs out of data, so uneven shards cannot make one rank wait for
  another in DDP, every rank does exactly the same number of steps, and the data position is
  just the micro-batch counter: resuming at step ``n`` continues with batch ``n * accum``,
  identically whatever the number of loader workers.
- **Decode once, cut several patches.** Decoding the HR PNG dominates the cost, so each decoded
  sample gives ``patches_per_image`` aligned crops (HR patch ``p``, LR patch ``p / scale``),
  each with its own dihedral augmentation (flips and rot90).
- **Workers collate.** Loader workers hand over whole uint8 NHWC batches (4x less inter-process
  traffic than float); the training step converts them on the device.
- **Bad samples are skipped and counted** (undecodable, too small, LR/HR size mismatch), and a
  replacement sample is drawn from the same generator, so the stream stays deterministic.
- **Optional on-the-fly degradation** (``degrade`` preset, or shards with HR only): the HR patch
  is cut first and degraded in the worker with :mod:`awm.degrade`, so only the patch is processed.
"""

from __future__ import annotations

import tarfile
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from awm.config import check
from awm.io import MAX_PIXELS_DEFAULT, ImageError, decode_image, to_rgb8
from awm.shards import iter_tar, read_index

IMAGE_EXTS = ("png", "jpg", "jpeg", "webp")


@dataclass
class DataConfig:
    train: str = field(default="shards", metadata={"help": "folder of train-*.tar pair shards with index.json"})
    eval: str | None = field(default=None, metadata={"help": "folder of eval-*.tar shards (null: train folder)"})
    scale: int = field(default=4, metadata={"help": "upscaling factor; shards must hold lr_x{scale}"})
    patch: int = field(default=256, metadata={"help": "HR patch size in pixels (LR patch = patch / scale)"})
    batch_size: int = field(default=16, metadata={"help": "micro-batch per process"})
    patches_per_image: int = field(default=4, metadata={"help": "crops cut from each decoded sample"})
    augment: bool = field(default=True, metadata={"help": "random flips and rot90 (same on LR and HR)"})
    workers: int = field(default=4, metadata={"help": "loader worker processes per rank (0: in-process)"})
    prefetch: int = field(default=4, metadata={"help": "batches prefetched per worker"})
    degrade: str | None = field(default=None, metadata={
        "help": "awm.degrade preset applied on the fly to HR patches (needed for HR-only shards)"})
    epoch_steps: int | None = field(default=None, metadata={
        "help": "optimizer steps per epoch (null: one pass over the index's samples)"})
    max_pixels: int = MAX_PIXELS_DEFAULT

    def __post_init__(self) -> None:
        check(self.scale in (1, 2, 3, 4, 8), "data.scale", self.scale, "1, 2, 3, 4 or 8")
        check(self.patch > 0 and self.patch % self.scale == 0, "data.patch", self.patch,
              "a positive multiple of data.scale")
        check(self.batch_size >= 1, "data.batch_size", self.batch_size, ">= 1")
        check(self.patches_per_image >= 1, "data.patches_per_image", self.patches_per_image, ">= 1")
        check(self.workers >= 0, "data.workers", self.workers, ">= 0")
        check(self.prefetch >= 1, "data.prefetch", self.prefetch, ">= 1")
        check(self.epoch_steps is None or self.epoch_steps >= 1, "data.epoch_steps", self.epoch_steps, ">= 1")


def shard_list(directory: str | Path, split: str = "train") -> list[tuple[Path, int]]:
    """``(path, nsamples)`` of a split's shards from the folder's ``index.json``."""
    d = Path(directory)
    index = read_index(d)
    shards = [(d / s["url"], int(s["nsamples"])) for s in index["shardlist"]
              if Path(s["url"]).name.startswith(split + "-") and int(s["nsamples"]) > 0]
    if not shards:
        raise FileNotFoundError(f"no non-empty {split}-*.tar shards listed in {d / 'index.json'}")
    return shards


class TarReader:
    """Random access to the samples of local tar shards: headers scanned once, then seek + read.

    Keeps at most ``max_open`` files open (least recently used closed first).
    """

    def __init__(self, max_open: int = 64):
        self.max_open = max_open
        self._open: OrderedDict[Path, tuple[Any, list[dict[str, tuple[int, int]]], list[str]]] = OrderedDict()

    def _index(self, path: Path):
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path]
        members: list[dict[str, tuple[int, int]]] = []
        keys: list[str] = []
        with tarfile.open(path, mode="r:") as tar:
            for m in tar:
                if not m.isfile():
                    continue
                key, _, ext = Path(m.name).name.partition(".")
                if not keys or keys[-1] != key:
                    keys.append(key)
                    members.append({})
                members[-1][ext] = (m.offset_data, m.size)
        entry = (open(path, "rb"), members, keys)  # noqa: SIM115 - kept open for random access
        self._open[path] = entry
        while len(self._open) > self.max_open:
            self._open.popitem(last=False)[1][0].close()
        return entry

    def read(self, path: Path, i: int) -> dict[str, Any]:
        """Sample ``i`` of the shard as ``{"__key__", ext: bytes}``; IndexError if there is none."""
        f, members, keys = self._index(path)
        out: dict[str, Any] = {"__key__": keys[i]}
        for ext, (offset, size) in members[i].items():
            f.seek(offset)
            out[ext] = f.read(size)
        return out

    def close(self) -> None:
        for f, _, _ in self._open.values():
            f.close()
        self._open.clear()


def _find(sample: dict[str, Any], stem: str) -> bytes | None:
    for ext in IMAGE_EXTS:
        if f"{stem}.{ext}" in sample:
            return sample[f"{stem}.{ext}"]
    return None


def decode_pair(sample: dict[str, Any], scale: int, need_lr: bool,
                max_pixels: int = MAX_PIXELS_DEFAULT) -> tuple[np.ndarray, np.ndarray | None]:
    """HR (and LR, when the shard has ``lr_x{scale}`` and it is wanted) as 8-bit RGB arrays.

    HR-only samples (``hr.*``, or a raw shard's single image) give ``(hr, None)``.
    Raises ImageError with a skip reason.
    """
    hr_bytes = _find(sample, "hr")
    if hr_bytes is None:
        hr_bytes = next((sample[e] for e in IMAGE_EXTS if e in sample), None)
    if hr_bytes is None:
        raise ImageError("no_hr")
    hr = to_rgb8(decode_image(hr_bytes, max_pixels))
    lr_bytes = _find(sample, f"lr_x{scale}") if need_lr else None
    if lr_bytes is None:
        return hr, None
    lr = to_rgb8(decode_image(lr_bytes, max_pixels))
    if scale * lr.shape[0] != hr.shape[0] or scale * lr.shape[1] != hr.shape[1]:
        raise ImageError("size_mismatch", f"lr {lr.shape[1]}x{lr.shape[0]} hr {hr.shape[1]}x{hr.shape[0]}")
    return hr, lr


def dihedral(img: np.ndarray, code: int) -> np.ndarray:
    """One of the 8 flips/rotations of an HWC array (code 0 = identity)."""
    if code & 4:
        img = img[:, ::-1]
    return np.rot90(img, code & 3)


class PairStream(torch.utils.data.IterableDataset):
    """Endless stream of uint8 NHWC batches ``{"lr", "hr", "index", "worker", "skipped"}`` for one rank.

    Batch ``i`` depends only on ``(seed, rank, i)``; worker ``w`` of ``W`` makes batches
    ``start + w, start + w + W, ...``, which the DataLoader returns in order.
    """

    def __init__(self, cfg: DataConfig, shards: list[tuple[Path, int]], seed: int, rank: int, start: int = 0):
        super().__init__()
        self.cfg, self.shards, self.seed, self.rank, self.start = cfg, shards, seed, rank, start
        self.cum = np.cumsum([n for _, n in shards])
        self.preset = None

    def _degrade(self, hr: np.ndarray, rng: np.random.Generator, key: str) -> np.ndarray:
        from awm import degrade

        if self.preset is None:
            self.preset = degrade.get_preset(self.cfg.degrade)
        lr, _ = degrade.degrade(hr, self.cfg.scale, self.preset, int(rng.integers(2**31)), key)
        return lr

    def make_batch(self, i: int, reader: TarReader, skipped: Counter) -> dict[str, Any]:
        c = self.cfg
        p, s = c.patch, c.scale
        q = p // s
        rng = np.random.default_rng([self.seed, self.rank, i])
        hr_b = np.empty((c.batch_size, p, p, 3), np.uint8)
        lr_b = np.empty((c.batch_size, q, q, 3), np.uint8)
        k = 0
        while k < c.batch_size:
            u = int(rng.integers(self.cum[-1]))
            j = int(np.searchsorted(self.cum, u, side="right"))
            path, first = self.shards[j][0], int(self.cum[j - 1]) if j else 0
            try:
                sample = reader.read(path, u - first)
                hr, lr = decode_pair(sample, s, c.degrade is None, c.max_pixels)
            except IndexError:
                skipped["missing_sample"] += 1
                continue
            except ImageError as e:
                skipped[e.reason] += 1
                continue
            h, w = hr.shape[0] // s, hr.shape[1] // s
            if h < q or w < q:
                skipped["too_small"] += 1
                continue
            for _ in range(min(c.patches_per_image, c.batch_size - k)):
                y, x = int(rng.integers(h - q + 1)), int(rng.integers(w - q + 1))
                code = int(rng.integers(8)) if c.augment else 0
                hp = hr[y * s:(y + q) * s, x * s:(x + q) * s]
                if lr is not None:
                    lp = lr[y:y + q, x:x + q]
                elif c.degrade is not None:
                    lp = self._degrade(hp, rng, sample["__key__"])
                else:
                    raise ValueError(f"sample {sample['__key__']} in {path} has no lr_x{s}: "
                                     "set data.degrade=PRESET to degrade HR patches on the fly")
                hr_b[k] = dihedral(hp, code)
                lr_b[k] = dihedral(lp, code)
                k += 1
        return {"lr": torch.from_numpy(lr_b), "hr": torch.from_numpy(hr_b), "index": i}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, skipped = TarReader(), Counter()
        try:
            i = self.start + wid
            while True:
                batch = self.make_batch(i, reader, skipped)
                batch["worker"], batch["skipped"] = wid, dict(skipped)
                yield batch
                i += nw
        finally:
            reader.close()


def train_loader(cfg: DataConfig, seed: int, rank: int, start: int = 0,
                 pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """The rank's DataLoader over ``cfg.train``, starting at micro-batch ``start`` (resume)."""
    ds = PairStream(cfg, shard_list(cfg.train, "train"), seed, rank, start)
    kw: dict[str, Any] = {"prefetch_factor": cfg.prefetch} if cfg.workers else {}
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.workers,
                                       pin_memory=pin_memory, **kw)


def epoch_steps(cfg: DataConfig, world_size: int, accum: int) -> int:
    """Optimizer steps in one epoch: about one visit of every sample across all ranks."""
    if cfg.epoch_steps:
        return cfg.epoch_steps
    total = sum(n for _, n in shard_list(cfg.train, "train"))
    images_per_step = cfg.batch_size * accum * world_size / cfg.patches_per_image
    return max(1, round(total / images_per_step))


class SkipCounter:
    """Merges the cumulative skip counts that each loader worker reports with its batches."""

    def __init__(self):
        self.per_worker: dict[int, dict[str, int]] = {}

    def update(self, batch: dict[str, Any]) -> None:
        self.per_worker[int(batch["worker"])] = batch["skipped"]

    def total(self) -> Counter:
        out: Counter = Counter()
        for counts in self.per_worker.values():
            out.update(counts)
        return out


def eval_pairs(directory: str | Path, scale: int, rank: int, world: int, limit: int | None = None,
               crop: int | None = None, skipped: Counter | None = None,
               max_pixels: int = MAX_PIXELS_DEFAULT) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """This rank's share ``(key, lr, hr)`` of the first ``limit`` eval samples (in shard order).

    Samples ``n`` with ``n % world == rank`` go to ``rank``; ``crop`` takes a centred HR crop
    (a multiple of ``scale``) to bound validation cost on wallpapers.
    """
    d = Path(directory)
    try:
        paths = [p for p, _ in shard_list(d, "eval")]
    except FileNotFoundError:
        paths = [p for p, _ in shard_list(d, "train")]
    n = 0
    for path in paths:
        for sample in iter_tar(path):
            if limit is not None and n >= limit:
                return
            mine = n % world == rank
            n += 1
            if not mine:
                continue
            try:
                hr, lr = decode_pair(sample, scale, need_lr=True, max_pixels=max_pixels)
            except ImageError as e:
                if skipped is not None:
                    skipped[e.reason] += 1
                continue
            if lr is None:
                if skipped is not None:
                    skipped["no_lr"] += 1
                continue
            if crop:
                q = min(crop // scale, lr.shape[0], lr.shape[1])
                y, x = (lr.shape[0] - q) // 2, (lr.shape[1] - q) // 2
                lr = lr[y:y + q, x:x + q]
                hr = hr[y * scale:(y + q) * scale, x * scale:(x + q) * scale]
            yield sample["__key__"], lr, hr
