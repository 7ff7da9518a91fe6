"""Benchmark ``awm upscale``: throughput whole vs tiled, and peak memory vs image size.

Run by hand: ``OMP_NUM_THREADS=1 .venv/bin/python tests/benchmarks/bench_upscale.py``. Prints one
JSON object last.

* Throughput: megapixels (input) per second of ``upscale_array`` on one image that fits whole,
  whole-image vs tiled at the default tile/pad, same model and process, interleaved runs, medians.
  Both paths are warmed up once at full size first (allocator, oneDNN/cuDNN kernel choice).
* ONNX (``--parts onnx``): the same throughput run with the model exported by ``awm export``'s
  exporter and run by onnxruntime's CPU provider (``awm upscale --model NAME.onnx``), at the same
  thread count as torch (the session takes ``torch.get_num_threads()`` intra-op threads), same tiles,
  runs interleaved (order alternating), wall and CPU time (``time.process_time``) per run; the
  speed-ups are medians of the per-pair ratios.
* Memory: peak RSS of the real command (``awm upscale --tile 256``) with the ``compact-tiny`` x4
  model (named with its parameter count in the JSON: the figures measure the canvas and tile
  buffers, not a big model's weights) on 1080p, 4K and 8K inputs minus the same command on a
  64x64 input, against the acceptance bound 8 x (output pixels x 3 bytes) + 512 MB.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch

from awm.data import synth
from awm.imageio import encode_image
from awm.models.archs import ARCHS, build_model
from awm.models.checkpoint import load_model, save_checkpoint
from awm.models.onnx import export_onnx
from awm.upscale import tiling
from awm.upscale.infer import upscale_array

SIZES = {"64px": (64, 64), "1080p": (1920, 1080), "4k": (3840, 2160), "8k": (7680, 4320)}


def _lively(model: torch.nn.Module) -> torch.nn.Module:
    """Random-init nets output ~0; lift the last conv so outputs have detail (PNG sizes like real images)."""
    last = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)][-1]
    with torch.no_grad():
        last.weight.mul_(10)
        last.bias.add_(0.5)
    return model


def _image(width: int, height: int) -> np.ndarray:
    small = synth.generate(0, min(width, 960), min(height, 540))
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)


def throughput(ckpt: Path, width: int, height: int, repeats: int, tile: int, pad: int, device: str = "cpu",
               precision: str = "fp32", batch: int = 1) -> dict:
    model = load_model(ckpt, device)
    img = _image(width, height)
    tp = tiling.plan(height, width, model.scale, tile, pad, model.size_multiple, model.size_min)
    kw = {"tile_pad": pad, "precision": precision, "device": device, "batch": batch}
    for t in (0, tile):  # warm up both paths at full size
        upscale_array(model, img, tile=t, **kw)
    runs: dict[str, list[float]] = {"whole": [], "tiled": []}
    for _ in range(repeats):
        for name, t in (("whole", 0), ("tiled", tile)):
            t0 = time.perf_counter()
            upscale_array(model, img, tile=t, **kw)
            runs[name].append(time.perf_counter() - t0)
    mp = width * height / 1e6
    whole, tiled = statistics.median(runs["whole"]), statistics.median(runs["tiled"])
    return {"model": model.arch, "scale": model.scale, "device": device, "precision": precision, "batch": batch,
            "input": f"{width}x{height}", "tile": tile,
            "tile_pad": pad, "tiles": tp.ntiles, "tile_size": [tp.y.tile, tp.x.tile],
            "input_pixel_overhead": round(tp.ntiles * tp.y.tile * tp.x.tile / (width * height) - 1, 4),
            "whole_s": round(whole, 3), "tiled_s": round(tiled, 3), "whole_mp_s": round(mp / whole, 4),
            "tiled_mp_s": round(mp / tiled, 4), "tiled_time_overhead": round(tiled / whole - 1, 4)}


def onnx_vs_torch(paths: dict[str, Path], width: int, height: int, repeats: int, tile: int, pad: int) -> dict:
    """Tiled throughput of the same model in torch and onnxruntime, runs interleaved (order
    alternating), wall and CPU time (this process: both run here, at the same thread count)."""
    models = {name: load_model(p, "cpu") for name, p in paths.items()}
    img = _image(width, height)
    for m in models.values():
        upscale_array(m, img, tile=tile, tile_pad=pad)
    runs: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in models}
    names = list(models)
    for r in range(repeats):
        for name in names if r % 2 == 0 else names[::-1]:
            w0, c0 = time.perf_counter(), time.process_time()
            upscale_array(models[name], img, tile=tile, tile_pad=pad)
            runs[name]["cpu"].append(time.process_time() - c0)
            runs[name]["wall"].append(time.perf_counter() - w0)
    t, o = runs["torch"], runs["onnxruntime"]
    return {"input": f"{width}x{height}", "tile": tile, "rounds": repeats, "threads": torch.get_num_threads(),
            "wall_s_torch": statistics.median(t["wall"]), "wall_s_onnx": statistics.median(o["wall"]),
            "cpu_s_torch": statistics.median(t["cpu"]), "cpu_s_onnx": statistics.median(o["cpu"]),
            "cpu_speedup": statistics.median(a / b for a, b in zip(t["cpu"], o["cpu"], strict=True)),
            "wall_speedup": statistics.median(a / b for a, b in zip(t["wall"], o["wall"], strict=True))}


# Runs the command and prints its peak RSS. A fresh small process does the fork: a child's peak RSS
# starts at its parent's RSS at fork time, and this benchmark's own process is large by then.
_LAUNCHER = """
import os, subprocess, sys
p = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL)
_, status, usage = os.wait4(p.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def peak_rss(ckpt: Path, src: Path, out: Path, tile: int) -> tuple[float, float]:
    """Peak RSS (MB) and wall time of one ``awm upscale`` process."""
    cmd = [sys.executable, "-m", "awm", "upscale", "--model", str(ckpt), str(src), "--out", str(out),
           "--tile", str(tile), "--max-pixels", "100000000"]
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LAUNCHER, *cmd], capture_output=True, text=True)
    secs = time.perf_counter() - t0
    rc, maxrss_kb = map(int, proc.stdout.split())
    if rc != 0:
        raise RuntimeError(f"awm upscale failed ({rc}): {proc.stderr[-2000:]}")
    return maxrss_kb / 1024, secs


def memory(ckpt: Path, work: Path, sizes: list[str], tile: int, scale: int, model: dict) -> dict:
    """Peak RSS over the 64x64 baseline per size; the first size also whole-image, for contrast."""
    result: dict = {"model": model, "tile": tile, "scale": scale}
    base = None
    runs = [("64px", tile), *((n, tile) for n in sizes), *((f"{n}_whole", 0) for n in sizes[:1])]
    for label, t in runs:
        name = label.removesuffix("_whole")
        w, h = SIZES[name]
        src = work / f"{name}.png"
        if not src.exists():
            src.write_bytes(encode_image(_image(w, h), "png"))
        rss, secs = peak_rss(ckpt, src, work / "out", t)
        (work / "out" / f"{name}_x{scale}.png").unlink()
        if base is None:
            base = rss
            result["baseline_64px_peak_mb"] = round(rss, 1)
            continue
        out_bytes_mb = w * h * scale * scale * 3 / 2 ** 20
        bound = 8 * out_bytes_mb + 512
        result[label] = {"tile": t, "peak_mb": round(rss, 1), "delta_mb": round(rss - base, 1),
                         "output_8bit_mb": round(out_bytes_mb, 1), "bound_mb": round(bound, 1),
                         "delta_over_output": round((rss - base) / out_bytes_mb, 3),
                         "within_bound": rss - base <= bound, "seconds": round(secs, 1),
                         "output_mp_s": round(w * h * scale * scale / 1e6 / secs, 3)}
        print(f"{label}: peak {rss:.0f} MB, delta {rss - base:.0f} MB, bound {bound:.0f} MB, {secs:.1f} s",
              file=sys.stderr)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", default="compact", help="model for the throughput comparison")
    ap.add_argument("--size", default="1280x720", help="throughput input WxH (must fit whole)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--tile", type=int, default=512, help="throughput tile (the CLI default)")
    ap.add_argument("--tile-pad", type=int, default=32)
    ap.add_argument("--device", default="cpu", help="throughput device (cpu, cuda)")
    ap.add_argument("--precision", default="fp32", help="throughput precision")
    ap.add_argument("--batch", type=int, default=1, help="throughput tiles per forward")
    ap.add_argument("--parts", default="throughput,memory,onnx", help="which parts to run")
    ap.add_argument("--mem-sizes", default="1080p,4k,8k")
    ap.add_argument("--mem-tile", type=int, default=256)
    args = ap.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory(prefix="bench_upscale_") as tmp:
        work = Path(tmp)
        big = save_checkpoint(work / "big", _lively(build_model(args.arch, 4)), args.arch, {}, 4, 0)
        tiny_net = _lively(build_model("compact-tiny", 4))
        tiny = save_checkpoint(work / "tiny", tiny_net, "compact-tiny", {}, 4, 0)
        tiny_info = {"arch": "compact-tiny", "scale": 4, "params": sum(p.numel() for p in tiny_net.parameters())}
        res: dict = {"threads": torch.get_num_threads()}
        if "memory" in args.parts:  # first, while this process is small
            sizes = [s for s in args.mem_sizes.split(",") if s]
            res["memory"] = memory(tiny, work, sizes, args.mem_tile, 4, tiny_info)
        if "throughput" in args.parts:
            w, h = map(int, args.size.split("x"))
            kw = {"device": args.device, "precision": args.precision, "batch": args.batch}
            res["throughput"] = throughput(big, w, h, args.repeats, args.tile, args.tile_pad, **kw)
            res["throughput_tiny"] = throughput(tiny, w, h, args.repeats, args.tile, args.tile_pad, **kw)
        if "onnx" in args.parts:
            w, h = map(int, args.size.split("x"))
            loaded = load_model(big)
            onnx_path = work / "big.onnx"
            export_onnx(loaded.module, ARCHS[args.arch].spandrel_id, onnx_path, 64, "fp32",
                        {"arch": args.arch, "scale": 4, "size_multiple": loaded.size_multiple, "size_min": loaded.size_min})
            res["onnx"] = onnx_vs_torch({"torch": big, "onnxruntime": onnx_path}, w, h, max(4, args.repeats),
                                        args.tile, args.tile_pad)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
