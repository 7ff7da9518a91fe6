"""awm submit against the project's real two-node SLURM cluster (n1, n2): array jobs spread over both
nodes, merge, retry, rank-split stages across nodes, srun rendezvous, a node that dies mid-job."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from awm import cli

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import slurm_final_states, wait_for  # noqa: E402

pytestmark = pytest.mark.slurm

SHARD_ARGS = ["--shard-size", "2", "--scales", "2,4"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    from awm.data.synth import write_dataset

    d = tmp_path_factory.mktemp("img")
    write_dataset(d, 8, seed=5, long_side=(64, 112))  # 4 shards of 2
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


def _nodes(job_ids: list[str]) -> dict[str, str]:
    """The node (list) SLURM ran each job on."""
    out = subprocess.run(["sacct", "-n", "-X", "-P", "-o", "JobID,NodeList", "-j", ",".join(job_ids)],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("|")[:2] for line in out.splitlines() if "|" in line)


def test_shard_array_spreads_over_both_nodes_and_merges_to_one_process_output(slurm_cluster, images, one_process,
                                                                              tmp_path, capsys):
    out, logs = tmp_path / "many", tmp_path / "logs"
    assert _submit("shard", "--in", str(images), "--out", str(out), *SHARD_ARGS, "--array", "4", "--wait",
                   logs=logs) == 0
    printed = capsys.readouterr().out
    assert "squeue -j" in printed and "_log.err" in printed
    _assert_same_shards(one_process, out)
    record_dir = next(logs.glob("shard-*"))
    record = json.loads((record_dir / "submission.json").read_text())
    kinds = [j["kind"] for j in record["jobs"]]
    assert kinds == ["part"] * 4 + ["merge"]
    ids = [j["job_id"] for j in record["jobs"]]
    states = slurm_final_states(ids)
    assert set(states.values()) == {"COMPLETED"}, states
    assert len(states) == 5  # four array tasks and the dependent merge job
    hosts = [json.loads((record_dir / "parts" / f"part-{i:05d}.json").read_text())["host"] for i in range(4)]
    assert sorted(hosts) == ["n1", "n1", "n2", "n2"], hosts
    assert [_nodes(ids)[i] for i in ids[:4]] == hosts  # what each part recorded is where SLURM ran it


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
    states = slurm_final_states([j["job_id"] for j in first])
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
    assert stats["world_size"] == 2 and [r["images"] for r in stats["ranks"]] == [4, 4]
    assert len((out / "per_image.csv").read_text().splitlines()) == 1 + 8


def test_eval_ranks_across_two_nodes_equal_one_process(slurm_cluster, images, tmp_path):
    """eval --array 2 --nodes 2: one rank per node, gathered over the nodes' network; same rows as 1 process."""
    data = tmp_path / "eval-shards"
    assert cli.main(["shard", "--in", str(images), "--out", str(data), "--split", "eval", *SHARD_ARGS]) == 0
    common = ["--data", str(data), "--scale", "2", "--models", "bicubic,lanczos", "--metrics", "psnry,ssim"]
    assert cli.main(["eval", *common, "--out", str(tmp_path / "one")]) == 0
    logs = tmp_path / "logs"
    assert _submit("eval", *common, "--out", str(tmp_path / "two"), "--array", "2", "--nodes", "2", "--wait",
                   logs=logs) == 0
    record = json.loads(next(logs.glob("eval-*/submission.json")).read_text())
    assert (record["request"]["nodes"], record["request"]["tasks_per_node"]) == (2, 1)
    job = record["jobs"][0]["job_id"]
    assert slurm_final_states([job]) == {job: "COMPLETED"} and _nodes([job]) == {job: "n[1-2]"}
    n = _index(data)["nsamples"]  # 7: one generated image is too small for the eval split
    stats = json.loads((tmp_path / "two" / "eval_stats.json").read_text())
    assert stats["world_size"] == 2 and sorted(r["samples"] for r in stats["ranks"]) == [n // 2, n - n // 2]
    one, two = tmp_path / "one", tmp_path / "two"
    assert (one / "per_image.csv").read_text() == (two / "per_image.csv").read_text()
    assert len((one / "per_image.csv").read_text().splitlines()) == 1 + 2 * n
    s1, s2 = (json.loads((d / "summary.json").read_text()) for d in (one, two))
    assert s1["models"] == s2["models"] and s1["skipped"] == s2["skipped"]


def test_srun_ranks_find_the_first_node_without_a_launcher(slurm_cluster, tmp_path):
    """Plain ``srun python`` on 2 nodes: awm.dist takes MASTER_ADDR from the node list, not 127.0.0.1."""
    code = ("import os, socket; from awm import dist; d = dist.init(); "
            "print(d.rank, d.world_size, os.environ['MASTER_ADDR'], dist.gather_objects(socket.gethostname()))")
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "ACCELERATE_USE_CPU")}
    r = subprocess.run(["srun", "-N2", "--ntasks-per-node=1", "-c1", "-t", "5", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=300, env={**env, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    assert sorted(r.stdout.splitlines()) == ["0 2 n1 ['n1', 'n2']", "1 2 n1 ['n1', 'n2']"], r.stdout


def _python_on(node) -> bool:
    """Whether a submitit task (the job's python) runs on the node."""
    for pid in node.pids():
        try:
            if b"submitit.core._submit" in Path(f"/proc/{pid}/cmdline").read_bytes():
                return True
        except OSError:  # the process ended meanwhile
            pass
    return False


def _history(job: str) -> list[tuple[str, str]]:
    """Every run of one job or array task: (state, node), requeues included."""
    out = subprocess.run(["sacct", "-n", "-D", "-X", "-P", "-o", "State,NodeList", "-j", job],
                         capture_output=True, text=True, check=True).stdout
    return [tuple(line.split("|")) for line in out.splitlines() if "|" in line]


def _retry(record_dir: Path, capsys, expected: str) -> None:
    """``awm submit --retry DIR --wait``; on failure, what it printed and its jobs' logs say why."""
    code = cli.main(["submit", "--retry", str(record_dir), "--wait"])
    out = capsys.readouterr()
    if code != 0:
        jobs = json.loads((record_dir / "submission.json").read_text())["jobs"]
        logs = "".join(f"\n--- {j['job_id']} ({j['kind']}):\n" + Path(j["stderr"]).read_text()[-1500:]
                       for j in jobs if Path(j["stderr"]).is_file())
        raise AssertionError(f"--retry --wait exited {code}:\n{out.out[-2000:]}\n{out.err[-2000:]}{logs}")
    assert expected in out.out, out.out


@pytest.mark.parametrize("requeue", [True, False], ids=["requeued-by-slurm", "no-requeue-then-retry"])
def test_node_dying_mid_array_loses_and_duplicates_nothing(slurm_cluster, images, one_process, node_n2,
                                                           tmp_path, capsys, requeue):
    out, logs = tmp_path / "many", tmp_path / "logs"
    extra = [] if requeue else ["--set", "sbatch={no-requeue: true}"]  # as on a site with JobRequeue=0
    assert _submit("shard", "--in", str(images), "--out", str(out), *SHARD_ARGS, "--array", "4", *extra,
                   logs=logs) == 0
    record_dir = next(logs.glob("shard-*"))
    jobs = json.loads((record_dir / "submission.json").read_text())["jobs"]
    parts = [j["job_id"] for j in jobs if j["kind"] == "part"]
    def on_n2() -> bool:  # a part runs its python on n2 (started, not finished)
        assert len(list((record_dir / "parts").glob("*.json"))) < 4, "no part ran on n2 before they all finished"
        return _python_on(node_n2)

    wait_for(on_n2, "a part's python to start on n2", poll_s=0.05)
    node_n2.die()
    finished = {i for i in range(4) if (record_dir / "parts" / f"part-{i:05d}.json").exists()}

    states = slurm_final_states([j["job_id"] for j in jobs])
    died = [i for i, job in enumerate(parts) if ("NODE_FAIL", "n2") in _history(job)]
    lost = [i for i in died if i not in finished]  # killed mid-run, before its marker
    assert lost, (died, finished, states)
    capsys.readouterr()
    if requeue:  # SLURM ran the parts of the dead node again on the other one; the merge found them all
        for i in died:
            assert _history(parts[i]) == [("NODE_FAIL", "n2"), ("COMPLETED", "n1")], (i, states)
        assert set(states.values()) == {"COMPLETED"}, states
        _retry(record_dir, capsys, "nothing to retry")
    else:  # the parts failed clearly, the merge names them and the retry command; retry runs only those
        for i in died:
            assert _history(parts[i]) == [("NODE_FAIL", "n2")], (i, states)
        assert states[jobs[-1]["job_id"]] == "FAILED", states
        merge_err = Path(jobs[-1]["stderr"]).read_text()
        assert f"awm submit --retry {record_dir}" in merge_err
        assert all(f"{i}/4" in merge_err for i in lost), merge_err[-2000:]
        missing = ", ".join(f"{i}/4" for i in lost)
        _retry(record_dir, capsys, f"retrying {len(lost)} of 4 parts: {missing}")
    _assert_same_shards(one_process, out)
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in one_process.iterdir())
    assert len(list((record_dir / "parts").iterdir())) == 4
