"""awm submit without a cluster: profiles, resource checks, clear errors, sbatch scripts (golden files)."""

import argparse
import json
import re
from pathlib import Path

import pytest

from awm import cli
from awm.cluster import executor, submit
from awm.errors import ConfigError

GOLDEN = Path(__file__).parent / "golden"


def _args(**kw):
    base = dict(nodes=None, gpus_per_node=None, tasks_per_node=None, cpus_per_task=None, array=None, time=None)
    return argparse.Namespace(**{**base, **kw})


def _sbatch(profile_name: str, stage: str, **kw) -> str:
    name, profile = executor.load_profile(profile_name)
    req = submit.make_request(stage, profile, name, _args(**kw))
    return executor.render_sbatch(profile, req, "/LOGS/jobs", python="/VENV/bin/python")


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
    srun = [x for x in text.splitlines() if x.startswith("srun ")]
    assert len(srun) == 1 and " --kill-on-bad-exit=1 " in srun[0]  # a dead rank ends the step, not hours later
    assert "--kill-on-bad-exit" not in _sbatch("gpu-a100x8", "shard", array=16)  # independent tasks


def test_more_gpus_than_the_nodes_have_is_refused():
    name, profile = executor.load_profile("gpu-a100x8")
    with pytest.raises(ConfigError, match="nodes of profile 'gpu-a100x8' have 8 GPUs"):
        submit.make_request("train", profile, name, _args(gpus_per_node=16))
    with pytest.raises(ConfigError, match="max_nodes"):
        submit.make_request("train", profile, name, _args(nodes=32))
    name, cpu = executor.load_profile("cpu-test")
    with pytest.raises(ConfigError, match="have 0 GPUs"):
        submit.make_request("train", cpu, name, _args(gpus_per_node=1))


def test_unknown_profile_key_names_the_key(tmp_path, capsys):
    p = tmp_path / "bad.yaml"
    p.write_text("partition: gpu\ngpu_per_node: 4\n")
    with pytest.raises(ConfigError, match="gpu_per_node"):
        executor.load_profile(str(p))
    assert cli.main(["submit", "train", "--config", "tiny-cpu", "--profile", str(p)]) == 2
    assert "gpu_per_node" in capsys.readouterr().err


def test_every_shipped_profile_loads_and_a_bad_override_names_its_key():
    for path in sorted(executor.PROFILE_DIR.glob("*.yaml")):
        name, profile = executor.load_profile(str(path))
        assert name == path.stem and profile.cluster in executor.CLUSTERS
    with pytest.raises(ConfigError, match="--set gpus"):
        executor.load_profile("cpu-test", ["gpus=2"])
    with pytest.raises(ConfigError, match="mem"):
        executor.load_profile("cpu-test", ["mem=lots"])


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
    from awm.data.synth import write_dataset

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
    name, profile = executor.load_profile("gpu-a100x8")
    req = submit.make_request("eval", profile, name, _args(array=16, nodes=2))
    assert (req.nodes, req.tasks_per_node, req.gpus_per_node) == (2, 8, 8)
    with pytest.raises(ConfigError, match="a multiple of --nodes"):
        submit.make_request("eval", profile, name, _args(array=3, nodes=2))
    with pytest.raises(ConfigError, match="spreads the --array parts over nodes"):
        submit.make_request("shard", profile, name, _args(array=4, nodes=2))


# sbatch options and their value syntax as SLURM 22.05 documents them (`sbatch --help` of
# slurm-wlm 22.05.8 and `man sbatch`), written out here, not derived from awm or submitit.
_NAME = r"[A-Za-z0-9_.+-]+"
_FILENAME = r"[^\s%]*(?:%(?:%|A|a|J|j|N|n|s|t|u|x|\d?[Aa]|\d?[jJ]|\d?[ts])[^\s%]*)*"  # man sbatch: filename pattern
_TIME = (r"(?:\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d{1,2}|\d+-\d{1,2}:\d{1,2}|\d+-\d{1,2}:\d{1,2}:\d{1,2})")
_SIG = r"(?:\d+|(?:SIG)?(?:HUP|INT|QUIT|KILL|USR1|USR2|TERM|CONT|STOP|ALRM|URG|XCPU))"
SBATCH_SYNTAX = {
    "account": _NAME, "array": r"\d+(?:-\d+)?(?::\d+)?(?:,\d+(?:-\d+)?(?::\d+)?)*(?:%\d+)?",
    "begin": r"\S+", "chdir": r"\S+", "comment": r".+", "constraint": r"[A-Za-z0-9_.&|,!\[\]*()-]+",
    "cpus-per-gpu": r"[1-9]\d*", "cpus-per-task": r"[1-9]\d*", "dependency": r"[a-z]+(?::\d+)+(?:[,?][a-z]+(?::\d+)+)*",
    "error": _FILENAME, "exclude": r"\S+", "exclusive": r"(?:|user|mcs)", "export": r"\S+",
    "gpus": r"(?:" + _NAME + r":)?[1-9]\d*", "gpus-per-node": r"(?:" + _NAME + r":)?[1-9]\d*",
    "gpus-per-task": r"(?:" + _NAME + r":)?[1-9]\d*", "gres": r"\S+", "job-name": r"\S+",
    "mail-type": r"[A-Z_,0-9]+", "mail-user": r"\S+", "mem": r"\d+[KMGT]?", "mem-per-cpu": r"\d+[KMGT]?",
    "mem-per-gpu": r"\d+[KMGT]?", "nice": r"-?\d*", "no-requeue": "", "nodelist": r"\S+",
    "nodes": r"[1-9]\d*(?:-[1-9]\d*)?", "ntasks": r"[1-9]\d*", "ntasks-per-node": r"[1-9]\d*",
    "open-mode": r"append|truncate", "output": _FILENAME, "partition": _NAME + r"(?:," + _NAME + r")*",
    "qos": _NAME, "requeue": "", "reservation": _NAME,
    "signal": r"(?:(?:R|B|RB|BR):)?" + _SIG + r"(?:@\d+)?", "time": _TIME, "time-min": _TIME,
    "tmp": r"\d+[KMGT]?", "wckey": _NAME,
}


def _check_sbatch_script(text: str) -> list[str]:
    """Problems of a batch script against SBATCH_SYNTAX; empty when sbatch would take every line."""
    problems, seen, body = [], set(), False
    for line in text.splitlines():
        if line.startswith("#SBATCH"):
            if body:  # sbatch stops reading directives at the first command line
                problems.append(f"{line!r} after the first command: sbatch ignores it")
            opt = line.removeprefix("#SBATCH").strip()
            if not opt.startswith("--"):
                problems.append(f"{line!r}: not a long option")
                continue
            name, _, value = opt[2:].partition("=")
            if name not in SBATCH_SYNTAX:
                problems.append(f"{line!r}: --{name} is not an sbatch option")
            elif not re.fullmatch(SBATCH_SYNTAX[name], value):
                problems.append(f"{line!r}: value {value!r} is not valid for --{name}")
            if name in seen:
                problems.append(f"{line!r}: --{name} given twice")
            seen.add(name)
        elif line.strip() and not line.startswith("#"):
            body = True
    return problems


def test_golden_and_rendered_scripts_use_only_documented_sbatch_syntax():
    scripts = {p.name: p.read_text() for p in sorted(GOLDEN.glob("*.sh"))}
    assert len(scripts) >= 2
    for profile in ("gpu-a100x8", "cpu-test"):
        for stage, kw in (("train", {"nodes": 2}), ("shard", {"array": 4}), ("eval", {}), ("upscale", {})):
            scripts[f"{profile}/{stage}"] = _sbatch(profile, stage, **kw)
    problems = {name: _check_sbatch_script(text) for name, text in scripts.items()}
    assert not any(problems.values()), {k: v for k, v in problems.items() if v}


@pytest.mark.parametrize("bad", ["#SBATCH --gpus_per_node=8", "#SBATCH --time=1h", "#SBATCH --signal=USR2@5m",
                                 "#SBATCH --array=0-15%", "#SBATCH --mem=900GB", "#SBATCH --output=/x/%q.out",
                                 "srun true\n#SBATCH --nodes=1", "#SBATCH --nodes=1\n#SBATCH --nodes=2"])
def test_the_syntax_check_rejects_what_sbatch_would(bad):
    assert _check_sbatch_script(f"#!/bin/bash\n{bad}\n")


def test_a_stop_warning_that_does_not_fit_the_time_limit_is_adjusted_and_said():
    import logging

    name, profile = executor.load_profile(None)  # the default signal_delay_s: 120 s
    assert profile.signal_delay_s == 120
    said = logging.Handler()
    said.emit = lambda record: said.__dict__.setdefault("text", []).append(record.getMessage())
    logging.getLogger("awm.submit").addHandler(said)
    try:
        req = submit.make_request("train", profile, name, _args(time=2))
    finally:
        logging.getLogger("awm.submit").removeHandler(said)
    assert req.signal_delay_s == 30  # a quarter of 120 s, not a warning at the start of every run
    assert "comes 30 s before the time limit, not signal_delay_s=120 s: a 2-minute job would be told to stop " \
           "after 0 s" in " ".join(said.text)
    assert "#SBATCH --signal=USR2@30" in executor.render_sbatch(profile, req, "/LOGS/jobs", python="/P")
    assert submit.make_request("train", profile, name, _args(time=4)).signal_delay_s == 120  # fits: kept
    with pytest.raises(ConfigError, match="'signal_delay_s': got 0; valid: seconds >= 10"):
        executor.load_profile(None, ["signal_delay_s=0"])


def test_log_hint_points_at_the_files_holding_awms_log(tmp_path, capsys):
    """awm logs to stderr, which submitit writes to *_log.err: the printed tail -F must show it."""
    import glob

    from awm.data.synth import write_dataset

    write_dataset(tmp_path / "img", 2, seed=3, long_side=(64, 96))
    code = cli.main(["submit", "shard", "--in", str(tmp_path / "img"), "--out", str(tmp_path / "out"), "--scales", "2",
                     "--profile", "local", "--wait", "--set", f"log_dir={tmp_path / 'logs'}"])
    assert code == 0
    hint = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("logs:"))
    pattern = hint.split("tail -F ", 1)[1].strip()
    assert pattern.endswith("*_log.err")
    logged = "".join(Path(p).read_text() for p in glob.glob(pattern))
    assert "awm.shard" in logged, logged[-2000:]


def test_documented_retry_folders_are_where_submit_writes():
    """The README's `--retry DIR` examples point into the profiles' default log_dir (.slurm/)."""
    repo = Path(__file__).resolve().parents[3]
    text = "".join((repo / f).read_text() for f in ("README.md", "slurm/README.md", "awm/cluster/submit.py"))
    folders = re.findall(r"--retry (?!SUBMISSION_DIR)([\w./-]+)", text)
    assert folders and all(f.startswith(executor.Profile().log_dir + "/") for f in folders), folders


def test_training_jobs_given_gpus_ask_for_cuda():
    """A GPU job whose torch sees no GPU must fail at start, not train on the node's CPUs."""
    import argparse

    _, profile = executor.load_profile("gpu-a100x8")
    ns = argparse.Namespace(config="rrdb-6b-x4", overrides=["steps=10"])
    assert submit.train_task(ns, profile, 8).overrides == ["device=cuda", "steps=10"]
    assert submit.train_task(ns, profile, 0).overrides == ["steps=10"]
    ns.overrides = ["device=cpu"]
    assert submit.train_task(ns, profile, 8).overrides == ["device=cpu"]


@pytest.mark.parametrize("stage,args", [("eval", ["--data", "shards/eval", "--models", "bicubic", "--scale", "4"]),
                                        ("score", ["imgs/"]), ("upscale", ["--model", "m.onnx", "imgs/"])])
def test_gpu_profiles_run_eval_score_upscale_as_one_rank_per_gpu_asking_for_cuda(stage, args, tmp_path, capsys):
    """`awm submit eval --profile gpu-a100x8 --dry-run`: 8 tasks with 8 GPUs on the (exclusive) node,
    each running the stage with --device cuda, not 1 task and 7 idle GPUs."""
    code = cli.main(["submit", stage, "--profile", "gpu-a100x8", "--dry-run", "--set", f"log_dir={tmp_path}",
                     "--", *args])
    assert code == 0
    out = capsys.readouterr().out
    for line in ("--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8", "--exclusive"):
        assert f"#SBATCH {line}\n" in out
    assert f"# each of the 8 task(s) runs: awm {stage} {' '.join(args)} --device cuda" in out
    name, profile = executor.load_profile("gpu-a100x8")
    two = submit.make_request(stage, profile, name, _args(nodes=2))
    assert (two.mode, two.nodes, two.tasks_per_node, two.gpus_per_node) == ("ranks", 2, 8, 8)
    name, cpu = executor.load_profile("cpu-test")
    assert (submit.make_request(stage, cpu, name, _args()).tasks_per_node,
            submit.make_request(stage, cpu, name, _args(array=4)).tasks_per_node) == (1, 4)


def test_a_job_given_gpus_runs_its_stage_on_cuda_unless_a_device_is_chosen():
    assert submit.gpu_stage_args("upscale", ["in/"], 8) == ["in/", "--device", "cuda"]
    assert submit.gpu_stage_args("upscale", ["in/"], 0) == ["in/"]
    assert submit.gpu_stage_args("upscale", ["in/", "--device=cpu"], 8) == ["in/", "--device=cpu"]
    assert submit.gpu_stage_args("shard", ["--in", "a"], 8) == ["--in", "a"]  # no --device: nothing to ask
