"""Validation reports the bicubic bar next to the model, with the numbers `awm eval` gives for the
same weights, shards and crop; a finished run, run again, changes nothing;
more steps resume it, into a GAN stage its saved state never had."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

pytestmark = pytest.mark.slow


def _eval(run: Path, eval_dir: Path, crop: int, out: Path) -> dict[str, dict[str, float]]:
    """`awm eval` of the run's last weights and bicubic on the validation shards, validation's crop."""
    from awm import cli

    assert cli.main(["eval", "--data", str(eval_dir), "--scale", "2", "--models",
                     f"bicubic,{run / 'checkpoints' / 'last'}", "--metrics", "psnry,ssimy", "--crop", str(crop),
                     "--out", str(out), "--no-progress"]) == 0
    models = json.loads((out / "summary.json").read_text())["models"]
    return {("bicubic" if m == "bicubic" else "model"): {k: v["mean"] for k, v in st.items()}
            for m, st in models.items()}


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
    # One number per question: awm eval with validation's crop gives validation's numbers, for the
    # model and for bicubic (one bicubic, one crop, one PSNR-Y/SSIM-Y). Both round the output to
    # 8 bits and score in float64; the model's float32 forward passes (whole image in validation,
    # one tile in eval) may differ in summation order (~1e-6 relative), which can flip the 8-bit
    # rounding of a pixel whose value sits on a .5 boundary: one such pixel in a 44x44 scored
    # crop moves PSNR by < 1e-3 dB and SSIM by < 1e-4.
    ev = _eval(run, tmp_path / "eval", 48, tmp_path / "ev")
    assert ev["bicubic"]["psnry"] == pytest.approx(val["bicubic_psnr_y"], abs=1e-9)
    assert ev["bicubic"]["ssimy"] == pytest.approx(val["bicubic_ssim_y"], abs=1e-9)
    assert ev["model"]["psnry"] == pytest.approx(val["psnr_y"], abs=1e-3)
    assert ev["model"]["ssimy"] == pytest.approx(val["ssim_y"], abs=1e-4)
    assert ("below bicubic on its validation images" in first.stderr) == (val["psnr_y"] < val["bicubic_psnr_y"])
    assert val["psnr_y"] < val["bicubic_psnr_y"]  # 2 steps from scratch: nearest-neighbour-like, so warned
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
