"""Training through awm submit on the real one-node SLURM cluster: 2-rank DDP (gloo), preemption + requeue."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from awm import cli

pytestmark = pytest.mark.slurm

# A few seconds per run on 2 cores: a 4-conv Compact net on 32 px patches.
TINY = ["data.patch=32", "data.batch_size=4", "data.workers=0", "model.hparams.num_feat=16",
        "model.hparams.num_conv=4", "schedule.warmup_steps=2", "validation.every=0", "validation.max_images=2",
        "validation.crop=32", "log.every=5", "checkpoint.every=0"]


@pytest.fixture(scope="module")
def pairs(tmp_path_factory) -> tuple[Path, Path]:
    from awm.synth import write_dataset

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


def test_two_rank_ddp_training_job(slurm_cluster, pairs, tmp_path):
    record = _submit(_train_args(pairs, tmp_path / "runs", "ddp", 6, 3), tmp_path / "logs",
                     "--tasks-per-node", "2", "--wait")
    assert record["request"]["tasks_per_node"] == 2
    run = tmp_path / "runs" / "ddp"
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["world_size"] == 2
    assert (run / "checkpoints" / "last" / "model.safetensors").is_file()
    assert (run / "checkpoints" / "last" / "meta.json").is_file()
    job = record["jobs"][0]["job_id"]
    logs = sorted(p.name for p in Path(record["jobs"][0]["stdout"]).parent.glob(f"{job}_*_log.out"))
    assert logs == [f"{job}_0_log.out", f"{job}_1_log.out"]  # two ranks, one task each


def test_preempted_training_requeues_and_matches_uninterrupted(slurm_cluster, pairs, tmp_path):
    import submitit

    steps, state_every = 24, 6
    logs, runs = tmp_path / "logs", tmp_path / "runs"
    straight = _submit(_train_args(pairs, runs, "straight", steps, state_every), logs)
    preempted = _submit(_train_args(pairs, runs, "preempted", steps, state_every), logs)
    entry = preempted["jobs"][0]
    job = submitit.SlurmJob(Path(entry["stdout"]).parent, entry["job_id"])
    deadline = time.time() + 300
    while not (runs / "preempted" / "state").exists():  # the first full state: training is under way
        assert time.time() < deadline and not job.done(), "training never saved its first state"
        time.sleep(0.1)
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
