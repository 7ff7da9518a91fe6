"""What every test that starts processes needs, in one place (see tests/README.md).

- ``free_port()``: a TCP port the OS just handed out (bind to port 0), for ``--master_port`` and
  friends; never a literal: tests run side by side (pytest-xdist, other checkouts) on one host.
- ``wait_for(check, what)``: poll a state (a file appears, a log reaches a step, SLURM reports an
  end) until ``check()`` is truthy; the ceiling is generous (a loaded 2-core machine is slow, not
  wrong) and the failure names what was awaited and the last value seen. No test sleeps a fixed
  time to let something happen, and no test bounds how long something takes.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")
CEILING_S = 900.0  # per wait; pytest-timeout (setup.cfg) ends a test that hangs for good


def free_port() -> int:
    """A port no one listens on now, chosen by the OS (it hands out ephemeral ports round-robin,
    so the next process to ask is not given this one again right away)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], T], what: str, ceiling_s: float = CEILING_S, poll_s: float = 0.1,
             last: Callable[[], object] | None = None) -> T:
    """``check()``'s first truthy value; AssertionError naming ``what`` (and ``last()``) after ``ceiling_s``."""
    end = time.monotonic() + ceiling_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > end:
            seen = f"; last seen: {last()}" if last is not None else ""
            raise AssertionError(f"waited {ceiling_s:.0f} s for {what}{seen}")
        time.sleep(poll_s)


SLURM_ACTIVE = {"PENDING", "RUNNING", "COMPLETING", "REQUEUED", "CONFIGURING", "RESIZING", "SUSPENDED"}


def sacct_rows(job_ids: list[str], fields: str = "JobID,State", history: bool = False) -> list[list[str]]:
    """sacct's rows for these jobs (``-D``: every run of a requeued job), split on '|'."""
    cmd = ["sacct", "-n", "-X", "-P", "-o", fields, "-j", ",".join(job_ids)] + (["-D"] if history else [])
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return [line.split("|") for line in out.splitlines() if "|" in line]


def slurm_final_states(job_ids: list[str], ceiling_s: float = CEILING_S) -> dict[str, str]:
    """Every job's (and array task's) state once all have ended; slurmdbd records array tasks and
    a job's end a moment after the job wrote its result, so this polls sacct until then."""
    def states() -> dict[str, str]:
        return {r[0]: r[1].split()[0] for r in sacct_rows(job_ids)}

    def ended() -> dict[str, str] | None:
        s = states()
        return s if set(job_ids) <= set(s) and not SLURM_ACTIVE & set(s.values()) else None

    return wait_for(ended, f"SLURM jobs {', '.join(job_ids)} to end", ceiling_s, poll_s=0.5, last=states)
