"""``awm submit sweep SPEC.yaml``: one array task per unfinished point of a sweep, then a summary job.

Each array task is one point (``awm sweep FOLDER --point ID`` in-process): ``processes`` tasks of
one job (one GPU each where the profile has GPUs; ``--nodes`` spreads them), which rendezvous
from SLURM's environment like a training job. The summary (on SLURM a job that depends on the
array, afterany; locally run in-process after the tasks) writes ``points.json`` and fails,
naming them, if any point did not finish. Submitting the spec (or the folder) again submits only
the points that are not done: that is a sweep's retry.
"""

from __future__ import annotations

import argparse
import dataclasses
import signal
import socket
import time
from pathlib import Path
from typing import Any

from awm import cli
from awm.cluster.executor import (
    Profile,
    Request,
    describe_jobs,
    make_executor,
    new_record_dir,
    print_jobs,
    render_sbatch,
    save_record,
)
from awm.cluster.jobs import StageFailed, _preempt_signal, export_rendezvous
from awm.cluster.jobstate import queued_jobs, remember_submission, wait_jobs
from awm.config import to_dict
from awm.errors import ConfigError
from awm.log import get_logger

log = get_logger("awm.submit")


class PointTask:
    """One rank of one sweep point: train, then eval (every rank of the point runs this); ``device``
    "cuda" in a job given GPUs (see run_point)."""

    def __init__(self, folder: str, point_id: str, device: str | None = None):
        self.folder, self.point_id, self.device = folder, point_id, device

    def __call__(self) -> dict[str, Any]:
        from awm.sweep.spec import load_spec
        from awm.sweep.sweep import open_sweep, run_point, spec_path
        from awm.train import train

        started = time.time()
        export_rendezvous()
        # SLURM's warning before the time limit (or a preemption): training saves its state and the
        # point ends 'preempted'; submitting the sweep again resumes it.
        signal.signal(_preempt_signal(), lambda *_: train.request_stop())
        sweep = open_sweep(load_spec(spec_path(self.folder)))
        point = next(p for p in sweep.points if p.id == self.point_id)
        state = run_point(sweep, point, self.device)
        if state != "done":
            raise StageFailed(f"sweep point {point.id} ({point.delta}): {state}; see {sweep.run_dir(point)}/point.json")
        return {"point": point.id, "state": state, "host": socket.gethostname(),
                "duration_s": round(time.time() - started, 3)}


class SweepSummaryTask:
    """After the array: ``points.json``, and a failure that names every point not done."""

    def __init__(self, folder: str):
        self.folder = folder

    def __call__(self) -> dict[str, Any]:
        from awm.sweep.spec import load_spec
        from awm.sweep.sweep import finish, open_sweep, spec_path

        sweep = open_sweep(load_spec(spec_path(self.folder)))
        if finish(sweep, ended=True) != 0:
            raise StageFailed(f"sweep {self.folder}: some points did not finish (named in the log above); "
                              f"submit the sweep again to rerun only those")
        return {"points": len(sweep.points), "folder": self.folder}


def sweep_request(profile: Profile, profile_name: str, args: argparse.Namespace, processes: int,
                  npoints: int) -> Request:
    """Resources of one point (``processes`` tasks over ``--nodes``) and the array over the points."""
    if args.array not in (None, 1):
        raise ConfigError("--array", args.array, "no --array for a sweep: it is an array of its points")
    nodes = args.nodes or 1
    if processes % nodes:
        raise ConfigError("--nodes", nodes, f"a divisor of the spec's processes ({processes}): each node runs "
                          "the same number of a point's ranks")
    tasks = processes // nodes
    if args.tasks_per_node not in (None, tasks):
        raise ConfigError("--tasks-per-node", args.tasks_per_node, f"{tasks} (the spec's processes / --nodes)")
    gpus = args.gpus_per_node if args.gpus_per_node is not None else (tasks if profile.gpus_per_node else 0)
    if gpus > profile.gpus_per_node:
        raise ConfigError("--gpus-per-node", gpus, f"at most {profile.gpus_per_node}: the nodes of profile "
                          f"'{profile_name}' have {profile.gpus_per_node} GPUs each (use more --nodes)")
    if gpus and gpus != tasks:
        raise ConfigError("--gpus-per-node", gpus, f"{tasks} (one task per GPU)")
    if profile.max_nodes is not None and nodes > profile.max_nodes:
        raise ConfigError("--nodes", nodes, f"at most {profile.max_nodes} (max_nodes of profile '{profile_name}')")
    if profile.cluster != "slurm" and nodes > 1:
        raise ConfigError("--nodes", nodes, f"1 with the {profile.cluster} backend (one machine)")
    return Request(stage="sweep", mode="sweep", nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus,
                       cpus_per_task=args.cpus_per_task or profile.cpus_per_task, time=args.time or profile.time,
                       name="awm-sweep", array=max(npoints, 1))


def submit_sweep(profile: Profile, profile_name: str, args: argparse.Namespace) -> int:
    """Prepare the sweep folder, submit its unfinished points as an array and the summary after it."""
    from awm.sweep.spec import load_spec
    from awm.sweep.sweep import finish, open_sweep, owner_alive, prepare, spec_path

    parser, _ = cli.build_parser("sweep")
    try:
        ns = parser.parse_args(["sweep", *args.stage_args])
    except SystemExit:
        raise ConfigError("awm sweep arguments", " ".join(args.stage_args), "SPEC [--out DIR]") from None
    if ns.point is not None:
        raise ConfigError("--point", ns.point, "no --point: awm submit sweep submits every unfinished point")
    spec = load_spec(spec_path(ns.spec), ns.out)
    sweep = open_sweep(spec) if args.dry_run else prepare(spec)  # a dry run writes nothing
    active = queued_jobs(sweep.folder)
    if active:
        raise ConfigError("sweep", str(sweep.folder), f"a sweep with no jobs queued or running; still active: "
                          f"{', '.join(active)} (wait for them, or scancel them)")
    todo = []
    for p in sweep.pending():
        rec = sweep.status(p)
        if rec["state"] == "running" and owner_alive(rec["attempts"][-1]):
            raise ConfigError("sweep", str(sweep.folder), f"a sweep none of whose points run: point {p.id} is "
                              f"running ({rec['attempts'][-1].get('job') or rec['attempts'][-1].get('pid')})")
        todo.append(p)
    req = sweep_request(profile, profile_name, args, sweep.spec.processes, len(todo))
    if args.dry_run:
        print(render_sbatch(profile, req, Path(profile.log_dir).resolve() / "sweep-DRYRUN" / "jobs"))
        return 0
    if not todo:
        print(f"all {len(sweep.points)} points of {sweep.folder} are done: nothing to submit")
        return finish(sweep)
    record_dir = new_record_dir(profile, "sweep")
    record = {"stage": "sweep", "args": list(args.stage_args), "profile_name": profile_name,
              "profile": to_dict(profile), "request": dataclasses.asdict(req), "folder": str(sweep.folder),
              "points": [p.id for p in todo], "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": []}
    ex = make_executor(profile, req, record_dir / "jobs")
    with ex.batch():
        device = "cuda" if req.gpus_per_node else None
        jobs = [ex.submit(PointTask(str(sweep.folder), p.id, device)) for p in todo]
    entries = describe_jobs(jobs, "point")
    for e, p in zip(entries, todo, strict=True):
        e["point"] = p.id
    summary = SweepSummaryTask(str(sweep.folder))
    if profile.cluster == "slurm":
        summary_req = dataclasses.replace(req, nodes=1, tasks_per_node=1, gpus_per_node=0, cpus_per_task=1,
                                          time=min(req.time, 30), name="awm-sweep-summary", array=1)
        job = make_executor(profile, summary_req, record_dir / "jobs",
                                dependency=f"afterany:{jobs[0].job_id.split('_')[0]}").submit(summary)
        entries += describe_jobs([job], "summary")
        record["jobs"] += entries
        save_record(record_dir, record)
        remember_submission(sweep.folder, record_dir, entries)
        print_jobs(entries, profile, record_dir)
        return wait_jobs(jobs + [job]) if args.wait else 0
    record["jobs"] += entries
    save_record(record_dir, record)
    print_jobs(entries, profile, record_dir)
    for j in jobs:  # the points' own records say how each ended (results() waits 15 s for a killed job's)
        j.wait()
    return finish(sweep)
