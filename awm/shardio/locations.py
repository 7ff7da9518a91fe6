"""Where shards are: a location (folder or ``index.json``, index URL, brace pattern, ``pipe:``) to
its ordered :class:`ShardSet` (see :mod:`awm.shardio` for the forms a location takes)."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

from awm.shardio.cache import fetch_bytes, local_path
from awm.shardio.members import index_samples
from awm.shardio.ref import ShardRef, _name_of, is_remote

INDEX_NAME = "index.json"


_BRACES = re.compile(r"\{[^{}]*\.\.[^{}]*\}|\{[^{}]*,[^{}]*\}")


_PLAIN_PATH = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._/-]*$")


def has_braces(location: str) -> bool:
    """A brace pattern (``{000000..000099}`` or ``{a,b}``), expanded as WebDataset does."""
    return bool(_BRACES.search(location))


@dataclass
class ShardSet:
    """The shards of a location in order, and its index (synthesised for a brace pattern)."""

    location: str
    shards: list[ShardRef]
    index: dict[str, Any] = field(default_factory=dict)

    def counted(self) -> ShardSet:
        """Every shard with its sample count (a brace pattern's shards are fetched and indexed)."""
        if all(s.nsamples is not None for s in self.shards):
            return self
        refs = [s if s.nsamples is not None else
                ShardRef(s.url, s.name, len(index_samples(local_path(s))), s.filesize) for s in self.shards]
        index = {**self.index, "shardlist": [{"url": r.url, "nsamples": r.nsamples} for r in refs],
                 "nshards": len(refs), "nsamples": sum(r.nsamples or 0 for r in refs)}
        return ShardSet(self.location, refs, index)


def _expand(pattern: str) -> list[str]:
    import braceexpand

    return list(braceexpand.braceexpand(pattern))


def resolve(location: str | Path) -> ShardSet:
    """The shards a location names (see the module doc); errors name the location."""
    loc = str(location).strip()
    if not loc:
        raise ValueError("empty shard location")
    if has_braces(loc):
        urls = _expand(loc)
        return ShardSet(loc, [ShardRef(u if is_remote(u) else str(Path(u).resolve()), _name_of(u)) for u in urls],
                        {"shardlist": [{"url": u} for u in urls]})
    names_index = (any(t.endswith(".json") for t in loc[5:].split()) if loc.startswith("pipe:")
                   else not loc.endswith(".tar"))
    if not names_index:
        url = loc if is_remote(loc) else str(Path(loc).resolve())
        return ShardSet(loc, [ShardRef(url, _name_of(loc))], {"shardlist": [{"url": url}]})
    if is_remote(loc):
        index_url = loc if loc.endswith(".json") or loc.startswith("pipe:") else loc.rstrip("/") + "/" + INDEX_NAME
        try:
            index = json.loads(fetch_bytes(index_url).decode())
        except ValueError as e:
            raise ValueError(f"{index_url}: not a JSON shard index ({e})") from None
        return _from_index(loc, index, lambda u: _join(index_url, u))
    p = Path(loc)
    index_path = p if p.suffix == ".json" else p / INDEX_NAME
    if not index_path.is_file():
        raise FileNotFoundError(f"{index_path} not found: is {loc} a shard folder written by awm "
                                "(or an index.json URL, a brace pattern of .tar URLs, a pipe: URL)?")
    index = json.loads(index_path.read_text())
    base = index_path.parent.resolve()
    return _from_index(loc, index, lambda u: u if is_remote(u) or os.path.isabs(u) else str(base / u))


def _join(index_url: str, url: str) -> str:
    """A shard url from an index fetched at ``index_url``.

    The index is data from elsewhere: it may name http(s) shards, but never a command (a pipe:
    url) and, for a pipe: index, only plain relative paths, which go into the user's command.
    """
    if url.startswith("pipe:"):
        raise ValueError(f"{index_url}: a fetched index may not name pipe: urls ({url!r})")
    if is_remote(url):
        return url
    if index_url.startswith("pipe:"):
        if not _PLAIN_PATH.match(url):
            raise ValueError(f"{index_url}: shard url {url!r} is not a plain relative path")
        names = [os.path.basename(t) for t in index_url[5:].split() if t.endswith(".json")]
        head, sep, tail = index_url.rpartition(names[-1]) if names else ("", "", "")
        if not sep:
            raise ValueError(f"{index_url}: cannot place relative shard url {url!r} in this command "
                             "(it names no .json file); write absolute urls in the index")
        return head + url + tail
    return urljoin(index_url, url)


def _from_index(loc: str, index: dict[str, Any], absolute) -> ShardSet:
    if not isinstance(index, dict) or not isinstance(index.get("shardlist"), list):
        raise ValueError(f"{loc}: not a shard index (no shardlist)")
    refs = [ShardRef(absolute(s["url"]), _name_of(s["url"]), int(s["nsamples"]),
                     int(s["filesize"]) if s.get("filesize") is not None else None) for s in index["shardlist"]]
    return ShardSet(loc, refs, index)
