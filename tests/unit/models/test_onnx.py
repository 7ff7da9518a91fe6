"""ONNX export of every ``-tiny`` architecture: onnxruntime reproduces torch (>= 50 dB fp32) at two input
sizes and, where the plan says so, two batch sizes; refused architectures say why; fp16 meets its floor;
bf16 is refused where onnxruntime has no kernel for it (its CPU provider)."""

import numpy as np
import pytest
import torch

from awm.models import onnx as ox
from awm.models.archs import ARCHS, build_model, model_info

TINY = sorted(a for a in ARCHS if a.endswith("-tiny"))
SLOW = {"hat-tiny", "swinir-tiny", "grl-tiny"}  # transformers: torch.export takes 0.5-2 minutes on 2 cores


def _lively(model: torch.nn.Module) -> torch.nn.Module:
    """Random-init nets output ~0 (an RRDB's clamp-free output too): lift the last conv so outputs vary."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(10)
        last.bias.add_(0.5)
    return model.eval()


@pytest.mark.parametrize("arch", [pytest.param(a, marks=pytest.mark.slow) if a in SLOW else a for a in TINY])
def test_tiny_arch_exports_and_onnxruntime_matches_torch_or_is_refused_with_reason(arch, tmp_path):
    sid, scale = ARCHS[arch].spandrel_id, 2
    plan = ox.PLANS[sid]
    model = _lively(build_model(arch, scale))
    if plan.batch is None:
        with pytest.raises(ox.ExportError, match="cannot be exported") as e:
            ox.plan_for(sid)
        assert plan.reason and plan.reason in str(e.value)
        return
    info = model_info(arch, scale)
    path = tmp_path / f"{arch}.onnx"
    done = ox.export_onnx(model, sid, path, max(32, 2 * info.size_multiple), "fp32", {"scale": scale})
    assert done["batch"] == plan.batch and done["opset"] == ox.OPSET
    psnrs = ox.verify(model, path, info.size_multiple, info.size_min, plan.batch)
    sizes = {k.split()[1].split("x", 1)[1] for k in psnrs}
    batches = {k.split()[1].split("x", 1)[0] for k in psnrs}
    assert len(sizes) == 2 and {"noise", "synth"} == {k.split()[0] for k in psnrs}
    assert batches == ({"1", "2"} if plan.batch == "dynamic" else {"1"})
    assert min(psnrs.values()) >= ox.FP32_FLOOR_DB, psnrs
    loaded = ox.load_onnx(path)
    assert loaded.scale == scale and loaded.source == "onnx"


def test_fp16_meets_its_floor_and_bf16_is_refused_by_the_cpu_runtime(tmp_path):
    model = _lively(build_model("compact-tiny", 2))
    ox.export_onnx(model, "Compact", tmp_path / "m16.onnx", 32, "fp16", {"scale": 2})
    m16 = ox.OnnxModule(ox.session(tmp_path / "m16.onnx"))
    assert m16.np_dtype == np.float16
    psnrs = ox.verify(model, tmp_path / "m16.onnx", 1, 1, "dynamic")
    assert min(psnrs.values()) >= ox.FP16_FLOOR_DB, psnrs
    ox.export_onnx(model, "Compact", tmp_path / "mbf.onnx", 32, "bf16", {"scale": 2})
    with pytest.raises(Exception, match="bfloat16"):
        ox.session(tmp_path / "mbf.onnx")


def test_span_is_exported_with_its_eval_convs_fused_and_unchanged():
    model = _lively(build_model("span-tiny", 2))
    fused = ox.exportable(model)
    x = torch.rand(1, 3, 24, 20)
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-5)
    assert not any(type(m).__name__ == "Conv3XC" for m in fused.modules())
    assert any(type(m).__name__ == "Conv3XC" for m in model.modules())


def test_a_foreign_onnx_without_awm_metadata_gets_its_scale_probed(tmp_path):
    import onnx

    model = _lively(build_model("compact-tiny", 3))
    ox.export_onnx(model, "Compact", tmp_path / "m.onnx", 32, "fp32", {"scale": 3, "arch": "compact-tiny"})
    assert ox.load_onnx(tmp_path / "m.onnx").arch == "compact-tiny"
    proto = onnx.load(str(tmp_path / "m.onnx"))
    del proto.metadata_props[:]
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    loaded = ox.load_onnx(tmp_path / "foreign.onnx")
    assert (loaded.arch, loaded.scale, loaded.size_multiple) == ("onnx", 3, 1)
    x = torch.rand(1, 3, 20, 28)
    with torch.no_grad():
        assert ox.psnr(model(x).numpy(), loaded.module(x).numpy()) >= ox.FP32_FLOOR_DB
