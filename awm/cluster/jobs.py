"""What runs inside a job that ``awm submit`` queued: one part of a data stage, the merge, training.

Each is a small picklable callable: submitit pickles it on the login node and the job's python
(the submitting venv's) unpickles and calls it. Stages run through the same ``awm`` entry point a
user types (``awm.cli.main``), in-process, so every stage runs on SLURM without a special case.

Part markers make array jobs restartable: a part that exits 0 writes ``parts/part-NNNNN.json``
into the submission folder; the merge step refuses to run until every part has one, and
``awm submit --retry`` resubmits only the parts without one (the stages themselves also skip the
shards they finished, so even a part that died half-way redoes only its unfinished shards).
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import submitit

from awm import cli
from awm.dist import Part
from awm.imageio import atomic_write_text
from awm.log import get_logger
from awm.shardwrite import write_index

INDEX_KEYS = ("__kind__", "wids_version", "shardlist", "nshards", "nsamples", "skipped", "skipped_names")
SHARD_NAME = re.compile(r"([A-Za-z_-]*?)\d{6}\.tar")

log = get_logger("awm.jobs")


class StageFailed(RuntimeError):
    """The stage returned a nonzero exit code; raised so that SLURM marks the task FAILED."""


def part_marker(record_dir: Path, index: int) -> Path:
    return Path(record_dir) / "parts" / f"part-{index:05d}.json"


def parts_done(record_dir: Path, nparts: int) -> list[int]:
    """Indices of the parts that finished successfully (their marker exists)."""
    return [i for i in range(nparts) if part_marker(record_dir, i).is_file()]


def _job_id() -> str:
    try:
        return submitit.JobEnvironment().job_id
    except RuntimeError:  # called outside a submitit job (in-process merge)
        return str(os.getpid())


def export_rendezvous() -> None:
    """In a job of several tasks, export MASTER_ADDR/PORT, RANK, WORLD_SIZE from SLURM's environment.

    RANK is SLURM_PROCID (numbered across nodes), MASTER_ADDR the first node of the job's node
    list and MASTER_PORT a port derived from the job id, so every task of every node agrees on
    them without talking. Every task keeps all of its node's GPUs visible: LOCAL_RANK picks one
    (awm.dist.init). Also limits each task's CPU threads to its own cores (limit_threads).
    """
    limit_threads()
    if submitit.JobEnvironment().num_tasks > 1:
        submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False, overwrite=True)


def limit_threads() -> None:
    """Use the task's ``--cpus-per-task`` cores for torch's CPU threads, as torchrun does with 1.

    Otherwise every task of a node starts one thread per core of the whole node (8 ranks x 96
    threads on an 8-GPU node), and a rank's floating-point results depend on the node's core count.
    An OMP_NUM_THREADS set on purpose (the profile's ``setup`` lines) wins.
    """
    cpus = os.environ.get("SLURM_CPUS_PER_TASK")
    if not cpus or "OMP_NUM_THREADS" in os.environ:
        return
    import torch

    os.environ["OMP_NUM_THREADS"] = cpus
    torch.set_num_threads(int(cpus))


def rank_identity() -> dict[str, Any]:
    """Where this task runs: rank, host and address, and the rendezvous it used (kept in results)."""
    host = socket.gethostname()
    e = os.environ
    out: dict[str, Any] = {"rank": int(e.get("RANK", e.get("SLURM_PROCID", "0"))),
                           "local_rank": int(e.get("LOCAL_RANK", e.get("SLURM_LOCALID", "0"))),
                           "host": host, "address": _address(host)}
    if "MASTER_ADDR" in os.environ:
        out["master_addr"] = os.environ["MASTER_ADDR"]
        out["master_address"] = _address(os.environ["MASTER_ADDR"])
        out["master_port"] = int(os.environ.get("MASTER_PORT", "0"))
    return out


def _address(host: str) -> str | None:
    try:
        return socket.gethostbyname(host)
    except OSError:
        return None


def run_stage(stage: str, args: list[str]) -> None:
    """``awm STAGE ARGS`` in this process; a nonzero exit becomes StageFailed."""
    argv = [stage, *args]
    code = cli.main(argv)
    if code != 0:
        raise StageFailed(f"'awm {' '.join(argv)}' exited with code {code}; its log is above")


class StageTask:
    """One job, array task or rank running ``awm STAGE ARGS [--part i/n]``."""

    def __init__(self, stage: str, args: list[str], part: Part | None = None,
                 record_dir: str | None = None):
        self.stage, self.args, self.part, self.record_dir = stage, list(args), part, record_dir

    def __call__(self) -> dict[str, Any]:
        extra = ["--part", str(self.part)] if self.part is not None else []
        started = time.time()
        export_rendezvous()
        run_stage(self.stage, self.args + extra)
        out = {"stage": self.stage, "part": str(self.part) if self.part else None, "exit": 0,
               "job_id": _job_id(), "host": socket.gethostname(), "duration_s": round(time.time() - started, 3)}
        if self.part is not None:
            out["index_extra"] = _index_extra(stage_output(self.stage, self.args, self.part.count))
        if self.part is not None and self.record_dir:
            atomic_write_text(part_marker(Path(self.record_dir), self.part.index), json.dumps(out))
        return out


class MergeTask:
    """After an array job: check that every part finished, then merge their outputs into one index."""

    def __init__(self, stage: str, args: list[str], nparts: int, record_dir: str):
        self.stage, self.args, self.nparts, self.record_dir = stage, list(args), nparts, record_dir

    def __call__(self) -> dict[str, Any]:
        done = set(parts_done(Path(self.record_dir), self.nparts))
        missing = [i for i in range(self.nparts) if i not in done]
        if missing:
            raise StageFailed(
                f"{len(missing)} of {self.nparts} parts of 'awm {self.stage}' did not finish "
                f"(parts {', '.join(f'{i}/{self.nparts}' for i in missing)}); "
                f"resubmit only those with: awm submit --retry {self.record_dir}")
        snapshots = [json.loads(part_marker(Path(self.record_dir), i).read_text()).get("index_extra", {})
                     for i in range(self.nparts)]
        out = stage_output(self.stage, self.args, self.nparts)
        extra = {"dedup": crawl_dedup(self.args, self.nparts)} if self.stage == "crawl" else {}
        result = merge_index(out, snapshots, self.nparts, extra)
        atomic_write_text(Path(self.record_dir) / "merged.json", json.dumps(result, indent=1))
        return result


def stage_output(stage: str, args: list[str], nparts: int) -> Path:
    """The folder a data stage writes its shards and ``index.json`` into (its ``--out``)."""
    parser, _ = cli.build_parser(stage)
    ns = parser.parse_args([stage, *args, "--part", f"0/{nparts}"])
    out = getattr(ns, "out", None)
    if out is None:
        raise StageFailed(f"'awm {stage}' has no --out folder to merge; run it without --array")
    return Path(out)


def crawl_dedup(args: list[str], nparts: int) -> dict[str, Any]:
    """A crawl's merge: duplicates across its parts, earlier runs and --dedup-against folders."""
    from awm.acquire import crawl, merge
    from awm.config import from_args

    parser, _ = cli.build_parser("crawl")
    cfg = from_args(crawl.CrawlConfig, parser.parse_args(["crawl", *args, "--part", f"0/{nparts}"]))
    return merge.dedup(cfg.out, cfg.near_dup, cfg.against)


def _index_extra(out: Path) -> dict[str, Any]:
    """What a stage added to ``index.json`` besides the shard list and totals (its per-part stats)."""
    p = out / "index.json"
    if not p.is_file():
        return {}
    return {k: v for k, v in json.loads(p.read_text()).items() if k not in INDEX_KEYS}


def merge_index(out: Path, snapshots: list[dict[str, Any]], nparts: int,
                merged: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``index.json`` over every part's shards (``write_index`` merges their stats files).

    The stages' own keys are kept where all parts agree (split, scales, preset, seed...); keys whose
    values differ between parts (a crawl's per-part summary) are listed per part under "parts".
    """
    prefixes = sorted({m.group(1) for p in out.glob("*.tar") if (m := SHARD_NAME.fullmatch(p.name))})
    if len(prefixes) != 1:
        raise StageFailed(f"{out}: expected shards of one kind (e.g. train-000000.tar), found prefixes "
                          f"{prefixes or 'none'}")
    keys = {k for s in snapshots for k in s}
    common = {k: snapshots[0][k] for k in keys
              if all(k in s for s in snapshots) and all(s[k] == snapshots[0][k] for s in snapshots)}
    differ = sorted(keys - set(common))
    extra = {**common, **(merged or {})}
    if differ:
        extra["parts"] = [{"part": f"{i}/{nparts}", **{k: s[k] for k in differ if k in s}}
                          for i, s in enumerate(snapshots)]
    index = json.loads(write_index(out, prefixes[0], extra).read_text())
    return {"index": str(out / "index.json"), "nshards": index["nshards"], "nsamples": index["nsamples"],
            "skipped": index["skipped"], **(merged or {})}


def _preempt_signal() -> signal.Signals:
    # submitit asks SLURM for this signal before the time limit (sbatch --signal) and sends it
    # on a simulated preemption; USR2 unless SUBMITIT_PREEMPT_SIGNAL says otherwise.
    return getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


def _collective_failed(e: BaseException) -> bool:
    """Whether an error came from a collective (a peer that vanished), not from this rank's own work:
    a c10d error type, a gloo transport error, or raised inside torch.distributed."""
    import torch.distributed as tdist

    if isinstance(e, tdist.DistError) or "gloo/transport" in str(e):
        return True
    tb = e.__traceback__
    while tb is not None:
        if f"torch{os.sep}distributed{os.sep}" in tb.tb_frame.f_code.co_filename:
            return True
        tb = tb.tb_next
    return False


class TrainTask(submitit.helpers.Checkpointable):
    """One rank of a training job: ``nodes x tasks_per_node`` of these form the process group.

    On the preemption/time-limit signal every rank asks the trainer to stop; the trainer saves its
    full state at the next step boundary (all ranks together) and returns "preempted"; rank 0 then
    requeues the job and every rank exits without a result, so the requeued job auto-resumes from
    that state. Before training starts, submitit's own handler applies: as a Checkpointable, this
    task (only its config) is requeued as is and resumes from the last saved state.
    """

    def __init__(self, config: str, overrides: list[str], max_requeue: int = 10):
        self.config, self.overrides, self.max_requeue = config, list(overrides), max_requeue

    def __call__(self) -> dict[str, Any]:
        import torch

        from awm import dist
        from awm.train import train

        job = submitit.JobEnvironment()
        export_rendezvous()
        d = dist.init()
        restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
        identity = {**rank_identity(), "world_size": d.world_size, "restarts": restarts,
                    "threads": torch.get_num_threads()}
        log.info("job %s rank %d/%d on %s (%s), rendezvous %s (%s):%s, restart %d", job.job_id, d.rank,
                 d.world_size, identity["host"], identity["address"], identity.get("master_addr"),
                 identity.get("master_address"), identity.get("master_port"), restarts)
        signal.signal(_preempt_signal(), lambda *_: train.request_stop())
        cfg = train.load_config(self.config, self.overrides)
        try:
            result = {**train.train(cfg), **identity}
        except RuntimeError as e:
            if job.cluster != "slurm" or d.world_size == 1 or not _collective_failed(e):
                raise
            # A peer is gone (its node failed or it crashed). SLURM requeues a job whose node failed
            # and the rerun resumes from the last full state and writes the result; an error result
            # written here would make submitit report the job failed while it runs again.
            log.error("job %s rank %d: a collective failed (%s): a peer is gone; leaving no result. "
                      "If SLURM requeues the job (node failure) it resumes from the last full state; "
                      "otherwise the job ends FAILED and the peer's log says why", job.job_id, d.rank,
                      str(e).splitlines()[0][:300])
            sys.exit(1)
        if result.get("status") != "preempted" or job.cluster != "slurm":
            dist.destroy()
            return result
        dist.barrier()
        if job.global_rank == 0:
            if restarts >= self.max_requeue:
                log.error("job %s preempted after %d requeues (max_requeue): not requeued; "
                          "resubmit to resume from the saved state", job.job_id, restarts)
            else:
                self._requeue(job.job_id, restarts)
        # every rank leaves after the requeue: the step runs with srun --kill-on-bad-exit, so a rank
        # exiting early (non-zero, below) would kill rank 0 inside `scontrol requeue`
        dist.barrier()
        dist.destroy()
        if restarts >= self.max_requeue:
            return result
        sys.exit(-1)  # no result file: the requeued job is the same job and will write it

    @staticmethod
    def _requeue(job_id: str, restarts: int) -> None:
        # SLURM signals every process of the step, and a preemption's signals keep coming (submitit's
        # simulated one sends SIGTERM, then USR2, ~0.1 s apart): `scontrol` is started with them
        # ignored (a child inherits SIG_IGN), or a late one kills it before its request is sent and
        # the job ends FAILED instead of requeued.
        late = dict.fromkeys((signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, _preempt_signal()))  # once each
        previous = {s: signal.signal(s, signal.SIG_IGN) for s in late}
        try:
            proc = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if proc.returncode == 0:
            log.warning("job %s: state saved, requeued (restart %d)", job_id, restarts + 1)
        else:  # e.g. SLURM itself is already requeueing a preempted job
            log.warning("job %s: scontrol requeue exited %d: %s", job_id, proc.returncode, proc.stderr.strip())
