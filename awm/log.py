"""Rank-aware logging and progress bars (shown on rank 0 only)."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

from awm import dist

T = TypeVar("T")
_configured = False


def get_logger(name: str = "awm") -> logging.Logger:
    """A logger that prefixes the rank when there are several; non-main ranks log warnings only."""
    global _configured
    if not _configured:
        d = dist.env()
        prefix = f"[rank {d.rank}] " if d.world_size > 1 else ""
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s",
                                               "%H:%M:%S"))
        root = logging.getLogger("awm")
        root.handlers[:] = [handler]
        root.setLevel(logging.INFO if d.is_main else logging.WARNING)
        root.propagate = False
        _configured = True
    return logging.getLogger(name)


def show_progress(enabled: bool = True) -> bool:
    """Whether a progress bar is drawn here: rank 0 only, and not under ``AWM_NO_PROGRESS=1``
    (which ``--no-progress`` on any command sets); every bar asks this one place."""
    return enabled and dist.is_main() and os.environ.get("AWM_NO_PROGRESS", "") in ("", "0")


def progress(it: Iterable[T], total: int | None = None, desc: str = "", unit: str = "it",
             enabled: bool = True) -> Iterator[T]:
    """tqdm on rank 0 (rate and ETA), a plain iterator elsewhere or when disabled (show_progress)."""
    from tqdm.auto import tqdm

    return iter(tqdm(it, total=total, desc=desc, unit=unit, disable=not show_progress(enabled),
                     dynamic_ncols=True, mininterval=1.0, file=sys.stderr))
