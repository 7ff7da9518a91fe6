"""Crash-safe crawl state: a small SQLite file beside the shards, and the open shard's temp tar.

Why it survives ``kill -9`` (and a lost page cache) at any instant:
- a listing page's decisions and the keyset cursor are committed in one transaction;
- a kept post's tar members (the original's bytes as downloaded, then its json) are appended to the
  open shard's temp file ``.raw-NNNNNN.tar.open`` after the last committed member, then one
  transaction marks the post ``assigned`` to that shard with the offset after its members; on
  restart every committed member is checked (names, the image's md5, the json, the exact bytes)
  and the file is cut after the last intact one; posts whose members are missing (only a power cut
  loses them) go back to ``pending`` and are downloaded again;
- a full shard (or the last one) is *sealed* (its skips attributed, committed), closed (the tar's
  end blocks, fsync), renamed to its final name, given its stats file and marked done; a restart
  finishes a sealed shard from wherever it stopped, so it gets the same name and the same bytes.
Each original is written once, by the committing thread: no spool, no read-back, no in-memory tar.
Post states: pending -> assigned -> sharded, or skipped (with a reason, and for dedup and variant
skips the id of the kept post it duplicates) at any point; ``dropped`` is a sharded post the merge
step removed as a duplicate of a post elsewhere (another part, run or source). Shard states
(``shards.done``): 0 open, 2 sealed, 1 done. A state from before streaming (a spool folder, posts
``ready``) is taken over: what was not yet in a done shard is downloaded again.
The listing itself is shared by all parts (``awm.acquire.listing``); a part records how many of
its pages it has read, and a part's decisions on a page are committed with that count.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import tarfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from awm import skips
from awm.dist import Part
from awm.errors import ConfigError
from awm.imageio import atomic_write_text, usual_mode
from awm.shardwrite import ShardStats, sample_tar, shard_done, stats_path, tar_end

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS posts (
  id INTEGER PRIMARY KEY, status TEXT NOT NULL, reason TEXT, md5 TEXT, family INTEGER,
  phash INTEGER, ext TEXT, nbytes INTEGER, shard INTEGER, meta TEXT, dup_of INTEGER);
CREATE INDEX IF NOT EXISTS posts_status ON posts(status, id);
CREATE INDEX IF NOT EXISTS posts_shard ON posts(shard);
CREATE TABLE IF NOT EXISTS shards (idx INTEGER PRIMARY KEY, done INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS tag_counts (tag TEXT PRIMARY KEY, n INTEGER NOT NULL);
"""
KEPT = ("ready", "assigned", "sharded")  # ready: states from before streaming


class CrawlState:
    """The SQLite state and open shard of one part (``--part i/n``) of a crawl into ``out``."""

    def __init__(self, out: Path, part: Part, prefix: str = "raw-"):
        self.out, self.part, self.prefix = out, part, prefix
        tag = f"{part.index}of{part.count}"
        self.path = out / f"crawl_state-{tag}.sqlite"
        self.old_spool = out / f"crawl_spool-{tag}"  # states from before streaming
        if not self.path.exists() and any(self._mine(p) for p in out.glob(f"{prefix}*.tar")):
            raise ConfigError("out", str(out), f"a folder without raw shards of part {part}, or with "
                              f"its {self.path.name} (the state that wrote them)")
        out.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        columns = {r[1] for r in self.db.execute("PRAGMA table_info(posts)")}
        for col in ("dup_of", "tar_end"):  # older states
            if col not in columns:
                self.db.execute(f"ALTER TABLE posts ADD COLUMN {col} INTEGER")
        self._shard_started = time.time()
        self._open: _OpenShard | None = None

    # ---- small helpers -------------------------------------------------------------------
    def _mine(self, p: Path) -> bool:
        digits = p.name.removeprefix(self.prefix).split(".")[0].split("_")[0]
        return digits.isdigit() and self.part.takes(int(digits))

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def shard_path(self, idx: int) -> Path:
        return self.out / f"{self.prefix}{idx:06d}.tar"

    def open_path(self, idx: int) -> Path:
        """The temp tar a shard is streamed into until it is complete."""
        return self.out / f".{self.prefix}{idx:06d}.tar.open"

    def check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        """Resuming with different arguments would mix two datasets: refuse, naming the keys."""
        text = json.dumps(fingerprint, sort_keys=True)
        old = self.get("fingerprint")
        if old is None:
            self.set("fingerprint", text)
            return
        if old != text:
            before = json.loads(old)
            diff = sorted(k for k in set(before) | set(fingerprint) if before.get(k) != fingerprint.get(k))
            raise ConfigError(",".join(diff), [fingerprint.get(k) for k in diff],
                              f"the values this crawl state in {self.out} was started with "
                              f"{[before.get(k) for k in diff]}, or a new --out")

    # ---- listing ------------------------------------------------------------------------
    def record_page(self, rows: list[tuple], pages: int, done: bool, noid: int = 0,
                    tags: dict[str, int] | None = None) -> None:
        """Rows (id, status, reason, md5, family, meta_json), the count of listing pages read and the
        tag quota's new counts, atomically."""
        self.db.execute("BEGIN")
        self.db.executemany("INSERT OR IGNORE INTO posts (id, status, reason, md5, family, meta) "
                            "VALUES (?, ?, ?, ?, ?, ?)", rows)
        self.db.executemany("INSERT OR REPLACE INTO tag_counts VALUES (?, ?)", sorted((tags or {}).items()))
        self.set("pages", str(pages))
        if done:
            self.set("listing_done", "1")
        if noid:
            self.set("noid_skips", str(int(self.get("noid_skips", "0")) + noid))
        self.db.execute("COMMIT")

    def page_index(self) -> int:
        """The next shared listing page this part reads."""
        return int(self.get("pages", "0"))

    def tag_counts(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT tag, n FROM tag_counts").fetchall())

    def listing_done(self) -> bool:
        return self.get("listing_done") == "1"

    def pending(self, below: int | None, n: int) -> list[tuple[int, str]]:
        """Next undecided posts, newest first (the listing order, so commits stay ordered)."""
        q = "SELECT id, meta FROM posts WHERE status='pending'"
        args: tuple = ()
        if below is not None:
            q, args = q + " AND id < ?", (below,)
        return self.db.execute(q + " ORDER BY id DESC LIMIT ?", (*args, n)).fetchall()

    # ---- decisions ----------------------------------------------------------------------
    def skip(self, post_id: int, reason: str, dup_of: int | None = None) -> None:
        self.db.execute("UPDATE posts SET status='skipped', reason=?, dup_of=? WHERE id=?",
                        (reason, dup_of, post_id))

    def append(self, post_id: int, ext: str, data: bytes, phash: int, meta: dict[str, Any],
               shard_size: int) -> None:
        """Keep a verified download: append its members to the open shard (opening one when none
        is), commit the post with the offset after them, and seal the shard once it is full."""
        if self._open is None:
            idx = self._next_index()
            self._open = _OpenShard(idx, os.open(self.open_path(idx), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o666))
        shard = self._open
        text = json.dumps(meta, sort_keys=True)
        blob = sample_tar({"__key__": str(post_id), ext: data, "json": meta})
        _pwrite_all(shard.fd, blob, shard.end)
        self.db.execute("BEGIN")
        if shard.count == 0:
            self.db.execute("INSERT INTO shards VALUES (?, 0)", (shard.idx,))
        self.db.execute("UPDATE posts SET status='assigned', shard=?, tar_end=?, ext=?, nbytes=?, phash=?, meta=? "
                        "WHERE id=?", (shard.idx, shard.end + len(blob), ext, len(data), phash, text, post_id))
        self.db.execute("COMMIT")
        shard.end += len(blob)
        shard.count += 1
        shard.last_id = post_id
        if shard.count >= shard_size:
            self._seal(last=False)

    def kept(self) -> list[tuple[int, str, int | None, int]]:
        """(id, md5, phash, family) of every kept post in listing order: what dedup and the variant
        policy start from."""
        marks = ",".join("?" * len(KEPT))
        return self.db.execute(f"SELECT id, md5, phash, family FROM posts WHERE status IN ({marks}) "
                               "ORDER BY id DESC", KEPT).fetchall()

    # ---- shards -------------------------------------------------------------------------
    def _next_index(self) -> int:
        (k,) = self.db.execute("SELECT COUNT(*) FROM shards").fetchone()
        return k * self.part.count + self.part.index

    def close_open(self) -> None:
        """The end of the crawl: seal the open shard (it takes every skip not yet attributed) and
        attach skips after the last sample to the last shard, so index.json counts them all."""
        if self._open is not None:
            self._seal(last=True)
        self._attach_leftover_skips()

    def _seal(self, last: bool) -> None:
        """Attribute skips to the open shard (those its id range covers, or all when ``last``) and
        commit it as sealed, then finish it."""
        shard = self._open
        assert shard is not None
        self.db.execute("BEGIN")
        self.db.execute("UPDATE posts SET shard=? WHERE status='skipped' AND shard IS NULL AND (id >= ? OR ?)",
                        (shard.idx, shard.last_id, int(last)))
        self.db.execute("UPDATE shards SET done=2 WHERE idx=?", (shard.idx,))
        self.db.execute("COMMIT")
        self._finish(shard)

    def _finish(self, shard: _OpenShard) -> None:
        """Close a sealed shard's tar (end blocks, fsync), rename it, write its stats, mark it done."""
        final = self.shard_path(shard.idx)
        if shard.fd >= 0:
            trailer = tar_end(shard.end)
            _pwrite_all(shard.fd, trailer, shard.end)
            os.ftruncate(shard.fd, shard.end + len(trailer))
            os.fsync(shard.fd)
            os.close(shard.fd)
            usual_mode(self.open_path(shard.idx))
            os.replace(self.open_path(shard.idx), final)
        st = self._stats(shard.idx, shard.count, final.stat().st_size)
        atomic_write_text(stats_path(final), json.dumps(st.to_json(), indent=1, sort_keys=True))
        self.db.execute("BEGIN")
        self.db.execute("UPDATE posts SET status='sharded' WHERE shard=? AND status='assigned'", (shard.idx,))
        self.db.execute("UPDATE shards SET done=1 WHERE idx=?", (shard.idx,))
        self.db.execute("COMMIT")
        self._open = None
        self._shard_started = time.time()

    def _stats(self, idx: int, nsamples: int, nbytes: int) -> ShardStats:
        st = ShardStats(self.shard_path(idx).name, started=self._shard_started)
        for reason, n in self.db.execute("SELECT reason, COUNT(*) FROM posts WHERE shard=? AND "
                                         "status='skipped' GROUP BY reason", (idx,)):
            st.skip(reason, n, self._skipped_ids("shard=? AND", (idx,), reason))
        st.nsamples, st.bytes = nsamples, nbytes
        return st

    def _attach_leftover_skips(self) -> None:
        """Skips after the last sample go to this part's last shard, so index.json counts them all."""
        row = self.db.execute("SELECT MAX(idx) FROM shards WHERE done=1").fetchone()
        if row[0] is None:
            return
        cur = self.db.execute("UPDATE posts SET shard=? WHERE status='skipped' AND shard IS NULL", row)
        if cur.rowcount:
            p = self.shard_path(row[0])
            st = self._stats(row[0], len(self.db.execute("SELECT 1 FROM posts WHERE shard=? AND "
                                                          "status='sharded'", row).fetchall()), p.stat().st_size)
            atomic_write_text(stats_path(p), json.dumps(st.to_json(), indent=1, sort_keys=True))

    # ---- recovery -----------------------------------------------------------------------
    def recover(self) -> None:
        """Bring the folder back to what the committed state says after an interruption."""
        for tmp in self.out.glob(f".{self.prefix}*.tmp"):
            if self._mine(Path(tmp.name[1:])):
                tmp.unlink(missing_ok=True)
        if self.old_spool.is_dir():
            self._forget_spool()
        unfinished = self.db.execute("SELECT idx, done FROM shards WHERE done != 1 ORDER BY idx").fetchall()
        keep = {self.open_path(idx).name for idx, _ in unfinished}
        for tmp in self.out.glob(f".{self.prefix}*.tar.open"):
            if tmp.name not in keep and self._mine(Path(tmp.name[1:])):
                tmp.unlink()
        for idx, done in unfinished:
            self._resume(idx, sealed=done == 2)
        for idx, in self.db.execute("SELECT idx FROM shards WHERE done=1").fetchall():
            if not shard_done(self.shard_path(idx)):
                raise FileNotFoundError(f"{self.shard_path(idx)} is recorded as written but is missing "
                                        f"or incomplete; restore it or start with a new --out")

    def _resume(self, idx: int, sealed: bool) -> None:
        """An open or sealed shard after an interruption: a sealed one renamed already only lacks
        its stats and record; otherwise its temp tar is cut after the last intact committed post
        (later posts go back to pending), then the shard is finished (sealed) or reopened."""
        temp, final = self.open_path(idx), self.shard_path(idx)
        rows = self.db.execute("SELECT id, ext, md5, meta, tar_end FROM posts WHERE shard=? AND status='assigned' "
                               "ORDER BY id DESC", (idx,)).fetchall()
        if sealed and final.is_file() and not temp.exists():
            self._finish(_OpenShard(idx, -1, 0, len(rows), rows[-1][0] if rows else 0))
            return
        fd = os.open(temp, os.O_RDWR | os.O_CREAT, 0o666)
        end, good = 0, 0
        for pid, ext, md5, meta, stop in rows:
            if stop is None or stop <= end or not _intact(os.pread(fd, stop - end, end), pid, ext, md5, meta):
                break
            end, good = stop, good + 1
        os.ftruncate(fd, end)
        lost = [r[0] for r in rows[good:]]
        self.db.execute("BEGIN")
        self.db.executemany("UPDATE posts SET status='pending', shard=NULL, tar_end=NULL WHERE id=?",
                            [(p,) for p in lost])
        if lost and sealed:  # reopened: skips are attributed again when it is sealed
            self.db.execute("UPDATE posts SET shard=NULL WHERE status='skipped' AND shard=?", (idx,))
            self.db.execute("UPDATE shards SET done=0 WHERE idx=?", (idx,))
            sealed = False
        if not good:
            self.db.execute("DELETE FROM shards WHERE idx=?", (idx,))
        self.db.execute("COMMIT")
        if not good:
            os.close(fd)
            temp.unlink()
            return
        shard = _OpenShard(idx, fd, end, good, rows[good - 1][0])
        if sealed:
            self._finish(shard)
        else:
            self._open = shard

    def _forget_spool(self) -> None:
        """Take over a state from before streaming: posts waiting in its spool (ready, or assigned to
        a shard not yet written) go back to pending, then the spool goes."""
        self.db.execute("BEGIN")
        self.db.execute("UPDATE posts SET status='pending' WHERE status='ready'")
        for idx, in self.db.execute("SELECT idx FROM shards WHERE done=0").fetchall():
            self.db.execute("UPDATE posts SET status='pending', shard=NULL WHERE shard=? AND status='assigned'", (idx,))
            self.db.execute("UPDATE posts SET shard=NULL WHERE shard=?", (idx,))
            self.db.execute("DELETE FROM shards WHERE idx=?", (idx,))
            for p in (self.shard_path(idx), stats_path(self.shard_path(idx))):
                p.unlink(missing_ok=True)
        self.db.execute("COMMIT")
        shutil.rmtree(self.old_spool)

    # ---- summary ------------------------------------------------------------------------
    def _skipped_ids(self, where: str, args: tuple, reason: str) -> list[str]:
        """The first skipped post ids of ``reason`` (ascending), as the stats name them."""
        rows = self.db.execute(f"SELECT id FROM posts WHERE {where} status='skipped' AND reason=? ORDER BY id "
                               "LIMIT ?", (*args, reason, skips.NAMES_PER_REASON))
        return [str(i) for (i,) in rows]

    def summary(self) -> dict[str, Any]:
        skipped = Counter(dict(self.db.execute(
            "SELECT reason, COUNT(*) FROM posts WHERE status IN ('skipped', 'dropped') GROUP BY reason").fetchall()))
        noid = int(self.get("noid_skips", "0"))
        if noid:
            skipped["bad_metadata"] += noid
        kept, nbytes = self.db.execute(
            "SELECT COUNT(*), COALESCE(SUM(nbytes), 0) FROM posts WHERE status IN (?, ?, ?)", KEPT).fetchone()
        (pending,) = self.db.execute("SELECT COUNT(*) FROM posts WHERE status='pending'").fetchone()
        (nshards,) = self.db.execute("SELECT COUNT(*) FROM shards WHERE done=1").fetchone()
        names = {r: ids for r in sorted(skipped) if (ids := self._skipped_ids("", (), r))}
        return {"kept": kept, "bytes": nbytes, "pending": pending, "shards": nshards,
                "skipped": dict(sorted(skipped.items())), "nskipped": sum(skipped.values()), "skipped_names": names}

    def close(self) -> None:
        if self._open is not None:
            os.close(self._open.fd)
            self._open = None
        self.db.close()


class _OpenShard:
    """The shard being filled: its temp tar's descriptor, committed size, samples, lowest id."""

    def __init__(self, idx: int, fd: int, end: int = 0, count: int = 0, last_id: int = 0):
        self.idx, self.fd, self.end, self.count, self.last_id = idx, fd, end, count, last_id


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


def _intact(region: bytes, pid: int, ext: str, md5: str, meta: str) -> bool:
    """Whether ``region`` holds exactly the members committed for post ``pid``: its original with
    this md5 and its json, as ``sample_tar`` writes them."""
    members, off = {}, 0
    try:
        while off < len(region):
            info = tarfile.TarInfo.frombuf(region[off:off + tarfile.BLOCKSIZE], "utf-8", "surrogateescape")
            start = off + tarfile.BLOCKSIZE
            members[info.name] = region[start:start + info.size]
            off = start + info.size + (-info.size % tarfile.BLOCKSIZE)
    except tarfile.HeaderError:
        return False
    image = members.get(f"{pid}.{ext}")
    return (image is not None and hashlib.md5(image).hexdigest() == md5
            and sample_tar({"__key__": str(pid), ext: image, "json": json.loads(meta)}) == region)
