"""The listing of a crawl, paged once for all its parts: ``<out>/listing/page-NNNNNN.json.gz``.

Every part of ``awm submit crawl --array n`` needs every listing page (it keeps the families
that are its share), so the pages are fetched once and shared through the output folder: a part
that needs page ``k`` reads the file if it exists; otherwise it takes the listing lock, looks
again (another part may have just written it) and only then fetches the page itself, below the
cursor that page ``k-1`` recorded. Pages are written atomically (temp + rename, under the lock,
so a temp file seen while holding it is a dead part's and is removed) and only in
order, so a listing interrupted at any instant resumes at its first missing page, and no page
is ever requested twice except to retry a failed request (or one in flight when a part died).
Pages keep the entries exactly as the site sent them: every part applies its own decisions.
"""

from __future__ import annotations

import fcntl
import gzip
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awm.errors import ConfigError
from awm.imageio import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class Page:
    index: int
    entries: list[Any]
    cursor: int | None  # the keyset cursor for the next page (the lowest id seen so far)
    done: bool  # the listing ended here (an empty page)


class SharedListing:
    """The pages of one listing query (site, tags, page size) in ``out/listing``."""

    def __init__(self, out: Path, query: dict[str, Any]):
        self.dir = Path(out) / "listing"
        self.dir.mkdir(parents=True, exist_ok=True)
        text = json.dumps(query, sort_keys=True)
        with self._locked():
            for stale in self.dir.glob(".*.tmp"):  # a part killed mid-write; writers hold this lock
                stale.unlink(missing_ok=True)
            qpath = self.dir / "query.json"
            if not qpath.is_file():
                atomic_write_text(qpath, text)
            elif qpath.read_text() != text:
                raise ConfigError("out", str(out), f"a folder whose listing was made for this query "
                                  f"({qpath.read_text()} there, {text} now): use a new --out")

    def _locked(self):
        """An exclusive lock on the listing (a context manager holding ``flock``)."""
        return _Flock(self.dir / ".lock")

    def path(self, k: int) -> Path:
        return self.dir / f"page-{k:06d}.json.gz"

    def _load(self, k: int) -> Page:
        d = json.loads(gzip.decompress(self.path(k).read_bytes()))
        return Page(k, d["entries"], d["cursor"], d["done"])

    def pages(self) -> int:
        """How many pages are stored (they are written in order, so 0..n-1)."""
        n = 0
        while self.path(n).is_file():
            n += 1
        return n

    def page(self, k: int, fetch: Callable[[int | None], tuple[list[Any], int | None]]) -> Page:
        """Page ``k``, fetching it (``fetch(cursor) -> (entries, next cursor)``) only if no part has."""
        if self.path(k).is_file():
            return self._load(k)
        with self._locked():
            if self.path(k).is_file():
                return self._load(k)
            cursor = None
            if k > 0:
                prev = self._load(k - 1)  # a part asks for page k only after reading k-1
                if prev.done:
                    return Page(k, [], prev.cursor, True)
                cursor = prev.cursor
            entries, nxt = fetch(cursor)
            page = Page(k, entries, nxt, not entries)
            body = json.dumps({"entries": entries, "cursor": nxt, "done": page.done, "below": cursor})
            atomic_write_bytes(self.path(k), gzip.compress(body.encode(), 6))
            return page


class _Flock:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self) -> _Flock:
        self.f = open(self.path, "a")  # noqa: SIM115 - held until __exit__
        fcntl.flock(self.f.fileno(), fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc) -> None:
        fcntl.flock(self.f.fileno(), fcntl.LOCK_UN)
        self.f.close()
