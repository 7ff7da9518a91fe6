"""Where submitted jobs stand: which SLURM jobs are still queued or running, waiting for jobs to
end, and the list of a sweep folder's submissions.

Both the submitters (:mod:`awm.cluster.submit`, :mod:`awm.cluster.sweep`) and the sweep runner
(:mod:`awm.sweep.sweep`, which must not start a point a queued job will run) call down into this
one place; it imports no other ``awm.cluster`` or ``awm.sweep`` module.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

from awm.imageio import atomic_write_text
from awm.log import get_logger

log = get_logger("awm.submit")


def wait_jobs(jobs: list) -> int:
    """Block until the jobs end; 0 if all succeeded, else 1 with each failure logged.

    A SLURM job's failure is believed only once SLURM has ended it: submitit can take a task whose
    launch failed on a dying node for finished while SLURM requeues it, and that task then runs
    and succeeds elsewhere (seen in the node-death SLURM test: 'No output/error stream produced')."""
    import submitit

    failed = 0
    for j in jobs:
        error = _failure(j)
        if error and isinstance(j, submitit.SlurmJob):
            settle([j.job_id.split("_")[0]], timeout=None)
            error = _failure(j)
        if error:
            failed = 1
            log.error("job %s failed: %s", j.job_id, error)
        else:
            print(f"job {j.job_id}: done")
    settle(sorted({j.job_id.split("_")[0] for j in jobs if isinstance(j, submitit.SlurmJob)}))
    return failed


def _failure(job) -> str | None:
    """The last line of why a job failed, or None when it returned."""
    try:
        job.results()
    except Exception as e:  # noqa: BLE001 - a failed job is a result to report, not a crash
        lines = str(e).strip().splitlines()
        return lines[-1] if lines else type(e).__name__
    return None


def settle(job_ids: list[str], timeout: float | None = 60) -> None:
    """Wait until SLURM has ended the jobs too (``timeout=None``: however long they still run): a
    task writes its result just before it exits, and a ``--retry`` right after ``--wait`` would
    otherwise find them still running."""
    deadline = None if timeout is None else time.time() + timeout
    try:
        while active_jobs(job_ids) and (deadline is None or time.time() < deadline):
            time.sleep(0.5)
    except (OSError, subprocess.SubprocessError) as e:  # no sacct (no accounting): nothing to wait for
        log.warning("sacct: %s", e)


ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


def active_jobs(job_ids: list[str]) -> list[str]:
    """Which of these SLURM jobs are still queued or running (from sacct)."""
    if not job_ids:
        return []
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("|")[0] for line in out.splitlines()
            if "|" in line and line.split("|")[1].split()[0] in ACTIVE_STATES]


SUBMISSIONS = "submissions.json"  # in the sweep folder: the SLURM jobs each submission queued


def queued_jobs(folder: Path) -> list[str]:
    """SLURM jobs of this sweep's earlier submissions that are still queued or running: their points
    must not be started a second time (a queued point has no record yet)."""
    p = Path(folder) / SUBMISSIONS
    if not p.is_file() or shutil.which("sacct") is None:
        return []
    ids = sorted({j.split("_")[0] for s in json.loads(p.read_text()) for j in s["jobs"]})
    # squeue first: slurmctld knows a job the moment it is submitted, while sacct may list it only
    # after slurmdbd has recorded it (seconds later on a loaded controller)
    queue = subprocess.run(["squeue", "-h", "-o", "%F"], capture_output=True, text=True, timeout=60)
    queued = {line.strip() for line in queue.stdout.splitlines()} if queue.returncode == 0 else set()
    return sorted((queued & set(ids)) | set(active_jobs(ids)))


def remember_submission(folder: Path, record_dir: Path, entries: list[dict[str, Any]]) -> None:
    p = folder / SUBMISSIONS
    done = json.loads(p.read_text()) if p.is_file() else []
    done.append({"submission": str(record_dir), "jobs": [e["job_id"] for e in entries]})
    atomic_write_text(p, json.dumps(done, indent=1))
