"""The README's flow: `awm eval --models runs/t1 --out results/x2`, then `awm export runs/t1` quotes that
evaluation; found through the run's evals.json also from another cwd and after the run folder was
copied with its results or moved without them (report and export read it through one function)."""

import json
import shutil
from pathlib import Path

import numpy as np

from awm import cli
from awm.eval import results
from awm.eval.evaluate import EVALS_FILE, link_runs, run_evals
from awm.imageio import encode_image
from awm.models.archs import build_model
from awm.models.checkpoint import save_checkpoint
from awm.release import card


def _layout(root: Path) -> tuple[Path, Path]:
    """runs/t1 (a checkpoint, config.yaml) and results/x2/summary.json evaluating it as "runs/t1"."""
    run = root / "runs" / "t1"
    save_checkpoint(run / "checkpoints" / "last", build_model("compact-tiny", 2), "compact-tiny", {}, 2, 3)
    (run / "config.yaml").write_text("name: t1\n")
    out = root / "results" / "x2"
    out.mkdir(parents=True)
    doc = {"metrics": {"psnry": {"lower_better": False}}, "data": "shards/eval", "scale": 2,
           "model_paths": {"runs/t1": str(run.resolve())},
           "models": {"bicubic": {"psnry": results.stats([27.5])}, "runs/t1": {"psnry": results.stats([28.25])}}}
    (out / "summary.json").write_text(json.dumps(doc))
    return run, out / "summary.json"


def _quoted(run: Path) -> float:
    found = run_evals(run)
    assert found is not None
    doc, model, path = found
    assert card.eval_summary(None, run) == (doc, path)  # what export quotes is what report reads
    return doc["models"][model]["psnry"]["mean"]


def test_evals_written_elsewhere_are_found_by_report_and_export(tmp_path, monkeypatch, capsys):
    (tmp_path / "w").mkdir()
    monkeypatch.chdir(tmp_path / "w")
    run, summary = _layout(tmp_path / "w")
    link_runs({"runs/t1": "runs/t1"}, Path("results/x2/summary.json"))  # relative paths, as the README runs it
    note = json.loads((run / EVALS_FILE).read_text())["summaries"][0]
    assert note["summary"] == "../../results/x2/summary.json" and Path(note["absolute"]).is_absolute()
    assert _quoted(Path("runs/t1")) == 28.25
    monkeypatch.chdir(tmp_path)  # another cwd
    assert _quoted(run) == 28.25

    lr = tmp_path / "lr.png"
    lr.write_bytes(encode_image(np.full((24, 24, 3), 100, np.uint8), "png"))
    assert cli.main(["export", str(run), "--out", str(tmp_path / "rel"), "--no-onnx", "--grid-image", str(lr)]) == 0
    assert json.loads((tmp_path / "rel" / "release.json").read_text())["eval_summary"] == str(summary.resolve())
    assert "28.25" in (tmp_path / "rel" / "README.md").read_text()
    capsys.readouterr()

    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "w", copy)  # the run and its results copied together
    moved = tmp_path / "elsewhere" / "t1"  # the run moved alone: its note's absolute path still holds
    moved.parent.mkdir()
    shutil.move(run, moved)
    assert run_evals(moved)[2] == summary.resolve() and _quoted(moved) == 28.25
    shutil.rmtree(tmp_path / "w")  # the copy's note is relative: it finds the copied results
    assert run_evals(copy / "runs" / "t1")[2] == (copy / "results" / "x2" / "summary.json").resolve()
