"""The model card's facts: L1-only runs list no GAN-stage loss, the grid shows detail, the dataset is no
local path, validation and eval are set against bicubic."""

from __future__ import annotations

import json

import numpy as np
import yaml

from awm.release import card


def _run(root, steps: int, gan_start: int, validation: dict | None = None):
    run = root / "run"
    (run / "checkpoints" / "best").mkdir(parents=True)
    (run / "config.yaml").write_text(yaml.safe_dump({
        "name": "run", "steps": steps, "gan_start": gan_start, "data": {"train": str(root / "shards"), "patch": 64},
        "loss": {"pixel": {"weight": 1.0}, "gan": {"weight": 0.1}, "perceptual": {"vgg_weight": 0.5}}}))
    (run / "train_stats.json").write_text(json.dumps({"step": steps, "world_size": 2, "validation": validation}))
    return run


def test_an_l1_only_run_lists_no_gan_stage_loss(tmp_path):
    run = _run(tmp_path, 2000, 2000)
    assert card.training_facts(run / "checkpoints" / "best", {"step": 2000}).loss == ["pixel.weight=1"]
    run2 = _run(tmp_path / "b", 2000, 1500)
    assert sorted(card.training_facts(run2 / "checkpoints" / "best", {"step": 2000}).loss) == [
        "gan.weight=0.1", "perceptual.vgg_weight=0.5", "pixel.weight=1"]


def _stat(mean: float) -> dict:
    return {"mean": mean, "ci95": None, "count": 3, "failed": 0}


def test_the_card_sets_validation_and_eval_against_bicubic(tmp_path):
    val = {"psnr_y": 31.5, "bicubic_psnr_y": 30.25, "ssim_y": 0.9, "bicubic_ssim_y": 0.88, "images": 16}
    t = card.training_facts(_run(tmp_path, 100, 100, val) / "checkpoints" / "best", {"step": 100})
    summary = tmp_path / "summary.json"
    summary.write_text(json.dumps({"metrics": {"psnry": {"lower_better": False}, "niqe": {"lower_better": True}},
                                   "models": {"bicubic": {"psnry": _stat(30.0), "niqe": _stat(5.0)},
                                              "runs/run": {"psnry": _stat(29.5), "niqe": _stat(4.0)}}}))
    entry = {"architecture": "compact", "scale": 2, "size": ["32nf"], "license": None}
    text = card.model_card("2x-AWM-run", entry, t, [], card.eval_table(json.loads(summary.read_text())), summary,
                           None, None)
    assert ("PSNR-Y 31.500 dB vs bicubic 30.250 dB (+1.250 dB), SSIM-Y 0.9000 vs bicubic 0.8800; step 100, "
            "16 images") in text
    assert "`runs/run` vs bicubic: psnry -0.5 (worse), niqe -1 (better)." in text


def test_the_openmodeldb_dataset_is_no_local_path(tmp_path):
    t = card.Training(dataset=str(tmp_path / "shards" / "train"), dataset_size=278, preset="seed")
    assert card.dataset_text(t) == "278 anime wallpaper HR/LR pairs (AWM shards, degradation preset seed)"
    remote = card.Training(dataset="https://host/sets/train/index.json", preset="realesrgan")
    assert "from https://host/sets/train/index.json" in card.dataset_text(remote)


def test_the_grid_crop_is_where_the_detail_is():
    """A black wallpaper with line art in one corner: the crop goes there, not to the black centre."""
    img = np.zeros((300, 400, 3), np.uint8)
    img[20:100, 290:390:4] = 255  # stripes in the top right
    y, x = card.detailed_window(img, 128)
    assert y <= 20 and x + 128 >= 390 and x <= 290
