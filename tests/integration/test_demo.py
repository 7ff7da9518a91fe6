"""End to end: `awm demo` exactly as shipped, through every real stage (its release included), then a
re-run that reuses them.

The headline is asserted, not only its words: the trained model's PSNR-Y beats bicubic's in the
evaluation's summary.json by the README's margin. That needs the demo's own settings: with fewer
steps or a smaller image set the net is still on its plateau near bicubic (measured: 4 images,
1000 steps: -0.1 dB), so this test costs the demo's ~6-7 CPU-minutes (a few minutes on 2 idle
cores).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from awm.release import openmodeldb

ROOT = Path(__file__).resolve().parents[2]
HEADLINE_DB = 1.0  # README: the model beats bicubic by >= this on the demo's eval split

pytestmark = pytest.mark.slow


def _demo(out: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ACCELERATE_USE_CPU"}
    return subprocess.run([sys.executable, "-m", "awm", "demo", "--out", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=3000)


@pytest.mark.timeout(3600)
def test_demo_beats_bicubic_through_every_stage_then_reuses_them(tmp_path):
    out = tmp_path / "demo"
    first = _demo(out)
    assert first.returncode == 0, first.stderr[-4000:]
    run = str(out / "run")
    models = json.loads((out / "eval" / "summary.json").read_text())["models"]
    assert set(models) == {"bicubic", run}
    assert models[run]["psnry"]["count"] == models["bicubic"]["psnry"]["count"] == 8
    model, bicubic = models[run]["psnry"]["mean"], models["bicubic"]["psnry"]["mean"]
    assert model - bicubic >= HEADLINE_DB, f"model {model:.2f} dB vs bicubic {bicubic:.2f} dB"
    assert f"PSNR-Y on the eval split: model {model:.2f} dB, bicubic {bicubic:.2f} dB" in first.stderr
    report = (out / "report.md").read_text()
    assert "| bicubic |" in report and f"| {run} |" in report and "niqe_anime" in report
    assert len(list((out / "upscaled").glob("*_x2.png"))) == 3
    assert str(out / "report.md") in first.stdout
    release = json.loads((out / "release" / "release.json").read_text())
    name = release["name"]
    assert {f["file"] for f in release["files"]} == {f"{name}.safetensors", f"{name}.onnx"}
    assert min(release["onnx"]["fp32"]["psnr_db"].values()) >= 50
    entry = json.loads((out / "release" / f"{name}.json").read_text())
    assert not openmodeldb.validate(entry, name) and not openmodeldb.check_files(entry, out / "release")
    assert entry["trainingIterations"] == 2000 and entry["trainingBatchSize"] == 16 and entry["datasetSize"] > 0
    card = (out / "release" / "README.md").read_text()
    assert "| bicubic |" in card and f"![LR, bicubic and {name}]({name}_grid.png)" in card
    assert "](release/README.md)" in report and f"](release/{name}.json)" in report
    timings = json.loads((out / "demo_timings.json").read_text())
    train = timings["stages"]["train tiny-cpu (2000 steps, 2 processes)"]
    assert train["cpu_s"] > 0 and train["wall_s"] > 0 and "generate" in timings["stages"]

    second = _demo(out)
    assert second.returncode == 0, second.stderr[-4000:]
    assert second.stderr.count("reusing finished output") == 8  # ingest x2, shard x2, train, eval, upscale, export
    assert json.loads((out / "demo_timings.json").read_text())["stages"] == timings["stages"]


def test_demo_refuses_a_bad_value():
    r = subprocess.run([sys.executable, "-m", "awm", "demo", "n_train=1"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 2 and "n_train" in r.stderr
    r = subprocess.run([sys.executable, "-m", "awm", "demo", "--train-overrides", "steps"], cwd=ROOT,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "train_overrides" in r.stderr
