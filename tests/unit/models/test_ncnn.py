"""NCNN through pnnx: fp32 weights, verified against torch like the ONNX files; below the floor it is measured, not hidden."""

import pytest
import torch

from awm.models import ncnn as nc
from awm.models.archs import build_model, model_info
from awm.models.checkpoint import save_checkpoint
from awm.models.onnx import ExportError, exportable
from awm.release.export import ExportConfig, export


def _lively(model: torch.nn.Module) -> torch.nn.Module:
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(10)
        last.bias.add_(0.5)
    return model.eval()


def test_compact_rrdb_and_span_export_to_ncnn_with_fp32_weights_and_match_torch_at_two_sizes(tmp_path):
    for arch in ("compact-tiny", "rrdb-tiny", "span-tiny"):
        model, info = _lively(build_model(arch, 2)), model_info(arch, 2)
        param, weights = nc.export_ncnn(model, tmp_path, arch, 32)
        assert (param.name, weights.name) == (f"{arch}.ncnn.param", f"{arch}.ncnn.bin")
        # pnnx stores float16 weights unless told otherwise: 2 bytes a parameter, and a "fp32" check
        # that measured the fp16 rounding (Compact ~70 dB, SPAN ~30 dB: refused)
        params = sum(p.numel() for p in exportable(model).parameters())
        assert weights.stat().st_size >= 4 * params, (arch, weights.stat().st_size, params)
        psnrs = nc.verify_ncnn(model, param, weights, info.size_multiple, info.size_min)
        assert len({k.split()[1] for k in psnrs}) == 2 and min(psnrs.values()) >= nc.FLOOR_DB, (arch, psnrs)


def test_ncnn_output_below_the_floor_is_measured_and_the_release_refuses_it(tmp_path):
    model = _lively(build_model("compact-tiny", 2))
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():  # outputs ~1e7: float32 rounding alone (~1e-7 relative) is ~1 in absolute terms
        last.weight.mul_(1e7)
    param, weights = nc.export_ncnn(model, tmp_path, "big", 32)
    assert min(nc.verify_ncnn(model, param, weights, 1, 1).values()) < nc.FLOOR_DB
    ckpt = save_checkpoint(tmp_path / "big", model, "compact-tiny", {}, 2, 0)
    cfg = ExportConfig(model=str(ckpt), out=str(tmp_path / "rel"), onnx=False, ncnn=True)
    with pytest.raises(ExportError, match="ncnn: output differs from torch"):
        export(cfg)
    assert not (tmp_path / "rel").exists() and not list(tmp_path.glob(".rel.tmp-*"))


def test_operators_ncnn_lacks_are_refused_before_ncnn_runs_them(tmp_path):
    model = build_model("swinir-tiny", 2).eval()
    with pytest.raises(ExportError, match="ncnn has no layer for: .*Tensor.fill"):
        nc.export_ncnn(model, tmp_path, "swinir", 32)
    assert not list(tmp_path.iterdir())
