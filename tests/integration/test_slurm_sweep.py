"""awm submit sweep on the real two-node SLURM cluster (n1, n2): the 4 points of a tiny-cpu sweep as one array
(two per node), the summary job after it, awm report over the result; while its jobs are queued the sweep is not
started again; once done, submitting again submits nothing."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import slurm_final_states  # noqa: E402
from sweep_runs import check_report, make_data, point_record, points, write_spec  # noqa: E402

from awm import cli  # noqa: E402

pytestmark = pytest.mark.slurm


def test_sweep_points_run_as_an_array_over_both_nodes(slurm_cluster, tmp_path, capsys):
    data = make_data(tmp_path / "data")
    out, logs = tmp_path / "sweep", tmp_path / "logs"
    spec = write_spec(tmp_path / "sweep.yaml", data, out)
    # 2000M of a node's 4000M per point: two points per node, so the array spreads over n1 and n2
    submit = ["submit", "sweep", str(spec), "--profile", "cpu-test", "--set", f"log_dir={logs}", "--set", "mem=2000M"]
    assert cli.main(submit) == 0
    record = json.loads(next(logs.glob("sweep-*/submission.json")).read_text())
    assert [j["kind"] for j in record["jobs"]] == ["point"] * 4 + ["summary"]
    capsys.readouterr()
    assert cli.main(["sweep", str(spec)]) == 2  # its jobs are queued or running: not started twice
    assert "still active" in capsys.readouterr().err
    states = slurm_final_states([j["job_id"] for j in record["jobs"]])
    assert set(states.values()) == {"COMPLETED"}, states
    attempts = {pid: point_record(out, pid)["attempts"] for pid in points(out)}
    assert all(len(a) == 1 and a[0]["state"] == "done" for a in attempts.values())
    assert {a[0]["job"] for a in attempts.values()} == {j["job_id"] for j in record["jobs"][:4]}
    assert sorted(a[0]["host"] for a in attempts.values()) == ["n1", "n1", "n2", "n2"]
    assert {p["state"] for p in points(out).values()} == {"done"}  # written by the summary job
    check_report(out)
    capsys.readouterr()
    assert cli.main(submit) == 0
    assert "all 4 points" in capsys.readouterr().out and len(list(logs.glob("sweep-*"))) == 1
