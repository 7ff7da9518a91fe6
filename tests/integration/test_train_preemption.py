"""Preemption as clusters do it, on 2-process CPU runs with a loader worker per rank.

SIGTERM to the launcher (`torchrun`, `accelerate launch`), SIGTERM to every process of the
run at once (launcher, ranks, loader workers: what SLURM does at preemption and time limit), and
SIGINT to the launcher's process group (Ctrl-C in a terminal).
Each time the state is saved, the re-run resumes from it, and the final weights, discriminator
and EMA equal an uninterrupted run's bitwise (deterministic CPU settings).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import free_port  # noqa: E402
from train_runs import (  # noqa: E402
    ROOT,
    accelerate_launch,
    assert_same_state,
    env,
    make_data,
    rerun_resumes,
    run_and_signal,
    tiny,
    torchrun,
)

pytestmark = pytest.mark.slow
STEPS, GAN_START = 20, 10


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("preempt_data"), [3, 5])


@pytest.fixture(scope="module")
def straight(data, tmp_path_factory) -> Path:
    """The uninterrupted run every interrupted one must reproduce."""
    runs = tmp_path_factory.mktemp("straight")
    r = subprocess.run(torchrun(free_port(), tiny(data, runs, "straight", steps=STEPS, gan_start=GAN_START)),
                       env=env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return runs / "straight" / "state"


@pytest.mark.parametrize("launcher,everyone,sig", [
    ("torchrun", False, signal.SIGTERM), ("accelerate", False, signal.SIGTERM),
    ("torchrun", True, signal.SIGTERM), ("accelerate", False, signal.SIGINT),
    ("torchrun", False, signal.SIGINT)],
    ids=["sigterm-torchrun", "sigterm-accelerate-launch", "sigterm-every-process", "ctrl-c-accelerate-launch",
         "ctrl-c-torchrun"])
def test_stop_signal_saves_state_and_the_rerun_matches_an_uninterrupted_run(data, straight, tmp_path, launcher,
                                                                           everyone, sig):
    """SIGTERM as clusters send it; SIGINT to the launcher's process group as Ctrl-C in a terminal
    sends it (issue 25), before the first periodic state save (checkpoint.state_every 1000)."""
    args = tiny(data, tmp_path, "interrupted", steps=STEPS, gan_start=GAN_START)
    port = free_port()
    cmd = torchrun(port, args) if launcher == "torchrun" else accelerate_launch(port, args)
    code, err = run_and_signal(cmd, f"step 6/{STEPS}", everyone, sig=sig, group=sig == signal.SIGINT)
    assert code != 0, err[-3000:]  # the launcher reports its ranks' "preempted" (75) exit
    assert "stop requested: saving the full state" in err, err[-3000:]
    saved = [line for line in err.splitlines() if "; re-run the same command to resume" in line]
    assert len(saved) == 1 and "stopped: state saved at step " in saved[0], err[-3000:]  # rank 0, once
    assert "killed by signal" not in err, err[-3000:]  # no loader worker died with the signal
    assert 6 <= rerun_resumes(cmd, tmp_path / "interrupted") < STEPS
    assert json.loads((tmp_path / "interrupted" / "train_stats.json").read_text())["step"] == STEPS
    assert_same_state(straight, tmp_path / "interrupted" / "state")
