"""``awm submit``: run any stage on SLURM (or locally) through submitit, from one command.

    awm submit shard --in raw/ --out shards/ --profile slurm/cpu.yaml --array 16
    awm submit train --config rrdb-x2 --profile slurm/gpu-a100x8.yaml --nodes 2
    awm submit --retry .slurm/shard-20250101-120000-1a2b     # only the parts that failed
    awm submit sweep sweep.yaml --profile slurm/gpu-a100x8.yaml   # one array task per sweep point

Data stages with ``--part`` (crawl, shard) become an array job over ``--part i/n`` plus a merge
step: on SLURM the merge is a job that depends on the array (afterany) and checks that every part
finished before merging the per-part shard stats into one ``index.json`` (for a crawl, after
dropping duplicates across its parts: ``awm.acquire.merge``), so ``awm submit``
returns at once; with ``--cluster local``/``debug`` it waits and merges in-process. Data stages
that split their work over ranks instead (eval, score, upscale) run as one job of ranks: one per GPU
of each node on a profile with GPUs (with ``--device cuda``), else ``--array`` of them.
Training is one job of ``nodes x gpus_per_node`` tasks (one per GPU) that requeues itself on
preemption or time limit and resumes. Any other stage is a single job. Every submission gets a
fresh folder (``<log_dir>/<stage>-<time>-<rand>``) with ``submission.json``, logs, part markers.
See slurm/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from awm import cli
from awm.cli import COMMANDS
from awm.cluster.executor import (
    CLUSTERS,
    Profile,
    Request,
    describe_jobs,
    fit_signal_delay,
    load_profile,
    load_record,
    make_executor,
    new_record_dir,
    print_jobs,
    render_sbatch,
    request_from_record,
    save_record,
)
from awm.cluster.jobs import MergeTask, StageTask, TrainTask, parts_done
from awm.cluster.jobstate import active_jobs, wait_jobs
from awm.config import check, from_dict, parse_override, set_dotted, to_dict
from awm.dist import Part
from awm.errors import ConfigError
from awm.log import get_logger

log = get_logger("awm.submit")

DATA_STAGES = ("crawl", "shard", "eval", "score", "upscale")
GPU_STAGES = ("eval", "score", "upscale")  # one rank per GPU of each node when the profile has GPUs


def stage_mode(stage: str) -> str:
    """How a stage is split on a cluster: by ``--part`` if its parser has it, else by ranks."""
    if stage == "train":
        return "train"
    if stage not in DATA_STAGES:
        return "single"
    return "array" if "--part" in stage_options(stage) else "ranks"


def stage_options(stage: str) -> set[str]:
    """The option strings a stage's parser takes (``--part``, ``--device``, ...)."""
    parser, modules = cli.build_parser(stage)
    if modules.get(stage) is None:
        raise ConfigError("stage", stage, "a stage that exists in this awm version (awm --help)")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[stage]
    return {o for a in sub._actions for o in a.option_strings}


def make_request(stage: str, profile: Profile, profile_name: str, args: argparse.Namespace) -> Request:
    """Resolve the resources of one job and reject what the profile's nodes cannot give."""
    mode = stage_mode(stage)
    array = args.array or 1
    check(array >= 1, "--array", array, "an integer >= 1")
    check(array == 1 or mode in ("array", "ranks"), "--array", array, f"1 for '{stage}'; arrays are for {', '.join(DATA_STAGES)}")
    nodes = args.nodes if args.nodes is not None else (profile.nodes if mode == "train" else 1)
    check(nodes >= 1, "--nodes", nodes, "an integer >= 1")
    if mode == "train":
        tasks = args.tasks_per_node or profile.tasks_per_node or max(
            args.gpus_per_node if args.gpus_per_node is not None else profile.gpus_per_node, 1)
        default_gpus = profile.gpus_per_node and tasks
    elif mode == "ranks":
        node_gpus = args.gpus_per_node if args.gpus_per_node is not None else profile.gpus_per_node
        gpu = stage in GPU_STAGES and node_gpus > 0
        if gpu and args.array is None and args.tasks_per_node is None:
            tasks = node_gpus  # one rank per GPU of every node: what sharded eval/score/upscale is for
        else:
            check(array % nodes == 0, "--array", array, f"a multiple of --nodes ({nodes}): each node runs "
                  "the same number of ranks")
            tasks = args.tasks_per_node or array // nodes
        default_gpus = tasks if gpu else 0
    else:
        check(args.tasks_per_node in (None, 1), "--tasks-per-node", args.tasks_per_node,
              f"1 for '{stage}' (each part is one process)")
        tasks = 1
        default_gpus = int(stage in GPU_STAGES and profile.gpus_per_node > 0)
    gpus = args.gpus_per_node if args.gpus_per_node is not None else default_gpus
    if gpus > profile.gpus_per_node:
        raise ConfigError("--gpus-per-node", gpus,
                          f"at most {profile.gpus_per_node}: the nodes of profile '{profile_name}' have "
                          f"{profile.gpus_per_node} GPUs each (use more --nodes instead)")
    if mode in ("train", "ranks") and gpus and tasks != gpus:
        raise ConfigError("--tasks-per-node", tasks, f"{gpus} (one task per GPU)")
    if profile.max_nodes is not None and nodes > profile.max_nodes:
        raise ConfigError("--nodes", nodes, f"at most {profile.max_nodes} (max_nodes of profile '{profile_name}')")
    if nodes > 1 and mode not in ("train", "ranks"):
        raise ConfigError("--nodes", nodes, f"1 for '{stage}': each part is one task and SLURM spreads "
                          "the --array parts over nodes itself" if mode == "array" else f"1 for '{stage}'")
    if profile.cluster != "slurm" and nodes > 1:
        raise ConfigError("--nodes", nodes, f"1 with the {profile.cluster} backend (one machine)")
    time = args.time or profile.time
    check(time >= 1, "--time", time, "minutes >= 1")
    delay = fit_signal_delay(profile.signal_delay_s, time)
    if delay != profile.signal_delay_s:
        log.warning("the stop warning comes %d s before the time limit, not signal_delay_s=%d s: a %d-minute job "
                    "would be told to stop after %d s; set signal_delay_s (--set) or --time to choose",
                    delay, profile.signal_delay_s, time, max(0, 60 * time - profile.signal_delay_s))
    return Request(stage=stage, mode=mode, nodes=nodes, tasks_per_node=tasks, gpus_per_node=gpus,
                   cpus_per_task=args.cpus_per_task or profile.cpus_per_task, time=time, name=f"awm-{stage}",
                   array=array if mode == "array" else 1, signal_delay_s=delay)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("stage", nargs="?", choices=[c for c in COMMANDS if c != "submit"],
                        help="the awm stage to run; its own arguments follow it")
    parser.add_argument("stage_args", nargs=argparse.REMAINDER, metavar="...",
                        help="the stage's arguments; submit's own flags may be mixed in, "
                             "stage flags with the same names go after '--'")
    add_submit_flags(parser)


def add_submit_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", help="a YAML path or NAME of a shipped profile (awm/cluster/profiles/: cpu-test, gpu-a100x8, local)")
    parser.add_argument("--cluster", choices=CLUSTERS, help="override the profile's backend")
    parser.add_argument("--nodes", type=int, help="nodes (training)")
    parser.add_argument("--gpus-per-node", type=int, help="GPUs per node (training: one task each)")
    parser.add_argument("--tasks-per-node", type=int, help="training ranks per node without GPUs")
    parser.add_argument("--cpus-per-task", type=int, help="CPU cores per task")
    parser.add_argument("--array", type=int, help="split a data stage into this many parts (--part i/n)")
    parser.add_argument("--time", type=int, help="time limit in minutes")
    parser.add_argument("--partition", help="override the profile's partition")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any profile key, e.g. --set mem=64G")
    parser.add_argument("--wait", action="store_true", help="wait for the jobs and report how they ended")
    parser.add_argument("--dry-run", action="store_true", help="print the sbatch script, submit nothing")
    parser.add_argument("--retry", metavar="SUBMISSION_DIR",
                        help="resubmit the parts of an array submission that did not finish, then merge")


def split_args(args: argparse.Namespace) -> argparse.Namespace:
    """Pull submit's own flags out of the stage arguments (everything after '--' is the stage's)."""
    rest = list(args.stage_args or [])
    tail: list[str] = []
    if "--" in rest:
        cut = rest.index("--")
        rest, tail = rest[:cut], rest[cut + 1:]
    p = argparse.ArgumentParser(prog="awm submit", add_help=False, allow_abbrev=False)
    add_submit_flags(p)
    ns, unknown = p.parse_known_args(rest)
    for k, v in vars(ns).items():
        if v not in (None, False, []):
            setattr(args, k, v)
    args.stage_args = unknown + tail
    return args


def check_stage_args(req: Request, stage_args: list[str]) -> argparse.Namespace:
    """Parse the stage's arguments now, so a typo fails at submission, not hours later in a queue."""
    parser, modules = cli.build_parser(req.stage)
    if modules.get(req.stage) is None:
        raise ConfigError("stage", req.stage, "a stage that exists in this awm version (awm --help)")
    argv = [req.stage, *stage_args] + (["--part", f"0/{req.array}"] if req.mode == "array" else [])
    try:
        return parser.parse_args(argv)
    except SystemExit:
        raise ConfigError(f"awm {req.stage} arguments", " ".join(stage_args),
                          "arguments that 'awm " + req.stage + "' accepts (see the usage above)") from None


def train_task(ns: argparse.Namespace, profile: Profile, gpus: int = 0):
    """Training's dedicated job: the recipe and its key=value overrides, run on every rank.

    A job given GPUs trains with ``device=cuda`` (unless the overrides say otherwise), so a node
    whose torch cannot see them fails at start instead of training on its CPUs."""
    overrides = list(getattr(ns, "overrides", []) or [])
    if gpus and not any(o.startswith("device=") for o in overrides):
        overrides.insert(0, "device=cuda")
    return TrainTask(ns.config, overrides, profile.max_requeue)


def gpu_stage_args(stage: str, stage_args: list[str], gpus: int) -> list[str]:
    """A stage's arguments in a job given GPUs: ``--device cuda`` added when the stage takes a
    ``--device`` and the arguments choose none, so a node whose torch (or onnxruntime) cannot see
    the GPUs fails at start instead of running on its CPUs. ``cuda`` is each rank's own GPU
    (``awm.dist.init`` makes it the current device)."""
    chosen = any(a == "--device" or a.startswith("--device=") for a in stage_args)
    if not gpus or chosen or "--device" not in stage_options(stage):
        return list(stage_args)
    return [*stage_args, "--device", "cuda"]


def submit(profile: Profile, profile_name: str, req: Request, stage_args: list[str],
           ns: argparse.Namespace, wait: bool = False) -> int:
    """Queue the jobs of one submission, record them, print ids/logs/watch lines; maybe wait."""
    record_dir = new_record_dir(profile, req.stage)
    if req.stage != "train":
        stage_args = gpu_stage_args(req.stage, stage_args, req.gpus_per_node)
    record = {"stage": req.stage, "args": list(stage_args), "profile_name": profile_name,
              "profile": to_dict(profile), "request": dataclasses.asdict(req),
              "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "python": sys.executable, "jobs": []}
    save_record(record_dir, record)
    if req.mode == "array":
        return _submit_parts(profile, req, record, record_dir, list(range(req.array)), wait)
    task = train_task(ns, profile, req.gpus_per_node) if req.stage == "train" else StageTask(req.stage, stage_args)
    job = make_executor(profile, req, record_dir / "jobs").submit(task)
    entries = describe_jobs([job], req.stage)
    record["jobs"] += entries
    save_record(record_dir, record)
    print_jobs(entries, profile, record_dir)
    if wait or profile.cluster != "slurm":
        return wait_jobs([job])
    return 0


def _submit_parts(profile: Profile, req: Request, record: dict[str, Any], record_dir: Path,
                  parts: list[int], wait: bool) -> int:
    """An array over ``parts`` of ``--part i/n``, then the merge (a dependent job on SLURM)."""
    folder = record_dir / "jobs"
    entries: list[dict[str, Any]] = []
    jobs = []
    if parts:
        ex = make_executor(profile, dataclasses.replace(req, array=len(parts)), folder)
        with ex.batch():
            for i in parts:
                jobs.append(ex.submit(StageTask(req.stage, record["args"], Part(i, req.array), str(record_dir))))
        entries += describe_jobs(jobs, "part")
        for e, i in zip(entries, parts, strict=True):
            e["part"] = f"{i}/{req.array}"
    merge = MergeTask(req.stage, record["args"], req.array, str(record_dir))
    merge_req = dataclasses.replace(req, array=1, gpus_per_node=0, cpus_per_task=1, time=min(req.time, 30),
                                    name=f"awm-{req.stage}-merge",
                                    signal_delay_s=fit_signal_delay(req.signal_delay_s, min(req.time, 30)))
    if profile.cluster == "slurm":
        extra = {"dependency": f"afterany:{jobs[0].job_id.split('_')[0]}"} if jobs else {}
        merge_job = make_executor(profile, merge_req, folder, **extra).submit(merge)
        entries += describe_jobs([merge_job], "merge")
        record["jobs"] += entries
        save_record(record_dir, record)
        print_jobs(entries, profile, record_dir)
        return wait_jobs(jobs + [merge_job]) if wait else 0
    record["jobs"] += entries
    save_record(record_dir, record)
    print_jobs(entries, profile, record_dir)
    failed = wait_jobs(jobs)
    try:
        result = merge()
    except Exception as e:  # noqa: BLE001 - reported, exit code 1
        log.error("merge: %s", e)
        return 1
    print(f"merged: {json.dumps(result)}")
    return failed


def retry(record_dir: Path, args: argparse.Namespace, overrides: list[str]) -> int:
    """Resubmit only the parts of an array submission that have no completion marker, then merge."""
    record = load_record(record_dir)
    if record["request"]["mode"] == "sweep":
        raise ConfigError("--retry", str(record_dir), "an array submission (--array over --part); a sweep is "
                          f"submitted again instead, which runs only its unfinished points: awm submit sweep "
                          f"{record['folder']} --profile {record['profile_name']}")
    if record["request"]["mode"] != "array":
        raise ConfigError("--retry", str(record_dir), "an array submission (--array over --part); "
                          "other jobs are resubmitted whole and resume by themselves")
    data = dict(record["profile"])
    for item in overrides:
        set_dotted(data, *parse_override(item))
    profile = from_dict(Profile, data)
    req = request_from_record(record)
    if profile.cluster == "slurm":
        make_executor(profile, req, record_dir / "jobs")  # the clear error when sbatch is missing
        active = active_jobs(sorted({e["job_id"].split("_")[0] for e in record["jobs"]}))
        if active:
            raise ConfigError("--retry", str(record_dir), f"a submission whose jobs ended; still queued or "
                              f"running: {', '.join(active)} (scancel them or wait)")
    done = set(parts_done(record_dir, req.array))
    missing = [i for i in range(req.array) if i not in done]
    if not missing and (record_dir / "merged.json").is_file():
        print(f"all {req.array} parts finished and merged: nothing to retry ({record_dir})")
        return 0
    print(f"retrying {len(missing)} of {req.array} parts: {', '.join(f'{i}/{req.array}' for i in missing) or '-'}")
    return _submit_parts(profile, req, record, Path(record_dir).resolve(), missing, args.wait)


def run(args: argparse.Namespace) -> int:
    args = split_args(args)
    overrides = list(args.set)
    if args.partition:
        overrides.append(f"partition={args.partition}")
    if args.cluster:
        overrides.append(f"cluster={args.cluster}")
    if args.retry:
        return retry(Path(args.retry), args, overrides)
    if args.stage is None:
        raise ConfigError("stage", None, "a stage to run, e.g. awm submit shard --in raw/ --out shards/ ...")
    profile_name, profile = load_profile(args.profile, overrides)
    if args.stage == "sweep":
        from awm.cluster.sweep import submit_sweep

        return submit_sweep(profile, profile_name, args)
    req = make_request(args.stage, profile, profile_name, args)
    ns = check_stage_args(req, args.stage_args)
    if args.dry_run:
        print(render_sbatch(profile, req, Path(profile.log_dir).resolve() / f"{args.stage}-DRYRUN" / "jobs"))
        ranks = req.nodes * req.tasks_per_node if req.mode in ("train", "ranks") else 1
        run_args = ["--config", ns.config, *train_task(ns, profile, req.gpus_per_node).overrides] \
            if req.stage == "train" else gpu_stage_args(req.stage, args.stage_args, req.gpus_per_node)
        print(f"# each of the {ranks} task(s) runs: awm {args.stage} {shlex.join(run_args)}")
        return 0
    return submit(profile, profile_name, req, args.stage_args, ns, wait=args.wait)


