"""``data.degrade_on=device`` in real 2-process runs (torchrun, CPU, gloo): the loader ships HR
crops and params, each rank degrades its batches (``realesrgan``) before the forward pass, and a
run stopped by SIGTERM resumes to the same weights as an uninterrupted one (the device path is
part of the step, so exact resume must cover it)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import free_port  # noqa: E402
from train_runs import ROOT, assert_same_state, env, make_data, rerun_resumes, run_and_signal, tiny, torchrun  # noqa: E402

pytestmark = pytest.mark.slow
STEPS, GAN_START = 12, 8


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("device_degrade_data"), [4, 3], hr_only=True)  # degraded on the fly


def args(data: Path, runs: Path, name: str) -> list[str]:
    return tiny(data, runs, name, steps=STEPS, gan_start=GAN_START,
                **{"data.degrade": "realesrgan", "data.degrade_on": "device"})


def test_two_process_run_degrades_on_the_device_and_resumes_exactly(data, tmp_path):
    straight = subprocess.run(torchrun(free_port(), args(data, tmp_path, "straight")), env=env(), capture_output=True,
                              text=True, timeout=600, cwd=ROOT)
    assert straight.returncode == 0, straight.stderr[-3000:]
    assert "degrading realesrgan batches on cpu" in straight.stderr
    stats = json.loads((tmp_path / "straight" / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["world_size"] == 2 and stats["step"] == STEPS

    cmd = torchrun(free_port(), args(data, tmp_path, "resumed"))
    code, err = run_and_signal(cmd, f"step 5/{STEPS}", everyone=False)
    assert code != 0 and "stop requested: saving the full state" in err, err[-3000:]
    assert 5 <= rerun_resumes(cmd, tmp_path / "resumed") < STEPS
    assert_same_state(tmp_path / "straight" / "state", tmp_path / "resumed" / "state")
