"""A training run on shards where no sample decodes stops with an error instead of searching forever."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("workers", [0, 1])
def test_all_undecodable_shards_end_the_run_with_exit_1(tmp_path, workers):
    keys = tuple(f"img{n:05d}" for n in range(6))
    data = make_pair_shards(tmp_path / "bad", [3, 3], size=(96, 64), corrupt=keys)
    env = {**{k: v for k, v in os.environ.items() if k not in ("ACCELERATE_USE_CPU", "RANK", "WORLD_SIZE")},
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "awm", "train", "--config", "tiny-cpu", f"runs={tmp_path / 'runs'}",
           f"data.train={data}", f"data.eval={data}", "data.patch=32", "data.batch_size=2",
           f"data.workers={workers}", "data.streams=2", "data.max_bad_in_a_row=50", "steps=4", "gan_start=4",
           "validation.every=0"]
    # the timeout only guards against the old behaviour (an endless search that ignored SIGTERM)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "50 unusable samples in a row ({'truncated': 50})" in r.stderr, r.stderr[-3000:]
    assert "train-000000.tar, train-000001.tar" in r.stderr
