"""Training through awm submit on the real two-node SLURM cluster (n1, n2): DDP (gloo) across nodes, equal
to torchrun on one host, preemption + requeue on one node and across both."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from awm import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import SLURM_ACTIVE, free_port, sacct_rows, wait_for  # noqa: E402

pytestmark = pytest.mark.slurm

# A few seconds per run on 2 cores: a 4-conv Compact net on 32 px patches.
TINY = ["data.patch=32", "data.batch_size=4", "data.workers=0", "model.hparams.num_feat=16",
        "model.hparams.num_conv=4", "schedule.warmup_steps=2", "validation.every=0", "validation.max_images=2",
        "validation.crop=32", "log.every=5", "checkpoint.every=0"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    from awm.data.synth import write_dataset

    root = tmp_path_factory.mktemp("pairs")
    write_dataset(root / "img", 6, seed=7, long_side=(96, 128))
    common = ["--in", str(root / "img"), "--scales", "2", "--shard-size", "3"]
    assert cli.main(["shard", *common, "--out", str(root / "train")]) == 0
    assert cli.main(["shard", *common, "--out", str(root / "eval"), "--split", "eval"]) == 0
    return root / "train", root / "eval"


def _train_args(pairs, runs: Path, name: str, steps: int, state_every: int) -> list[str]:
    return ["train", "--config", "tiny-cpu", f"name={name}", f"runs={runs}", f"steps={steps}",
            f"checkpoint.state_every={state_every}", f"data.train={pairs[0]}", f"data.eval={pairs[1]}", *TINY]


def _submit(argv: list[str], logs: Path, *extra: str) -> dict:
    code = cli.main(["submit", *argv, "--profile", "cpu-test", "--set", f"log_dir={logs}", *extra])
    assert code == 0
    return json.loads(max(logs.glob("train-*/submission.json"), key=lambda p: p.stat().st_mtime).read_text())


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(run / "checkpoints" / "last" / "model.safetensors")


def _results(record: dict) -> list[dict]:
    """Every rank's return value (rank order), waiting for the job; a requeued job is the same job."""
    import submitit

    entry, req = record["jobs"][0], record["request"]
    tasks = range(req["nodes"] * req["tasks_per_node"])
    return submitit.SlurmJob(Path(entry["stdout"]).parent, entry["job_id"], tasks=tasks).results()


def test_two_nodes_two_ranks_each_numbered_across_nodes(slurm_cluster, pairs, tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # each rank must then use its --cpus-per-task (1)
    record = _submit(_train_args(pairs, tmp_path / "runs", "ddp", 6, 3), tmp_path / "logs",
                     "--nodes", "2", "--tasks-per-node", "2", "--wait")
    assert record["request"]["nodes"] == 2 and record["request"]["tasks_per_node"] == 2
    run = tmp_path / "runs" / "ddp"
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["world_size"] == 4
    assert (run / "checkpoints" / "last" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "last" / "meta.json").is_file()
    ranks = _results(record)
    assert [(r["rank"], r["local_rank"], r["host"]) for r in ranks] == [
        (0, 0, "n1"), (1, 1, "n1"), (2, 0, "n2"), (3, 1, "n2")]
    assert {r["master_addr"] for r in ranks} == {"n1"} and {r["world_size"] for r in ranks} == {4}
    assert {r["threads"] for r in ranks} == {1}  # not one per core of the node, in each of its ranks
    job = record["jobs"][0]["job_id"]
    logs = sorted(p.name for p in Path(record["jobs"][0]["stdout"]).parent.glob(f"{job}_*_log.out"))
    assert logs == [f"{job}_{t}_log.out" for t in range(4)]  # four ranks, one task each


# Long enough that a requeue lands mid-run (~0.3 s per 10 steps here), short enough for CI.
STEPS = 300
DETERMINISTIC = ["deterministic=true", "data.workers=1", "checkpoint.state_every=100000"]


@pytest.fixture(scope="module")
def torchrun_weights(pairs, tmp_path_factory) -> dict:
    """The 2-process torchrun run on this host (loopback rendezvous) that every 2-node run must equal."""
    runs = tmp_path_factory.mktemp("torchrun")
    env = {k: v for k, v in os.environ.items()
           if k not in ("ACCELERATE_USE_CPU", "RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    cmd = [str(Path(sys.executable).parent / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "awm", *_train_args(pairs, runs, "torchrun", STEPS, 100000), *DETERMINISTIC]
    r = subprocess.run(cmd, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return _weights(runs / "torchrun")


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k


def _submit_two_nodes(pairs, tmp_path, name: str, monkeypatch, *extra: str, train: tuple[str, ...] = ()) -> dict:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what torchrun gives each process; sbatch exports it
    args = [*_train_args(pairs, tmp_path / "runs", name, STEPS, 100000), *DETERMINISTIC, *train]
    record = _submit(args, tmp_path / "logs", "--nodes", "2", *extra)
    assert record["request"]["nodes"] == 2 and record["request"]["tasks_per_node"] == 1
    return record


def _assert_one_rank_per_node(ranks: list[dict]) -> None:
    assert [(r["rank"], r["host"]) for r in ranks] == [(0, "n1"), (1, "n2")]
    addresses = [r["address"] for r in ranks]
    assert len(set(addresses)) == 2 and not any(a.startswith("127.") for a in addresses), addresses
    for r in ranks:  # rendezvous at rank 0's node address, as seen from either node
        assert (r["master_addr"], r["master_address"], r["world_size"]) == ("n1", addresses[0], 2)


def test_two_node_training_equals_torchrun_on_one_host(slurm_cluster, pairs, torchrun_weights, tmp_path,
                                                       monkeypatch):
    record = _submit_two_nodes(pairs, tmp_path, "two-node", monkeypatch, "--wait")
    ranks = _results(record)
    _assert_one_rank_per_node(ranks)
    assert {r["status"] for r in ranks} == {"done"} and {r["restarts"] for r in ranks} == {0}
    _assert_same_weights(_weights(tmp_path / "runs" / "two-node"), torchrun_weights)


def test_two_node_job_requeued_by_slurm_saves_and_resumes_on_both_nodes(slurm_cluster, pairs, torchrun_weights,
                                                                        tmp_path, monkeypatch):
    """``scontrol requeue`` = SLURM's preemption: SIGTERM to every task, then the job is queued again."""
    record = _submit_two_nodes(pairs, tmp_path, "requeued", monkeypatch)
    job_id, log0 = record["jobs"][0]["job_id"], Path(record["jobs"][0]["stderr"])
    wait_for(lambda: log0.is_file() and "step 20/" in log0.read_text(), f"step 20 in {log0}")  # under way
    subprocess.run(["scontrol", "requeue", job_id], check=True, capture_output=True)
    ranks = _results(record)
    _assert_one_rank_per_node(ranks)
    assert {r["status"] for r in ranks} == {"done"} and {r["restarts"] for r in ranks} == {1}
    log = log0.read_text()
    saved = int(log.split("saving the full state at step ")[1].split()[0])
    assert 20 <= saved < STEPS and f"at step {saved}" in log.split("restart 1")[1], log[-3000:]
    assert _history(job_id, runs=2) == ["REQUEUED|n[1-2]", "COMPLETED|n[1-2]"]
    _assert_same_weights(_weights(tmp_path / "runs" / "requeued"), torchrun_weights)


def _history(job_id: str, runs: int) -> list[str]:
    """``State|NodeList`` of every run of the job once its ``runs``-th run has ended (sacct lists a
    requeued job's runs under one id; slurmdbd records an end a moment after the result file)."""
    rows = lambda: sacct_rows([job_id], "State,NodeList", history=True)  # noqa: E731
    wait_for(lambda: len(r := rows()) >= runs and r[-1][0].split()[0] not in SLURM_ACTIVE,
             f"run {runs} of SLURM job {job_id} to end", poll_s=0.5, last=rows)
    return ["|".join(r) for r in rows()]


def _squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True).stdout.strip()


def test_two_node_training_survives_a_node_dying(slurm_cluster, pairs, torchrun_weights, node_n2, tmp_path,
                                                 monkeypatch):
    """Power loss on n2 mid-run: SLURM ends the job on both nodes (NODE_FAIL) and requeues it; once n2
    is back, the job resumes from its last full state and ends with the uninterrupted run's weights."""
    record = _submit_two_nodes(pairs, tmp_path, "node-died", monkeypatch, train=("checkpoint.state_every=50",))
    job_id, log0 = record["jobs"][0]["job_id"], Path(record["jobs"][0]["stderr"])
    state = tmp_path / "runs" / "node-died" / "state"
    wait_for(state.exists, f"the first full state (step 50) at {state}", poll_s=0.05)  # under way
    node_n2.die()
    wait_for(lambda: _squeue_state(job_id) == "PENDING", f"job {job_id} requeued after n2 died (PENDING)",
             last=lambda: _squeue_state(job_id))  # requeued by SLURM, waiting for n2 to come back
    jobs_dir = Path(record["jobs"][0]["stdout"]).parent
    assert not list(jobs_dir.glob(f"{job_id}_*_result.pkl"))  # no error result: the job is not over
    node_n2.boot()
    # the requeued run's end (under load: minutes); submitit alone would take the first run's
    # NODE_FAIL for the end of the job
    assert _history(job_id, runs=2) == ["NODE_FAIL|n[1-2]", "COMPLETED|n[1-2]"]
    ranks = _results(record)
    _assert_one_rank_per_node(ranks)
    assert {r["status"] for r in ranks} == {"done"} and {r["restarts"] for r in ranks} == {1}
    log = log0.read_text()
    assert "a collective failed" in log.split("restart 1")[0], log[-3000:]  # and left no error result
    resumed = int(log.split("restart 1")[1].split("resumed from")[1].split("at step ")[1].split()[0])
    assert resumed >= 50 and resumed % 50 == 0, log[-3000:]
    _assert_same_weights(_weights(tmp_path / "runs" / "node-died"), torchrun_weights)


def test_preempted_training_requeues_and_matches_uninterrupted(slurm_cluster, pairs, tmp_path):
    import submitit

    steps, state_every = 200, 6  # ~10 s of training: the interrupt lands mid-run, not after the end
    logs, runs = tmp_path / "logs", tmp_path / "runs"
    workers = ["data.workers=1"]  # SLURM signals the loader workers too: they must survive it
    straight = _submit(_train_args(pairs, runs, "straight", steps, state_every) + workers, logs)
    preempted = _submit(_train_args(pairs, runs, "preempted", steps, state_every) + workers, logs)
    entry = preempted["jobs"][0]
    job = submitit.SlurmJob(Path(entry["stdout"]).parent, entry["job_id"])
    def started() -> bool:  # the first full state: training is under way
        assert not job.done(), "the job ended before it saved its first state"
        return (runs / "preempted" / "state").exists()

    wait_for(started, f"the first full state at {runs / 'preempted' / 'state'}")
    job._interrupt()  # what SLURM does on preemption: SIGTERM, then submitit's USR2
    result = job.result()
    assert result["status"] == "done"
    out = Path(entry["stderr"]).read_text() + Path(entry["stdout"]).read_text()
    assert "requeued" in out and "stop requested" in out, out[-2000:]
    history = subprocess.run(["sacct", "-n", "-D", "-X", "-P", "-o", "JobID,State", "-j", entry["job_id"]],
                             capture_output=True, text=True, check=True).stdout
    assert "REQUEUED" in history, history

    s = straight["jobs"][0]
    submitit.SlurmJob(Path(s["stdout"]).parent, s["job_id"]).result()
    a, b = _weights(runs / "straight"), _weights(runs / "preempted")
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].equal(b[k]), k
