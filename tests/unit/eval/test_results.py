"""Summary statistics, CSV and Markdown writing of awm.eval.results."""

from __future__ import annotations

import json
import math
import random

import pytest

from awm.eval import results


def test_stats_mean_std_ci() -> None:
    s = results.stats([1.0, 2.0, 3.0, 4.0])
    assert s["mean"] == 2.5 and s["count"] == 4 and s["failed"] == 0
    assert s["std"] == pytest.approx(math.sqrt(5 / 3))
    half = 3.182446305284263 * math.sqrt(5 / 3) / 2  # t(0.975, 3 dof)
    assert s["ci95"] == pytest.approx([2.5 - half, 2.5 + half])


def test_stats_nan_and_single_value() -> None:
    s = results.stats([float("nan"), 7.0])
    assert s == {"mean": 7.0, "std": 0.0, "count": 1, "failed": 1, "ci95": None}
    empty = results.stats([float("nan")])
    assert empty["mean"] is None and empty["count"] == 0 and empty["failed"] == 1


def test_summary_does_not_depend_on_row_order() -> None:
    rng = random.Random(0)
    rows = [{"model": m, "psnr": rng.uniform(20, 40) * 1.000001} for m in ("a", "b") for _ in range(101)]
    ref = results.summarize(rows, ["psnr"], "model")
    for _ in range(5):
        rng.shuffle(rows)
        got = results.summarize(rows, ["psnr"], "model")
        assert {g: got[g] for g in ref} == ref  # bit-identical: fsum is exactly rounded


def test_csv_roundtrip_is_exact(tmp_path) -> None:
    rows = [{"model": "bicubic", "id": "x1", "v": 0.1 + 0.2}, {"model": "m,2", "id": "x2", "v": float("nan")}]
    p = results.write_csv(tmp_path / "r.csv", rows, ["model", "id", "v"])
    back = results.read_csv(p)
    assert float(back[0]["v"]) == 0.1 + 0.2
    assert back[1] == {"model": "m,2", "id": "x2", "v": ""}


def test_markdown_marks_best_with_direction(tmp_path) -> None:
    rows = [{"model": "a", "psnr": 30.0, "niqe": 5.0}, {"model": "a", "psnr": 32.0, "niqe": 6.0},
            {"model": "b", "psnr": 28.0, "niqe": 4.0}, {"model": "b", "psnr": 29.0, "niqe": 4.5}]
    summary = results.summarize(rows, ["psnr", "niqe"], "model")
    lower = {"psnr": False, "niqe": True}
    md = results.markdown_table(summary, ["psnr", "niqe"], lower)
    lines = md.splitlines()
    assert lines[0] == "| model | psnr ↑ | niqe ↓ | n |"
    assert lines[2].startswith("| a | **31.0000 ± ") and "| 5.5000 ± " in lines[2]
    assert lines[3].startswith("| b | 28.5000 ± ") and "| **4.2500 ± " in lines[3]
    results.write_summary(tmp_path, summary, ["psnr", "niqe"], lower, {"title": "T"}, "model")
    doc = json.loads((tmp_path / "summary.json").read_text())
    assert doc["metrics"]["niqe"] == {"lower_better": True} and doc["models"]["b"]["psnr"]["count"] == 2
    assert (tmp_path / "summary.md").read_text().startswith("# T\n")
    paths = results.bar_charts(summary, ["psnr", "niqe"], lower, tmp_path / "fig")
    assert [p.name for p in paths] == ["psnr.png", "niqe.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_bar_charts_start_near_the_data_so_a_db_shows():
    """27.7 vs 28.9 dB from 0 look the same; the axis starts near the data, and from 0 where values reach it."""
    lo, hi = results.value_range([27.70, 28.86], [0.2, 0.3])
    assert 25.0 < lo < 27.5 and hi > 29.16  # the whole error bars in view, 1.16 dB a third of the axis
    assert (28.86 - 27.70) / (hi - lo) > 0.25
    assert results.value_range([0.2, 0.9], [0.05, 0.05]) is None  # near 0 (SSIM-like spreads): from 0
    assert results.value_range([-1.0, 2.0], [0.0, 0.0]) is None
    assert results.value_range([float("nan")], [0.0]) is None
    lo, hi = results.value_range([30.0, 30.0], [0.0, 0.0])  # all equal: still a valid axis
    assert lo < 30.0 < hi


def test_metric_that_cannot_score_a_small_image_counts_it_as_failed():
    import math

    import numpy as np

    from awm.eval import metrics

    niqe = metrics.create("niqe_anime")
    assert math.isnan(niqe(np.full((60, 240, 3), 128, np.uint8)))
