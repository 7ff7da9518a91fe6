"""awm sweep on this machine: a 4-point sweep of tiny-cpu through ``awm submit --profile local`` with one point
killed mid-run, rerun by ``awm sweep``; a failing point named; a point of 2 processes under torchrun."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import wait_for  # noqa: E402
from sweep_runs import check_report, make_data, point_record, points, write_spec  # noqa: E402
from train_runs import env  # noqa: E402

from awm import cli  # noqa: E402
from awm.sweep import spec as sweep_spec  # noqa: E402
from awm.sweep.sweep import KILLED  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_data(tmp_path_factory.mktemp("sweepdata"))


def _kill_first_running(out, killed: list[str]) -> None:
    """SIGKILL the process of the first point seen running (a submitit local job), once."""
    def running() -> dict | None:
        for rec in (out / "runs").glob("*/point.json"):
            try:
                doc = json.loads(rec.read_text())
            except ValueError:  # being rewritten
                continue
            if doc["state"] == "running" and doc["attempts"][-1]["pid"] != os.getpid():
                return doc
        return None

    doc = wait_for(running, f"a point of {out} in state 'running'", poll_s=0.05)
    os.kill(doc["attempts"][-1]["pid"], signal.SIGKILL)
    killed.append(doc["id"])


def test_submit_local_sweep_a_killed_point_reruns_and_report_lists_all(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = write_spec(tmp_path / "sweep.yaml", data, out)
    killed: list[str] = []
    watcher = threading.Thread(target=_kill_first_running, args=(out, killed))
    watcher.start()
    code = cli.main(["submit", "sweep", str(spec), "--profile", "local", "--set", f"log_dir={tmp_path / 'logs'}"])
    watcher.join()
    assert code == 1 and len(killed) == 1
    printed = capsys.readouterr().out
    assert "4 points: 3 done, 1 failed" in printed and f"awm sweep {out}" in printed
    states = points(out)
    assert states[killed[0]]["state"] == "failed" and states[killed[0]]["error"] == KILLED
    finished = {pid: point_record(out, pid) for pid in states if pid != killed[0]}
    assert all(r["state"] == "done" and r["attempts"][0]["pid"] != os.getpid() for r in finished.values())

    assert cli.main(["sweep", str(spec)]) == 0  # only the killed point runs again, in this process
    again = point_record(out, killed[0])
    assert [a["state"] for a in again["attempts"]] == ["failed", "done"]
    assert again["attempts"][1]["pid"] == os.getpid()
    assert all(point_record(out, pid) == rec for pid, rec in finished.items())  # skipped, untouched
    assert "4 points: 4 done" in capsys.readouterr().out
    check_report(out)


def test_a_failing_point_is_named_and_the_others_still_run(data, tmp_path, capsys):
    out = tmp_path / "sweep"
    spec = write_spec(tmp_path / "sweep.yaml", data, out, space={"model.hparams.num_feat": [16, -1]})
    assert cli.main(["sweep", str(spec)]) == 1
    states = points(out)
    bad = [p for p in states.values() if p["state"] == "failed"]
    assert len(bad) == 1 and bad[0]["delta"] == {"model.hparams.num_feat": -1}
    assert "negative dimension" in bad[0]["error"]
    assert "2 points: 1 done, 1 failed" in capsys.readouterr().out
    assert cli.main(["sweep", str(out)]) == 1  # the folder continues the sweep: the done point is skipped
    good = next(pid for pid, p in states.items() if p["state"] == "done")
    assert len(point_record(out, good)["attempts"]) == 1 and len(point_record(out, bad[0]["id"])["attempts"]) == 2
    assert cli.main(["report", str(out)]) == 0  # the failed point is a row too, with no metrics
    rows = {r["point"]: r for r in csv.DictReader((out / "report" / "sweep.csv").open())}
    assert rows[bad[0]["id"]]["state"] == "failed" and rows[bad[0]["id"]]["psnry"] == ""
    assert rows[good]["state"] == "done" and float(rows[good]["psnry"]) > 10


def test_points_of_two_processes_run_under_torchrun_and_a_stop_ends_the_sweep(data, tmp_path):
    """SIGTERM to ``awm sweep`` reaches the running point's ranks through torchrun: they save their state,
    the point ends 'preempted' and the sweep stops there (exit 1), with no later point started."""
    out = tmp_path / "sweep"
    spec = write_spec(tmp_path / "sweep.yaml", data, out, space={"steps": [3, 400]}, processes=2, seed=1,
                      overrides=("log.every=1",))
    short, long = sweep_spec.points(sweep_spec.load_spec(spec))
    assert (short.delta, long.delta) == ({"steps": 3}, {"steps": 400})  # seed 1: the short point runs first
    proc = subprocess.Popen([sys.executable, "-m", "awm", "sweep", str(spec)], env=env(), text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    for line in proc.stderr:
        if "step 1/400" in line:
            proc.send_signal(signal.SIGTERM)  # the driver only: it passes the stop on
            break
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 1, stderr[-3000:]
    assert "2 points: 1 done, 1 preempted" in stdout
    done, stopped = point_record(out, short.id), point_record(out, long.id)
    assert done["state"] == "done" and done["attempts"][0]["processes"] == 2
    assert json.loads((out / "runs" / short.id / "train_stats.json").read_text())["world_size"] == 2
    assert stopped["state"] == "preempted"
    saved = json.loads((out / "runs" / long.id / "state" / "complete.json").read_text())["step"]
    assert 1 <= saved < 400
