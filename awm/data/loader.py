"""Training and validation data from pair shards: random access, aligned crops, exact resume.

Design (why it looks like this):
- **Resampled, indexed, seeded by position.** Samples are picked uniformly (with replacement)
  over all samples of all shards and read by random access (each worker indexes a tar's members
  once, then seeks). A rank never runs out of data, so uneven shards cannot make one rank wait for
  another in DDP, and every rank does exactly the same number of steps.
- **Decode once, use in several batches, keep batches diverse.** Decoding the HR PNG dominates
  the cost. Micro-batch ``i`` belongs to stream ``i % streams``; each stream decodes a group of
  ``batch_size`` samples (drawn from ``rng(seed, rank, stream, group)``) and takes one aligned
  crop of each (HR patch ``p``, LR patch ``p / scale``; positions and flip/rot90 codes from
  ``rng(seed, rank, i)``) for ``patches_per_image`` consecutive batches of that stream. So every
  batch holds ``batch_size`` different images and a decode pays for ``patches_per_image`` pairs.
- **The data position is the micro-batch counter.** Batch ``i`` depends only on ``(seed, rank,
  streams, i)``, not on the number of loader workers: resuming at step ``n`` continues with batch
  ``n * accum``. Worker ``w`` of ``W`` makes batches ``i = w mod W``, which the DataLoader
  returns in order; with ``W`` dividing ``streams`` each worker keeps its streams' groups.
- **Workers only slice.** They hand over uint8 NHWC batches plus the augmentation codes (4x less
  traffic than float); flips/rot90 and the float conversion run on the device (:func:`augment`),
  where they cost nothing, instead of as slow strided copies in the worker.
- **Bad samples are skipped and counted** (undecodable, too small, LR/HR size mismatch), and a
  replacement is drawn from the same generator, so the stream stays deterministic.
- **Optional on-the-fly degradation** (``degrade`` preset, or shards with HR only): the HR patch
  is cut first and degraded in the worker with :mod:`awm.data.degrade`, so only the patch is processed.
  With ``degrade_on=device`` (the default when training on a GPU) the worker only draws each
  sample's params (the same draw) and ships them with the HR patch; the trainer degrades the whole
  batch on its device (:func:`awm.data.degrade_device.degrade_batch`), where it is ~free next to a step.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from awm.config import check
from awm.dist import Part
from awm.errors import ConfigError
from awm.imageio import IMAGE_EXTS, MAX_PIXELS_DEFAULT, ImageError, decode_image, to_rgb8
from awm.shardio.cache import local_path
from awm.shardio.locations import ShardSet, resolve
from awm.shardio.members import group_members, tar_members
from awm.shardio.read import TarReader, iter_tar


@dataclass
class DataConfig:
    train: str = field(default="shards", metadata={
        "help": "train-*.tar pair shards: a folder with index.json, an index.json URL, a brace pattern "
                "(https://host/train-{000000..000099}.tar) or pipe:COMMAND (awm.shardio)"})
    eval: str | None = field(default=None, metadata={
        "help": "eval-*.tar shards, any location data.train accepts (null: data.train)"})
    scale: int = field(default=4, metadata={"help": "upscaling factor; shards must hold lr_x{scale}"})
    patch: int = field(default=256, metadata={"help": "HR patch size in pixels (LR patch = patch / scale)"})
    batch_size: int = field(default=16, metadata={"help": "micro-batch per process"})
    patches_per_image: int = field(default=8, metadata={
        "help": "crops cut from each decoded sample, one per batch over that many batches of its stream"})
    streams: int = field(default=8, metadata={
        "help": "independent sample streams per rank; loader workers should divide it"})
    augment: bool = field(default=True, metadata={"help": "random flips and rot90 (same on LR and HR)"})
    workers: int = field(default=4, metadata={"help": "loader worker processes per rank (0: in-process)"})
    prefetch: int = field(default=4, metadata={"help": "batches prefetched per worker"})
    degrade: str | None = field(default=None, metadata={
        "help": "awm.data.degrade preset applied on the fly to HR patches (needed for HR-only shards)"})
    degrade_on: str = field(default="auto", metadata={
        "help": "where on-the-fly degradation runs: worker (loader processes), device (the training "
                "device, batched), auto (device when training on a GPU)"})
    epoch_steps: int | None = field(default=None, metadata={
        "help": "optimizer steps per epoch (null: one pass over the index's samples)"})
    limit: int | None = field(default=None, metadata={
        "help": "train on only the first N samples of data.train (in index order; null: all), e.g. for a "
                "data-scale study in a sweep"})
    max_pixels: int = MAX_PIXELS_DEFAULT
    max_bad_in_a_row: int = field(default=1000, metadata={
        "help": "stop with an error after this many unusable samples in a row (undecodable, too small): "
                "shards of only bad samples would otherwise keep the loader searching forever"})

    def __post_init__(self) -> None:
        check(self.scale in (1, 2, 3, 4, 8), "data.scale", self.scale, "1, 2, 3, 4 or 8")
        check(self.patch > 0 and self.patch % self.scale == 0, "data.patch", self.patch,
              "a positive multiple of data.scale")
        check(self.batch_size >= 1, "data.batch_size", self.batch_size, ">= 1")
        check(self.patches_per_image >= 1, "data.patches_per_image", self.patches_per_image, ">= 1")
        check(self.streams >= 1, "data.streams", self.streams, ">= 1")
        check(self.workers >= 0 and (self.workers == 0 or self.streams % self.workers == 0), "data.workers",
              self.workers, f">= 0 and dividing data.streams ({self.streams}), so each worker keeps its groups")
        check(self.prefetch >= 1, "data.prefetch", self.prefetch, ">= 1")
        check(self.max_bad_in_a_row >= 1, "data.max_bad_in_a_row", self.max_bad_in_a_row, ">= 1")
        check(self.epoch_steps is None or self.epoch_steps >= 1, "data.epoch_steps", self.epoch_steps, ">= 1")
        check(self.limit is None or self.limit >= 1, "data.limit", self.limit, "null or an integer >= 1")
        check(self.degrade_on in ("auto", "worker", "device"), "data.degrade_on", self.degrade_on,
              "auto, worker or device")


def shard_list(location: str | Path, split: str = "train", degrade: str | None = None,
               key: str = "data.train") -> list[tuple[str, int]]:
    """``(url, nsamples)`` of a split's shards at a location (folder, index URL, brace pattern, pipe:).

    ``eval`` falls back to ``train-*.tar``; with on-the-fly degradation (``degrade``), HR-only raw
    shards (``raw-*.tar`` from ``awm ingest``/``awm crawl``) serve too. A location that is not there
    or holds none of these is a ConfigError naming ``key``, raised before any work.
    """
    try:
        refs = resolve(location).shards
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(key, str(location), f"a shard location (folder with index.json, index.json URL, brace "
                                              f"pattern, pipe:COMMAND): {e}") from None
    prefixes = [split, *(["train"] if split == "eval" else []), *(["raw"] if degrade else [])]
    for prefix in prefixes:
        chosen = [s for s in refs if s.name.startswith(prefix + "-")]
        if chosen:
            break
    found = Counter(s.name.split("-")[0] + "-*.tar" for s in refs)
    if not chosen:
        hint = (" (raw-*.tar holds HR only: set data.degrade=PRESET, e.g. realesrgan, to degrade it on the fly)"
                if "raw-*.tar" in found else "")
        raise ConfigError(key, str(location), f"a location of {' or '.join(p + '-*.tar' for p in prefixes)} shards; "
                                              f"found {dict(found) or 'no shards'}{hint}")
    counted = ShardSet(str(location), chosen).counted().shards  # a brace pattern's shards: fetched, counted
    shards = [(s.url, int(s.nsamples)) for s in counted if s.nsamples]
    if not shards:
        raise ConfigError(key, str(location), f"shards holding samples (its {len(chosen)} {prefix}-*.tar are all "
                                              "empty: see their *_stats.json for the skip reasons)")
    return shards


def first_sample(url: str) -> dict[str, tuple[int, int]]:
    """Member extensions of a shard's first sample (tar headers only): what kind of shard it is."""
    return next(iter(group_members(tar_members(local_path(url)), url)), ("", {}))[1]


def lr_scales(members: dict[str, Any]) -> list[int]:
    """The LR scales a sample holds (``lr_x{s}.*`` members)."""
    return sorted(int(m[4:].split(".")[0]) for m in members if m.startswith("lr_x") and m[4:].split(".")[0].isdigit())


def check_data(cfg: DataConfig) -> None:
    """Before any model is built: the train and validation shards exist, are of a kind training can
    use, and hold LR at ``cfg.scale`` unless HR is degraded on the fly (ConfigError otherwise)."""
    for key, location, split in (("data.train", cfg.train, "train"), ("data.eval", cfg.eval or cfg.train, "eval")):
        shards = shard_list(location, split, cfg.degrade, key if split == "train" or cfg.eval else "data.train")
        if cfg.degrade is not None:
            continue
        scales = lr_scales(first_sample(shards[0][0]))
        if cfg.scale not in scales:
            held = ", ".join(f"lr_x{s}" for s in scales) or "HR only"
            raise ConfigError("data.scale", cfg.scale, f"a scale the {key} shards hold ({location}: {held}), or "
                                                        "data.degrade=PRESET to degrade HR on the fly")


def limited_counts(counts: list[int], limit: int | None) -> list[int]:
    """Per-shard sample counts cut to the first ``limit`` samples in order (``data.limit``): the
    shards after the cut count 0, so sampling never reaches them."""
    out, left = [], limit if limit is not None else sum(counts)
    for n in counts:
        out.append(min(n, left))
        left -= out[-1]
    return out


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


def degrade_hr(hr: np.ndarray, scale: int, params: dict[str, Any]) -> np.ndarray:
    """The worker path, storage codec included: the LR a shard made with these params would hold."""
    from awm.data import degrade

    lr = degrade.apply_params(hr, scale, params)
    if params["codec"]["format"] == "png":
        return lr
    return to_rgb8(decode_image(degrade.encode_lr(lr, params)))


def augment(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Per-sample flips/rot90 of a batch of square NHWC patches: code bit 2 flips W, bits 0-1 rotate.

    Runs where the batch is (the GPU in training): one indexed op per distinct code. ``codes``
    may stay on the CPU (the loader's metadata): the sample indices are found there and copied
    to the device, so nothing waits for the device (boolean masks on a GPU would).
    """
    out = x.clone()
    codes = codes.cpu()
    for code in codes.unique().tolist():
        if code == 0:
            continue
        index = (codes == code).nonzero().flatten().to(x.device, non_blocking=True)
        y = x.index_select(0, index)
        if code & 4:
            y = y.flip(2)
        out.index_copy_(0, index, torch.rot90(y, code & 3, dims=(1, 2)))
    return out


class PairStream(torch.utils.data.IterableDataset):
    """Endless stream of uint8 NHWC batches ``{"lr", "hr", "index", "worker", "skipped"}`` for one rank.

    Batch ``i`` depends only on ``(seed, rank, i)``; worker ``w`` of ``W`` makes batches
    ``start + w, start + w + W, ...``, which the DataLoader returns in order.
    """

    def __init__(self, cfg: DataConfig, shards: list[tuple[Path, int]], seed: int, rank: int, start: int = 0):
        super().__init__()
        self.cfg, self.shards, self.seed, self.rank, self.start = cfg, shards, seed, rank, start
        # Sampling covers the first data.limit samples only; the reader still checks each shard's full count.
        self.cum = np.cumsum(limited_counts([n for _, n in shards], cfg.limit))
        self.preset = None

    def _draw(self, hr: np.ndarray, rng: np.random.Generator, key: str) -> dict[str, Any]:
        """The sample's degradation params: one draw, whichever path applies them."""
        from awm.data import degrade

        if self.preset is None:
            self.preset = degrade.get_preset(self.cfg.degrade)
        return degrade.draw_params(self.preset, (hr.shape[1], hr.shape[0]), self.cfg.scale,
                                   int(rng.integers(2**31)), key)

    def _degrade(self, hr: np.ndarray, params: dict[str, Any]) -> np.ndarray:
        return degrade_hr(hr, self.cfg.scale, params)

    def _group(self, stream: int, g: int, reader: TarReader, skipped: Counter) -> list[tuple]:
        """``batch_size`` decoded samples ``(key, hr, lr|None)`` shared by ``patches_per_image`` batches."""
        c, s, q = self.cfg, self.cfg.scale, self.cfg.patch // self.cfg.scale
        rng = np.random.default_rng([self.seed, self.rank, stream, g, 1])
        out: list[tuple] = []
        bad: Counter = Counter()  # reasons of the unusable samples since the last usable one
        bad_shards: set[str] = set()
        while len(out) < c.batch_size:
            if sum(bad.values()) >= c.max_bad_in_a_row:
                raise RuntimeError(f"{sum(bad.values())} unusable samples in a row ({dict(bad)}) from shards "
                                   f"{', '.join(sorted(bad_shards))}: check them (their *_stats.json, or re-run "
                                   "awm shard); data.max_bad_in_a_row sets this limit")
            u = int(rng.integers(self.cum[-1]))
            j = int(np.searchsorted(self.cum, u, side="right"))
            path, first = self.shards[j][0], int(self.cum[j - 1]) if j else 0
            reason = None
            try:
                sample = reader.read(path, u - first)
                hr, lr = decode_pair(sample, s, c.degrade is None, c.max_pixels)
                if hr.shape[0] // s < q or hr.shape[1] // s < q:
                    reason = "too_small"
            except IndexError:
                reason = "missing_sample"
            except ImageError as e:
                reason = e.reason
            if reason:
                skipped[reason] += 1
                bad[reason] += 1
                bad_shards.add(Path(path).name)
                continue
            bad.clear()
            bad_shards.clear()
            if lr is None and c.degrade is None:
                raise ValueError(f"sample {sample['__key__']} in {path} has no lr_x{s}: "
                                 "set data.degrade=PRESET to degrade HR patches on the fly")
            out.append((sample["__key__"], hr, lr))
        return out

    def make_batch(self, i: int, reader: TarReader, skipped: Counter,
                   cache: dict[int, tuple[int, list]] | None = None) -> dict[str, Any]:
        """Micro-batch ``i``: uint8 NHWC ``lr``/``hr`` (not yet augmented) and per-sample ``aug`` codes.

        On-the-fly degradation adds ``degrade`` (each sample's params); with ``degrade_on=device``
        there is no ``lr``: the trainer makes it from ``hr`` and those params.
        """
        c = self.cfg
        p, s = c.patch, c.scale
        q = p // s
        stream, k = i % c.streams, i // c.streams
        g = k // c.patches_per_image
        cache = {} if cache is None else cache
        if stream not in cache or cache[stream][0] != g:
            cache[stream] = (g, self._group(stream, g, reader, skipped))
        rng = np.random.default_rng([self.seed, self.rank, i])
        hr_b = np.empty((c.batch_size, p, p, 3), np.uint8)
        lr_b = np.empty((c.batch_size, q, q, 3), np.uint8)
        params: list[dict[str, Any]] = []
        for n, (key, hr, lr) in enumerate(cache[stream][1]):
            h, w = hr.shape[0] // s, hr.shape[1] // s
            y, x = int(rng.integers(h - q + 1)), int(rng.integers(w - q + 1))
            hr_b[n] = hr[y * s:(y + q) * s, x * s:(x + q) * s]
            if lr is not None:
                lr_b[n] = lr[y:y + q, x:x + q]
                continue
            params.append(self._draw(hr_b[n], rng, key))
            if c.degrade_on != "device":
                lr_b[n] = self._degrade(hr_b[n], params[-1])
        codes = rng.integers(8, size=c.batch_size) if c.augment else np.zeros(c.batch_size, np.int64)
        batch = {"hr": torch.from_numpy(hr_b), "aug": torch.from_numpy(codes), "index": i}
        if params:
            batch["degrade"] = params
        if not params or c.degrade_on != "device":
            batch["lr"] = torch.from_numpy(lr_b)
        return batch

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        reader, skipped, cache = TarReader(nsamples=dict(self.shards)), Counter(), {}
        try:
            i = self.start + wid
            while True:
                batch = self.make_batch(i, reader, skipped, cache)
                batch["worker"], batch["skipped"] = wid, dict(skipped)
                yield batch
                i += nw
        finally:
            reader.close()


def train_loader(cfg: DataConfig, seed: int, rank: int, start: int = 0, pin_memory: bool = False,
                 device: torch.device | None = None) -> torch.utils.data.DataLoader:
    """The rank's DataLoader over ``cfg.train``, starting at micro-batch ``start`` (resume).

    ``device`` (the training device; default: CUDA when available) resolves ``degrade_on=auto``.
    """
    dev = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = replace(cfg, degrade_on=resolve_degrade_on(cfg, dev))
    ds = PairStream(cfg, shard_list(cfg.train, "train", cfg.degrade), seed, rank, start)
    kw: dict[str, Any] = {"prefetch_factor": cfg.prefetch} if cfg.workers else {}
    return torch.utils.data.DataLoader(ds, batch_size=None, num_workers=cfg.workers,
                                       pin_memory=pin_memory, worker_init_fn=ignore_stop_signals, **kw)


def resolve_degrade_on(cfg: DataConfig, device: torch.device) -> str:
    """``worker`` or ``device`` for this run: auto picks the device on a GPU; a preset with steps
    that have no device implementation stays in the workers (logged once)."""
    mode = cfg.degrade_on
    if mode == "auto":
        mode = "device" if device.type == "cuda" else "worker"
    if cfg.degrade is None or mode == "worker":
        return mode
    from awm.data import degrade, degrade_device
    from awm.log import get_logger

    why = degrade_device.preset_unsupported(degrade.get_preset(cfg.degrade))
    if why:
        get_logger("awm.data").warning("data.degrade=%s has %s, which have no device implementation: "
                                       "degrading in the loader workers", cfg.degrade, why)
        return "worker"
    get_logger("awm.data").info("degrading %s batches on %s (data.degrade_on=%s)", cfg.degrade, device,
                                cfg.degrade_on)
    return mode


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """Loader workers ignore SIGTERM/SIGINT/SIGUSR1/SIGUSR2 and leave shutdown to their trainer.

    SLURM (preemption, time limit, ``scontrol requeue``) and torchrun signal every process of a
    job, workers included; a worker that died with them took the trainer down before it could
    save its state (Ctrl-C reaches them too: they share the terminal's or the rank's process
    group). The trainer stops them when it exits, and a worker exits by itself when its
    trainer process is gone.
    """
    import signal

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
        signal.signal(sig, signal.SIG_IGN)


def epoch_steps(cfg: DataConfig, world_size: int, accum: int) -> int:
    """Optimizer steps in one epoch: about one visit of every sample across all ranks."""
    if cfg.epoch_steps:
        return cfg.epoch_steps
    total = sum(limited_counts([n for _, n in shard_list(cfg.train, "train", cfg.degrade)], cfg.limit))
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


def center_crop(hr: np.ndarray, lr: np.ndarray | None, scale: int,
                crop: int | None) -> tuple[np.ndarray, np.ndarray | None]:
    """HR cut to a multiple of ``scale`` and, with ``crop``, its centred square of ``crop`` px (a
    multiple of ``scale``, at most the shorter side) with the LR under it: ``validation.crop`` and
    ``awm eval --crop`` alike, so both score the same pixels."""
    hr = hr[:hr.shape[0] // scale * scale, :hr.shape[1] // scale * scale]
    if not crop:
        return hr, lr
    h, w = hr.shape[0] // scale, hr.shape[1] // scale
    q = min(crop // scale, h, w)
    y, x = (h - q) // 2, (w - q) // 2
    return (hr[y * scale:(y + q) * scale, x * scale:(x + q) * scale],
            None if lr is None else lr[y:y + q, x:x + q])


def eval_pairs(directory: str | Path, scale: int, rank: int, world: int, limit: int | None = None,
               crop: int | None = None, skipped: Counter | None = None,
               max_pixels: int = MAX_PIXELS_DEFAULT,
               degrade: str | None = None) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """This rank's share ``(key, lr, hr)`` of the first ``limit`` eval samples (in shard order).

    Samples ``n`` with ``n % world == rank`` go to ``rank`` (:class:`awm.dist.Part`); ``crop`` takes a centred HR crop
    (a multiple of ``scale``) to bound validation cost on wallpapers. HR-only samples get their LR
    from the ``degrade`` preset, drawn from (seed 0, sample key): the same LR at every validation.
    """
    d = str(directory)  # a location: Path() would fold the // of a URL
    paths = [p for p, _ in shard_list(d, "eval", degrade, "data.eval")]
    part, n = Part(rank, world), 0
    for path in paths:
        for sample in iter_tar(path):
            if limit is not None and n >= limit:
                return
            mine = part.takes(n)
            n += 1
            if not mine:
                continue
            try:
                hr, lr = decode_pair(sample, scale, need_lr=True, max_pixels=max_pixels)
            except ImageError as e:
                if skipped is not None:
                    skipped[e.reason] += 1
                continue
            if lr is None and degrade is None:
                if skipped is not None:
                    skipped["no_lr"] += 1
                continue
            hr, lr = center_crop(hr, lr, scale, crop)
            if lr is None:
                hr = np.ascontiguousarray(hr)
                lr = degrade_hr(hr, scale, _eval_params(degrade, hr, scale, sample["__key__"]))
            yield sample["__key__"], lr, hr


def _eval_params(preset: str, hr: np.ndarray, scale: int, key: str) -> dict[str, Any]:
    from awm.data import degrade

    return degrade.draw_params(degrade.get_preset(preset), (hr.shape[1], hr.shape[0]), scale, 0, key)
