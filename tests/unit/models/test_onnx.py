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


@pytest.mark.parametrize("arch", ["swinir-tiny", "grl-tiny"])
def test_half_precision_is_refused_where_the_model_builds_float32_tables_in_forward(arch):
    sid = ARCHS[arch].spandrel_id
    with pytest.raises(ox.ExportError, match=f"{sid} cannot be exported in fp16: .*float32"):
        ox.plan_for(sid, "fp16")
    model = build_model(arch, 2).eval().half()  # the reason, checked: eager torch fails too
    with pytest.raises(RuntimeError, match="(?i)half|float16|dtype"), torch.no_grad():
        model(torch.rand(1, 3, 32, 32).half())


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


GPU_BUILD = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]  # onnxruntime-gpu's list


@pytest.fixture(scope="module")
def compact_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "m.onnx"
    ox.export_onnx(_lively(build_model("compact-tiny", 2)), "Compact", path, 32, "fp32", {"scale": 2})
    return path


@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_a_cuda_request_on_the_cpu_onnxruntime_fails_saying_how_to_install_the_gpu_build(compact_onnx, device):
    """The installed (CPU) onnxruntime offers no CUDA provider: asking for CUDA must fail in one line
    naming onnxruntime-gpu, never run on the CPU; the CPU still works."""
    import onnxruntime as ort

    from awm.dist import NoGPUError

    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    with pytest.raises(NoGPUError, match=r"pip install onnxruntime-gpu") as err:
        ox.load_onnx(compact_onnx, device)
    assert "\n" not in str(err.value) and "CPUExecutionProvider" in str(err.value)
    cpu = ox.load_onnx(compact_onnx, "cpu")
    assert cpu.meta["providers"] == ["CPUExecutionProvider"] and cpu.scale == 2


def test_gpu_providers_carry_the_ranks_device_id_and_a_tensorrt_engine_cache(tmp_path):
    got = ox.providers("cuda:3", GPU_BUILD, tmp_path / "m.onnx.trt")
    assert [p if isinstance(p, str) else p[0] for p in got] == GPU_BUILD
    trt, cuda = dict(got[0][1]), dict(got[1][1])
    assert trt["device_id"] == 3 and cuda == {"device_id": 3}
    assert trt["trt_engine_cache_enable"] is True and trt["trt_engine_cache_path"] == str(tmp_path / "m.onnx.trt")
    assert ox.providers("cpu", GPU_BUILD) == ["CPUExecutionProvider"]
    assert ox.trt_cache_dir(tmp_path / "m.onnx") == tmp_path / "m.onnx.trt"  # beside a model in a writable folder


def test_a_cuda_session_that_fell_back_to_the_cpu_is_refused():
    """onnxruntime drops a GPU provider whose libraries fail to load and carries on with the CPU."""
    from awm.dist import NoGPUError

    with pytest.raises(NoGPUError, match="CUDA provider did not load"):
        ox.check_providers(["CPUExecutionProvider"], "cuda:0")
    ox.check_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "cuda:0")
    ox.check_providers(["CPUExecutionProvider"], "cpu")
