"""Test helper: tiny pair shards and a 4-point sweep spec of ``tiny-cpu`` (2 pixel-loss weights x 2
``data.limit``) that trains 3 steps per point, for the local and the SLURM sweep tests."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pairs import make_pair_shards  # noqa: E402

TINY = ["steps=3", "gan_start=3", "data.patch=32", "data.batch_size=4", "data.workers=0",
        "model.hparams.num_feat=16", "model.hparams.num_conv=4", "schedule.warmup_steps=1", "validation.every=0",
        "validation.max_images=2", "validation.crop=32", "log.every=5", "checkpoint.every=0"]


def make_data(root: Path) -> tuple[Path, Path]:
    train = make_pair_shards(root / "train", [4, 4], size=(96, 64))
    evals = make_pair_shards(root / "eval", [2], size=(96, 64), seed=1, split="eval")
    return train, evals


def write_spec(path: Path, data: tuple[Path, Path], out: Path, space: dict | None = None, processes: int = 1,
               seed: int = 0, overrides: tuple[str, ...] = ()) -> Path:
    doc = {"name": "tiny", "out": str(out), "processes": processes,
           "train": {"config": "tiny-cpu",
                     "overrides": [f"data.train={data[0]}", f"data.eval={data[1]}", *TINY, *overrides]},
           "eval": {"name": "tiny-eval", "metrics": ["psnry", "ssim"], "tile": 0},
           "search": {"space": space or {"loss.pixel.weight": [1.0, 0.5], "data.limit": [2, 8]}, "seed": seed}}
    path.write_text(yaml.safe_dump(doc))
    return path


def points(out: Path) -> dict[str, dict]:
    return {p["id"]: p for p in json.loads((out / "points.json").read_text())["points"]}


def point_record(out: Path, pid: str) -> dict:
    return json.loads((out / "runs" / pid / "point.json").read_text())


def check_report(out: Path, n: int = 4) -> list[dict]:
    """``awm report`` over the sweep: every point done with metrics and compute, and the plots."""
    from awm import cli

    assert cli.main(["report", str(out)]) == 0
    rows = list(csv.DictReader((out / "report" / "sweep.csv").open()))
    assert len(rows) == n
    for r in rows:
        assert r["state"] == "done", r
        assert float(r["psnry"]) > 10 and 0 < float(r["ssim"]) <= 1
        assert int(r["steps"]) == 3 and float(r["wall_s"]) > 0 and float(r["cpu_h"]) > 0 and float(r["tflop"]) > 0
    assert {r["data.limit"] for r in rows} == {"2", "8"} and {r["loss.pixel.weight"] for r in rows} == {"1.0", "0.5"}
    md = (out / "report" / "sweep.md").read_text()
    assert all(f"| {r['point']} | done |" in md for r in rows)
    figures = sorted(p.name for p in (out / "report" / "figures").iterdir())
    assert figures == ["metrics_vs_data.limit.png", "metrics_vs_loss.pixel.weight.png", "pareto_psnry.png"]
    for f in figures:
        assert (out / "report" / "figures" / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return rows
