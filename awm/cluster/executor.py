"""What a submission asks for and where it is kept: cluster profiles, resource requests, the
submitit executor for them (and the sbatch script it would write), the submission folder's record.

``awm submit`` (:mod:`awm.cluster.submit`) and the sweep submitter (:mod:`awm.cluster.sweep`) both
build on this; it imports neither.
"""

from __future__ import annotations

import dataclasses
import json
import re
import secrets
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from awm.config import check, load, parse_override
from awm.errors import ConfigError
from awm.imageio import atomic_write_text

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
    if req.mode == "train":
        # One rank that dies (an OOM) ends the whole step: its peers would otherwise wait in their
        # next collective for the process group's timeout (hours: awm.dist.timeout) holding every GPU.
        params["srun_args"] = ["--kill-on-bad-exit=1"]
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


def request_from_record(record: dict[str, Any]) -> Request:
    return Request(**{f.name: record["request"][f.name] for f in dataclasses.fields(Request)
                      if f.name in record["request"]})  # older records: the field's default


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
