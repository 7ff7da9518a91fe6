"""awm submit without a cluster: profiles, resource checks, clear errors, sbatch scripts (golden files)."""

import argparse
import json
from pathlib import Path

import pytest

from awm import cli, submit
from awm.config import ConfigError

GOLDEN = Path(__file__).parent / "golden"


def _args(**kw):
    base = dict(nodes=None, gpus_per_node=None, tasks_per_node=None, cpus_per_task=None, array=None, time=None)
    return argparse.Namespace(**{**base, **kw})


def _sbatch(profile_name: str, stage: str, **kw) -> str:
    name, profile = submit.load_profile(profile_name)
    req = submit.make_request(stage, profile, name, _args(**kw))
    return submit.render_sbatch(profile, req, "/LOGS/jobs", python="/VENV/bin/python")


@pytest.mark.parametrize("case", [
    ("gpu-a100x8", "train", {"nodes": 2}, "sbatch_gpu-a100x8_train_2nodes.sh"),
    ("gpu-a100x8", "shard", {"array": 16}, "sbatch_gpu-a100x8_shard_array16.sh"),
])
def test_sbatch_matches_golden(case):
    profile, stage, kw, golden = case
    text = _sbatch(profile, stage, **kw)
    assert text == (GOLDEN / golden).read_text(), f"regenerate {golden} if this change is intended"


def test_multi_node_training_asks_one_task_per_gpu():
    text = _sbatch("gpu-a100x8", "train", nodes=2)
    for line in ("--nodes=2", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=USR2@300", "--exclusive"):
        assert f"#SBATCH {line}" in text
    assert "module load cuda/12.4" in text.split("# command")[0]


def test_more_gpus_than_the_nodes_have_is_refused():
    name, profile = submit.load_profile("gpu-a100x8")
    with pytest.raises(ConfigError, match="nodes of profile 'gpu-a100x8' have 8 GPUs"):
        submit.make_request("train", profile, name, _args(gpus_per_node=16))
    with pytest.raises(ConfigError, match="max_nodes"):
        submit.make_request("train", profile, name, _args(nodes=32))
    name, cpu = submit.load_profile("cpu-test")
    with pytest.raises(ConfigError, match="have 0 GPUs"):
        submit.make_request("train", cpu, name, _args(gpus_per_node=1))


def test_unknown_profile_key_names_the_key(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("partition: gpu\ngpu_per_node: 4\n")
    with pytest.raises(ConfigError, match="gpu_per_node"):
        submit.load_profile(str(p))
    assert cli.main(["submit", "train", "--config", "tiny-cpu", "--profile", str(p)]) == 2
    assert "gpu_per_node" in capsys.readouterr().err


def test_every_shipped_profile_loads_and_a_bad_override_names_its_key():
    for path in sorted(submit.PROFILE_DIR.glob("*.yaml")):
        name, profile = submit.load_profile(str(path))
        assert name == path.stem and profile.cluster in submit.CLUSTERS
    with pytest.raises(ConfigError, match="--set gpus"):
        submit.load_profile("cpu-test", ["gpus=2"])
    with pytest.raises(ConfigError, match="mem"):
        submit.load_profile("cpu-test", ["mem=lots"])


def test_missing_sbatch_suggests_local(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PATH", str(tmp_path))
    code = cli.main(["submit", "weights", "list", "--profile", "gpu-a100x8", "--set", f"log_dir={tmp_path}"])
    assert code == 2
    err = capsys.readouterr().err
    assert "sbatch" in err and "--cluster local" in err


def test_stage_arguments_are_checked_at_submission(tmp_path, capsys):
    code = cli.main(["submit", "shard", "--no-such-flag", "--profile", "local", "--set", f"log_dir={tmp_path}"])
    assert code == 2
    assert "--no-such-flag" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # nothing was queued


def test_submit_flags_mix_with_stage_flags():
    ns = argparse.Namespace(stage="shard", stage_args=["--in", "a", "--array", "3", "--out", "b", "--",
                                                       "--time", "5"], profile=None, array=None, time=None)
    for k in ("cluster", "nodes", "gpus_per_node", "tasks_per_node", "cpus_per_task", "partition", "retry"):
        setattr(ns, k, None)
    ns.set, ns.wait, ns.dry_run = [], False, False
    ns = submit.split_args(ns)
    assert ns.array == 3 and ns.time is None
    assert ns.stage_args == ["--in", "a", "--out", "b", "--time", "5"]


def test_debug_cluster_array_merges_like_one_process(tmp_path, capsys):
    """The whole array + merge path in-process (submitit's debug backend): same shards and index."""
    from awm.synth import write_dataset

    write_dataset(tmp_path / "img", 5, seed=3, long_side=(64, 96))
    common = ["--in", str(tmp_path / "img"), "--shard-size", "2", "--scales", "2"]
    assert cli.main(["shard", *common, "--out", str(tmp_path / "one")]) == 0
    code = cli.main(["submit", "shard", *common, "--out", str(tmp_path / "many"), "--array", "2",
                     "--profile", "local", "--cluster", "debug", "--set", f"log_dir={tmp_path / 'logs'}"])
    assert code == 0
    one, many = (json.loads((tmp_path / d / "index.json").read_text()) for d in ("one", "many"))
    assert many == one and one["nshards"] == 3
    for entry in one["shardlist"]:
        assert (tmp_path / "one" / entry["url"]).read_bytes() == (tmp_path / "many" / entry["url"]).read_bytes()
    record = next((tmp_path / "logs").glob("shard-*"))
    assert sorted(p.name for p in (record / "parts").iterdir()) == ["part-00000.json", "part-00001.json"]


def test_rank_stages_split_their_ranks_over_nodes_and_array_parts_stay_one_task():
    name, profile = submit.load_profile("gpu-a100x8")
    req = submit.make_request("eval", profile, name, _args(array=16, nodes=2))
    assert (req.nodes, req.tasks_per_node, req.gpus_per_node) == (2, 8, 8)
    with pytest.raises(ConfigError, match="a multiple of --nodes"):
        submit.make_request("eval", profile, name, _args(array=3, nodes=2))
    with pytest.raises(ConfigError, match="spreads the --array parts over nodes"):
        submit.make_request("shard", profile, name, _args(array=4, nodes=2))
