import json
import math
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from awm.data import degrade, degrade_ops
from awm.data.synth import generate
from awm.errors import ConfigError

HR = generate(5, 96, 72)


@pytest.mark.parametrize("name", list(degrade.PRESETS))
@pytest.mark.parametrize("scale", [2, 3, 4])
def test_lr_is_exactly_hr_over_scale_and_replays_bit_exactly(name, scale):
    preset = degrade.get_preset(name)
    lr, params = degrade.degrade(HR, scale, preset, seed=3, sample_id="img_7")
    assert lr.dtype == np.uint8 and lr.shape == (72 // scale, 96 // scale, 3)
    stored = json.loads(json.dumps(params))  # what the shard keeps
    again = degrade.apply_params(HR, scale, stored)
    assert np.array_equal(again, lr)
    assert degrade.encode_lr(again, stored) == degrade.encode_lr(lr, params)
    assert stored["codec"]["format"] == "jpg" and 1 <= stored["codec"]["quality"] <= 100


def test_hr_not_a_multiple_of_the_scale_is_refused():
    with pytest.raises(ValueError, match="multiple"):
        degrade.degrade(HR[:71], 2, degrade.get_preset("seed"), 0, "a")


def test_seed_preset_numbers_and_codec_overrides():
    p = degrade.get_preset("seed")
    assert (p.resize, p.median_ksize, p.blur_sigma, p.usm_amount, p.lr_format, p.quality) == (
        "area", 3, 0.6, 0.5, "jpg", 85)
    _, params = degrade.degrade(HR, 2, p, 0, "a")
    assert [op["op"] for op in params["ops"]] == ["resize", "median", "blur", "usm"]
    png = degrade.get_preset("seed", lr_format="png")
    lr, params = degrade.degrade(HR, 2, png, 0, "a")
    assert params["codec"] == {"format": "png", "quality": None}
    decoded = cv2.imdecode(np.frombuffer(degrade.encode_lr(lr, params), np.uint8), cv2.IMREAD_COLOR)
    assert np.array_equal(decoded[..., ::-1], lr)  # png storage is lossless
    with pytest.raises(ConfigError):
        degrade.get_preset("nope")
    with pytest.raises(ConfigError, match="median_ksize"):
        degrade.get_preset("seed", median_ksize=4)
    with pytest.raises(ConfigError, match="unknown|known keys"):
        degrade.get_preset("seed", blur_sigmaa=1.0)


def test_random_presets_draw_from_a_per_sample_rng():
    p = degrade.get_preset("realesrgan")
    a = degrade.draw_params(p, (96, 72), 2, 1, "id_a")
    degrade.draw_params(p, (96, 72), 2, 1, "id_b")  # other samples in between change nothing
    assert degrade.draw_params(p, (96, 72), 2, 1, "id_a") == a
    assert degrade.draw_params(p, (96, 72), 2, 1, "id_c") != a
    assert degrade.draw_params(p, (96, 72), 2, 2, "id_a") != a
    assert degrade.draw_params(p, (96, 72), 4, 1, "id_a") != a
    qualities = {degrade.draw_params(p, (96, 72), 2, 1, f"i{k}")["codec"]["quality"] for k in range(20)}
    assert len(qualities) > 5 and all(30 <= q <= 95 for q in qualities)
    # stable across processes with different hash() salts: the RNG comes from SHA-256
    code = ("import json; from awm.data import degrade as d; "
            "print(json.dumps(d.draw_params(d.get_preset('realesrgan'), (96, 72), 2, 1, 'id_a')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert json.loads(out) == json.loads(json.dumps(a))


def test_apisr_draws_codecs_including_intra_video():
    p = degrade.get_preset("apisr")
    ops = [op for k in range(30) for op in degrade.draw_params(p, (96, 72), 2, 0, f"s{k}")["ops"]]
    kinds = {op["op"] for op in ops}
    assert {"jpeg", "webp", "video"} <= kinds
    video = next(op for op in ops if op["op"] == "video")
    assert "skipped" not in video
    out = degrade_ops._video(HR[:, :, :].copy(), video)
    assert out.shape == HR.shape and 0 < np.abs(out.astype(int) - HR).mean() < 20


def test_drawn_params_do_not_depend_on_pyav():
    """The same sample on a machine without PyAV: identical params, and applying them refuses."""
    code = ("import json, sys; sys.modules['av'] = None; from awm.data import degrade as d; p = d.get_preset('apisr'); "
            "print(json.dumps([d.draw_params(p, (96, 72), 2, 0, f's{k}') for k in range(30)]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    p = degrade.get_preset("apisr")
    assert json.loads(out) == json.loads(json.dumps([degrade.draw_params(p, (96, 72), 2, 0, f"s{k}")
                                                     for k in range(30)]))
    code = ("import sys; sys.modules['av'] = None; from awm.data import degrade as d; "
            "d.require_video(d.get_preset('apisr'))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 1 and "awm[video]" in r.stderr
    code = ("import sys; sys.modules['av'] = None; from awm.data import degrade as d; "
            "d.require_video(d.get_preset('apisr', codec1_prob=[0.5, 0.5, 0, 0], video2_prob=0.0))")
    subprocess.run([sys.executable, "-c", code], check=True)


def _line_art(size: int = 128) -> np.ndarray:
    img = np.full((size, size, 3), 235, np.uint8)
    for x in range(16, size - 16, 24):  # 2 px dark lines: 1 px wide after the x2 downsample
        img[8:size - 8, x:x + 2] = 20
    return img


def test_edge_mask_keeps_line_art_out_of_the_median():
    hr = _line_art()
    plain = degrade.get_preset("seed", lr_format="png", blur_sigma=0.0, usm_amount=0.0)
    masked = degrade.get_preset("seed-edgemask", lr_format="png", blur_sigma=0.0, usm_amount=0.0)
    lr_plain, _ = degrade.degrade(hr, 2, plain, 0, "lines")
    lr_masked, params = degrade.degrade(hr, 2, masked, 0, "lines")
    assert params["ops"][1]["edge_mask"] == {"low": 50, "high": 150, "dilate": 1}
    cols = [x // 2 for x in range(16, 112, 24)]  # the downsampled line columns
    assert lr_masked[10:54, cols, 0].max() < 60  # lines kept
    assert lr_plain[10:54, cols, 0].min() > 200  # the plain 3x3 median erases 1 px lines
    # away from edges both presets apply the same median
    flat = np.s_[10:54, 2:6]
    assert np.array_equal(lr_plain[flat], lr_masked[flat])


@pytest.mark.parametrize("fmt", ["jpg", "png", "webp"])
def test_channel_free_chains_run_on_bgr_with_identical_bytes(fmt):
    bgr = np.ascontiguousarray(HR[..., ::-1])
    for name in degrade.PRESETS:
        _, params = degrade.degrade(HR, 2, degrade.get_preset(name, lr_format=fmt), 0, "x")
        assert degrade.channel_free(params) == (name == "seed")
    lr, params = degrade.degrade(HR, 2, degrade.get_preset("seed", lr_format=fmt), 0, "x")
    lr_bgr = degrade.apply_params(bgr, 2, params)
    assert np.array_equal(lr_bgr[..., ::-1], lr)
    assert degrade.encode_lr(lr_bgr, params, bgr=True) == degrade.encode_lr(lr, params)


def test_realesrgan_kernels_generalised_plateau_and_sinc():
    p = degrade.get_preset("realesrgan")
    ops = [op for k in range(200) for op in degrade.draw_params(p, (96, 72), 2, 0, f"k{k}")["ops"]]
    blurs = [op for op in ops if op["op"] == "blur"]
    assert {op.get("kind", "gaussian") for op in blurs} == {"gaussian", "generalized", "plateau", "sinc"}
    for op in blurs[:40]:
        k = degrade_ops.blur_kernel(op)
        assert k.shape == (op["ksize"],) * 2 and abs(float(k.sum()) - 1) < 1e-5 and np.allclose(k, k[::-1, ::-1])
    g = {"op": "blur", "ksize": 9, "sigma_x": 2.0, "sigma_y": 0.8, "theta": 0.4}
    assert np.allclose(degrade_ops.blur_kernel({**g, "kind": "generalized", "beta": 1.0}), degrade_ops.blur_kernel(g))
    sinc = degrade_ops.blur_kernel({"op": "blur", "kind": "sinc", "ksize": 21, "omega": math.pi / 4})
    assert sinc.min() < 0 < sinc[10, 10]  # a low-pass with ringing lobes, unlike any Gaussian
    # J1 against its power series sum_m (-1)^m (x/2)^(2m+1) / (m! (m+1)!)
    x = np.array([0.3, 2.0, 7.5, 15.0])
    series = sum((-1) ** m * (x / 2) ** (2 * m + 1) / (math.factorial(m) * math.factorial(m + 1)) for m in range(60))
    assert np.allclose(degrade_ops._bessel_j1(x), series, atol=1e-10)
    lr, _ = degrade.degrade(HR, 2, p, 0, "k3")
    assert lr.shape == (36, 48, 3)
    with pytest.raises(ConfigError, match="kernel_prob"):
        degrade.get_preset("realesrgan", kernel_prob=[0.5, 0.5, 0.5])
