"""WebDataset shard I/O shared by every stage: deterministic atomic tar writing, reading, index, stats.

A shard is the unit of work. It exists under its final name only once complete (written as a
temp file, then renamed); its ``<shard>_stats.json`` is written after it and doubles as the
resume marker. Tars are written here member by member with fixed metadata (mtime 0, uid/gid 0,
empty user/group, mode 644, sorted extensions), byte for byte what ``webdataset.TarWriter`` writes
with those settings but without importing it (webdataset imports torch: 0.4 GB for a crawl), so
the same samples always give byte-identical shards, whether built in memory (``tar_bytes``) or
streamed into an open shard (``sample_tar``: a crawl appends committed samples as they come).
Reading (local folders, URLs, pipe:, the cache) is :mod:`awm.shardio`.
"""

from __future__ import annotations

import json
import re
import tarfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from awm import skips
from awm.imageio import atomic_write_bytes, atomic_write_text

INDEX_FORMAT = "wids-shard-index-v1"
_KEY_RE = re.compile(r"^[^./\\\s][^.\\/\s]*$")


def check_key(key: str) -> str:
    """A webdataset ``__key__`` must not contain dots (the extension starts at the first dot)."""
    if not _KEY_RE.match(key):
        raise ValueError(f"invalid sample key {key!r}: no dots, slashes or spaces allowed")
    return key


_BLOCK, _RECORD = tarfile.BLOCKSIZE, tarfile.RECORDSIZE


def _member(name: str, data: bytes) -> bytes:
    """One tar member: header, data, zero padding to the block size (what ``TarFile.addfile`` writes)."""
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode, info.uname, info.gname = len(data), 0, 0o644, "", ""
    pad = -len(data) % _BLOCK
    return b"".join((info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"), data, b"\0" * pad))


def sample_tar(sample: dict[str, Any]) -> bytes:
    """The tar members of one sample (``{"__key__": k, "ext": bytes|str|dict, ...}``), extensions
    sorted; dicts/lists become JSON with sorted keys, str becomes UTF-8, so equal samples give
    equal bytes. Concatenated and closed by ``tar_end`` they make a shard."""
    key = check_key(str(sample["__key__"]))
    parts = []
    for ext in sorted(k for k in sample if not k.startswith("__")):
        value = sample[ext]
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True).encode()
        elif isinstance(value, str):
            value = value.encode()
        parts.append(_member(f"{key}.{ext}", bytes(value)))
    return b"".join(parts)


def tar_end(size: int) -> bytes:
    """What closes a tar of ``size`` member bytes: two zero blocks, then zeros to a whole record."""
    return b"\0" * (2 * _BLOCK + (-(size + 2 * _BLOCK) % _RECORD))


def tar_bytes(samples: list[dict[str, Any]]) -> bytes:
    """A tar of samples with fixed member metadata (see ``sample_tar``)."""
    body = b"".join(sample_tar(s) for s in samples)
    return body + tar_end(len(body))


@dataclass
class ShardStats:
    """Counts, skip reasons and timing for one shard, written beside it as ``<shard>_stats.json``."""

    shard: str
    nsamples: int = 0
    bytes: int = 0
    skipped: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.time)
    extra: dict[str, Any] = field(default_factory=dict)
    skipped_names: dict[str, list[str]] = field(default_factory=dict)

    def skip(self, reason: str, n: int = 1, names: Iterable[str] = ()) -> None:
        """Count ``n`` skips for ``reason`` (awm.skips vocabulary), naming the first ones."""
        self.skipped[reason] += n
        for name in names:
            skips.add_name(self.skipped_names, reason, name)

    def to_json(self) -> dict[str, Any]:
        return {"shard": self.shard, "nsamples": self.nsamples, "bytes": self.bytes,
                "skipped": dict(sorted(self.skipped.items())), "nskipped": sum(self.skipped.values()),
                "skipped_names": dict(sorted(self.skipped_names.items())),
                "duration_s": round(time.time() - self.started, 3), **self.extra}


def stats_path(shard_path: Path) -> Path:
    return shard_path.with_name(shard_path.name.removesuffix(".tar") + "_stats.json")


def write_shard(path: Path, samples: list[dict[str, Any]], stats: ShardStats) -> Path:
    """Write a complete shard atomically, then its stats file (the completion marker)."""
    data = tar_bytes(samples)
    atomic_write_bytes(path, data)
    stats.nsamples = len(samples)
    stats.bytes = len(data)
    atomic_write_text(stats_path(path), json.dumps(stats.to_json(), indent=1, sort_keys=True))
    return path


def shard_done(path: Path) -> bool:
    """A shard counts as finished when both the tar and its stats file exist."""
    return path.is_file() and stats_path(path).is_file()


def list_shards(directory: str | Path, prefix: str = "") -> list[Path]:
    """Complete shards in a folder, sorted by name (temp files and partial names excluded)."""
    d = Path(directory)
    return sorted(p for p in d.glob(f"{prefix}*.tar") if not p.name.startswith("."))


def write_index(directory: str | Path, prefix: str = "", extra: dict[str, Any] | None = None) -> Path:
    """``index.json`` (wids-shard-index-v1 + totals) over the complete shards, merging their stats.

    Also the merge step after an array job: every part's shards and stats are in one folder.
    """
    d = Path(directory)
    shardlist, skipped, total, names = [], Counter(), 0, []
    for p in list_shards(d, prefix):
        sp = stats_path(p)
        if not sp.is_file():
            continue
        st = json.loads(sp.read_text())
        shardlist.append({"url": p.name, "nsamples": st["nsamples"], "filesize": p.stat().st_size})
        skipped.update(st.get("skipped", {}))
        names.append(st.get("skipped_names", {}))
        total += st["nsamples"]
    index = {"__kind__": INDEX_FORMAT, "wids_version": 1, "shardlist": shardlist,
             "nshards": len(shardlist), "nsamples": total,
             "skipped": dict(sorted(skipped.items())), "skipped_names": skips.merge_names(names), **(extra or {})}
    return atomic_write_text(d / "index.json", json.dumps(index, indent=1))


def read_index(directory: str | Path) -> dict[str, Any]:
    """The folder's ``index.json``; a clear error when it is missing."""
    p = Path(directory) / "index.json"
    if not p.is_file():
        raise FileNotFoundError(f"{p} not found: is {directory} a shard folder written by awm?")
    return json.loads(p.read_text())
