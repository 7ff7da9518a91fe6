"""``awm sweep SPEC.yaml``: run every point of a sweep (train, then eval), one after another.

    awm sweep sweep.yaml                 # locally; a point with processes: N runs under torchrun
    awm sweep sweeps/loss-vs-data        # again: finished points are skipped, the others rerun
    awm submit sweep sweep.yaml --profile slurm/gpu-a100x8.yaml   # one SLURM array task per point

The sweep folder::

    spec.yaml          the spec the points come from (a later run must keep its train/eval parts)
    points.json        every point: id, config delta, state (pending/running/done/failed/preempted)
    runs/<id>/         the point's training run (resumes from its state), eval/ (awm eval's
                       output) and point.json (its state and every attempt: host, job, seconds)
    submissions.json   the SLURM jobs of each awm submit sweep: while any is queued or running,
                       neither awm sweep nor awm submit sweep starts the sweep again

A point is done once its eval has written; anything else is rerun by the next ``awm sweep``
(training resumes from the run's saved state). A failed point is named in the log and makes
the exit code 1; ``awm report SWEEP_DIR`` puts the points into one table with plots.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from awm import config as cfgmod
from awm.cluster.jobstate import active_jobs, queued_jobs
from awm.errors import ConfigError
from awm.imageio import atomic_write_text
from awm.log import get_logger
from awm.sweep.spec import (
    POINT_NAME,
    POINTS_NAME,
    SPEC_NAME,
    Point,
    SweepSpec,
    delta_text,
    load_spec,
    point_config,
    points,
)

if TYPE_CHECKING:
    from awm.eval.evaluate import EvalConfig
    from awm.train.config import TrainConfig

log = get_logger("awm.sweep")

# The spec's parts that decide what a finished point holds: a rerun must not change them.
FIXED_PARTS = ("train", "eval", "processes")
KILLED = "its process or job ended without recording a result (killed?)"


@dataclass
class Sweep:
    """A prepared sweep folder and the points its spec stands for."""

    spec: SweepSpec
    folder: Path
    points: list[Point]

    def run_dir(self, point: Point) -> Path:
        return self.folder / "runs" / point.id

    def status(self, point: Point) -> dict[str, Any]:
        """The point's record (``point.json``); ``{"state": "pending"}`` before its first attempt."""
        p = self.run_dir(point) / POINT_NAME
        if p.is_file():
            return json.loads(p.read_text())
        return {"id": point.id, "delta": point.delta, "state": "pending", "attempts": []}

    def write_status(self, point: Point, record: dict[str, Any]) -> None:
        atomic_write_text(self.run_dir(point) / POINT_NAME, json.dumps(record, indent=1))

    def pending(self) -> list[Point]:
        return [p for p in self.points if self.status(p)["state"] != "done"]


def spec_path(spec_or_folder: str | Path) -> Path:
    """A spec file, or a sweep folder (its ``spec.yaml``)."""
    p = Path(spec_or_folder)
    return p / SPEC_NAME if p.is_dir() else p


def open_sweep(spec: SweepSpec) -> Sweep:
    """The sweep of a spec, writing nothing (what each point's processes use)."""
    spec = dataclasses.replace(spec, out=str(spec.folder.resolve()))
    return Sweep(spec, spec.folder, points(spec))


def prepare(spec: SweepSpec) -> Sweep:
    """Create (or reopen) the sweep folder: the spec copy and ``points.json``.

    Reopening with a spec whose train/eval parts differ is refused (the finished points would not
    match it); a changed search space is fine: points keep their ids, new points are added.
    """
    folder = spec.folder.resolve()
    spec = dataclasses.replace(spec, out=str(folder))
    stored = folder / SPEC_NAME
    if stored.is_file():
        old = yaml.safe_load(stored.read_text()) or {}
        new = cfgmod.to_dict(spec)
        changed = [k for k in FIXED_PARTS if old.get(k) != new.get(k)]
        if changed:
            raise ConfigError("out", str(folder), f"a new sweep folder: this one holds a sweep whose "
                              f"{', '.join(changed)} differ from this spec's (its points would not match)")
    (folder / "runs").mkdir(parents=True, exist_ok=True)
    cfgmod.save(spec, stored)
    sweep = Sweep(spec, folder, points(spec))
    write_points(sweep)
    return sweep


def write_points(sweep: Sweep) -> list[dict[str, Any]]:
    """``points.json``: every point of the spec with its state and last error (one writer at a time:
    the local driver, or the summary job after a SLURM array)."""
    entries = []
    for p in sweep.points:
        rec = sweep.status(p)
        last = rec["attempts"][-1] if rec["attempts"] else {}
        entries.append({"id": p.id, "delta": p.delta, "state": rec["state"], "run": f"runs/{p.id}",
                        "attempts": len(rec["attempts"]), "error": last.get("error")})
    doc = {"name": sweep.spec.name, "sampler": sweep.spec.search.sampler, "updated": _now(), "points": entries}
    atomic_write_text(sweep.folder / POINTS_NAME, json.dumps(doc, indent=1))
    return entries


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S")


def _job() -> str | None:
    e = os.environ
    if "SLURM_ARRAY_JOB_ID" in e:
        return f"{e['SLURM_ARRAY_JOB_ID']}_{e.get('SLURM_ARRAY_TASK_ID', '0')}"
    return e.get("SLURM_JOB_ID")


def eval_config(spec: SweepSpec, cfg: TrainConfig) -> EvalConfig:
    """The point's ``awm eval``: its chosen checkpoint on the spec's eval set, into ``<run>/eval``."""
    from awm.eval.evaluate import EvalConfig

    e = spec.eval
    return EvalConfig(data=e.data or cfg.data.eval or cfg.data.train, scale=cfg.data.scale,
                      models=[str(cfg.run_dir / "checkpoints" / e.checkpoint)], metrics=list(e.metrics),
                      out=str(cfg.run_dir / "eval"), limit=e.limit, tile=e.tile, device=e.device)


def run_point(sweep: Sweep, point: Point, device: str | None = None) -> str:
    """Train the point (resuming its run) and evaluate it; every rank of the point calls this.

    ``device`` (a job given GPUs passes "cuda") replaces training's and eval's "auto", so a node
    whose torch cannot see its GPUs fails the point at start instead of running it on the CPU.

    Returns the point's new state. Rank 0 records the attempt in ``point.json``. With one process an
    error becomes a failed point and the sweep goes on; with several it is raised after recording,
    so that the launcher ends the peers (they would wait in a collective forever).
    """
    import torch

    from awm import dist
    from awm.eval.evaluate import evaluate
    from awm.train import train

    had_group = dist.initialized()
    d = dist.init()
    record = sweep.status(point)
    attempt: dict[str, Any] = {
        "started": _now(), "host": socket.gethostname(), "pid": os.getpid(), "job": _job(), "state": "running",
        "processes": d.world_size, "device": "cuda" if torch.cuda.is_available() else "cpu",
        "threads": torch.get_num_threads(), "train_s": 0.0, "eval_s": 0.0}
    record["attempts"].append(attempt)
    record["state"] = "running"
    if d.is_main:
        sweep.write_status(point, record)
    t0 = time.perf_counter()
    try:
        cfg = point_config(sweep.spec, point, sweep.folder)
        if device and cfg.device == "auto":
            cfg.device = device
        stats = train.train(cfg)
        attempt["train_s"] = round(time.perf_counter() - t0, 3)
        if stats["status"] == "done":
            t1 = time.perf_counter()
            ecfg = eval_config(sweep.spec, cfg)
            if device and ecfg.device == "auto":
                ecfg.device = device
            evaluate(ecfg)
            cfgmod.save_beside(ecfg, ecfg.out, "eval")
            attempt["eval_s"] = round(time.perf_counter() - t1, 3)
            attempt["state"] = "done"
        else:
            attempt["state"] = "preempted" if stats["status"] == "preempted" else "failed"
            attempt["error"] = f"training ended with status '{stats['status']}' at step {stats['step']}"
    except Exception as e:
        attempt["state"], attempt["error"] = "failed", f"{type(e).__name__}: {e}"
        if attempt["train_s"] == 0.0:
            attempt["train_s"] = round(time.perf_counter() - t0, 3)
        log.error("point %s (%s) failed: %s", point.id, delta_text(point.delta), attempt["error"])
        if d.world_size > 1:
            _record(sweep, point, record, attempt, d.is_main)
            raise
    _record(sweep, point, record, attempt, d.is_main)
    if d.is_main and attempt["state"] == "done":
        track_point(sweep, point, cfg.log.trackers)
    if not had_group:
        dist.destroy()
    return attempt["state"]


def track_point(sweep: Sweep, point: Point, trackers: list[str]) -> None:
    """The done point's delta, eval metrics and cost into its W&B/MLflow run, so that the trackers'
    comparison views hold what ``awm report`` tables; a tracker that fails here costs a warning,
    not the point (its results are on disk)."""
    from awm.sweep.report import COMPUTE, eval_means, point_row
    from awm.train import tracking

    row, _ = point_row(sweep.folder, point)
    means, _ = eval_means(sweep.run_dir(point))
    metrics = {f"eval/{k}": v for k, v in means.items()}
    metrics.update({f"cost/{k}": row[k] for k in COMPUTE if isinstance(row[k], (int, float))})
    params = tracking.flatten({"sweep": {"name": sweep.spec.name, "point": point.id, "delta": point.delta}})
    try:
        tracking.log_final(sweep.run_dir(point), trackers, params, metrics, int(row["steps"] or 0))
    except Exception as e:  # noqa: BLE001 - the point is done and recorded; only its tracker copy is missing
        log.warning("point %s: its results did not reach the trackers (%s: %s); awm report has them",
                    point.id, type(e).__name__, e)


def _record(sweep: Sweep, point: Point, record: dict[str, Any], attempt: dict[str, Any], main: bool) -> None:
    attempt["ended"] = _now()
    record["state"] = attempt["state"]
    if main:
        sweep.write_status(point, record)


def owner_alive(attempt: dict[str, Any]) -> bool:
    """Whether the process or SLURM job of a 'running' attempt still exists (else it was killed)."""
    if attempt.get("job") and shutil.which("sacct"):
        try:
            return bool(active_jobs([attempt["job"]]))
        except (OSError, subprocess.SubprocessError):
            return False
    if attempt.get("host") != socket.gethostname() or attempt.get("pid") == os.getpid():
        return False
    try:
        os.kill(int(attempt["pid"]), 0)
    except (OSError, ValueError, KeyError):
        return False
    return True


def _held(run: Path, attempt: dict[str, Any]) -> float:
    """Seconds from an attempt's start to the last file its run wrote: at least what a killed attempt
    ran (its own end was never recorded)."""
    started = time.mktime(time.strptime(attempt["started"], "%Y-%m-%dT%H:%M:%S"))
    last = max((p.stat().st_mtime for p in run.rglob("*") if p.is_file()), default=started)
    return max(0.0, last - started)


def mark_dead(sweep: Sweep, point: Point, why: str, seconds: float | None = None) -> None:
    """A point left 'running' by an attempt that is gone: record it as failed, with the reason and the
    time it ran (``seconds`` when its launcher measured it, else up to its run's last write)."""
    record = sweep.status(point)
    if record["state"] != "running":
        return
    attempt = record["attempts"][-1]
    attempt.update(state="failed", error=why, ended=_now())
    if not attempt.get("train_s"):
        attempt["train_s"] = round(seconds if seconds is not None else _held(sweep.run_dir(point), attempt), 3)
    record["state"] = "failed"
    sweep.write_status(point, record)


def torchrun_point(sweep: Sweep, point: Point) -> int:
    """One point as ``processes`` local ranks: ``torchrun -m awm sweep FOLDER --point ID``."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc_per_node={sweep.spec.processes}", "-m", "awm", "sweep", str(sweep.folder), "--point", point.id]
    log.info("point %s: %s", point.id, " ".join(cmd))
    t0 = time.perf_counter()
    code, why = run_launcher(cmd)
    if code != 0:
        mark_dead(sweep, point, why, time.perf_counter() - t0)
    return code


_FAILED_RANK = re.compile(r"exitcode\s*:\s*(-\d+)")  # torch elastic's failure table: "exitcode  : -9 (pid: 1)"


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def run_launcher(cmd: list[str]) -> tuple[int, str]:
    """Run a launcher (torchrun) to its end, its stderr passed through; (exit code, why it failed).

    torchrun exits 1 whatever killed a rank: the signal is read from the failure table it prints,
    so a SIGKILL (the OOM killer, ``kill -9``) is named as such. A stop request (SIGTERM/SIGUSR1)
    goes to torchrun as SIGTERM, which it passes on to the ranks: they save their state and exit
    (torchrun itself would die of a SIGUSR1).
    """
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, errors="replace")
    forward = {sig: signal.signal(sig, lambda *_: proc.send_signal(signal.SIGTERM))
               for sig in (signal.SIGTERM, signal.SIGUSR1)}
    killed: set[str] = set()
    try:
        for line in proc.stderr:
            sys.stderr.write(line)
            found = _FAILED_RANK.search(line)
            if found:
                killed.add(_signal_name(-int(found.group(1))))
        code = proc.wait()
    finally:
        for sig, handler in forward.items():
            signal.signal(sig, handler)
    if code < 0:
        return code, f"torchrun was killed by {_signal_name(-code)}"
    if killed:
        return code, f"a rank was killed by {', '.join(sorted(killed))} (torchrun exited with code {code}); its log is above"
    return code, f"torchrun exited with code {code}; its log is above"


def finish(sweep: Sweep, ended: bool = True) -> int:
    """Write ``points.json``; log each unfinished point by id and delta; 0 only if every point is done.

    ``ended``: nothing of this sweep runs any more, so a point still 'running' was killed.
    """
    if ended:
        for p in sweep.points:
            rec = sweep.status(p)
            if rec["state"] == "running" and not owner_alive(rec["attempts"][-1]):
                mark_dead(sweep, p, KILLED)
    entries = write_points(sweep)
    counts: dict[str, int] = {}
    for e in entries:
        counts[e["state"]] = counts.get(e["state"], 0) + 1
    summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    bad = [e for e in entries if e["state"] != "done"]
    for e in bad:
        why = f": {e['error']}" if e["error"] else ""
        log.error("point %s (%s): %s%s", e["id"], delta_text(e["delta"]), e["state"], why)
    print(f"sweep {sweep.spec.name}: {len(entries)} points: {summary}  ({sweep.folder})")
    if bad:
        print(f"rerun the unfinished points with: awm sweep {sweep.folder}")
    return 1 if bad else 0


def run_sweep(sweep: Sweep) -> int:
    """Every point not done yet, one after another, then the summary."""
    from awm import dist

    if dist.env().world_size > 1:
        raise ConfigError("launcher", "torchrun", "one process: awm sweep starts each point's processes itself "
                          "(processes: N in the spec)")
    active = queued_jobs(sweep.folder)
    if active:
        raise ConfigError("sweep", str(sweep.folder), "a sweep with no SLURM jobs queued or running (awm submit "
                          f"sweep); still active: {', '.join(active)} (wait for them, or scancel them)")
    todo = sweep.pending()
    log.info("sweep %s: %d points, %d to run (%s)", sweep.spec.name, len(sweep.points), len(todo), sweep.folder)
    for p in todo:
        rec = sweep.status(p)
        if rec["state"] == "running" and owner_alive(rec["attempts"][-1]):
            log.error("point %s is running elsewhere (%s): skipped", p.id, rec["attempts"][-1])
            continue
        mark_dead(sweep, p, KILLED)
        log.info("point %s: %s", p.id, delta_text(p.delta))
        if sweep.spec.processes > 1:
            torchrun_point(sweep, p)
        else:
            run_point(sweep, p)
        write_points(sweep)
        if sweep.status(p)["state"] == "preempted":  # SIGTERM/SIGUSR1: the sweep stops, not just this point
            log.warning("stop requested: point %s saved its state; the next awm sweep resumes it", p.id)
            break
    return finish(sweep)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("spec", metavar="SPEC", help="a sweep spec (YAML), or a sweep folder to continue")
    parser.add_argument("--out", help="the sweep folder (default: the spec's out, else sweeps/<name>)")
    parser.add_argument("--point", metavar="ID", help="run only this point, on every rank of a launcher "
                        "(what awm sweep and awm submit run for each point)")


def run(args: argparse.Namespace) -> int:
    spec = load_spec(spec_path(args.spec), args.out)
    if args.point is None:
        return run_sweep(prepare(spec))
    sweep = open_sweep(spec)
    point = next((p for p in sweep.points if p.id == args.point), None)
    if point is None:
        raise ConfigError("--point", args.point, "a point of this sweep: " + ", ".join(p.id for p in sweep.points))
    return 0 if run_point(sweep, point) == "done" else 1
