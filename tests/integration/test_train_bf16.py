"""Mixed precision end to end: 2-process CPU bf16 training, its checkpoint, and `awm eval` on it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402
from support import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    """A hermetic child environment: nothing a previous in-process run or launcher left behind."""
    drop = ("ACCELERATE_USE_CPU", "ACCELERATE_MIXED_PRECISION", "RANK", "WORLD_SIZE", "LOCAL_RANK",
            "MASTER_ADDR", "MASTER_PORT")
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "OMP_NUM_THREADS": "1",
            "PYTHONUNBUFFERED": "1"}


def _pixel_losses(tb: Path) -> list[float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return [e.value for e in sorted(acc.Scalars("loss/pixel"), key=lambda e: e.step)]


def test_two_process_bf16_trains_saves_and_evaluates(tmp_path):
    data = tmp_path / "data"
    # one image, one full-size patch, no augmentation: every step sees the same pairs, so the loss
    # falls steadily within a few dozen steps instead of drowning in batch-to-batch noise
    make_pair_shards(data / "train", [1], size=(64, 64))
    make_pair_shards(data / "eval", [3], size=(128, 96), split="eval", seed=5)
    runs = tmp_path / "runs"
    kw = {"runs": runs, "data.train": data / "train", "data.eval": data / "eval", "data.patch": 64, "data.augment": "false",
          "data.batch_size": 4, "data.workers": 1, "log.every": 1, "validation.every": 20, "validation.crop": 64,
          "checkpoint.state_every": 1000, "schedule.warmup_steps": 5, "steps": 40, "gan_start": 40,
          "precision": "bf16"}
    cmd = [str(BIN / "torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), "-m", "awm", "train",
           "--config", "tiny-cpu", *[f"{k}={v}" for k, v in kw.items()]]
    r = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    run = runs / "tiny-cpu"
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["world_size"] == 2 and stats["step"] == 40
    assert stats["precision"] == "bf16"
    losses = _pixel_losses(run / "tb")
    assert len(losses) == 40 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-8:]) / 8 < sum(losses[:8]) / 8

    from awm.models.checkpoint import load_model

    ckpt = run / "checkpoints" / "last"
    m = load_model(ckpt)
    assert m.arch == "compact" and m.scale == 2
    params = list(m.module.parameters())
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in params)  # fp32 master weights

    out = tmp_path / "eval"
    ev = subprocess.run([sys.executable, "-m", "awm", "eval", "--data", str(data / "eval"), "--scale", "2",
                         "--models", f"bicubic,{ckpt}", "--metrics", "psnry", "--precision", "bf16",
                         "--out", str(out)], env=_env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert ev.returncode == 0, ev.stderr[-3000:]
    rows = (out / "per_image.csv").read_text().splitlines()
    assert len(rows) == 1 + 2 * 3
    summary = json.loads((out / "summary.json").read_text())
    trained = [v["psnry"] for k, v in summary["models"].items() if k != "bicubic"]
    assert len(trained) == 1 and trained[0]["count"] == 3 and trained[0]["failed"] == 0
    assert math.isfinite(trained[0]["mean"])
