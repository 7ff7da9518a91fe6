"""Export fidelity: PSNR of the ONNX and NCNN files `awm export` makes against torch, per architecture.

Run by hand: ``.venv/bin/python tests/benchmarks/bench_export.py [--archs compact-tiny,span-tiny]``.
Prints one JSON object last.

For each model (the ``-tiny`` variant of every architecture in ``awm/models/onnx.py`` ``PLANS``,
random-init, its last conv rescaled so the output on generated content has mean 0.5 and standard
deviation 0.2 like an image: PSNR has peak 1, and a random SPAN's +-500 output would measure its
scale, not the export; and the demo's trained Compact when ``runs/demo/run`` exists, or ``--demo``)
the release's own code exports and verifies:
``awm.release.export.onnx_file`` (fp32, then fp16) and ``ncnn_pair`` (pnnx, ncnn fp32). The PSNR
(dB, against the fp32 torch output of the same weights) is reported as the minimum over the
release's verification inputs (noise and generated anime content at two sizes, batch 2 where the
batch is dynamic) and, separately, over central crops of the real images of ``../shared/data/real``
(the crop a release verifies when that image is its run's eval LR). Below the floor a release
refuses the file; here the figure is reported with ``passes: false``. A refused architecture or
precision is reported with the exporter's reason. Export time is wall time under whatever load
the machine has; the dB do not depend on load.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import torch
from torch import nn

from awm.imageio import list_images, read_image, to_rgb8
from awm.models import ncnn as nc
from awm.models import onnx as ox
from awm.models.archs import ARCHS, build_model, model_info
from awm.models.checkpoint import load_model, save_checkpoint
from awm.release.export import content_crop, ncnn_pair, onnx_file, spandrel_id

REPO = Path(__file__).resolve().parents[2]
TINY = ("compact-tiny", "rrdb-tiny", "span-tiny", "hat-tiny", "swinir-tiny", "dat-tiny", "grl-tiny")


def image_like(model: nn.Module, multiple: int, minimum: int) -> nn.Module:
    """``model`` in eval mode with its last conv rescaled so the output on generated content has mean
    0.5 and std 0.2. Every architecture here is linear in its last conv's weights (only pixel
    shuffle, the input's upsampled copy and a fixed affine follow it), so the output is
    ``y0 + a * d`` with ``y0`` the output with that conv zeroed: ``a`` sets the std, the bias the mean."""
    model.eval()
    last = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    x = ox.verification_inputs(multiple, minimum, "fixed")[1][1]
    with torch.no_grad():
        y1 = model(x)
        w, b = last.weight.clone(), last.bias.clone()
        last.weight.zero_()
        last.bias.zero_()
        y0 = model(x)
        a = 0.2 / float((y1 - y0).std())
        last.weight.copy_(w * a)
        last.bias.copy_(b * a + 0.5 - float((y0 + a * (y1 - y0)).mean()))
    return model


def _db(x: float) -> float | str:
    """A PSNR for JSON: ``identical`` where the outputs are bit-equal (infinite PSNR)."""
    return round(x, 2) if math.isfinite(x) else "identical"


def _output_std(loaded) -> float:
    """Std of the model's output on generated content (image-like models: ~0.2; PSNR has peak 1)."""
    x = ox.verification_inputs(loaded.size_multiple, loaded.size_min, "fixed")[1][1]
    with torch.no_grad():
        return round(float(loaded.module(x).std()), 3)


def _summary(psnrs: dict[str, float], real: set[str], floor: float, seconds: float) -> dict[str, Any]:
    """Worst dB over the verification inputs and over the real crops, against ``floor``."""
    ver = [v for k, v in psnrs.items() if k not in real]
    rl = [v for k, v in psnrs.items() if k in real]
    worst = min(psnrs.values())
    return {"min_db": _db(min(ver)), "min_db_real": _db(min(rl)) if rl else None, "floor_db": floor,
            "passes": worst >= floor, "seconds": round(seconds, 1), "psnr_db": {k: _db(v) for k, v in psnrs.items()}}


def _real_inputs(real_dir: Path, multiple: int, minimum: int) -> list[tuple[str, torch.Tensor]]:
    return [content_crop(to_rgb8(read_image(p)), multiple, minimum, f"real {p.name}") for p in list_images([real_dir])]


def measure(ckpt: Path, work: Path, real_dir: Path | None, formats: list[str]) -> dict[str, Any]:
    """Export ``ckpt`` in each format through the release's code and report the PSNRs or the refusal."""
    loaded = load_model(ckpt)
    sid = spandrel_id(loaded)
    extra = _real_inputs(real_dir, loaded.size_multiple, loaded.size_min) if real_dir else []
    real = {label for label, _ in extra}
    out: dict[str, Any] = {"model": loaded.arch, "spandrel_arch": sid, "scale": loaded.scale,
                           "params": sum(p.numel() for p in loaded.module.parameters()),
                           "trained": bool(loaded.meta.get("step")), "output_std": _output_std(loaded)}
    for fmt in formats:
        t0 = time.perf_counter()
        try:
            if fmt == "ncnn":
                *_, psnrs = ncnn_pair(loaded, loaded.arch, work, extra)
                floor = nc.FLOOR_DB
            else:
                prec = fmt.removeprefix("onnx_")
                ox.plan_for(sid, prec)
                _, psnrs = onnx_file(loaded, sid, work / f"{loaded.arch}_{prec}.onnx", prec, extra)
                floor = ox.floor_db(prec)
        except (ox.ExportError, ImportError) as e:
            out[fmt] = {"refused": str(e), "seconds": round(time.perf_counter() - t0, 1)}
        else:
            out[fmt] = _summary(psnrs, real, floor, time.perf_counter() - t0)
        print(f"{loaded.arch} {fmt}: {json.dumps({k: v for k, v in out[fmt].items() if k != 'psnr_db'})}",
              file=sys.stderr, flush=True)
    return out


def _version(pkg: str) -> str:
    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--archs", default=",".join(TINY), help=f"comma-separated models (default: {','.join(TINY)})")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--formats", default="onnx_fp32,onnx_fp16,ncnn")
    ap.add_argument("--real", default=str(REPO.parent / "shared" / "data" / "real"),
                    help="folder of real images whose central crops are verified too (skipped when absent)")
    ap.add_argument("--demo", default=str(REPO / "runs" / "demo" / "run"),
                    help="a trained run or checkpoint to add (skipped when absent: `make demo` makes it)")
    args = ap.parse_args()
    archs = [a for a in args.archs.split(",") if a]
    unknown = [a for a in archs if a not in ARCHS]
    if unknown:
        ap.error(f"unknown --archs {', '.join(unknown)}; known: {', '.join(sorted(ARCHS))}")
    formats = [f for f in args.formats.split(",") if f]
    bad = [f for f in formats if f not in ("onnx_fp32", "onnx_fp16", "ncnn")]
    if bad:
        ap.error(f"unknown --formats {', '.join(bad)}; known: onnx_fp32, onnx_fp16, ncnn")
    real_dir = Path(args.real)
    res: dict[str, Any] = {
        "scale": args.scale, "formats": formats, "threads": torch.get_num_threads(),
        "versions": {p: _version(p) for p in ("torch", "onnxscript", "onnxruntime", "onnxslim", "pnnx", "ncnn")},
        "verification_inputs": "noise and generated anime content at two sizes, batch 2 where the batch is dynamic",
        "real": {"dir": str(real_dir), "images": [p.name for p in list_images([real_dir])]} if real_dir.is_dir()
        else {"skipped": f"{real_dir} not found: real-image crops not verified"},
        "models": []}
    if not real_dir.is_dir():
        print(res["real"]["skipped"], file=sys.stderr)
        real_dir = None
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_export_") as tmp:
        work = Path(tmp)
        for arch in archs:
            info = model_info(arch, args.scale)
            net = image_like(build_model(arch, args.scale), info.size_multiple, info.size_min)
            ckpt = save_checkpoint(work / arch, net, arch, {}, args.scale, 0)
            res["models"].append(measure(ckpt, work, real_dir, formats))
        if Path(args.demo).exists():
            res["models"].append({**measure(Path(args.demo), work, real_dir, formats), "source": args.demo})
        else:
            res["demo"] = {"skipped": f"{args.demo} not found: run `make demo` first (or pass --demo)"}
            print(res["demo"]["skipped"], file=sys.stderr)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
