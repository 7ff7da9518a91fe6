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
    assert "| **6.0000** | 30.0000 |" in md and "| 7.0000 | **31.0000** |" in md


def test_report_rejects_non_run(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="not a run folder"):
        report(ReportConfig(runs=[str(tmp_path)], out=str(tmp_path / "rep")))
