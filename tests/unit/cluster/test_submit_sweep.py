"""awm submit sweep without a cluster: one array task per point, a point's ranks over nodes and GPUs, errors."""

from __future__ import annotations

import pytest
import yaml

from awm import cli


@pytest.fixture
def spec(tmp_path):
    def make(processes: int = 1):
        path = tmp_path / "sweep.yaml"
        path.write_text(yaml.safe_dump({"name": "s", "out": str(tmp_path / "sweep"), "processes": processes,
                                        "search": {"space": {"loss.pixel.weight": [1.0, 0.5], "data.limit": [2, 8]}}}))
        return path
    return make


def _dry(spec_path, *extra) -> int:
    return cli.main(["submit", "sweep", str(spec_path), "--profile", "gpu-a100x8", "--dry-run", *extra])


def test_each_point_is_an_array_task_of_its_processes_one_gpu_each(spec, tmp_path, capsys):
    assert _dry(spec(processes=8)) == 0
    text = capsys.readouterr().out
    for line in ("--array=0-3%4", "--nodes=1", "--ntasks-per-node=8", "--gpus-per-node=8", "--job-name=awm-sweep"):
        assert f"#SBATCH {line}" in text, line
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing
    assert _dry(spec(processes=8), "--nodes", "2") == 0
    text = capsys.readouterr().out
    assert "#SBATCH --nodes=2" in text and "#SBATCH --ntasks-per-node=4" in text and "--gpus-per-node=4" in text


@pytest.mark.parametrize("processes, extra, key", [
    (3, ["--nodes", "2"], "--nodes"),  # a point's ranks split evenly over its nodes
    (16, [], "--gpus-per-node"),  # more ranks than one node's GPUs: use --nodes
    (1, ["--array", "4"], "--array"),  # the points are the array
])
def test_impossible_requests_are_usage_errors(spec, processes, extra, key, capsys):
    assert _dry(spec(processes=processes), *extra) == 2
    assert f"'{key}'" in capsys.readouterr().err


def test_points_of_a_job_given_gpus_ask_for_cuda(tmp_path):
    """A GPU profile's sweep points train (and evaluate) with device cuda: on a node whose torch sees
    no GPU the point fails at start, naming why, instead of training on the CPU (this machine has
    none, and its tests hide any: CUDA_VISIBLE_DEVICES="")."""
    import json
    import os
    import subprocess
    import sys

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({"name": "s", "out": str(tmp_path / "sweep"), "processes": 1,
                                    "search": {"space": {"loss.pixel.weight": [1.0]}}}))
    r = subprocess.run([sys.executable, "-m", "awm", "submit", "sweep", str(path), "--profile", "gpu-a100x8",
                        "--cluster", "debug", "--gpus-per-node", "1"], stdin=subprocess.DEVNULL,
                       capture_output=True, text=True, timeout=600, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert r.returncode == 1, r.stderr[-2000:]
    (point,) = (tmp_path / "sweep" / "runs").glob("*/point.json")
    attempt = json.loads(point.read_text())["attempts"][-1]
    assert attempt["state"] == "failed" and attempt["error"].startswith("NoGPUError: device=cuda"), attempt
