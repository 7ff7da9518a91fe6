"""awm.sweep.report's arithmetic: training TFLOP from a run's stats and config, the Pareto front."""

from __future__ import annotations

import json

import yaml

from awm.sweep.report import pareto, train_tflop


def test_train_tflop_counts_each_stage_at_its_own_cost(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(yaml.safe_dump(
        {"gan_start": 30, "data": {"batch_size": 4}, "optim": {"accum": 2}}))
    (run / "train_stats.json").write_text(json.dumps(
        {"step": 50, "world_size": 3, "flops_per_pair": {"l1": 1e9, "gan": 5e9}}))
    pairs = 4 * 2 * 3
    assert train_tflop(run) == (30 * 1e9 + 20 * 5e9) * pairs / 1e12
    (run / "train_stats.json").write_text(json.dumps({"step": 50, "world_size": 1, "flops_per_pair": {"l1": 1e9}}))
    assert train_tflop(run) == 50 * 1e9 * 8 / 1e12  # no discriminator: L1 cost all the way
    (run / "train_stats.json").unlink()
    assert train_tflop(run) is None  # not trained yet: an empty cell, not 0


def test_pareto_front_is_what_nothing_beats_on_both_quality_and_compute():
    rows = [{"point": "a", "psnr": 30.0, "tflop": 1.0}, {"point": "b", "psnr": 31.0, "tflop": 2.0},
            {"point": "c", "psnr": 30.5, "tflop": 3.0},  # b is better and cheaper
            {"point": "d", "psnr": 32.0, "tflop": 8.0}, {"point": "e", "psnr": 31.0, "tflop": 2.0},  # ties b
            {"point": "f", "tflop": 0.5}]  # failed: no metric, not on the front
    assert pareto(rows, "psnr", lower_better=False) == {"a", "b", "d", "e"}
    lower = [{**r, "psnr": -r["psnr"]} for r in rows if "psnr" in r]
    assert pareto(lower, "psnr", lower_better=True) == {"a", "b", "d", "e"}


def test_the_sweep_table_has_baseline_rows_and_says_when_no_point_beats_bicubic(tmp_path):
    """Four points ~2 dB below bicubic must not look fine: bicubic gets a row, and a line says so."""
    from awm.config import load, save
    from awm.sweep.report import report_sweep
    from awm.sweep.spec import SweepSpec, points
    from awm.sweep.sweep import SPEC_NAME

    spec = load(SweepSpec, None, ["name=s", "eval.metrics=[psnry]", "search.space={optim.lr_g: [0.001, 0.0005]}"])
    save(spec, tmp_path / SPEC_NAME)
    for k, p in enumerate(points(spec)):
        (tmp_path / "runs" / p.id / "eval").mkdir(parents=True)
        (tmp_path / "runs" / p.id / "eval" / "summary.json").write_text(json.dumps(
            {"metrics": {"psnry": {"lower_better": False}}, "models": {
                "bicubic": {"psnry": {"mean": 30.0}}, "lanczos": {"psnry": {"mean": 30.1}},
                f"runs/{p.id}": {"psnry": {"mean": 28.0 + k / 10}}}}))
    out = report_sweep(tmp_path)
    md = (out / "sweep.md").read_text()
    assert "| bicubic (baseline) |  |  | 30 |" in md and "| lanczos (baseline) |  |  | 30.1 |" in md
    assert "No point beats bicubic on psnry (bicubic 30, best point 28.1)." in md
    assert "No point beats lanczos on psnry" in md
    assert (out / "sweep.csv").read_text().splitlines()[-2].startswith("bicubic (baseline),")
