"""The merge step's dedup: exact (md5) and near (perceptual hash) duplicates across everything.

A crawl part dedups only what it keeps itself; the same picture can still arrive through another
part (another family), an earlier run into the same folder, or another source (an ``awm ingest``
folder, an earlier crawl). ``dedup`` walks every sample of ``out`` in one fixed order and drops
each one that duplicates an earlier winner, so the result depends only on the samples, never on
timing or on how the crawl was split:

- samples of the ``against`` folders come first, in the order given (the first source wins);
- then ``out``'s own samples, best copy first (:func:`awm.acquire.clean.keep_rank`: most pixels,
  lossless, higher JPEG quality), ties in listing order for a crawl (highest id first, the order a
  single process crawl commits in) and by id for an ingest folder (ids follow content, not paths).

Each drop is recorded in ``out/dedup.json`` with the id (and folder) of the sample it duplicates,
before the shard is rewritten without it (atomically: temp + rename) and its stats file counts it
as a skip; a crawl's part state marks it ``dropped``. Running the merge again is a no-op, and a
merge interrupted at any point finishes on the next run (its decisions only compare against
winners, which a partial rewrite never removes), so a shard never holds a sample the index
does not count once the merge has run.
"""

from __future__ import annotations

import json
import sqlite3
import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awm.acquire import clean
from awm.imageio import IMAGE_EXTS, atomic_write_bytes, atomic_write_text, decode_image
from awm.log import get_logger
from awm.shardio.members import group_members
from awm.shardio.read import iter_tar
from awm.shardwrite import list_shards, stats_path, tar_bytes

log = get_logger("awm.merge")
RECORD = "dedup.json"


@dataclass(frozen=True)
class Entry:
    id: int
    md5: str
    phash: int | None
    shard: str
    rank: tuple = ()


def _is_crawl(folder: Path) -> bool:
    return any(folder.glob("crawl_state-*.sqlite"))


def scan(folder: Path, prefix: str = "raw-") -> list[Entry]:
    """Every sample of the folder's complete shards, in its merge order (see the module doc).

    Reads only the json members (the image only for a sample whose json lacks its phash)."""
    entries: list[Entry] = []
    crawl = _is_crawl(folder)
    for shard in list_shards(folder, prefix):
        if not stats_path(shard).is_file():
            continue
        with tarfile.open(shard, "r:") as tar:
            members = ((m.name, m) for m in tar if m.isfile())
            for key, group in group_members(members, str(shard)):
                meta = json.loads(tar.extractfile(group["json"]).read())
                ph = meta.get("phash")
                if ph is None:
                    ext = next((e for e in IMAGE_EXTS if e in group), None)
                    ph = None if ext is None else clean.phash(decode_image(tar.extractfile(group[ext]).read()))
                else:
                    ph = int(ph, 16)
                fmt = next((e for e in IMAGE_EXTS if e in group), "")
                rank = clean.keep_rank(int(meta.get("width") or 0), int(meta.get("height") or 0), fmt,
                                       meta.get("jpeg_quality"), -int(key) if crawl else int(key))
                entries.append(Entry(int(key), meta["md5"], ph, shard.name, rank))
    entries.sort(key=lambda e: e.rank)
    return entries


def dedup(out: Path, near: int = 4, against: list[Path] | tuple[Path, ...] = (), prefix: str = "raw-") -> dict[str, Any]:
    """Drop every sample of ``out`` that duplicates an earlier one; returns the counts by reason."""
    out = Path(out)
    d = clean.Dedup(near)
    source_of: dict[int, str] = {}
    for folder in against:
        if Path(folder).resolve() == out.resolve():
            raise ValueError(f"{folder}: --dedup-against names the output folder itself")
        if not (Path(folder) / "index.json").is_file():
            raise FileNotFoundError(f"{folder}: not a raw shard folder (no index.json) for --dedup-against")
        for e in scan(Path(folder), prefix):
            if d.skip_reason(e.md5, e.phash) is None:
                d.add(e.md5, e.phash, e.id)
                source_of.setdefault(e.id, str(folder))
    record_path = out / RECORD
    records: dict[str, dict[str, Any]] = (json.loads(record_path.read_text())["dropped"]
                                          if record_path.is_file() else {})
    new: list[dict[str, Any]] = []
    for e in scan(out, prefix):
        hit = d.skip_reason(e.md5, e.phash)
        if hit is None:
            d.add(e.md5, e.phash, e.id)
            source_of.setdefault(e.id, str(out))
            continue
        reason, of = hit
        new.append({"id": e.id, "reason": reason, "of": of, "of_folder": source_of[of], "shard": e.shard})
    for r in new:
        records[str(r["id"])] = r
    if new:
        atomic_write_text(record_path, json.dumps({"rule": "--dedup-against folders win, in order; then this "
                                                   "folder's best copy (most pixels, lossless, higher JPEG "
                                                   "quality, then listing order or id)",
                                                   "dropped": records}, indent=1, sort_keys=True))
    by_shard: dict[str, list[dict[str, Any]]] = {}
    for r in records.values():
        by_shard.setdefault(r["shard"], []).append(r)
    for name, drops in sorted(by_shard.items()):
        counted = json.loads(stats_path(out / name).read_text()).get("merge_dropped", {})
        if counted != dict(Counter(r["reason"] for r in drops)):  # new drops, or a rewrite cut short
            _rewrite(out / name, drops)
    _mark_dropped(out, list(records.values()))
    summary = {"dropped": len(records), "new": len(new),
               "by_reason": dict(sorted(Counter(r["reason"] for r in records.values()).items()))}
    if new:
        log.info("merge: dropped %d duplicates (%s); %s", len(new), summary["by_reason"], record_path)
    return summary


def _rewrite(shard: Path, drops: list[dict[str, Any]]) -> None:
    """The shard without the dropped samples (if it still holds any), then its stats counting them."""
    gone = {str(r["id"]) for r in drops}
    samples = list(iter_tar(shard))
    kept = [s for s in samples if s["__key__"] not in gone]
    if len(kept) != len(samples):
        atomic_write_bytes(shard, tar_bytes(kept))
    sp = stats_path(shard)
    st = json.loads(sp.read_text())
    merged = Counter(r["reason"] for r in drops)
    base = Counter(st.get("skipped", {})) - Counter(st.get("merge_dropped", {}))
    skipped = base + merged
    new = {**st, "nsamples": len(kept), "bytes": shard.stat().st_size, "skipped": dict(sorted(skipped.items())),
           "nskipped": sum(skipped.values()), "merge_dropped": dict(sorted(merged.items()))}
    if new != st:
        atomic_write_text(sp, json.dumps(new, indent=1, sort_keys=True))


def _mark_dropped(out: Path, records: list[dict[str, Any]]) -> None:
    """A crawl's part states: dropped posts are no longer kept (summaries, resumed parts agree)."""
    rows = [(r["reason"], r["of"], r["id"]) for r in records]
    for path in sorted(out.glob("crawl_state-*.sqlite")):
        with sqlite3.connect(path) as db:
            db.executemany("UPDATE posts SET status='dropped', reason=?, dup_of=? WHERE id=? "
                           "AND status='sharded'", rows)
        db.close()
