"""Fine-tuning from released layouts, 2 processes: a tiny RRDBNet saved as BasicSR ``params_ema`` and
as APISR's ``model_state_dict`` (trained on BGR); ``awm train model.init=FILE`` validates before the
first update at the PSNR-Y of evaluating FILE directly (its own colour handling, the same images,
crops and PSNR function), then trains on, and a rerun resumes from its state, ignoring the file; a
shape mismatch under init_strict exits 1 naming the keys."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from support import free_port  # noqa: E402
from train_runs import ROOT, env, make_data, tiny, torchrun  # noqa: E402

from awm.data.loader import eval_pairs  # noqa: E402
from awm.eval.psnr_ssim import psnr_ssim_y  # noqa: E402
from awm.imageio import to_tensor  # noqa: E402
from awm.models.archs import build_model  # noqa: E402
from awm.models.checkpoint import basicsr_state_dict, load_model  # noqa: E402

pytestmark = pytest.mark.slow
CROP, IMAGES = 32, 2


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return make_data(tmp_path_factory.mktemp("finetune_data"), [4, 4])


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> dict[str, Path]:
    """One tiny x2 RRDBNet (pixel-unshuffle input) in two released layouts, BasicSR key names."""
    d = tmp_path_factory.mktemp("released")
    torch.manual_seed(7)
    net = build_model("rrdb-tiny", 2)
    for p in net.parameters():
        p.data.normal_(0, 0.02)
    state = basicsr_state_dict(net)
    state["conv_last.bias"] = torch.tensor([0.55, 0.45, 0.3])  # colour-asymmetric: BGR vs RGB matters
    files = {"basicsr": d / "net_g_1000.pth", "apisr": d / "2x_APISR_RRDB_GAN_generator.pth"}
    torch.save({"params_ema": state, "params": {k: torch.zeros_like(v) for k, v in state.items()}}, files["basicsr"])
    torch.save({"model_state_dict": state, "iteration": 1000}, files["apisr"])
    return files


def psnr_of_file(path: Path, data: Path, color_order: str) -> float:
    """Mean PSNR-Y of the file evaluated directly (load_model's colour handling) on validation's crops."""
    m = load_model(path, color_order=color_order)
    values = []
    for _, lr, hr in eval_pairs(data / "eval", 2, 0, 1, IMAGES, CROP, Counter()):
        h, w = lr.shape[0] // m.size_multiple * m.size_multiple, lr.shape[1] // m.size_multiple * m.size_multiple
        with torch.no_grad():
            sr = m.module(to_tensor(lr[:h, :w]))
        values.append(float(psnr_ssim_y(sr, to_tensor(hr[:h * 2, :w * 2]), border=2)[0]))
    assert len(values) == IMAGES
    return sum(values) / len(values)


@pytest.mark.parametrize(("layout", "order"), [("basicsr", "rgb"), ("apisr", "bgr")])
def test_finetune_starts_at_the_files_own_psnr_and_trains_on(data, released, tmp_path, layout, order):
    file = released[layout]
    args = tiny(data, tmp_path, layout, steps=4, gan_start=4, **{
        "model.arch": "null", "model.hparams": "{}", "model.init": file, "validation.at_start": "true",
        "validation.max_images": IMAGES, "validation.crop": CROP, "log.every": 2})
    port = free_port()
    r = subprocess.run(torchrun(port, args), env=env(), capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / layout
    stats = json.loads((run / "train_stats.json").read_text())
    start = stats["validation_at_start"]
    assert stats["status"] == "done" and stats["world_size"] == 2 and stats["step"] == 4
    assert start["images"] == IMAGES
    direct = psnr_of_file(file, data, order)
    assert abs(start["psnr_y"] - direct) < 0.01, (start, direct)
    if order == "bgr":  # the fold matters: the file fed RGB scores differently
        assert abs(psnr_of_file(file, data, "rgb") - direct) > 0.05
    last = load_model(run / "checkpoints" / "last")
    assert (last.arch, last.hparams["num_feat"], last.meta["step"]) == ("rrdb-tiny", 16, 4)
    assert last.meta["config"]["model"]["init_color_order"] == order  # recorded in the run's meta
    assert f"colour order {order})" in r.stderr and "validation at step 0" in r.stderr
    first = load_file(run / "state" / "model.safetensors")
    init = build_model("rrdb-tiny", 2)
    init.load_state_dict(load_model(file, color_order="rgb").module.state_dict())
    changed = [k for k, v in init.state_dict().items() if not torch.equal(first[k], v)]
    assert changed  # training went on from the file's weights
    if layout == "basicsr":  # run again, longer: it resumes from its state and ignores the file
        longer = [a for a in args if not a.startswith(("steps=", "gan_start="))] + ["steps=6", "gan_start=6"]
        again = subprocess.run(torchrun(port, longer), env=env(), capture_output=True, text=True, timeout=600,
                               cwd=ROOT)
        assert again.returncode == 0, again.stderr[-3000:]
        assert f"resumed from {run / 'state'} at step 4" in again.stderr
        assert "ignored: resuming from the run's saved state" in again.stderr
        assert "validation at step 0" not in again.stderr
        resumed = json.loads((run / "train_stats.json").read_text())
        assert resumed["step"] == 6 and resumed["validation_at_start"] == start  # still reported


def test_shape_mismatch_under_init_strict_exits_1_naming_the_keys(data, released, tmp_path):
    args = tiny(data, tmp_path, "mismatch", steps=2, **{"model.arch": "rrdb-tiny", "model.hparams": "{num_feat: 8}",
                                                         "model.init": released["basicsr"]})
    r = subprocess.run([sys.executable, "-m", "awm", "train", *args], env=env(), capture_output=True, text=True,
                       timeout=300, cwd=ROOT)
    assert r.returncode == 1, r.stderr[-3000:]
    assert "shape mismatch conv_first.weight: file [16, 12, 3, 3] vs model [8, 12, 3, 3]" in r.stderr
    assert "model.init_strict=false" in r.stderr
    assert not (tmp_path / "mismatch" / "state").exists()
