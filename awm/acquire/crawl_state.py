"""Crash-safe crawl state: a small SQLite file and a spool folder beside the shards.

Why it survives ``kill -9`` at any instant:
- a listing page's decisions and the keyset cursor are committed in one transaction;
- a verified download is written to the spool (temp + rename) before its row says ``ready``;
- a shard is first *assigned* (its posts and index committed), then written atomically from the
  spool, then marked done; on restart an assigned-but-not-done shard is simply written again
  from the same spool files, so it gets the same name and the same samples;
- spool files and temp files that no committed row refers to are deleted on start.
Post states: pending -> ready -> assigned -> sharded, or skipped (with a reason, and for dedup and
variant skips the id of the kept post it duplicates) at any point; ``dropped`` is a sharded post
the merge step removed as a duplicate of a post elsewhere (another part, run or source).
The listing itself is shared by all parts (``awm.acquire.listing``); a part records how many of
its pages it has read, and a part's decisions on a page are committed with that count.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections import Counter
from pathlib import Path
from typing import Any

from awm import skips
from awm.config import ConfigError
from awm.dist import Part
from awm.imageio import atomic_write_text
from awm.shardwrite import ShardStats, shard_done, stats_path, write_shard

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
KEPT = ("ready", "assigned", "sharded")


class CrawlState:
    """The SQLite state and spool of one part (``--part i/n``) of a crawl into ``out``."""

    def __init__(self, out: Path, part: Part, prefix: str = "raw-"):
        self.out, self.part, self.prefix = out, part, prefix
        tag = f"{part.index}of{part.count}"
        self.path = out / f"crawl_state-{tag}.sqlite"
        self.spool = out / f"crawl_spool-{tag}"
        if not self.path.exists() and any(self._mine(p) for p in out.glob(f"{prefix}*.tar")):
            raise ConfigError("out", str(out), f"a folder without raw shards of part {part}, or with "
                              f"its {self.path.name} (the state that wrote them)")
        out.mkdir(parents=True, exist_ok=True)
        self.spool.mkdir(exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        if "dup_of" not in {r[1] for r in self.db.execute("PRAGMA table_info(posts)")}:  # older states
            self.db.execute("ALTER TABLE posts ADD COLUMN dup_of INTEGER")
        self._shard_started = time.time()

    # ---- small helpers -------------------------------------------------------------------
    def _mine(self, p: Path) -> bool:
        digits = p.name.removeprefix(self.prefix).split(".")[0].split("_")[0]
        return digits.isdigit() and self.part.takes(int(digits))

    def get(self, key: str, default: str | None = None) -> str | None:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set(self, key: str, value: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def spool_file(self, post_id: int, ext: str) -> Path:
        return self.spool / f"{int(post_id)}.{ext}"

    def shard_path(self, idx: int) -> Path:
        return self.out / f"{self.prefix}{idx:06d}.tar"

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

    def stage(self, post_id: int, ext: str, data: bytes) -> Path:
        """Write a download to a temp spool name (worker thread; no fsync: spool files are
        md5-checked on recovery, so a torn file after a power cut is fetched again)."""
        tmp = self.spool / f".{int(post_id)}.{ext}.tmp"
        tmp.write_bytes(data)
        return tmp

    def drop_staged(self) -> None:
        """Remove staged downloads that were never committed (in flight when the crawl stopped)."""
        for tmp in self.spool.glob(".*.tmp"):
            tmp.unlink(missing_ok=True)

    def accept(self, post_id: int, staged: Path, nbytes: int, phash: int, meta: dict[str, Any]) -> None:
        """Keep a staged download: rename it into the spool, then mark the post ready."""
        ext = staged.name.split(".")[2]
        staged.replace(self.spool_file(post_id, ext))
        self.db.execute("UPDATE posts SET status='ready', ext=?, nbytes=?, phash=?, meta=? WHERE id=?",
                        (ext, nbytes, phash, json.dumps(meta, sort_keys=True), post_id))

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

    def flush(self, shard_size: int, final: bool) -> int:
        """Write every full shard of ready posts (and the remainder when ``final``); count written."""
        written = 0
        while True:
            ids = [r[0] for r in self.db.execute(
                "SELECT id FROM posts WHERE status='ready' ORDER BY id DESC LIMIT ?", (shard_size,))]
            if not ids or (len(ids) < shard_size and not final):
                break
            idx = self._next_index()
            self.db.execute("BEGIN")
            self.db.executemany("UPDATE posts SET status='assigned', shard=? WHERE id=?",
                                [(idx, i) for i in ids])
            # Skips are attributed to the shard whose id range covers them (deterministic).
            last = final and len(ids) < shard_size
            self.db.execute("UPDATE posts SET shard=? WHERE status='skipped' AND shard IS NULL"
                            " AND (id >= ? OR ?)", (idx, ids[-1], int(last)))
            self.db.execute("INSERT INTO shards VALUES (?, 0)", (idx,))
            self.db.execute("COMMIT")
            self._write(idx)
            written += 1
        if final:
            self._attach_leftover_skips()
        return written

    def _stats(self, idx: int, nsamples: int, nbytes: int) -> ShardStats:
        st = ShardStats(self.shard_path(idx).name, started=self._shard_started)
        for reason, n in self.db.execute("SELECT reason, COUNT(*) FROM posts WHERE shard=? AND "
                                         "status='skipped' GROUP BY reason", (idx,)):
            st.skip(reason, n, self._skipped_ids("shard=? AND", (idx,), reason))
        st.nsamples, st.bytes = nsamples, nbytes
        return st

    def _write(self, idx: int) -> None:
        rows = self.db.execute("SELECT id, ext, meta FROM posts WHERE shard=? AND status IN "
                               "('assigned', 'sharded') ORDER BY id DESC", (idx,)).fetchall()
        samples = [{"__key__": str(i), ext: self.spool_file(i, ext).read_bytes(), "json": json.loads(m)}
                   for i, ext, m in rows]
        write_shard(self.shard_path(idx), samples, self._stats(idx, 0, 0))
        self.db.execute("BEGIN")
        self.db.execute("UPDATE posts SET status='sharded' WHERE shard=? AND status='assigned'", (idx,))
        self.db.execute("UPDATE shards SET done=1 WHERE idx=?", (idx,))
        self.db.execute("COMMIT")
        for i, ext, _ in rows:
            self.spool_file(i, ext).unlink(missing_ok=True)
        self._shard_started = time.time()

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
        spooled = {int(r[0]): r for r in self.db.execute(
            "SELECT id, ext, md5, status, shard FROM posts WHERE status IN ('ready', 'assigned')")}
        expected = {self.spool_file(r[0], r[1]).name for r in spooled.values()}
        for f in self.spool.iterdir():
            if f.name not in expected:
                f.unlink(missing_ok=True)
        for idx, in self.db.execute("SELECT idx FROM shards WHERE done=0").fetchall():
            members = [r for r in spooled.values() if r[4] == idx]
            if all(self._intact(r) for r in members):
                self._write(idx)
            else:
                self._unassign(idx)
        for pid, ext, md5, status, _ in spooled.values():
            if status == "ready" and not self._intact((pid, ext, md5)):
                self.db.execute("UPDATE posts SET status='pending' WHERE id=?", (pid,))
        for idx, in self.db.execute("SELECT idx FROM shards WHERE done=1").fetchall():
            if not shard_done(self.shard_path(idx)):
                raise FileNotFoundError(f"{self.shard_path(idx)} is recorded as written but is missing "
                                        f"or incomplete; restore it or start with a new --out")

    def _intact(self, row: tuple) -> bool:
        f = self.spool_file(row[0], row[1])
        return f.is_file() and hashlib.md5(f.read_bytes()).hexdigest() == row[2]

    def _unassign(self, idx: int) -> None:
        self.db.execute("BEGIN")
        for pid, ext, md5 in self.db.execute("SELECT id, ext, md5 FROM posts WHERE shard=? AND "
                                             "status='assigned'", (idx,)).fetchall():
            status = "ready" if self._intact((pid, ext, md5)) else "pending"
            self.db.execute("UPDATE posts SET status=?, shard=NULL WHERE id=?", (status, pid))
        self.db.execute("UPDATE posts SET shard=NULL WHERE shard=?", (idx,))
        self.db.execute("DELETE FROM shards WHERE idx=?", (idx,))
        self.db.execute("COMMIT")
        for p in (self.shard_path(idx), stats_path(self.shard_path(idx))):
            p.unlink(missing_ok=True)

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
        self.db.close()
