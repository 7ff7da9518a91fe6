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
that split their work over ranks instead (eval, score) run as one job of ``--array`` ranks.
Training is one job of ``nodes x gpus_per_node`` tasks (one per GPU) that requeues itself on
preemption or time limit and resumes. Any other stage is a single job. Every submission gets a
fresh folder (``<log_dir>/<stage>-<time>-<rand>``) with ``submission.json``, logs, part markers.
See slurm/README.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import secrets
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from awm import cli
from awm.cli import COMMANDS
from awm.cluster.jobs import MergeTask, StageTask, TrainTask, parts_done
from awm.config import ConfigError, check, from_dict, load, parse_override, set_dotted, to_dict
from awm.dist import Part
from awm.imageio import atomic_write_text
from awm.log import get_logger

log = get_logger("awm.submit")

DATA_STAGES = ("crawl", "shard", "eval", "score")
GPU_STAGES = ("eval", "score", "upscale")  # stages that use one GPU per task when the profile has some
CLUSTERS = ("slurm", "local", "debug")
PROFILE_DIR = Path(__file__).resolve().parent / "profiles"


@dataclass
class Profile:
    """A cluster profile (a YAML file, or a shipped one in ``awm/cluster/profiles/``): where and with what a job runs."""

    cluster: Literal["slurm", "local", "debug"] = field(
        default="slurm", metadata={"help": "submitit backend: slurm, local (subprocesses) or debug (in-process)"})
    partition: str | None = field(default=None, metadata={"help": "sbatch --partition"})
    account: str | None = field(default=None, metadata={"help": "sbatch --account"})
    qos: str | None = field(default=None, metadata={"help": "sbatch --qos"})
    constraint: str | None = field(default=None, metadata={"help": "sbatch --constraint (node features)"})
    nodes: int = field(default=1, metadata={"help": "nodes of a training job unless --nodes"})
    max_nodes: int | None = field(default=None, metadata={"help": "most nodes a job may ask for"})
    gpus_per_node: int = field(default=0, metadata={"help": "GPUs each node of this partition has"})
    tasks_per_node: int | None = field(
        default=None, metadata={"help": "training ranks per node; default: one per GPU, else 1"})
    cpus_per_task: int = field(default=1, metadata={"help": "CPU cores per task (data loader workers + 1)"})
    mem: str | None = field(default=None, metadata={"help": "memory per node, sbatch syntax: 64G, 0 = all"})
    time: int = field(default=60, metadata={"help": "time limit in minutes"})
    signal_delay_s: int = field(
        default=120, metadata={"help": "the stop warning (USR2) comes this long before the time limit; a job "
                                       "whose limit is under twice this gets a quarter of its limit instead"})
    array_parallelism: int = field(default=64, metadata={"help": "most array tasks running at once"})
    max_requeue: int = field(default=10, metadata={"help": "most automatic requeues of a training job"})
    setup: list[str] = field(
        default_factory=list, metadata={"help": "shell lines run before the job (module load, ...)"})
    sbatch: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "extra #SBATCH parameters, e.g. {exclusive: true}"})
    log_dir: str = field(default=".slurm", metadata={"help": "folder for submissions, logs and pickles"})

    def __post_init__(self) -> None:
        for key in ("nodes", "cpus_per_task", "time", "array_parallelism"):
            check(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        check(self.gpus_per_node >= 0, "gpus_per_node", self.gpus_per_node, "an integer >= 0")
        check(self.max_requeue >= 0, "max_requeue", self.max_requeue, "an integer >= 0")
        check(self.signal_delay_s >= MIN_SIGNAL_DELAY_S, "signal_delay_s", self.signal_delay_s,
              f"seconds >= {MIN_SIGNAL_DELAY_S}: the warning must leave time to save a state (0 would send it "
              "with the kill itself)")
        check(self.tasks_per_node is None or self.tasks_per_node >= 1, "tasks_per_node",
              self.tasks_per_node, "null or an integer >= 1")
        check(self.max_nodes is None or self.max_nodes >= self.nodes, "max_nodes", self.max_nodes,
              f"null or an integer >= nodes ({self.nodes})")
        check(self.mem is None or bool(re.fullmatch(r"\d+[KMGT]?B?", str(self.mem))), "mem", self.mem,
              "null or sbatch memory like 64G, 512000M, 0")


def load_profile(name_or_path: str | None, overrides: list[str] | None = None) -> tuple[str, Profile]:
    """A profile from a YAML path, a name in the working folder's ``slurm/`` or a shipped profile
    (``awm/cluster/profiles/``, package data, so names work from an installed package); built-ins if None."""
    names = {f.name for f in dataclasses.fields(Profile)}
    for item in overrides or []:
        key = parse_override(item)[0]
        if key.split(".")[0] not in names:
            raise ConfigError(f"--set {key}", item, "profile keys: " + ", ".join(sorted(names)))
    if name_or_path is None:
        return "default", load(Profile, None, overrides)
    p = Path(name_or_path)
    candidates = [p, Path("slurm") / p, Path("slurm") / f"{p}.yaml", PROFILE_DIR / p.name,
                  PROFILE_DIR / f"{p.name}.yaml"]
    found = next((c for c in candidates if c.is_file()), None)
    if found is None:
        known = sorted(x.stem for x in PROFILE_DIR.glob("*.yaml"))
        raise ConfigError("--profile", name_or_path, "a YAML file or one of " + ", ".join(known))
    try:
        return found.stem, load(Profile, found, overrides)
    except ConfigError as e:
        raise ConfigError(f"{found}: {e.key}", e.value, e.valid) from None


@dataclass(frozen=True)
class Request:
    """What this submission asks for, after the command line has overridden the profile.

    mode: ``train`` (nodes x tasks ranks, requeues itself), ``array`` (a data stage with
    ``--part``: ``array`` parts + a merge), ``ranks`` (a data stage that splits its work over
    ranks, like eval: one job of ``tasks_per_node`` ranks), ``sweep`` (an array of sweep points,
    each ``nodes x tasks_per_node`` ranks, + a summary; awm.cluster.sweep) or ``single`` (any other stage).
    """

    stage: str
    mode: Literal["train", "array", "ranks", "sweep", "single"]
    nodes: int
    tasks_per_node: int
    gpus_per_node: int
    cpus_per_task: int
    time: int
    name: str
    array: int = 1
    signal_delay_s: int = 120


MIN_SIGNAL_DELAY_S = 10


def fit_signal_delay(delay_s: int, time_min: int) -> int:
    """The warning's lead time for a job of ``time_min`` minutes: ``delay_s``, unless that leaves the
    job less than half its limit before the warning (``--time 2`` with 120 s would warn at the
    start, every requeue again); then a quarter of the limit."""
    return delay_s if 2 * delay_s <= 60 * time_min else max(MIN_SIGNAL_DELAY_S, 60 * time_min // 4)


def stage_mode(stage: str) -> str:
    """How a stage is split on a cluster: by ``--part`` if its parser has it, else by ranks."""
    if stage == "train":
        return "train"
    if stage not in DATA_STAGES:
        return "single"
    parser, modules = cli.build_parser(stage)
    if modules.get(stage) is None:
        raise ConfigError("stage", stage, "a stage that exists in this awm version (awm --help)")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[stage]
    return "array" if any("--part" in a.option_strings for a in sub._actions) else "ranks"


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
        check(array % nodes == 0, "--array", array, f"a multiple of --nodes ({nodes}): each node runs "
              "the same number of ranks")
        tasks = args.tasks_per_node or array // nodes
        default_gpus = tasks if stage in GPU_STAGES and profile.gpus_per_node else 0
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


def sbatch_parameters(profile: Profile, req: Request) -> dict[str, Any]:
    """The SLURM executor's parameters (submitit names) for one job: what the sbatch file says."""
    params: dict[str, Any] = {
        "job_name": req.name, "time": req.time, "nodes": req.nodes, "ntasks_per_node": req.tasks_per_node,
        "cpus_per_task": req.cpus_per_task, "signal_delay_s": req.signal_delay_s,
        "array_parallelism": profile.array_parallelism, "wckey": "awm",
    }
    if req.gpus_per_node:
        params["gpus_per_node"] = req.gpus_per_node
    for key in ("partition", "account", "qos", "constraint", "mem"):
        if getattr(profile, key) is not None:
            params[key] = getattr(profile, key)
    if profile.setup:
        params["setup"] = list(profile.setup)
    extra = {"requeue": True} if req.mode == "train" else {}  # JobRequeue=0 sites refuse scontrol requeue otherwise
    extra.update(profile.sbatch)
    if extra:
        params["additional_parameters"] = extra
    return params


def render_sbatch(profile: Profile, req: Request, folder: Path | str, python: str = sys.executable) -> str:
    """The sbatch script submitit would write for this request (``--dry-run``, golden tests)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params = sbatch_parameters(profile, req)
    if req.array > 1:
        params["map_count"] = req.array
    command = f"{shlex.quote(python)} -u -m submitit.core._submit {shlex.quote(str(folder))}"
    return _make_sbatch_string(command=command, folder=folder, **params)


def make_executor(profile: Profile, req: Request, folder: Path, **slurm_extra: Any):
    """A submitit AutoExecutor for ``req``; jobs run with this process's python (the venv's)."""
    import submitit

    cluster = profile.cluster
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError("--cluster", "slurm",
                          "'local' or 'debug' on this machine: 'sbatch' is not on PATH (not a SLURM login "
                          "node); add --cluster local to run the jobs here")
    python = shlex.quote(sys.executable)
    kwargs = {"slurm_python": python, "local_python": python} if cluster != "debug" else {}
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, **kwargs)
    if cluster == "slurm":
        params = {**sbatch_parameters(profile, req), **slurm_extra}
        ex.update_parameters(**{f"slurm_{k}": v for k, v in params.items()})
    else:
        ex.update_parameters(timeout_min=req.time, tasks_per_node=req.tasks_per_node,
                             gpus_per_node=req.gpus_per_node, cpus_per_task=req.cpus_per_task, name=req.name)
        if cluster == "local" and profile.setup:
            ex.update_parameters(local_setup=list(profile.setup))
    return ex


def new_record_dir(profile: Profile, stage: str) -> Path:
    """A fresh submission folder: job ids restart when a cluster is rebuilt, old pickles must not match."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    d = Path(profile.log_dir).resolve() / f"{stage}-{stamp}-{secrets.token_hex(2)}"
    d.mkdir(parents=True, exist_ok=False)
    return d


def save_record(record_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_text(record_dir / "submission.json", json.dumps(record, indent=1))


def load_record(record_dir: Path) -> dict[str, Any]:
    p = Path(record_dir) / "submission.json"
    if not p.is_file():
        raise ConfigError("--retry", str(record_dir), "a submission folder printed by awm submit "
                          "(it holds submission.json)")
    return json.loads(p.read_text())


def describe_jobs(jobs: list, label: str) -> list[dict[str, Any]]:
    """Job ids and log paths, printed and kept in submission.json."""
    out = []
    for j in jobs:
        entry = {"kind": label, "job_id": str(j.job_id)}
        if getattr(j, "paths", None) is not None:
            entry["stdout"], entry["stderr"] = str(j.paths.stdout), str(j.paths.stderr)
        out.append(entry)
    return out


def print_jobs(entries: list[dict[str, Any]], profile: Profile, record_dir: Path) -> None:
    for e in entries:
        logs = f"  log {e['stderr']}" if "stderr" in e else ""
        print(f"{e['kind']:<6} job {e['job_id']}{logs}")
    ids = sorted({e["job_id"].split("_")[0] for e in entries})
    if profile.cluster == "slurm":
        print(f"watch: squeue -j {','.join(ids)}   (after: sacct -j {','.join(ids)})")
    if profile.cluster != "debug":
        # awm logs to stderr (submitit's *_log.err); *_log.out holds only what a stage prints
        print(f"logs:  tail -F {record_dir}/jobs/*_log.err")
    print(f"submission: {record_dir}")


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


def submit(profile: Profile, profile_name: str, req: Request, stage_args: list[str],
           ns: argparse.Namespace, wait: bool = False) -> int:
    """Queue the jobs of one submission, record them, print ids/logs/watch lines; maybe wait."""
    record_dir = new_record_dir(profile, req.stage)
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
        return _wait([job])
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
        return _wait(jobs + [merge_job]) if wait else 0
    record["jobs"] += entries
    save_record(record_dir, record)
    print_jobs(entries, profile, record_dir)
    failed = _wait(jobs)
    try:
        result = merge()
    except Exception as e:  # noqa: BLE001 - reported, exit code 1
        log.error("merge: %s", e)
        return 1
    print(f"merged: {json.dumps(result)}")
    return failed


def _wait(jobs: list) -> int:
    """Block until the jobs end; 0 if all succeeded, else 1 with each failure logged."""
    import submitit

    failed = 0
    for j in jobs:
        try:
            j.results()
            print(f"job {j.job_id}: done")
        except Exception as e:  # noqa: BLE001 - a failed job is a result to report, not a crash
            failed = 1
            first = str(e).strip().splitlines()
            log.error("job %s failed: %s", j.job_id, first[-1] if first else type(e).__name__)
    _settle(sorted({j.job_id.split("_")[0] for j in jobs if isinstance(j, submitit.SlurmJob)}))
    return failed


def _settle(job_ids: list[str], timeout: float = 60) -> None:
    """Wait until SLURM has ended the jobs too: a task writes its result just before it exits, and
    a ``--retry`` right after ``--wait`` would otherwise find them still running."""
    deadline = time.time() + timeout
    try:
        while _active_jobs(job_ids) and time.time() < deadline:
            time.sleep(0.5)
    except (OSError, subprocess.SubprocessError) as e:  # no sacct (no accounting): nothing to wait for
        log.warning("sacct: %s", e)


ACTIVE_STATES = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")


def _active_jobs(job_ids: list[str]) -> list[str]:
    """Which of these SLURM jobs are still queued or running (from sacct)."""
    if not job_ids:
        return []
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    return [line.split("|")[0] for line in out.splitlines()
            if "|" in line and line.split("|")[1].split()[0] in ACTIVE_STATES]


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
        active = _active_jobs(sorted({e["job_id"].split("_")[0] for e in record["jobs"]}))
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
        return 0
    return submit(profile, profile_name, req, args.stage_args, ns, wait=args.wait)


def request_from_record(record: dict[str, Any]) -> Request:
    return Request(**{f.name: record["request"][f.name] for f in dataclasses.fields(Request)
                      if f.name in record["request"]})  # older records: the field's default
