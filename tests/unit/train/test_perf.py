"""Hardware-speed pieces: FLOP counts against hand arithmetic, the GPU peak table, memory format and
compile settings, and a multi-tensor EMA/optimizer update whose op count ignores the tensor count."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from awm.errors import ConfigError
from awm.models.archs import build_model
from awm.train.components import Components, flops_per_pair, make_optimizer
from awm.train.config import load_config
from awm.train.ema import EMA, EMAConfig
from awm.train.perf import (
    PEAK_TFLOPS,
    channels_last_for,
    count_flops,
    gpu_entry,
    meta_copy,
    peak_tflops,
    precision_key,
)


def rrdb_macs_per_lr_pixel(nf: int = 64, gc: int = 32, blocks: int = 6, scale: int = 4) -> int:
    """RRDBNet multiply-adds per LR pixel, by hand from its layer shapes (3x3 convs throughout)."""
    rdb = 9 * (nf * gc + (nf + gc) * gc + (nf + 2 * gc) * gc + (nf + 3 * gc) * gc + (nf + 4 * gc) * nf)
    body = 9 * 3 * nf + blocks * 3 * rdb + 9 * nf * nf  # conv_first, RRDBs (3 RDBs each), conv_body
    up = 9 * nf * nf * (2 * 2 + 4 * 4)  # conv_up1 at 2x, conv_up2 at 4x (LR pixel = 4 / 16 pixels there)
    head = 9 * nf * nf * scale**2 + 9 * nf * 3 * scale**2  # conv_hr, conv_last at 4x
    return body + up + head


def test_rrdb_6b_x4_forward_flops_match_an_independent_count():
    macs = rrdb_macs_per_lr_pixel() * 64 * 64
    assert macs / 1e9 == pytest.approx(23.37, abs=0.01)  # 5.71 M MAC per LR pixel
    model = meta_copy(build_model("rrdb-6b", 4))
    x = torch.empty(1, 3, 64, 64, device="meta")
    counted = count_flops(lambda: model(x)) / 2  # FLOPs -> multiply-adds
    assert counted == pytest.approx(macs, rel=0.02)


def test_training_flops_per_pair_count_forward_and_backward_once_per_pair():
    generator = build_model("rrdb-tiny", 4)
    params = [p for p in generator.parameters() if p.requires_grad]
    c = Components(None, None, False, generator, generator, params, None, nn.L1Loss())
    per_pair = flops_per_pair(c, patch=64, scale=4, gan=False)
    forward = count_flops(lambda: meta_copy(generator)(torch.empty(1, 3, 16, 16, device="meta")))
    assert 2.8 * forward < per_pair <= 3.0 * forward  # backward ~2x forward (no input grad for the first conv)
    assert all(p.device.type == "cpu" and p.grad is None for p in generator.parameters())  # originals untouched


def test_gpu_peak_table_and_override():
    assert gpu_entry("NVIDIA H100 80GB HBM3") == "H100 SXM"
    assert gpu_entry("NVIDIA H100 PCIe") == "H100 PCIe"
    assert gpu_entry("NVIDIA H200") == "H200"
    assert gpu_entry("NVIDIA A100-SXM4-80GB") == "A100"
    assert gpu_entry("NVIDIA L40S") == "L40S"
    assert gpu_entry("NVIDIA GeForce RTX 4090") == "RTX 4090"
    assert gpu_entry("Tesla T4") is None
    assert PEAK_TFLOPS["H100 SXM"]["bf16"] == pytest.approx(989.4)
    assert precision_key("bf16", tf32=True) == "bf16" and precision_key("no", tf32=True) == "tf32"
    assert precision_key("no", tf32=False) == "fp32"
    cpu = torch.device("cpu")
    assert peak_tflops(cpu, "no", None) is None and peak_tflops(cpu, "no", 2.5) == 2.5


def test_memory_format_and_compile_settings():
    assert channels_last_for("ESRGAN", None) and channels_last_for("Compact", None)
    assert not channels_last_for("HAT", None) and not channels_last_for("DAT", None)
    assert channels_last_for("HAT", True) and not channels_last_for("ESRGAN", False)
    assert load_config("tiny-cpu", ["model.compile=max-autotune-no-cudagraphs"]).model.compile == \
        "max-autotune-no-cudagraphs"
    assert load_config("tiny-cpu", ["model.compile=true"]).model.compile == "default"
    assert load_config("tiny-cpu", ["model.compile=false"]).model.compile == "none"
    with pytest.raises(ConfigError, match="model.compile"):
        load_config("tiny-cpu", ["model.compile=fast"])
    with pytest.raises(ConfigError, match="perf.peak_tflops"):
        load_config("tiny-cpu", ["perf.peak_tflops=-1"])


def _update_ops(num_layers: int) -> int:
    """Top-level operator calls of one skip-aware optimizer step + EMA update, as the trainer makes them."""
    torch.manual_seed(0)
    model = nn.Sequential(*(nn.Conv2d(4, 4, 3) for _ in range(num_layers)))
    params = list(model.parameters())
    opt = make_optimizer(params, 1e-3, (0.9, 0.99), 0.0, torch.device("cpu"), deepspeed=False)
    ema = EMA(model, EMAConfig(decay=0.99))
    found_inf = torch.zeros(())

    def update() -> None:
        opt.found_inf = found_inf
        opt.step()
        ema.update(5, found_inf)

    for p in params:
        p.grad = torch.ones_like(p)
    update()  # optimizer state is created on the first step
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        update()
    return sum(1 for e in prof.events() if e.cpu_parent is None and e.name.startswith("aten::"))


def test_ema_and_optimizer_op_count_does_not_grow_with_the_parameter_count():
    few, many = _update_ops(3), _update_ops(12)  # 6 vs 24 parameter tensors
    assert few == many, (few, many)
    assert few < 20
