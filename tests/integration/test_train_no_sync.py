"""The steady-state step never waits for the device, and a non-finite step is skipped on the device.

2-process `tiny-cpu`-style runs (gloo): host reads of tensors (item, bool, float, int, tolist, cpu,
numpy) counted between two log steps with the GAN stage, EMA and the artifact losses on, a NaN batch injected inside
that window; and a NaN injected at a known step leaves that step's weights unchanged.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import free_port  # noqa: E402
from train_runs import ROOT, env, make_data, tiny, torchrun  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("sync_data"), [4, 4])


def test_twenty_steady_steps_make_no_host_device_sync(data, tmp_path):
    first, second = 20, 40
    artifact_terms = {f"loss.{k}.weight": 0.1 for k in ("ldl", "ffl", "msssim", "color")}  # LDL runs the EMA
    # every tracker that runs offline logs too: scalars are read at log steps only, whoever receives them
    args = tiny(data, tmp_path, "probe", steps=44, gan_start=5, **{"log.every": 20, "ema.enabled": "true",
                                                                  "deterministic": "false", **artifact_terms,
                                                                  "log.trackers": "[tensorboard,wandb]"})
    cmd = torchrun(free_port(), [str(ROOT / "tests" / "integration" / "sync_probe.py"), str(tmp_path / "counts"),
                           str(first), str(second), "--", *args], module=False)
    r = subprocess.run(cmd, env=env(AWM_FAULT_NONFINITE_STEP="30:1", WANDB_MODE="offline",
                                    WANDB_DIR=str(tmp_path)), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))) == 1
    for rank in (0, 1):
        counts = json.loads((tmp_path / "counts" / f"rank{rank}.json").read_text())
        assert counts["window"] == {}, (rank, counts)  # 20 steps (GAN stage, EMA, a skipped NaN step): no read
        assert sum(counts["log"].values()) >= 1, (rank, counts)  # the log step's read is seen by the probe
    stats = json.loads((tmp_path / "probe" / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["nan_skips"] == 1 and stats["world_size"] == 2


def test_non_finite_step_on_one_rank_is_skipped_by_both(data, tmp_path):
    """NaN input on rank 1 at step 4 (0-based): checkpoint step-5 (after it) equals step-4 (before it)."""
    args = tiny(data, tmp_path, "nan", steps=7, gan_start=2, **{"ema.enabled": "false", "checkpoint.every": 1,
                                                                "log.every": 7})
    r = subprocess.run(torchrun(free_port(), args), env=env(AWM_FAULT_NONFINITE_STEP="4:1"), capture_output=True,
                       text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = tmp_path / "nan" / "checkpoints"
    w = {n: load_file(ckpt / f"step-{n:08d}" / "model.safetensors") for n in (3, 4, 5, 6)}
    same = {n: all(torch.equal(w[n][k], w[n + 1][k]) for k in w[n]) for n in (3, 4, 5)}
    assert same == {3: False, 4: True, 5: False}, same
    assert all(torch.isfinite(v).all() for v in w[6].values())
    stats = json.loads((tmp_path / "nan" / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["nan_skips"] == 1
