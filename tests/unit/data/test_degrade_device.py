"""awm.data.degrade_device against the worker path (awm.data.degrade, OpenCV) on the same inputs and params."""

from __future__ import annotations

import math
import sys
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from pairs import make_pair_shards  # noqa: E402

from awm.data import degrade  # noqa: E402
from awm.data.degrade_device import _OPS, degrade_batch, preset_unsupported  # noqa: E402
from awm.data.loader import DataConfig, PairStream, TarReader, resolve_degrade_on, shard_list  # noqa: E402
from awm.data.synth import generate  # noqa: E402
from awm.errors import ConfigError  # noqa: E402
from awm.imageio import decode_image, to_rgb8  # noqa: E402

SMOOTH = generate(11, 96, 72)
TEXTURED = np.clip(generate(12, 96, 72) + np.random.default_rng(0).normal(0, 14, (72, 96, 3)), 0, 255).astype(np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def record(ops: list[dict], scale: int = 1, fmt: str = "png", quality: int | None = None) -> dict:
    return {"preset": "test", "scale": scale, "ops": ops, "codec": {"format": fmt, "quality": quality}}


def worker(hr: np.ndarray, params: dict) -> np.ndarray:
    """The worker path's LR, storage codec included."""
    lr = degrade.apply_params(hr, params["scale"], params)
    return lr if params["codec"]["format"] == "png" else to_rgb8(decode_image(degrade.encode_lr(lr, params)))


def compare(records: list[dict], min_db: float) -> list[float]:
    """Each record on both inputs, all in one device batch: sizes equal, PSNR >= min_db."""
    pairs = [(img, r) for r in records for img in (SMOOTH, TEXTURED)]
    hr = torch.from_numpy(np.stack([img for img, _ in pairs]))
    out = degrade_batch(hr, [r for _, r in pairs], records[0]["scale"]).numpy()
    scores = []
    for got, (img, r) in zip(out, pairs, strict=True):
        want = worker(img, r)
        assert got.shape == want.shape, r
        scores.append(psnr(got, want))
        assert scores[-1] >= min_db, (scores[-1], r["ops"])
    return scores


def test_blur_kernels_match_opencv():
    g = {"op": "blur", "theta": 0.0}
    compare([record([{**g, "ksize": 7, "sigma_x": 1.2, "sigma_y": 1.2}]),
             record([{**g, "ksize": 13, "sigma_x": 2.5, "sigma_y": 0.7, "theta": 0.6}]),
             record([{**g, "ksize": 9, "sigma_x": 1.5, "sigma_y": 1.5, "kind": "generalized", "beta": 0.6}]),
             record([{**g, "ksize": 21, "sigma_x": 3.0, "sigma_y": 1.0, "theta": -2.0, "kind": "generalized",
                      "beta": 3.5}]),
             record([{**g, "ksize": 15, "sigma_x": 2.0, "sigma_y": 0.5, "theta": 1.0, "kind": "plateau", "beta": 1.5}]),
             record([{"op": "blur", "kind": "sinc", "ksize": 21, "omega": 1.1}]),
             record([{"op": "blur", "kind": "sinc", "ksize": 7, "omega": 2.9}])], 45)


@pytest.mark.parametrize("interp", ["area", "bilinear", "bicubic", "lanczos"])
def test_resize_matches_opencv_at_any_size(interp):
    """Shrink by non-integer and integer factors, enlarge, keep, and one axis each way, then to HR/2."""
    targets = [(14, 11), (48, 36), (37, 29), (144, 108), (96, 72), (120, 50), (5, 4)]
    other = {"area": "bicubic", "bilinear": "area", "bicubic": "bilinear", "lanczos": "area"}[interp]
    compare([record([{"op": "resize", "size": list(t), "interp": interp},
                     {"op": "resize", "size": [48, 36], "interp": other}], scale=2) for t in targets], 45)


def test_median_and_unsharp_mask_match_opencv():
    compare([record([{"op": "median", "ksize": 3, "edge_mask": None}]),
             record([{"op": "median", "ksize": 5, "edge_mask": None}]),
             record([{"op": "usm", "amount": 0.5, "sigma": 1.0, "ksize": 5, "threshold": 0}]),
             record([{"op": "usm", "amount": 1.3, "sigma": 2.0, "ksize": 9, "threshold": 10}])], 45)


def test_jpeg_is_bit_exact_with_opencv_420_at_every_quality():
    """The torch JPEG against cv2.imencode + imdecode at equal quality: qualities 30..95 in one
    batch (the two test images), then odd sizes of different shapes in one canvas (each sample pads
    its own edges). A 4:4:4 encoder (torchvision's on CUDA) sits ~25 dB away on the same images."""
    assert compare([record([{"op": "jpeg", "quality": q}]) for q in range(30, 96)], math.inf)
    odd = [generate(20 + k, 37 + 11 * k, 29 + 6 * k) for k in range(3)] + [TEXTURED[:68, :94]]
    hr = torch.zeros(len(odd), 72, 96, 3, dtype=torch.uint8)
    ops = [{"op": "jpeg", "quality": q} for q in (31, 64, 93, 47)]
    for i, img in enumerate(odd):
        hr[i, :img.shape[0], :img.shape[1]] = torch.from_numpy(img)
    y, _ = _OPS["jpeg"](hr.permute(0, 3, 1, 2).float(), [i.shape[:2] for i in odd], ops)
    for img, op, got in zip(odd, ops, y.to(torch.uint8).permute(0, 2, 3, 1).numpy(), strict=True):
        want = worker(img, record([op]))
        np.testing.assert_array_equal(got[:img.shape[0], :img.shape[1]], want)
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
        full = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, op["quality"],
                                          cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444])[1]
        assert psnr(cv2.cvtColor(cv2.imdecode(full, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB), want) < 40


def test_jpeg_keeps_qualities_per_sample():
    """Same image, qualities differ per sample: better quality, closer to the source; each sample
    equals its own single-sample run (no table leaks across the batch). Host syncs are counted on
    CUDA by tests/gpu (sync debug mode)."""
    img = torch.from_numpy(SMOOTH)[None].expand(3, *SMOOTH.shape).contiguous()
    recs = [record([{"op": "jpeg", "quality": q}]) for q in (30, 70, 95)]
    out = degrade_batch(img, recs, 1)
    for i, r in enumerate(recs):
        assert torch.equal(out[i], degrade_batch(img[:1], [r], 1)[0])
    assert psnr(out[0].numpy(), SMOOTH) < psnr(out[1].numpy(), SMOOTH) < psnr(out[2].numpy(), SMOOTH)


def test_seed_preset_is_bit_exact_on_cpu():
    """OpenCV's uint8 Gaussian is fixed point; the device path uses its quantised kernel, so the
    seed chain (area, median, Gaussian, USM, JPEG q85 storage codec as libjpeg-turbo's integer
    maths) matches exactly."""
    png = degrade.draw_params(degrade.get_preset("seed", lr_format="png"), (96, 72), 2, 0, "a")
    assert compare([png], 45) == [math.inf, math.inf]
    jpg = degrade.draw_params(degrade.get_preset("seed", lr_format="jpg"), (96, 72), 2, 0, "a")
    assert compare([jpg], 45) == [math.inf, math.inf]


def test_realesrgan_chain_without_noise_tracks_the_worker_path():
    """Every op of the preset (sinc/plateau/generalised kernels, random resizes, two JPEGs), noise off:
    the whole random chain per sample, batched with different sizes and op lists."""
    p = degrade.get_preset("realesrgan", gaussian_prob=1.0, noise_sigma1=[0.0, 0.0], noise_sigma2=[0.0, 0.0])
    records = [degrade.draw_params(p, (96, 72), 2, 3, f"s{k}") for k in range(12)]
    kinds = {op.get("kind", "gaussian") for r in records for op in r["ops"] if op["op"] == "blur"}
    assert {"gaussian", "sinc"} <= kinds and len({tuple(r["ops"][1]["size"]) for r in records}) > 6
    assert np.mean(compare(records, 30)) >= 35


def test_noise_statistics_gray_and_determinism():
    flat = torch.full((6, 64, 64, 3), 100, dtype=torch.uint8)
    ops = [{"op": "noise", "kind": k, "strength": s, "gray": g, "seed": 7 + i}
           for i, (k, s, g) in enumerate([("gaussian", 10.0, False), ("gaussian", 10.0, True),
                                          ("poisson", 1.0, False), ("poisson", 1.0, True),
                                          ("gaussian", 4.0, False), ("poisson", 0.5, False)])]
    records = [record([op]) for op in ops]
    out = degrade_batch(flat, records, 1)
    assert torch.equal(out, degrade_batch(flat, records, 1))  # deterministic
    assert torch.equal(flat, torch.full_like(flat, 100))  # input untouched
    for got, r in zip(out.numpy().astype(float) - 100, records, strict=True):
        want = worker(flat[0].numpy(), r).astype(float) - 100
        op = r["ops"][0]
        expected = op["strength"] * (1 if op["kind"] == "gaussian" else 10)  # Poisson(100): std 10
        assert abs(got.std() - expected) < 0.1 * expected and abs(want.std() - expected) < 0.1 * expected
        assert abs(got.mean()) < 0.5
        assert (got[..., 0] == got[..., 1]).all() == op["gray"]


@pytest.fixture(scope="module")
def hr_shards(tmp_path_factory) -> Path:
    return make_pair_shards(tmp_path_factory.mktemp("hr") / "hr", [4, 3], size=(96, 64), hr_only=True)


def loader_cfg(d: Path, **kw) -> DataConfig:
    return DataConfig(**{"train": str(d), "scale": 2, "patch": 32, "batch_size": 6, "patches_per_image": 2,
                         "streams": 2, "workers": 0, **kw})


@pytest.mark.parametrize("name", ["realesrgan", "seed"])
def test_both_paths_draw_the_same_params(hr_shards, name):
    """Same seed: same crops, augmentation codes and per-sample params; only where the LR is made differs."""
    streams = {on: PairStream(loader_cfg(hr_shards, degrade=name, degrade_on=on), shard_list(hr_shards), 5, 1)
               for on in ("worker", "device")}
    for i in range(6):
        w, d = (s.make_batch(i, TarReader(), Counter()) for s in streams.values())
        assert "lr" not in d and torch.equal(w["hr"], d["hr"]) and torch.equal(w["aug"], d["aug"])
        assert w["degrade"] == d["degrade"] and len(d["degrade"]) == 6
        lr = degrade_batch(d["hr"], d["degrade"], 2)
        assert lr.shape == w["lr"].shape == (6, 16, 16, 3)
        if name == "seed":  # deterministic preset: the same LR
            assert torch.equal(lr, w["lr"])


def test_presets_without_device_ops_stay_in_workers(hr_shards):
    assert "H.264" in preset_unsupported(degrade.get_preset("apisr"))
    assert "Canny" in preset_unsupported(degrade.get_preset("seed-edgemask"))
    assert preset_unsupported(degrade.get_preset("realesrgan")) is None
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_degrade_on(loader_cfg(hr_shards, degrade="apisr", degrade_on="device"), cuda) == "worker"
    assert resolve_degrade_on(loader_cfg(hr_shards, degrade="seed"), cpu) == "worker"
    assert resolve_degrade_on(loader_cfg(hr_shards, degrade="seed"), cuda) == "device"
    assert resolve_degrade_on(loader_cfg(hr_shards, degrade="seed", degrade_on="device"), cpu) == "device"
    params = degrade.draw_params(degrade.get_preset("apisr"), (96, 72), 2, 0, "v")
    params["ops"].append({"op": "video", "codec": "h264", "crf": 23, "preset": "fast"})
    with pytest.raises(ValueError, match="no device implementation"):
        degrade_batch(torch.from_numpy(SMOOTH[None]), [params], 2)
    with pytest.raises(ConfigError, match="data.degrade_on"):
        loader_cfg(hr_shards, degrade_on="gpu")


class _Ops(TorchDispatchMode):
    """Every aten op run inside, with its output's dtype."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, torch.dtype | None]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops.append((str(func), getattr(out, "dtype", None)))
        return out


def test_jpeg_stays_in_int32_and_builds_its_tables_once_per_device():
    """libjpeg's integer pipeline is int32 by design: the 2x2 chroma sums were promoted to int64 by
    sum() (twice the memory and time of every later chroma op). The IJG base tables were a tensor
    made from Python lists at every call (on a GPU a copy from pageable memory each step); now one
    per device, so a JPEG round trip creates host tensors only for its per-sample qualities and sizes."""
    from awm.data.degrade_device import _quant_tables

    x = torch.from_numpy(np.stack([SMOOTH, TEXTURED])).permute(0, 3, 1, 2).float()
    ops = [{"op": "jpeg", "quality": q} for q in (40, 90)]
    _OPS["jpeg"](x, [(72, 96)] * 2, ops)  # first call: the tables are built
    with _Ops() as seen:
        _OPS["jpeg"](x, [(72, 96)] * 2, ops)
    sums = [dtype for name, dtype in seen.ops if name.startswith("aten.sum")]
    assert sums and all(d == torch.int32 for d in sums), sums
    assert sum(name == "aten.lift_fresh.default" for name, _ in seen.ops) == 3  # qualities, heights, widths
    quality = torch.tensor([50], dtype=torch.int32)
    with _Ops() as seen:
        tables = _quant_tables(quality)
    assert not any(name == "aten.lift_fresh.default" for name, _ in seen.ops)
    assert tables.dtype == torch.int32 and int(tables[0, 0, 0, 0]) == 16 and int(tables[0, 1, 0, 0]) == 17
