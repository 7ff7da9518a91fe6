"""awm train checks its inputs before the work, and trains HR-only from what ingest writes.

- 2 processes train from `awm ingest`'s raw shards with `data.degrade=realesrgan` (validation
  degrades the HR-only eval samples with the same preset).
- A mistyped `data.eval` and a run name reused with another scale stop at start-up: exit 2, one
  line naming the key, and nothing written that looks like a run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import free_port  # noqa: E402
from train_runs import BIN, env, tiny, torchrun  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    from awm.data.synth import write_dataset

    d = tmp_path_factory.mktemp("raw")
    write_dataset(d / "images", 6, long_side=(160, 224))
    r = subprocess.run([str(BIN / "awm"), "ingest", str(d / "images"), "--out", str(d / "raw")],
                       capture_output=True, text=True, env=env(), timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return d / "raw"


def awm_train(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "awm"), "train", *args], capture_output=True, text=True, env=env(),
                          timeout=300, cwd=cwd)


def test_two_processes_train_from_ingest_raw_shards_with_realesrgan(raw, tmp_path):
    args = tiny(raw.parent, tmp_path / "runs", "hr", steps=3, **{
        "data.train": raw, "data.eval": "null", "data.degrade": "realesrgan", "data.degrade_on": "worker"})
    r = subprocess.run(torchrun(free_port(), args), capture_output=True, text=True, env=env(), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    stats = json.loads((tmp_path / "runs" / "hr" / "train_stats.json").read_text())
    assert stats["status"] == "done" and stats["step"] == 3
    assert stats["validation"]["images"] == 2  # HR-only eval samples degraded with the preset
    assert (tmp_path / "runs" / "hr" / "checkpoints" / "last" / "model.safetensors").is_file()


def _error_line(r: subprocess.CompletedProcess) -> str:
    lines = [x for x in r.stderr.splitlines() if x.startswith("awm train:")]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr[-3000:]
    return lines[0]


def test_a_mistyped_eval_path_fails_at_start_writing_nothing(raw, tmp_path):
    args = tiny(raw.parent, tmp_path / "runs", "typo", steps=500, **{
        "data.train": raw, "data.eval": raw.parent / "evl", "data.degrade": "seed"})
    r = awm_train(args, tmp_path)
    assert r.returncode == 2
    assert "config key 'data.eval'" in _error_line(r) and "evl" in _error_line(r)
    assert not (tmp_path / "runs" / "typo").exists()


def test_a_run_name_reused_with_another_scale_is_refused_and_left_alone(raw, tmp_path):
    base = {"data.train": raw, "data.eval": "null", "data.degrade": "seed", "data.workers": 0}
    first = awm_train(tiny(raw.parent, tmp_path / "runs", "x", steps=2, **base), tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    run = tmp_path / "runs" / "x"
    before = {p: p.stat().st_mtime_ns for p in run.rglob("*")}
    again = awm_train(tiny(raw.parent, tmp_path / "runs", "x", steps=4, **base, **{"data.scale": 4}), tmp_path)
    assert again.returncode == 2
    line = _error_line(again)
    assert "config key 'name'" in line and "data.scale: 2 there, 4 here" in line
    assert "size mismatch" not in again.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*")} == before
