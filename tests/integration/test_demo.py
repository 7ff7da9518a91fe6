"""End to end: `awm demo` through every real stage (tiny settings), then a re-run that reuses them."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.slow


def _demo(out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "awm", "demo", "--out", str(out), "--n-train", "4", "--n-eval", "3",
           "--long-side", "256,320", "--steps", "12", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)


def test_demo_runs_every_stage_then_reuses_them(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-4000:]
    report = (out / "report.md").read_text()
    assert "| bicubic |" in report and f"| {out / 'run'} |" in report
    assert "psnry" in report and "niqe_anime" in report
    assert (out / "run" / "checkpoints" / "last" / "meta.json").is_file()
    assert len(list((out / "upscaled").glob("*_x2.png"))) == 3
    assert str(out / "report.md") in first.stdout

    second = _demo(out)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stderr.count("reusing finished output") == 7  # ingest x2, shard x2, train, eval, upscale


def test_demo_refuses_a_bad_value():
    r = subprocess.run([sys.executable, "-m", "awm", "demo", "n_train=1"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "n_train" in r.stderr
