"""awm submit against the project's real one-node SLURM cluster: array jobs, merge, retry."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from awm import cli

pytestmark = pytest.mark.slurm

SHARD_ARGS = ["--shard-size", "2", "--scales", "2,4"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from awm.synth import write_dataset

    d = tmp_path_factory.mktemp("img")
    write_dataset(d, 6, seed=5, long_side=(64, 112))  # 3 shards of 2
    return d


@pytest.fixture(scope="module")
def one_process(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    assert cli.main(["shard", "--in", str(images), "--out", str(out), *SHARD_ARGS]) == 0
    return out


def _index(d: Path) -> dict:
    return json.loads((d / "index.json").read_text())


def _assert_same_shards(a: Path, b: Path) -> None:
    assert _index(a) == _index(b)
    for entry in _index(a)["shardlist"]:
        assert (a / entry["url"]).read_bytes() == (b / entry["url"]).read_bytes(), entry["url"]


def _submit(*argv: str, logs: Path) -> int:
    return cli.main(["submit", *argv, "--profile", "cpu-test", "--set", f"log_dir={logs}"])


def _states(job_ids: list[str]) -> dict[str, str]:
    """Final SLURM states (a job's result file is written a moment before SLURM records its end)."""
    for _ in range(100):
        out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,State", "-j", ",".join(job_ids)],
                             capture_output=True, text=True, check=True).stdout
        states = dict(line.split("|")[:2] for line in out.splitlines() if "|" in line)
        settled = not {"PENDING", "RUNNING", "COMPLETING"} & set(states.values())
        if settled and set(job_ids) <= set(states):  # slurmdbd may record array tasks a moment later
            return states
        time.sleep(0.3)
    return states


def test_shard_array_merges_to_one_process_output(slurm_cluster, images, one_process, tmp_path, capsys):
    out, logs = tmp_path / "many", tmp_path / "logs"
    assert _submit("shard", "--in", str(images), "--out", str(out), *SHARD_ARGS, "--array", "2", "--wait",
                   logs=logs) == 0
    printed = capsys.readouterr().out
    assert "squeue -j" in printed and "_log.out" in printed
    _assert_same_shards(one_process, out)
    record = json.loads(next(logs.glob("shard-*/submission.json")).read_text())
    kinds = [j["kind"] for j in record["jobs"]]
    assert kinds == ["part", "part", "merge"]
    states = _states([j["job_id"] for j in record["jobs"]])
    assert set(states.values()) == {"COMPLETED"}, states
    assert len(states) == 3  # two array tasks and the dependent merge job


def test_failed_part_is_retried_without_redoing_finished_parts(slurm_cluster, images, one_process, tmp_path,
                                                               capsys):
    out, logs = tmp_path / "many", tmp_path / "logs"
    out.mkdir()
    blocker = out / "train-000001.tar"
    blocker.mkdir()  # part 1/2 owns shard 1: writing it fails, as on a full or broken disk
    argv = ["shard", "--in", str(images), "--out", str(out), *SHARD_ARGS, "--array", "2", "--wait"]
    assert _submit(*argv, logs=logs) == 1
    record_dir = next(logs.glob("shard-*"))
    assert [p.name for p in (record_dir / "parts").iterdir()] == ["part-00000.json"]
    first = json.loads((record_dir / "submission.json").read_text())["jobs"]
    states = _states([j["job_id"] for j in first])
    assert sorted(states.values()) == ["COMPLETED", "FAILED", "FAILED"], states  # part 1 and the merge
    merge_err = Path(first[-1]["stderr"]).read_text()
    assert "awm submit --retry" in merge_err and "1/2" in merge_err
    finished = {p.name: p.stat().st_mtime_ns for p in out.glob("train-00000[02]*")}
    marker = (record_dir / "parts" / "part-00000.json").read_text()

    blocker.rmdir()
    capsys.readouterr()
    assert cli.main(["submit", "--retry", str(record_dir), "--wait"]) == 0
    assert "retrying 1 of 2 parts: 1/2" in capsys.readouterr().out
    retried = json.loads((record_dir / "submission.json").read_text())["jobs"][len(first):]
    assert [(j["kind"], j.get("part")) for j in retried] == [("part", "1/2"), ("merge", None)]
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("train-00000[02]*")} == finished
    assert (record_dir / "parts" / "part-00000.json").read_text() == marker
    _assert_same_shards(one_process, out)
    assert cli.main(["submit", "--retry", str(record_dir)]) == 0  # all done: nothing resubmitted


def test_rank_split_stage_runs_as_one_job_of_ranks(slurm_cluster, images, tmp_path):
    """score splits images over ranks (no --part): --array 2 is one job of 2 tasks that rendezvous."""
    out, logs = tmp_path / "scores", tmp_path / "logs"
    assert _submit("score", str(images), "--metrics", "entropy", "--out", str(out), "--array", "2", "--wait",
                   logs=logs) == 0
    record = json.loads(next(logs.glob("score-*/submission.json")).read_text())
    assert record["request"]["mode"] == "ranks" and [j["kind"] for j in record["jobs"]] == ["score"]
    stats = json.loads((out / "score_stats.json").read_text())
    assert stats["world_size"] == 2 and [r["images"] for r in stats["ranks"]] == [3, 3]
    assert len((out / "per_image.csv").read_text().splitlines()) == 1 + 6
