"""Tiled upscaling: plan geometry, tiled == whole, seamless blending, image kinds, CLI behaviour."""

import json
import tarfile
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from awm import cli
from awm.data import synth
from awm.imageio import encode_image, read_image
from awm.models.archs import build_model
from awm.models.checkpoint import load_model, save_checkpoint
from awm.models.loaded import LoadedModel
from awm.shardwrite import ShardStats, write_index, write_shard
from awm.upscale import tiling
from awm.upscale.infer import upscale_array, upscale_tensor


def _lively(model: torch.nn.Module) -> torch.nn.Module:
    """Freshly initialised nets output ~0 (clipped to black); push the last conv into [0, 1] with detail."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(10)
        last.bias.add_(0.5)
    return model


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> dict[str, Path]:
    """Real checkpoints: an identity-like Compact (zero body: output = nearest upsampling), RRDB, SwinIR."""
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("ckpt")
    nearest = build_model("compact-tiny", 4)
    with torch.no_grad():
        for p in nearest.parameters():
            p.zero_()
    out = {"nearest": save_checkpoint(root / "nearest", nearest, "compact-tiny", {}, 4, 0)}
    out["rrdb"] = save_checkpoint(root / "rrdb", _lively(build_model("rrdb-tiny", 4)), "rrdb-tiny", {}, 4, 0)
    out["swinir"] = save_checkpoint(root / "swinir", _lively(build_model("swinir-tiny", 2)), "swinir-tiny", {}, 2, 0)
    return out


def _nearest(img: np.ndarray, s: int) -> np.ndarray:
    return np.repeat(np.repeat(img, s, axis=0), s, axis=1)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


@pytest.mark.parametrize("length,tile,overlap,mult,minimum", [
    (1080, 512, 32, 1, 1), (1920, 512, 32, 8, 16), (97, 32, 16, 4, 16), (5, 64, 8, 8, 16), (513, 512, 32, 16, 16),
    (300, 40, 100, 1, 1)])
def test_plan_covers_with_aligned_overlapping_tiles(length, tile, overlap, mult, minimum):
    ap = tiling.plan_axis(length, tile, overlap, mult, minimum)
    assert ap.padded >= max(length, minimum) and ap.padded % mult == 0 and ap.padded - length < max(mult, minimum)
    assert ap.tile % mult == 0 and ap.tile >= minimum and (ap.tile <= tile or ap.starts == (0,))
    assert ap.starts[0] == 0 and ap.starts[-1] + ap.tile == ap.padded
    assert all(s % mult == 0 for s in ap.starts)
    for a, b in zip(ap.starts, ap.starts[1:], strict=False):
        assert b - a > 0 and a + ap.tile - b >= min(overlap, ap.tile // 2 // mult * mult)
    weights = tiling.axis_weights(ap, 2)
    total = torch.zeros(ap.padded * 2, dtype=torch.float64)
    for s, w in zip(ap.starts, weights, strict=True):
        total[s * 2:s * 2 + w.numel()] += w
    assert torch.allclose(total, torch.ones_like(total))


def test_plan_fits_tile_to_image_instead_of_wasting_a_tile():
    ap = tiling.plan_axis(1080, 512, 32)
    assert len(ap.starts) == 3 and ap.tile * 3 < 1.1 * (1080 + 2 * 32)


@pytest.mark.parametrize("name", ["rrdb", "swinir"])
def test_tiled_matches_whole_image(ckpts, name):
    model = load_model(ckpts[name])
    img = synth.generate(3, 96, 80)
    tp = tiling.plan(80, 96, model.scale, 32, 16, model.size_multiple, model.size_min)
    assert tp.ntiles >= 9
    whole = upscale_array(model, img, tile=0)
    tiled = upscale_array(model, img, tile=32, tile_pad=16, batch=3)
    assert whole.shape == tiled.shape == (80 * model.scale, 96 * model.scale, 3) and whole.std() > 10
    assert _psnr(whole, tiled) >= 50
    t = upscale_tensor(model, torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255, 32, 16)
    assert _psnr((t[0].permute(1, 2, 0).numpy() * 255).round(), tiled) >= 50


@pytest.mark.parametrize("mult,minimum", [(1, 1), (8, 32)])
def test_blending_is_exact_for_a_pointwise_model(ckpts, mult, minimum):
    """No seams: a per-pixel model gives bit-identical output however the image is tiled and padded."""
    base = load_model(ckpts["nearest"])
    model = LoadedModel(base.module, base.arch, 4, base.hparams, True, True, mult, minimum, 3, "awm")
    img = synth.generate(4, 75, 53)
    for tile, pad, batch in [(24, 8, 4), (16, 0, 1), (40, 16, 2), (0, 0, 1)]:
        out = upscale_array(model, img, tile=tile, tile_pad=pad, batch=batch)
        np.testing.assert_array_equal(out, _nearest(img, 4))


def test_small_images_are_padded_up(ckpts):
    model = load_model(ckpts["swinir"])
    img = synth.generate(5, 7, 5)
    assert model.size_min > 7
    assert upscale_array(model, img, tile=32, tile_pad=8).shape == (10, 14, 3)
    assert upscale_array(load_model(ckpts["nearest"]), img[:1, :1]).shape == (4, 4, 3)


def test_rgba_16bit_gray_keep_kind(ckpts):
    model = load_model(ckpts["nearest"])
    rgb = synth.generate(6, 40, 30)
    rgba = synth.generate(6, 40, 30, alpha=True)
    out = upscale_array(model, rgba, tile=16, tile_pad=8)
    assert out.shape == (120, 160, 4) and out.dtype == np.uint8
    np.testing.assert_array_equal(out[:, :, :3], _nearest(rgba[:, :, :3], 4))
    np.testing.assert_array_equal(out[:, :, 3], cv2.resize(rgba[:, :, 3], (160, 120), interpolation=cv2.INTER_CUBIC))
    deep = rgb.astype(np.uint16) * 257 + np.arange(40, dtype=np.uint16)[None, :, None]
    out16 = upscale_array(model, deep, tile=16, tile_pad=8)
    assert out16.dtype == np.uint16
    np.testing.assert_array_equal(out16, _nearest(deep, 4))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    outg = upscale_array(model, gray, tile=16, tile_pad=8)
    assert outg.shape == (120, 160)
    np.testing.assert_array_equal(outg, _nearest(gray, 4))


def _upscale(*argv) -> int:
    return cli.main(["upscale", *map(str, argv)])


def test_cli_file_kinds_round_trip(ckpts, tmp_path):
    from PIL import Image

    src = tmp_path / "in"
    src.mkdir()
    rgb = synth.generate(7, 24, 16)
    (src / "rgba.png").write_bytes(encode_image(synth.generate(8, 20, 12, alpha=True), "png"))
    (src / "deep.png").write_bytes(encode_image(rgb.astype(np.uint16) * 257, "png"))
    (src / "gray.png").write_bytes(encode_image(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), "png"))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    Image.fromarray(rgb).save(src / "turned.jpg", quality=95, exif=exif)
    assert _upscale("--model", ckpts["nearest"], src, "--out", tmp_path / "out", "--tile", 8, "--tile-pad", 4) == 0
    out = tmp_path / "out"
    assert read_image(out / "rgba_x4.png").shape == (48, 80, 4)
    deep = read_image(out / "deep_x4.png")
    assert deep.dtype == np.uint16
    np.testing.assert_array_equal(deep, _nearest(rgb.astype(np.uint16) * 257, 4))
    assert read_image(out / "gray_x4.png").shape == (64, 96)
    assert read_image(out / "turned_x4.png").shape == (96, 64, 3)
    stats = json.loads((out / "upscale_stats.json").read_text())
    assert stats["ok"] == 4 and stats["failed"] == 0 and stats["output_mp_per_s"] > 0


def test_cli_outscale_and_format(ckpts, tmp_path):
    img = tmp_path / "a.png"
    img.write_bytes(encode_image(synth.generate(9, 30, 20, alpha=True), "png"))
    assert _upscale("--model", ckpts["nearest"], img, "--out", tmp_path, "--outscale", 1.5, "--format", "jpg") == 0
    assert read_image(tmp_path / "a_x1.5.jpg").shape == (30, 45, 3)  # alpha composited: JPEG has none
    assert _upscale("--model", ckpts["nearest"], img, "--out", tmp_path, "--outscale", 6, "--format", "webp") == 0
    assert read_image(tmp_path / "a_x6.webp").shape == (120, 180, 4)


def test_cli_refuses_unsupported_precision(ckpts, tmp_path, capsys):
    img = tmp_path / "a.png"
    img.write_bytes(encode_image(synth.generate(9, 20, 20), "png"))
    assert _upscale("--model", ckpts["swinir"], img, "--out", tmp_path / "o", "--precision", "fp16") == 2
    assert "swinir-tiny does not support fp16" in capsys.readouterr().err
    assert _upscale("--model", ckpts["swinir"], img, "--out", tmp_path / "o", "--precision", "bf16") == 0


def test_cli_bad_inputs_are_reported_and_the_rest_goes_on(ckpts, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    good = encode_image(synth.generate(10, 24, 16), "png")
    (src / "good.png").write_bytes(good)
    (src / "tiny.png").write_bytes(encode_image(synth.generate(10, 1, 1), "png"))
    (src / "text.png").write_bytes(b"not an image at all")
    (src / "cut.png").write_bytes(good[: len(good) // 2])
    bomb = bytearray(good)
    bomb[16:24] = (100_000).to_bytes(4, "big") * 2  # header claims 100000x100000 pixels
    (src / "bomb.png").write_bytes(bytes(bomb))
    (src / "good_x4.png").write_bytes(good)  # would be good.png's output: refused, never overwritten
    out = src
    rc = _upscale("--model", ckpts["nearest"], src, tmp_path / "missing.png", "--out", out, "--tile", 16)
    assert rc == 1
    errors = json.loads((out / "upscale_stats.json").read_text())["errors"]
    assert set(errors) == {str(src / n) for n in ("text.png", "cut.png", "bomb.png", "good.png")} | {
        str(tmp_path / "missing.png")}
    assert errors[str(src / "bomb.png")].startswith("too_many_pixels")
    assert "overwrite an input" in errors[str(src / "good.png")]
    assert (src / "good_x4.png").read_bytes() == good
    assert read_image(src / "tiny_x4.png").shape == (4, 4, 3)
    assert read_image(src / "good_x4_x4.png").shape == (64, 96, 3)


def _pair_shard(folder: Path) -> list[str]:
    samples = []
    for i in range(3):
        hr = synth.generate(20 + i, 32, 24)
        sample = {"__key__": f"s{i}", "hr.png": encode_image(hr, "png"),
                  "lr_x4.png": encode_image(cv2.resize(hr, (8, 6), interpolation=cv2.INTER_AREA), "png"),
                  "json": {"id": f"s{i}", "scales": [4]}}
        if i == 2:
            del sample["lr_x4.png"]
            sample["lr_x2.png"] = encode_image(cv2.resize(hr, (16, 12), interpolation=cv2.INTER_AREA), "png")
        samples.append(sample)
    write_shard(folder / "eval-000000.tar", samples, ShardStats("eval-000000.tar"))
    write_index(folder, "eval-")
    return [s["__key__"] for s in samples]


def test_cli_pair_shards(ckpts, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    _pair_shard(shards)
    assert _upscale("--model", ckpts["nearest"], shards, "--out", tmp_path / "out") == 1
    with tarfile.open(shards / "eval-000000.tar") as tar:
        lr = cv2.imdecode(np.frombuffer(tar.extractfile("s0.lr_x4.png").read(), np.uint8), cv2.IMREAD_COLOR)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "s0_x4.png"),
                                  _nearest(cv2.cvtColor(lr, cv2.COLOR_BGR2RGB), 4))
    assert (tmp_path / "out" / "s1_x4.png").is_file()
    errors = json.loads((tmp_path / "out" / "upscale_stats.json").read_text())["errors"]
    assert errors == {"eval-000000.tar:s2": "no lr_x4 image in sample (LR scales: lr_x2)"}


def test_model_output_size_mismatch_is_an_error(ckpts):
    base = load_model(ckpts["nearest"])
    wrong = LoadedModel(base.module, base.arch, 2, base.hparams, True, True, 1, 1, 3, "awm")
    with pytest.raises(ValueError, match="is the scale"):
        upscale_array(wrong, np.zeros((8, 8, 3), np.uint8))
    with pytest.raises(ValueError, match="expected"):
        upscale_array(base, np.zeros((8, 8, 2), np.uint8))


def test_cli_foreign_pth(tmp_path):
    """A Real-ESRGAN-style .pth (weights under params_ema) upscales with no extra flags."""
    torch.manual_seed(1)
    net = build_model("compact-tiny", 2)
    torch.save({"params_ema": net.state_dict()}, tmp_path / "foreign.pth")
    img = tmp_path / "a.png"
    img.write_bytes(encode_image(synth.generate(11, 20, 12), "png"))
    assert _upscale("--model", tmp_path / "foreign.pth", img, "--out", tmp_path / "o", "--tile", 8) == 0
    assert read_image(tmp_path / "o" / "a_x2.png").shape == (24, 40, 3)


def test_cli_nothing_to_upscale_is_refused_before_anything_is_written(ckpts, tmp_path, capsys):
    """A mistyped path or folders without images: a usage error naming each, and no output folder."""
    empty, texts = tmp_path / "empty", tmp_path / "texts"
    empty.mkdir()
    texts.mkdir()
    (texts / "notes.txt").write_text("no image here")
    (texts / "readme.md").write_text("nor here")
    assert _upscale("--model", ckpts["nearest"], empty, texts, tmp_path / "typo.png", "--out", tmp_path / "o") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "argument INPUT" in err and f"{tmp_path / 'typo.png'}: not found" in err
    assert f"{empty}: no image to upscale (empty folder)" in err
    assert f"{texts}: no image to upscale (2 other file(s): {{'.md': 1, '.txt': 1}})" in err
    assert not (tmp_path / "o").exists()


def test_no_progress_hides_the_tile_bars_too(monkeypatch):
    from awm.upscale import infer

    monkeypatch.delenv("AWM_NO_PROGRESS", raising=False)
    with infer._tile_bar("a.png", 4) as bar:
        assert not bar.disable
    monkeypatch.setenv("AWM_NO_PROGRESS", "1")  # what --no-progress sets
    with infer._tile_bar("a.png", 4) as bar:
        assert bar.disable


def test_cli_shared_stems_get_distinct_outputs_and_reruns_never_read_outputs(ckpts, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    img = synth.generate(3, 24, 16)
    (src / "a.png").write_bytes(encode_image(img, "png"))
    (src / "a.jpg").write_bytes(encode_image(img, "jpg", 95))
    (src / "b.png").write_bytes(encode_image(img, "png"))
    for _ in range(2):  # the rerun into the input folder finds its earlier outputs there
        assert _upscale("--model", ckpts["nearest"], src, "--out", src, "--tile", 16) == 0
        stats = json.loads((src / "upscale_stats.json").read_text())
        assert stats["ok"] == 3 and stats["failed"] == 0
    images = sorted(p.name for p in src.iterdir() if p.suffix in (".png", ".jpg"))
    assert images == ["a.jpg", "a.png", "a_jpg_x4.png", "a_png_x4.png", "b.png", "b_x4.png"]
    for p in src.glob("*_x4.png"):
        p.unlink()
    for _ in range(2):  # an output folder inside the input folder: listed with it, never upscaled again
        assert _upscale("--model", ckpts["nearest"], src, "--out", src / "up", "--tile", 16) == 0
    assert sorted(p.name for p in (src / "up").rglob("*.png")) == ["a_jpg_x4.png", "a_png_x4.png", "b_x4.png"]


def test_raw_shard_samples_are_named_as_originals(tmp_path):
    from awm.upscale.inputs import collect_jobs

    write_shard(tmp_path / "raw-000000.tar", [{"__key__": "k", "png": encode_image(synth.generate(1, 16, 16), "png"),
                                               "json": {"id": "k"}}], ShardStats("raw-000000.tar"))
    write_index(tmp_path, "raw-")
    [job] = collect_jobs([str(tmp_path)], tmp_path / "o", "x4", "png", 4)
    assert job.error == ("no lr_x4 image in sample (LR scales: none; a raw shard's original: upscale the image "
                         "files, or pair shards)")


@pytest.mark.parametrize("name,index", [("cuda:1", 1), (torch.device("cuda", 3), 3)])
def test_a_cuda_device_scopes_the_current_device_to_it(name, index):
    """``--device cuda:1``: everything of an image (streams, events, pinned buffers) runs under
    ``torch.cuda.device(1)``, so nothing lands on GPU 0's stream or opens a context there. Built
    on the CPU without entering it (entering needs a GPU: tests/gpu section upscale_device_scope)."""
    scope = tiling.device_scope(name)
    assert isinstance(scope, torch.cuda.device) and scope.idx == index


def test_a_cpu_device_scopes_nothing(ckpts):
    scope = tiling.device_scope("cpu")
    assert not isinstance(scope, torch.cuda.device)
    with scope:
        out = upscale_array(load_model(ckpts["nearest"]), np.full((6, 5), 77, np.uint8))
    assert np.array_equal(out, np.full((24, 20), 77, np.uint8))
