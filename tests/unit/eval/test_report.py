"""awm report: one row per run from config.yaml, checkpoint meta, train stats and eval summaries."""

from __future__ import annotations

import json

import pytest
import yaml

from awm.eval.report import ReportConfig, report


def _run(root, name: str, arch: str, steps: int, psnr: float, niqe: float):
    run = root / name
    (run / "checkpoints" / "last").mkdir(parents=True)
    (run / "eval").mkdir()
    data = root / "shards"
    data.mkdir(exist_ok=True)
    (data / "index.json").write_text(json.dumps({"nsamples": 434, "preset": "seed"}))
    cfg = {"name": name, "data": {"train": str(data), "scale": 2, "degrade": None},
           "model": {"arch": arch}, "loss": {"pixel": {"weight": 1.0}, "gan": {"weight": 0.0}}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "checkpoints" / "last" / "meta.json").write_text(json.dumps({"arch": arch, "scale": 2, "step": steps}))
    (run / "train_stats.json").write_text(json.dumps({"status": "done"}))
    summary = {"metrics": {"psnry": {"lower_better": False}, "niqe": {"lower_better": True}},
               "data": "evalset", "models": {
                   "bicubic": {"psnry": {"mean": 1.0}, "niqe": {"mean": 1.0}},
                   str(run): {"psnry": {"mean": psnr}, "niqe": {"mean": niqe}}}}
    (run / "eval" / "summary.json").write_text(json.dumps(summary))
    return run


def test_report_table(tmp_path) -> None:
    a = _run(tmp_path, "a", "compact", 100, 30.0, 6.0)
    b = _run(tmp_path, "b", "rrdb-6b", 200, 31.0, 7.0)
    out = report(ReportConfig(runs=[str(a), str(b)], out=str(tmp_path / "rep")))
    csv = (out / "report.csv").read_text().splitlines()
    assert csv[0] == "run,arch,preset,scale,data_size,steps,loss,status,eval_data,niqe,psnry"
    assert csv[1] == "a,compact,seed,2,434,100,pixel.weight=1,done,evalset,6.0,30.0"
    md = (out / "report.md").read_text()
    assert "niqe ↓" in md and "psnry ↑" in md
    assert "| 6.0000 | 30.0000 |" in md and "| 7.0000 | **31.0000** |" in md
    # bicubic's niqe (1.0) beats both runs: its cell is the bold one, and the report says so
    assert "| bicubic (baseline) | bicubic |" in md and "| **1.0000** | 1.0000 |" in md
    assert "No run beats bicubic on niqe." in md and "on psnry" not in md


def test_report_rejects_non_run(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        report(ReportConfig(runs=[str(tmp_path)], out=str(tmp_path / "rep")))


def test_report_finds_evals_written_elsewhere_and_shows_baseline_rows(tmp_path, monkeypatch) -> None:
    from awm.eval.evaluate import link_runs

    monkeypatch.chdir(tmp_path)
    run = _run(tmp_path, "c", "compact", 50, 27.0, 6.0)
    for p in (run / "eval").iterdir():
        p.unlink()
    (run / "eval").rmdir()
    (run / "checkpoints").mkdir(exist_ok=True)
    results = tmp_path / "results" / "x2"  # where the README's `awm eval ... --out results/x2` writes
    results.mkdir(parents=True)
    summary = {"metrics": {"psnry": {"lower_better": False}}, "data": "shards/eval", "scale": 2,
               "model_paths": {"runs/c": str(run.resolve()), "other.pth": str(tmp_path / "other.pth")},
               "models": {"bicubic": {"psnry": {"mean": 27.5}}, "lanczos": {"psnry": {"mean": 27.6}},
                          "other.pth": {"psnry": {"mean": 99.0}}, "runs/c": {"psnry": {"mean": 27.0}}}}
    (results / "summary.json").write_text(json.dumps(summary))
    link_runs({"runs/c": str(run / "checkpoints" / "best"), "other.pth": str(tmp_path / "other.pth")},
              results / "summary.json")
    assert json.loads((run / "evals.json").read_text()) == {"summaries": [{
        "summary": "../results/x2/summary.json", "absolute": str((results / "summary.json").resolve()),
        "model": "runs/c"}]}
    out = report(ReportConfig(runs=[str(run)], out=str(tmp_path / "rep")))
    csv = (out / "report.csv").read_text().splitlines()
    assert csv[1:] == ["c,compact,seed,2,434,50,pixel.weight=1,done,shards/eval,27.0",
                       "bicubic (baseline),bicubic,,2,,,,,shards/eval,27.5",
                       "lanczos (baseline),lanczos,,2,,,,,shards/eval,27.6"]
    md = (out / "report.md").read_text()
    assert "the best row per column in bold, baselines included" in md
    # lanczos beats the run: its figure is the bold one, and the report says no run beats it
    assert "| c | compact |" in md and "| 27.0000 |" in md and "| **27.6000** |" in md
    assert "No run beats lanczos on psnry." in md


def test_report_without_evals_says_how_to_get_them(tmp_path) -> None:
    run = _run(tmp_path, "d", "compact", 50, 27.0, 6.0)
    (run / "eval" / "summary.json").unlink()
    md = (report(ReportConfig(runs=[str(run)], out=str(tmp_path / "rep"))) / "report.md").read_text()
    assert "bold" not in md and "No evaluation found for these runs" in md


def test_the_loss_column_lists_gan_stage_terms_only_for_runs_that_reached_the_gan_stage(tmp_path) -> None:
    runs = []
    for name, steps in (("l1only", 100), ("gan", 300)):
        run = _run(tmp_path, name, "compact", steps, 30.0, 6.0)
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        cfg.update(gan_start=100, loss={"pixel": {"weight": 1.0}, "gan": {"weight": 0.1},
                                        "perceptual": {"vgg_weight": 0.5}, "ldl": {"weight": 0.2}})
        (run / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(str(run))
    rows = (report(ReportConfig(runs=runs, out=str(tmp_path / "rep"))) / "report.csv").read_text().splitlines()
    assert rows[1].split(",")[6] == "ldl.weight=0.2 pixel.weight=1"  # stopped at gan_start: the GAN stage never ran
    assert rows[2].split(",")[6] == "gan.weight=0.1 ldl.weight=0.2 perceptual.vgg_weight=0.5 pixel.weight=1"
