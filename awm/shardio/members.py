"""Sample grouping, the one place: ``<key>.<ext>`` members, consecutive, key = basename up to the
first dot. Used by the front-to-back reader (:func:`awm.shardio.read.iter_tar`), the random-access
index (:func:`index_samples`, :class:`awm.shardio.read.TarReader`) and the stages that list a tar.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def split_name(name: str) -> tuple[str, str]:
    """``(key, ext)`` of a tar member: basename up to the first dot, lower-cased rest (WebDataset's rule)."""
    key, _, ext = os.path.basename(name).partition(".")
    return key, ext.lower()


def group_members(members: Iterable[tuple[str, T]], where: str = "") -> Iterator[tuple[str, dict[str, T]]]:
    """Consecutive members sharing a key as ``(key, {ext: value})``.

    A member repeated inside one sample is a malformed shard (webdataset refuses it too):
    ``tarfile.ReadError`` naming it, rather than silently keeping one of the two.
    """
    key, group = None, {}
    for name, value in members:
        k, ext = split_name(name)
        if k != key:
            if key is not None:
                yield key, group
            key, group = k, {}
        if ext in group:
            raise tarfile.ReadError(f"{where}: member {name} repeated within sample {k}")
        group[ext] = value
    if key is not None:
        yield key, group


def tar_members(path: str | Path) -> Iterator[tuple[str, tuple[int, int]]]:
    """``(name, (data offset, size))`` of a local tar's regular files, in order (Python's tarfile:
    handles every header format and stops with an error where the tar is damaged)."""
    with tarfile.open(path, mode="r:") as tar:
        for m in tar:
            if m.isfile():
                yield m.name, (m.offset_data, m.size)


def index_samples(path: str | Path) -> list[tuple[str, dict[str, tuple[int, int]]]]:
    """``(key, {ext: (offset, size)})`` of every sample of a local tar, for random access."""
    return list(group_members(tar_members(path), str(path)))
