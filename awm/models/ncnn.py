"""NCNN: export through pnnx (TorchScript -> ncnn ``.param``/``.bin``) and verify with ncnn's Python binding.

Like the ONNX files, an NCNN pair is written only after ncnn (CPU, fp32: the fp16/bf16 storage
options off) reproduces the torch output at two input sizes, on noise and generated content,
at PSNR >= :data:`FLOOR_DB`. The weights are stored in float32 (pnnx's default is float16, whose
rounding alone kept a Compact near 70 dB and a SPAN below the floor). Compact, RRDB and SPAN pass;
HAT, SwinIR and DAT convert with operators ncnn has no layer for (``Tensor.fill``, ``masked_fill``,
``torch.eq``: the shifted-window attention masks), refused before ncnn runs them; pnnx fails on
GRL (it writes invalid Python). The figures per architecture: ``tests/benchmarks/bench_export.py``.
pnnx names the graph's input ``in0`` and output ``out0``; the shapes stay dynamic.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from awm.models.onnx import ExportError, exportable, psnr, verification_inputs

FLOOR_DB = 50.0


def export_ncnn(module: nn.Module, out_dir: Path, name: str, example_side: int) -> list[Path]:
    """Write ``NAME.ncnn.param`` and ``NAME.ncnn.bin`` into ``out_dir`` (not yet verified)."""
    import pnnx

    net = exportable(module)
    a = torch.rand(1, 3, example_side, example_side)
    b = torch.rand(1, 3, example_side + example_side // 2, example_side)  # a second shape keeps H, W dynamic
    with tempfile.TemporaryDirectory(prefix="awm-pnnx-") as tmp:
        try:
            pnnx.export(net, str(Path(tmp) / "model.pt"), (a,), (b,), fp16=False)
        except Exception as e:  # noqa: BLE001 - pnnx raises plain errors from its binary; name the cause
            raise ExportError(f"pnnx could not convert the model: {str(e)[:300]}") from e
        made = {s: Path(tmp) / f"model.ncnn.{s}" for s in ("param", "bin")}
        if not all(p.is_file() for p in made.values()):
            raise ExportError(f"pnnx wrote no ncnn files ({', '.join(sorted(p.name for p in Path(tmp).iterdir()))})")
        missing = unsupported_layers(made["param"])
        if missing:
            raise ExportError(f"pnnx left operators ncnn has no layer for: {', '.join(missing)}")
        out = []
        for suffix, p in made.items():
            out.append(out_dir / f"{name}.ncnn.{suffix}")
            shutil.copyfile(p, out[-1])
    return out


def unsupported_layers(param: Path) -> list[str]:
    """Layer types in an ncnn ``.param`` that ncnn does not have: pnnx keeps such ops under their torch
    names (``Tensor.fill``, ``torch.roll``...), and ncnn would fail or crash on them at run time."""
    lines = param.read_text().splitlines()[2:]  # magic number, then layer and blob counts
    return sorted({ln.split()[0] for ln in lines if ln.split() and "." in ln.split()[0]})


def run_ncnn(param: Path, weights: Path, x: torch.Tensor) -> np.ndarray:
    """ncnn's fp32 CPU output for each image of the NCHW batch ``x`` (stacked)."""
    import ncnn

    net = ncnn.Net()
    for opt in ("use_fp16_storage", "use_fp16_arithmetic", "use_fp16_packed", "use_bf16_storage"):
        setattr(net.opt, opt, False)
    if net.load_param(str(param)) != 0 or net.load_model(str(weights)) != 0:
        raise ExportError(f"ncnn cannot load {param.name}/{weights.name}")
    ys = []
    for img in x:
        arr = np.ascontiguousarray(img.numpy(), dtype=np.float32)
        ex = net.create_extractor()
        ex.input("in0", ncnn.Mat(arr).clone())
        _, out = ex.extract("out0")
        ys.append(np.array(out).copy())
    return np.stack(ys)


def verify_ncnn(module: nn.Module, param: Path, weights: Path, multiple: int, minimum: int,
                extra: list[tuple[str, torch.Tensor]] = ()) -> dict[str, float]:
    """PSNR (dB) of ncnn against the fp32 torch module on the ONNX check's inputs (batch 1) plus ``extra``."""
    ref = module.eval().float()
    result = {}
    with torch.inference_mode():
        for label, x in [*verification_inputs(multiple, minimum, "fixed"), *extra]:
            result[label] = round(psnr(ref(x).numpy(), run_ncnn(param, weights, x)), 2)
    return result
