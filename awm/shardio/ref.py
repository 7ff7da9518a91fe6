"""One shard's address: :class:`ShardRef` (a local path, an http(s) URL or a ``pipe:`` command) and
its file name. Everything else in :mod:`awm.shardio` builds on it."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from urllib.parse import urlparse


def is_remote(location: str) -> bool:
    return location.startswith(("http://", "https://", "pipe:"))


@dataclass(frozen=True)
class ShardRef:
    """One shard: ``url`` is a local path, an http(s) URL or a pipe: command."""

    url: str
    name: str
    nsamples: int | None = None
    filesize: int | None = None


def _name_of(url: str) -> str:
    """The shard's file name: the URL path's basename, or for a pipe: the last token naming a .tar."""
    if url.startswith("pipe:"):
        tokens = [t for t in url[5:].split() if ".tar" in t]
        if tokens:
            return os.path.basename(urlparse(tokens[-1]).path or tokens[-1])
        return "pipe-" + hashlib.sha256(url.encode()).hexdigest()[:16] + ".tar"
    return os.path.basename(urlparse(url).path) if is_remote(url) else os.path.basename(url)
