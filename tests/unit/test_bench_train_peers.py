"""bench_train's peer comparison: rows name the peers, and a peer that cannot be installed or run
is a recorded skip with its reason, never a crash (no package index needed here: the real peer
install is the benchmark's, not the suite's)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import peers  # noqa: E402
from registry import by_name, rows_for  # noqa: E402


def _side(cpu: float, rate: float) -> dict:
    return {"cpu_ms_per_pair": cpu, "cpu_ms_per_pair_range": [cpu * 0.9, cpu * 1.1], "pairs_per_s": rate,
            "pairs_per_s_range": [rate * 0.9, rate * 1.1]}


def _figures(skipped: dict[str, str]) -> dict:
    sides = {"awm": _side(35.0, 25.0), "bare": _side(30.0, 30.0),
             "basicsr": _side(41.0, 21.0) | {"label": "BasicSR 1.4.2", "version": "1.4.2", "cpu_vs_awm": 1.17,
                                             "cpu_vs_awm_range": [1.1, 1.25]}}
    if "neosr" not in skipped:
        sides["neosr"] = _side(45.0, 19.0) | {"label": "neosr 0.1.0", "version": "0.1.0", "cpu_vs_awm": 1.29,
                                              "cpu_vs_awm_range": [1.2, 1.4]}
    return {"benchmark": "train_step", "device": "cpu", "threads": 1, "precision": "fp32", "compile": "none",
            "steps": 50, "repeats": 3, "results": [],
            "peers": {"case": "compact-x2", "lr_patch": 8, "batch": 8, "workers": 1, "steps": 20, "rounds": 3,
                      "images": "32 x 128x128", "ema": True, "awm_patches_per_image": 8,
                      "optimizer": "AdamW", "lr_g": 2e-4, "sides": sides,
                      "skipped": skipped, "labels": {"basicsr": "BasicSR 1.4.2", "neosr": "neosr 0.1.0"}}}


def test_peer_row_names_each_peer_with_its_cpu_per_pair_and_ratio() -> None:
    (row,) = rows_for(by_name()["train-cpu"], _figures({}))
    assert "awm vs BasicSR 1.4.2 and neosr 0.1.0" in row["what"] and "EMA on" in row["what"]
    assert "cut into 8 patches" in row["what"] and "batch 8, LR 8 px" in row["what"]
    assert "awm 35.0 ms, BasicSR 1.4.2 41.0 ms, neosr 0.1.0 45.0 ms" in row["result"]
    assert "bare loop on an in-memory batch 30.0 ms" in row["result"]
    assert "BasicSR 1.4.2 **1.17x** awm's [1.10, 1.25]" in row["baseline"]
    assert "neosr 0.1.0 **1.29x** awm's [1.20, 1.40]" in row["baseline"]


def test_a_skipped_peer_says_why_in_its_row() -> None:
    why = "cannot install neosr==0.1.0: ERROR: No matching distribution found for neosr==0.1.0"
    (row,) = rows_for(by_name()["train-cpu"], _figures({"neosr": why}))
    assert "neosr 0.1.0 ms" not in row["result"] and "neosr 0.1.0 45" not in row["result"]
    assert f"neosr 0.1.0 **not measured**: {why}" in row["baseline"]
    assert "BasicSR 1.4.2 **1.17x**" in row["baseline"]


def test_a_peer_that_cannot_be_installed_raises_with_pips_reason_and_leaves_no_venv(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(peers, "CACHE", tmp_path)
    with pytest.raises(peers.PeerUnavailable, match="cannot install --no-index awm-no-such-peer==0: ERROR: .*awm-no-such-peer"):
        peers.peer_venv("nopeer", [["--no-index", "awm-no-such-peer==0"]])
    assert not (tmp_path / "nopeer").exists(), "a failed install must not count as a made venv next time"


def test_a_peer_that_cannot_run_is_a_skip_with_the_error_line(tmp_path: Path) -> None:
    import bench_train

    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp_path / "bare")], check=True)
    spec = {"threads": 1}
    out = bench_train.run_peer(tmp_path / "bare" / "bin" / "python", "basicsr", spec)
    assert out == {"skipped": "BasicSR 1.4.2 failed: ModuleNotFoundError: No module named 'torch'"}
