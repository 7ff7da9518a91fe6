"""Validation reports the bicubic bar next to the model; a finished run, run again, changes nothing;
more steps resume it, into a GAN stage its saved state never had."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

pytestmark = pytest.mark.slow


def _bicubic_psnr_y(eval_dir: Path, scale: int, crop: int) -> float:
    """By hand: torch bicubic of each LR crop, 8-bit, BT.601 Y (16..235), ``scale`` px border, mean."""
    from awm.data.loader import eval_pairs

    values = []
    for _, lr, hr in eval_pairs(eval_dir, scale, 0, 1, 64, crop):
        x = torch.from_numpy(lr).permute(2, 0, 1)[None].double() / 255
        up = F.interpolate(x, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)
        sr = (up[0].permute(1, 2, 0).numpy() * 255).round()
        ref = hr[: lr.shape[0] * scale, : lr.shape[1] * scale].astype(np.float64)
        w = np.array([65.481, 128.553, 24.966]) / 255
        ya, yb = (sr @ w + 16)[scale:-scale, scale:-scale], (ref @ w + 16)[scale:-scale, scale:-scale]
        values.append(10 * np.log10(255.0**2 / np.mean((ya - yb) ** 2)))
    return float(np.mean(values))


def test_validation_shows_bicubic_and_a_finished_run_is_left_alone(tmp_path):
    make_pair_shards(tmp_path / "train", [4], size=(96, 64))
    make_pair_shards(tmp_path / "eval", [3], size=(96, 64), split="eval", seed=5)
    args = [sys.executable, "-m", "awm", "train", "--config", "tiny-cpu", f"runs={tmp_path / 'runs'}", "name=r",
            f"data.train={tmp_path / 'train'}", f"data.eval={tmp_path / 'eval'}", "data.patch=32",
            "data.batch_size=2", "data.workers=0", "steps=2", "gan_start=10", "validation.crop=48"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "r"
    val = json.loads((run / "train_stats.json").read_text())["validation"]
    assert val["images"] == 3
    assert val["bicubic_psnr_y"] == pytest.approx(_bicubic_psnr_y(tmp_path / "eval", 2, 48), abs=1e-3)
    line = next(ln for ln in first.stderr.splitlines() if "validation at step 2" in ln)
    assert f"bicubic {val['bicubic_psnr_y']:.3f} dB ({val['psnr_y'] - val['bicubic_psnr_y']:+.3f} dB)" in line

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("val/bicubic_psnr_y")] == pytest.approx([val["bicubic_psnr_y"]])

    before = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    again = subprocess.run(args, capture_output=True, text=True, timeout=300, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"run {run} already finished at step 2 of 2" in again.stderr
    after = {p: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing rewritten: stats, config, checkpoints, TensorBoard
    more = subprocess.run([*args, "steps=3"], capture_output=True, text=True, timeout=300, env=env)
    assert more.returncode == 0 and "resumed from" in more.stderr, more.stderr[-3000:]
    assert json.loads((run / "train_stats.json").read_text())["step"] == 3
    # its state holds no discriminator (L1 only so far): a rerun reaching gan_start resumes it, D fresh
    gan = subprocess.run([*args, "steps=5", "gan_start=4"], capture_output=True, text=True, timeout=300, env=env)
    assert gan.returncode == 0 and "the discriminator starts fresh" in gan.stderr, gan.stderr[-3000:]
    stats = json.loads((run / "train_stats.json").read_text())
    assert stats["step"] == 5 and stats["status"] == "done"
