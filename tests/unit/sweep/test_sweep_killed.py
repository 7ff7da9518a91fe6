"""A point whose rank is killed: the signal is named (torchrun itself exits 1 for any rank's death)
and the attempt records the time it ran, not 0 s."""

from __future__ import annotations

import os
import sys
import time

from awm.config import load
from awm.sweep.spec import SweepSpec, points
from awm.sweep.sweep import Sweep, mark_dead, run_launcher


def test_a_rank_killed_by_sigkill_is_named(tmp_path, capfd):
    script = tmp_path / "rank.py"
    script.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n")
    code, why = run_launcher([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                              str(script)])
    assert code == 1 and why.startswith("a rank was killed by SIGKILL (torchrun exited with code 1)"), why
    assert "SIGKILL" in capfd.readouterr().err  # torchrun's own log still reaches the user


def test_a_dead_attempt_records_the_time_it_ran(tmp_path):
    spec = load(SweepSpec, None, ["name=s", f"out={tmp_path}", "search.space={optim.lr_g: [0.001, 0.0005]}"])
    a, b = points(spec)
    sweep = Sweep(spec, tmp_path, [a, b])
    t0 = int(time.time()) - 30
    started = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(t0))
    for p in (a, b):
        sweep.write_status(p, {"id": p.id, "delta": p.delta, "state": "running",
                               "attempts": [{"started": started, "state": "running", "train_s": 0.0}]})
    mark_dead(sweep, a, "a rank was killed by SIGKILL", seconds=12.5)  # its launcher measured it
    assert sweep.status(a)["attempts"][-1]["train_s"] == 12.5
    (sweep.run_dir(b) / "tb").mkdir()
    (sweep.run_dir(b) / "tb" / "events").write_text("x")
    os.utime(sweep.run_dir(b) / "tb" / "events", (t0 + 42, t0 + 42))  # the run's last write, 42 s in
    mark_dead(sweep, b, "killed")
    assert sweep.status(b)["attempts"][-1]["train_s"] == 42.0
