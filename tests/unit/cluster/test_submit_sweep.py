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
