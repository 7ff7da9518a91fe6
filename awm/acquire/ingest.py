"""``awm ingest SRC_DIR --out DIR``: a local folder of images -> the same raw shards as ``awm crawl``.

Replaces the seed's rename-and-clean notebooks: every file is read, its real type sniffed, its
header checked against the caps and the whole image decoded; bad suffixes, undecodable files
and exact or near duplicates become recorded skip reasons (same rules as crawl: awm.acquire.clean).
Of a group of duplicates the best copy is kept (most pixels, lossless, higher JPEG quality, then
id: awm.acquire.clean.keep_rank), whatever the file names: every file is examined first (its
bytes dropped), the winners chosen, and only they are read again to be written.

Ids are stable and content-derived: the first 15 hex digits of the file's md5 as a decimal
integer (< 2**60), so the same picture gets the same id whatever its name, folder or run, and
renaming or adding files never renumbers the others. Files are visited in sorted relative-path
order, so the same folder always gives byte-identical shards (``fetched_at`` is the file mtime).
Ingest owns its ``--out``: stale shards of an earlier, larger run there are removed.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from awm import skips
from awm.acquire import clean, merge
from awm.config import add_dataclass_arguments, check, from_args, help_field, save_beside
from awm.errors import ConfigError
from awm.imageio import MAX_PIXELS_DEFAULT, ImageError, atomic_write_text
from awm.log import get_logger, progress
from awm.shardio.locations import INDEX_NAME
from awm.shardwrite import ShardStats, list_shards, stats_path, write_index, write_shard

log = get_logger("awm.ingest")
PREFIX = "raw-"



@dataclass
class IngestConfig:
    src: Path = help_field("folder of images (searched recursively)", default=Path("."), argument="SRC_DIR")
    out: Path = help_field("output folder for raw-%06d.tar shards and index.json", default=Path("shards/raw"))
    min_side: int = help_field("skip images whose shorter side is below this", default=0)
    max_pixels: int = help_field("skip images with more pixels than this (checked before decoding)",
                         default=MAX_PIXELS_DEFAULT)
    near_dup: int = help_field("perceptual-hash distance (bits of 64) counted as a near duplicate; -1: off",
                       default=4)
    webp: bool = help_field("also keep webp files", default=False)
    shard_size: int = help_field("samples per raw shard", default=100)
    workers: int = help_field("threads reading and decoding", default=2)
    dedup_against: str = help_field("comma-separated raw shard folders (a crawl, an earlier ingest) whose "
                                    "samples win over this folder's duplicates", default="")
    max_bytes: int = help_field("skip files larger than this, bytes", default=100 << 20)
    progress: bool = help_field("show a progress bar", default=True)

    def __post_init__(self) -> None:
        self.src, self.out = Path(self.src), Path(self.out)
        check(self.src.is_dir(), "src", str(self.src), "an existing folder")
        check(self.min_side >= 0, "min_side", self.min_side, ">= 0")
        check(self.max_pixels > 0 and self.max_bytes > 0, "max_pixels/max_bytes",
              (self.max_pixels, self.max_bytes), "> 0")
        check(-1 <= self.near_dup < 32, "near_dup", self.near_dup, "-1 (off) .. 31")
        check(self.shard_size >= 1, "shard_size", self.shard_size, ">= 1")
        check(1 <= self.workers <= 64, "workers", self.workers, "1..64")

    @property
    def against(self) -> list[Path]:
        return [Path(x.strip()) for x in self.dedup_against.split(",") if x.strip()]


def stable_id(md5: str) -> int:
    """A decimal-friendly id from content: same bytes, same id, in every run."""
    return int(md5[:15], 16)


@dataclass
class Item:
    rel: str
    reason: str | None = None
    data: bytes = b""
    checked: clean.Checked | None = None
    mtime: float = 0.0


def examine(path: Path, rel: str, cfg: IngestConfig, formats: tuple[str, ...]) -> Item:
    """Read and validate one file (worker thread)."""
    reason = clean.type_skip_reason(path.suffix, formats)
    if reason:
        return Item(rel, reason)
    try:
        st = path.stat()
        if st.st_size > cfg.max_bytes:
            return Item(rel, "too_large")
        data = path.read_bytes()
    except OSError:
        return Item(rel, "unreadable")
    try:
        checked = clean.check_image(data, formats, cfg.max_pixels, cfg.min_side)
    except ImageError as e:
        return Item(rel, e.reason)
    return Item(rel, data=data, checked=checked, mtime=st.st_mtime)


def _ordered(cfg: IngestConfig, files: list[tuple[Path, str]]) -> Iterator[Item]:
    """``examine`` over the files on a thread pool, results in input order, bounded look-ahead."""
    formats = clean.allowed_formats(cfg.webp)
    with ThreadPoolExecutor(cfg.workers) as pool:
        window: collections.deque = collections.deque()
        it = iter(files)
        for path, rel in it:
            window.append(pool.submit(examine, path, rel, cfg, formats))
            if len(window) >= cfg.workers * 4:
                break
        while window:
            yield window.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                window.append(pool.submit(examine, *nxt, cfg, formats))


def _without_data(item: Item) -> Item:
    return Item(item.rel, item.reason, b"", item.checked, item.mtime)


def duplicates(items: list[Item], near_dup: int) -> dict[str, str]:
    """{relative path: duplicate reason} of every examined image that is not its group's best copy:
    first wins over the images in :func:`clean.keep_rank` order, so the best one is the first."""
    dedup = clean.Dedup(near_dup)
    out = {}
    ranked = sorted((i for i in items if i.reason is None), key=lambda i: clean.keep_rank(
        i.checked.width, i.checked.height, i.checked.format, i.checked.jpeg_quality, stable_id(i.checked.md5)))
    for item in ranked:
        c = item.checked
        hit = dedup.skip_reason(c.md5, c.phash)
        if hit:
            out[item.rel] = hit[0]
        else:
            dedup.add(c.md5, c.phash, stable_id(c.md5))
    return out


def _reread(item: Item, path: Path) -> Item:
    """A kept image's bytes, read again; ``changed_while_read`` if they are not the examined ones."""
    try:
        data = path.read_bytes()
    except OSError:
        return Item(item.rel, "unreadable")
    if hashlib.md5(data).hexdigest() != item.checked.md5:
        return Item(item.rel, "changed_while_read")
    return Item(item.rel, None, data, item.checked, item.mtime)


def sample_of(item: Item) -> dict[str, Any]:
    c = item.checked
    sid = stable_id(c.md5)
    meta = {"id": sid, "source": "local", "file_name": item.rel, "tags": "", "rating": None,
            "width": c.width, "height": c.height, "md5": c.md5, "file_url": None, "parent_id": None,
            "score": None, **c.metadata(),
            "fetched_at": datetime.fromtimestamp(item.mtime, timezone.utc).isoformat(timespec="seconds")}
    return {"__key__": str(sid), c.format: item.data, "json": meta}


def ingest(cfg: IngestConfig) -> dict[str, Any]:
    """Write ``cfg.out/raw-%06d.tar`` from ``cfg.src``; returns the summary (kept, skips by reason)."""
    if any(cfg.out.glob("crawl_state-*.sqlite")):
        raise ConfigError("out", str(cfg.out), "a folder that is not a crawl's output")
    t0 = time.time()
    files = sorted(((p, p.relative_to(cfg.src).as_posix()) for p in cfg.src.rglob("*") if p.is_file()),
                   key=lambda x: x[1])
    if not files:
        raise ValueError(f"{cfg.src}: no files to ingest (empty folder)")
    examined = [_without_data(item) for item in progress(_ordered(cfg, files), total=len(files), desc="ingest",
                                                         unit="file", enabled=cfg.progress)]
    dropped = duplicates(examined, cfg.near_dup)
    kept = 0
    samples: list[dict[str, Any]] = []
    stats = ShardStats(f"{PREFIX}{0:06d}.tar")
    skipped: collections.Counter = collections.Counter()
    names: dict[str, list[str]] = {}
    nshards = nbytes = 0

    last: ShardStats | None = None

    def flush() -> None:
        nonlocal samples, stats, nshards, last
        if not nshards:  # the first kept image: only now is --out made or an earlier ingest's record replaced
            cfg.out.mkdir(parents=True, exist_ok=True)
            (cfg.out / merge.RECORD).unlink(missing_ok=True)  # shards are rewritten from scratch: so are drops
        write_shard(cfg.out / stats.shard, samples, stats)
        nshards += 1
        samples, last, stats = [], stats, ShardStats(f"{PREFIX}{nshards:06d}.tar")

    for item, (path, _) in zip(examined, files, strict=True):
        reason = item.reason or dropped.get(item.rel)
        if reason is None:
            item = _reread(item, path)
            reason = item.reason
        if reason:
            stats.skip(reason, names=[item.rel])
            skipped[reason] += 1
            skips.add_name(names, reason, item.rel)
            continue
        kept += 1
        samples.append(sample_of(item))
        nbytes += len(item.data)
        if len(samples) >= cfg.shard_size:
            flush()
    if samples:
        flush()
    elif last is not None and stats.skipped:  # skips after the last sample: count them in its stats
        last.skipped.update(stats.skipped)
        last.skipped_names = skips.merge_names([last.skipped_names, stats.skipped_names])
        atomic_write_text(stats_path(cfg.out / last.shard), json.dumps(last.to_json(), indent=1, sort_keys=True))
    summary = {"files": len(files), "kept": kept, "bytes": nbytes, "shards": nshards,
               "skipped": dict(sorted(skipped.items())), "nskipped": sum(skipped.values()),
               "skipped_names": dict(sorted(names.items())), "seconds": round(time.time() - t0, 2)}
    if not nshards:  # nothing kept: --out is not made, and an earlier run's index must not look like this one's
        (cfg.out / INDEX_NAME).unlink(missing_ok=True)
        return summary
    for stale in list_shards(cfg.out, PREFIX):
        digits = stale.stem[len(PREFIX):]
        if digits.isdigit() and int(digits) >= nshards:
            stale.unlink()
            stats_path(stale).unlink(missing_ok=True)
    if cfg.against:
        summary["dedup"] = merge.dedup(cfg.out, cfg.near_dup, cfg.against, PREFIX)
        summary["kept"] -= summary["dedup"]["dropped"]
    write_index(cfg.out, PREFIX, extra={"source": "local", "src": str(cfg.src), "ingest": summary})
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC_DIR", type=Path, help="folder of images (searched recursively)")
    add_dataclass_arguments(parser, IngestConfig, skip=("src",))


def run(args: argparse.Namespace) -> int:
    cfg = from_args(IngestConfig, args)
    s = ingest(cfg)
    if s["kept"]:
        save_beside(cfg, cfg.out, "ingest")
    log.info("ingest: kept %d of %d files (%.1f MB) in %d shards, skipped %d %s, %.1f s", s["kept"],
             s["files"], s["bytes"] / 1e6, s["shards"], s["nskipped"], s["skipped"], s["seconds"])
    if s["kept"] == 0:  # unexpected exceptions are not caught as skips: they end the run with exit 1
        log.error("ingest: no image kept from %s (%d files; skipped: %s)", cfg.src, s["files"], s["skipped"])
        return 1
    return 0
