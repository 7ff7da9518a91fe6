"""Peer tools for side-by-side benchmarks, each in its own venv made from the package index on first use.

One place for "make a peer venv" (bench_crawl's img2dataset, bench_train's BasicSR and neosr): under
``$AWM_BENCH_CACHE`` (default ~/.cache/awm-bench), kept between runs; a venv whose install failed
is removed, and the failure is a :class:`PeerUnavailable` carrying pip's last line, so a benchmark
can skip that peer with the reason instead of crashing.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

CACHE = Path(os.environ.get("AWM_BENCH_CACHE", Path.home() / ".cache" / "awm-bench"))


class PeerUnavailable(Exception):
    """A peer that cannot be installed or run here; the message says why."""


def peer_venv(name: str, installs: list[list[str]]) -> Path:
    """The ``bin`` folder of venv ``CACHE/name``, made on first use by one ``pip install`` per item
    of ``installs`` (arguments: requirements and options, e.g. a package's dependencies first, then
    the package itself with ``--no-deps``).

    A marker file records what was installed: a venv made for other installs is completed by pip
    (already-present packages are kept), one whose install failed never counts as made.
    """
    root = CACHE / name
    marker = root / ".awm-installed"
    want = "\n".join(" ".join(args) for args in installs)
    if marker.exists() and marker.read_text() == want:
        return root / "bin"
    CACHE.mkdir(parents=True, exist_ok=True)
    pip = [str(root / "bin" / "python"), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    # `python -m venv` bases the new venv on the base interpreter even when run from inside a venv.
    for cmd in ([sys.executable, "-m", "venv", str(root)], *([*pip, *args] for args in installs)):
        p = subprocess.run(cmd, capture_output=True, text=True)
        if p.returncode:
            shutil.rmtree(root, ignore_errors=True)
            lines = [x.strip() for x in (p.stderr + p.stdout).splitlines() if x.strip()]
            errors = [x for x in lines if "ERROR" in x]
            why = (errors or lines or [f"exit status {p.returncode}"])[-1]
            what = " ".join(cmd[len(pip):]) if cmd[:len(pip)] == pip else f"a venv at {root}"
            raise PeerUnavailable(f"cannot install {what}: {why[:300]}")
    marker.write_text(want)
    return root / "bin"
