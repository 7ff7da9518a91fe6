"""`awm export` on a tiny trained run (20 steps, evaluated): the release (ONNX fp32/fp16, .pth, NCNN) is
complete and verified, its OpenModelDB entry validates and matches the files, and `awm upscale` gives
the same image from the release's .onnx (onnxruntime) as from its .safetensors (torch): tiled, several
tiles, RGBA, 16-bit."""

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
from safetensors import safe_open
from train_runs import ROOT, env, make_data, tiny

from awm import cli
from awm.data import synth
from awm.imageio import encode_image
from awm.models import onnx as ox
from awm.models.archs import build_model
from awm.models.checkpoint import load_model, save_checkpoint
from awm.release import openmodeldb
from awm.upscale import tiling

pytestmark = pytest.mark.slow


def _awm(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "awm", *map(str, args)], cwd=ROOT, env=env(), capture_output=True,
                          text=True, timeout=900)


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """A 20-step tiny-cpu run, evaluated against bicubic, exported with fp16 and .pth."""
    root = tmp_path_factory.mktemp("export")
    data = make_data(root / "data", [4])
    r = _awm("train", *tiny(data, root / "runs", "tiny", steps=20, **{"data.workers": 0}))
    assert r.returncode == 0, r.stderr[-3000:]
    run = root / "runs" / "tiny"
    r = _awm("eval", "--data", data / "eval", "--scale", "2", "--models", f"bicubic,{run}", "--metrics", "psnry",
             "--out", run / "eval")
    assert r.returncode == 0, r.stderr[-3000:]
    r = _awm("export", run, "--out", root / "release", "--fp16", "--pth", "--ncnn", "--author", "awm-tests")
    assert r.returncode == 0, r.stderr[-3000:]
    return root / "release", run, json.loads(r.stdout.strip().splitlines()[-1])


def test_release_is_complete_verified_and_its_openmodeldb_entry_validates(release):
    out, run, printed = release
    name = "2x-AWM-tiny-Compact"
    assert printed["release"] == str(out)
    assert set(printed["files"]) == {f"{name}{s}" for s in (".safetensors", ".pth", ".onnx", "_fp16.onnx", ".json",
                                                              "_grid.png", "_LR.png", "_SR.png", ".ncnn.param", ".ncnn.bin")} | {
        "README.md", "release.json", "train_config.yaml"}
    entry = json.loads((out / f"{name}.json").read_text())
    assert openmodeldb.validate(entry, name) == [] and openmodeldb.check_files(entry, out) == []
    assert [r["type"] for r in entry["resources"]] == ["safetensors", "pth", "onnx", "onnx"]
    assert (entry["architecture"], entry["scale"], entry["size"]) == ("compact", 2, ["num_conv: 4", "num_feat: 16"])
    assert (entry["trainingIterations"], entry["trainingBatchSize"], entry["trainingHRSize"]) == (20, 4, 32)
    assert entry["trainingOTF"] is False and entry["datasetSize"] == 4 and entry["author"] == "awm-tests"
    meta = json.loads((run / "checkpoints" / "last" / "meta.json").read_text())
    with safe_open(str(out / f"{name}.safetensors"), "pt") as f:
        header = f.metadata()
    assert header["awm_arch"] == "compact" and header["awm_scale"] == "2" and header["awm_color_order"] == "RGB"
    assert header["awm_config_digest"] == meta["config_digest"] and header["awm_version"]
    assert load_model(out / f"{name}.pth").source == "realesrgan"  # params_ema, read back through spandrel
    onnx = json.loads((out / "release.json").read_text())["onnx"]
    assert min(onnx["fp32"]["psnr_db"].values()) >= ox.FP32_FLOOR_DB
    assert min(onnx["fp16"]["psnr_db"].values()) >= ox.FP16_FLOOR_DB
    assert min(json.loads((out / "release.json").read_text())["ncnn"]["psnr_db"].values()) >= 50
    card = (out / "README.md").read_text()
    assert "| steps | 20 (L1 only) |" in card and "train_config.yaml" in card and "| HR patch | 32 px |" in card and "(4 pairs)" in card
    assert "| bicubic |" in card and f"| {run} |" in card and f"({name}_grid.png)" in card
    assert "Trained from scratch; released under CC-BY-4.0." in card


def _upscale(model: Path, src: Path, out: Path) -> np.ndarray:
    assert cli.main(["upscale", "--model", str(model), str(src), "--out", str(out), "--tile", "48",
                     "--tile-pad", "8"]) == 0
    stats = json.loads((out / "upscale_stats.json").read_text())
    assert stats["ok"] == 1
    return cv2.imread(str(next(out.glob("*_x2.png"))), cv2.IMREAD_UNCHANGED)


@pytest.mark.parametrize("bits", [8, 16])
def test_upscale_from_onnx_equals_upscale_from_safetensors(release, tmp_path, bits):
    out, _, _ = release
    rgba = synth.generate(7, 150, 110, alpha=True)
    if bits == 16:
        rgba = rgba.astype(np.uint16) * 257
    src = tmp_path / "in.png"
    src.write_bytes(encode_image(rgba, "png"))
    name = "2x-AWM-tiny-Compact"
    assert tiling.plan(110, 150, 2, 48, 8).ntiles >= 6
    a = _upscale(out / f"{name}.onnx", src, tmp_path / "onnx")
    b = _upscale(out / f"{name}.safetensors", src, tmp_path / "torch")
    assert a.shape == b.shape == (220, 300, 4) and a.dtype == b.dtype == rgba.dtype
    peak = float(np.iinfo(a.dtype).max)
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    assert mse == 0 or 10 * np.log10(peak ** 2 / mse) >= 45
    assert np.array_equal(a[:, :, 3], b[:, :, 3])
    assert json.loads((tmp_path / "onnx" / "upscale_stats.json").read_text())["arch"] == "compact"


def test_refused_architecture_names_the_reason_and_no_onnx_releases_the_rest(tmp_path):
    ckpt = save_checkpoint(tmp_path / "dat", build_model("dat-tiny", 2), "dat-tiny", {}, 2, 0)
    r = _awm("export", ckpt, "--out", tmp_path / "rel")
    assert r.returncode == 1 and ox.PLANS["DAT"].reason in r.stderr and "--no-onnx" in r.stderr
    assert not (tmp_path / "rel").exists()
    assert cli.main(["export", str(ckpt), "--out", str(tmp_path / "rel"), "--no-onnx"]) == 0
    entry = json.loads((tmp_path / "rel" / "2x-AWM-dat-DAT.json").read_text())
    assert [r["type"] for r in entry["resources"]] == ["safetensors"] and entry["architecture"] == "dat"
    assert openmodeldb.validate(entry, "2x-AWM-dat-DAT") == []
    assert "trainingIterations" in entry and "dataset" not in entry
    assert not (tmp_path / "rel" / "train_config.yaml").exists()
