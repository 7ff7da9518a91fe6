"""``awm upscale``: tiled, seamless, bounded-memory upscaling of files, folders or pair shards.

Image conventions:
* RGB goes through the network; an alpha channel is resampled (bicubic), not run through the
  network: it costs nothing, never bleeds colour into transparency, and SR networks are not
  trained on alpha masks.
* 16-bit in -> 16-bit out (the network sees the full precision; PNG only, jpg/webp are 8-bit),
  gray in -> gray out (luma of the network's RGB; WebP has no gray mode and stores RGB), JPEG
  EXIF orientation applied on read (``awm.imageio.read_image``). JPEG output composites alpha on white.
* Images smaller than the architecture's minimum are reflect-padded up and cropped after, as
  are sides that are not a multiple of its window/unshuffle size.
* Output ``<out>/<stem>_x<scale>.<format>`` (folder inputs keep their sub-folders; shard samples
  are named by key); an output path that is one of the inputs is refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import cv2
import numpy as np
import torch

from awm import dist
from awm.config import add_dataclass_arguments, check, from_args, save_beside
from awm.imageio import ImageError, atomic_write_bytes, atomic_write_text, encode_image, to_rgb8
from awm.log import get_logger, progress, show_progress
from awm.upscale import tiling
from awm.upscale.inputs import Job, collect_jobs

if TYPE_CHECKING:
    from awm.models.loaded import LoadedModel

log = get_logger("awm.upscale")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
LUMA = (0.299, 0.587, 0.114)


@dataclass
class UpscaleConfig:
    inputs: list[str] = field(default_factory=list, metadata={"help": "image files, folders or pair-shard folders",
                                                              "argument": "INPUT"})
    model: str = field(default="", metadata={
        "help": "checkpoint dir, run dir, a foreign .pth/.safetensors, or an .onnx file (onnxruntime)"})
    out: str = field(default="upscaled", metadata={"help": "output folder"})
    tile: int = field(default=512, metadata={"help": "max tile side in input pixels; 0 = whole image"})
    tile_pad: int = field(default=32, metadata={"help": "overlap between neighbouring tiles (input px)"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "compute dtype"})
    outscale: float | None = field(default=None, metadata={
        "help": "final scale factor, resampled after the network; unset: the model's scale"})
    format: Literal["png", "webp", "jpg"] = field(default="png", metadata={"help": "output format"})
    quality: int | None = field(default=None, metadata={"help": "jpg/webp quality or png compression level"})
    device: str = field(default="auto", metadata={"help": "auto (cuda:LOCAL_RANK if present), cpu, cuda:N"})
    batch: int = field(default=1, metadata={"help": "tiles per forward pass"})
    color_order: Literal["rgb", "bgr"] | None = field(default=None, metadata={
        "help": "rgb or bgr, foreign weights only: bgr feeds BGR to weights trained on BGR (as APISR trained)"})
    max_pixels: int = field(default=50_000_000, metadata={
        "help": "refuse inputs above this many pixels (decompression-bomb guard)"})

    def __post_init__(self) -> None:
        check(bool(self.model), "model", self.model, "a checkpoint path (--model PATH)")
        check(len(self.inputs) > 0, "inputs", self.inputs, "at least one file or folder")
        check(self.tile >= 0, "tile", self.tile, "0 (whole image) or a positive tile side")
        check(self.tile_pad >= 0, "tile_pad", self.tile_pad, ">= 0")
        check(self.outscale is None or 0 < self.outscale <= 64, "outscale", self.outscale, "a factor in (0, 64]")
        check(self.batch >= 1, "batch", self.batch, ">= 1")
        check(self.max_pixels >= 1, "max_pixels", self.max_pixels, ">= 1")


def check_precision(model: LoadedModel, precision: str) -> torch.dtype:
    """The torch dtype for ``precision``; ConfigError when the architecture can't run in it."""
    check(precision in DTYPES, "precision", precision, "one of " + ", ".join(DTYPES))
    check(model.source != "onnx" or precision == "fp32", "precision", precision,
          "fp32 for an .onnx model: it runs in the precision it was exported in (awm export --fp16)")
    ok = {"fp32": True, "bf16": model.supports_bf16, "fp16": model.supports_fp16}
    valid = [p for p, v in ok.items() if v]
    check(ok[precision], "precision", precision, f"{', '.join(valid)} ({model.arch} does not support {precision})")
    return DTYPES[precision]


def _channels(x: torch.Tensor, c: int, luma: torch.Tensor) -> torch.Tensor:
    """Gray <-> RGB for tensors: replicate gray, luma of RGB (``luma``: 1x3x1x1 on ``x``'s device)."""
    if x.shape[1] == c:
        return x
    if c == 1:
        return (x * luma).sum(1, keepdim=True)
    return x.expand(-1, c, -1, -1)


def _spandrel_id(model: LoadedModel) -> str:
    from awm.models.archs import ARCHS

    return model.meta.get("spandrel_arch") or (ARCHS[model.arch].spandrel_id if model.arch in ARCHS else model.arch)


def _run(model: LoadedModel, source: tiling.Source, h: int, w: int, c: int, sink: tiling.Sink, tile: int,
         tile_pad: int, precision: str, device: torch.device, batch: int, on_tiles=None) -> None:
    from awm.train.perf import channels_last_for

    dtype = check_precision(model, precision)
    tp = tiling.plan(h, w, model.scale, tile, tile_pad, model.size_multiple, model.size_min)
    module = model.module.to(device)
    # NHWC for convnets on CUDA (cuDNN's fast layout for them); on CPU the layout stays NCHW, so
    # CPU results are the same bits as before (oneDNN picks other kernels for NHWC)
    nhwc = device.type == "cuda" and channels_last_for(_spandrel_id(model), None)
    if nhwc:
        module = module.to(memory_format=torch.channels_last)
    # built once per image, not per gray tile (a pageable host-to-device copy each call)
    luma = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1).to(device)

    def net(x: torch.Tensor) -> torch.Tensor:
        x = _channels(x, model.in_channels, luma)
        if nhwc:
            x = x.contiguous(memory_format=torch.channels_last)
        # autocast, not module.to(dtype): archs keep float32 tensors outside their parameters
        # (SwinIR's mean, attention masks), and norms/softmax stay float32 where they need it
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            y = module(x)
        return _channels(y.float(), c, luma)

    with torch.inference_mode():
        tiling.run_tiles(net, source, tp, c, sink, device, batch, on_tiles)


def upscale_tensor(model: LoadedModel, x: torch.Tensor, tile: int = 512, tile_pad: int = 32,
                   precision: str = "fp32", batch: int = 1, on_tiles=None) -> torch.Tensor:
    """1xCxHxW float [0,1] -> 1xCx(H*s)x(W*s) float on ``x``'s device, tiled and blended."""
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] not in (1, 3):
        raise ValueError(f"expected a 1x3xHxW (or 1x1xHxW) tensor, got {tuple(x.shape)}")
    _, c, h, w = x.shape
    s = model.scale
    canvas = torch.empty(1, c, h * s, w * s, dtype=torch.float32, device=x.device)

    def source(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        return x[:, :, y0:y1, x0:x1].float()

    def sink(y: int, rows: torch.Tensor) -> None:
        canvas[0, :, y:y + rows.shape[1]] = rows.clamp(0, 1)

    with tiling.device_scope(x.device):
        _run(model, source, h, w, c, sink, tile, tile_pad, precision, x.device, batch, on_tiles)
    return canvas


def upscale_array(model: LoadedModel, img: np.ndarray, tile: int = 512, tile_pad: int = 32,
                  precision: str = "fp32", device: str | torch.device = "cpu", batch: int = 1,
                  on_tiles=None) -> np.ndarray:
    """RGB/RGBA/gray uint8|uint16 HWC array -> same dtype and channels, ``model.scale`` times larger.

    The output array is allocated once and filled band by band; alpha is resampled (bicubic).
    """
    if img.dtype not in (np.uint8, np.uint16) or img.ndim not in (2, 3) or (
            img.ndim == 3 and img.shape[2] not in (1, 3, 4)):
        raise ValueError(f"expected an HxW, HxWx3 or HxWx4 uint8/uint16 array, got {img.shape} {img.dtype}")
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    h, w = img.shape[:2]
    s, peak = model.scale, float(np.iinfo(img.dtype).max)
    c = 1 if img.ndim == 2 else 3
    device = torch.device(device)
    canvas = np.empty((h * s, w * s) + img.shape[2:], dtype=img.dtype)
    color = img if img.ndim == 2 else img[:, :, :3]

    def source(y0: int, y1: int, x0: int, x1: int) -> torch.Tensor:
        part = color[y0:y1, x0:x1]  # uint8 travels as is (4x fewer bytes), uint16 as float32
        part = np.ascontiguousarray(part) if img.dtype == np.uint8 else part.astype(np.float32)
        t = tiling.to_device(torch.from_numpy(part), device).float().div_(peak)
        return t[None, None] if t.dim() == 2 else t.permute(2, 0, 1)[None]

    def write(y: int, arr: np.ndarray) -> None:
        arr = arr.astype(img.dtype, copy=False)
        if img.ndim == 2:
            canvas[y:y + arr.shape[1]] = arr[0]
        else:
            canvas[y:y + arr.shape[1], :, :3] = arr.transpose(1, 2, 0)

    rows_out = HostRows(write)

    def sink(y: int, rows: torch.Tensor) -> None:
        q = rows.clamp(0, 1).mul_(peak).round_()
        rows_out(y, q.to(torch.uint8) if img.dtype == np.uint8 else q.to(torch.int32))

    with tiling.device_scope(device):
        _run(model, source, h, w, c, sink, tile, tile_pad, precision, device, batch, on_tiles)
        rows_out.flush()
    if img.ndim == 3 and img.shape[2] == 4:
        canvas[:, :, 3] = cv2.resize(img[:, :, 3], (w * s, h * s), interpolation=cv2.INTER_CUBIC)
    return canvas


class HostRows:
    """Finished output rows to the host without a blocking ``.cpu()`` per band: on CUDA each band
    is copied into pinned memory asynchronously and handed to ``write`` only when the next band
    arrives (its copy ran while the tiles between were computed) or at :meth:`flush`; on the host
    it is written at once."""

    def __init__(self, write: Callable[[int, np.ndarray], None]):
        self.write = write
        self.pending: tuple[int, torch.Tensor, torch.cuda.Event] | None = None

    def __call__(self, y: int, rows: torch.Tensor) -> None:
        if rows.device.type != "cuda":
            self.write(y, rows.numpy())
            return
        host = torch.empty(rows.shape, dtype=rows.dtype, pin_memory=True)
        host.copy_(rows, non_blocking=True)  # runs on the current stream of rows' device
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(rows.device))  # a bare record() would use the current device's
        self.flush()
        self.pending = (y, host, done)

    def flush(self) -> None:
        """Write the band still in flight (waits for its copy only)."""
        if self.pending is not None:
            y, host, done = self.pending
            self.pending = None
            done.synchronize()
            self.write(y, host.numpy())


def resample(img: np.ndarray, width: int, height: int) -> np.ndarray:
    """Resize after the network (--outscale): area averaging down, Lanczos up."""
    if (img.shape[1], img.shape[0]) == (width, height):
        return img
    shrink = width * height < img.shape[0] * img.shape[1]
    return cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LANCZOS4)


def _encode(img: np.ndarray, fmt: str, quality: int | None) -> bytes:
    if fmt == "jpg" and img.ndim == 3 and img.shape[2] == 4:  # no alpha in JPEG: composite on white
        img = to_rgb8(img)
    if fmt != "png" and img.dtype == np.uint16:  # jpg and webp are 8-bit formats
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    return encode_image(img, fmt, quality)


def upscale_job(job: Job, model: LoadedModel, cfg: UpscaleConfig, device: torch.device) -> tuple[int, int]:
    """Read, upscale, resample and write one image; returns (input pixels, output pixels)."""
    img = job.read(cfg.max_pixels)
    h, w = img.shape[:2]
    ntiles = tiling.plan(h, w, model.scale, cfg.tile, cfg.tile_pad, model.size_multiple, model.size_min).ntiles
    with _tile_bar(job.name, ntiles) as bar:
        out = upscale_array(model, img, cfg.tile, cfg.tile_pad, cfg.precision, device, cfg.batch, bar.update)
    del img
    if cfg.outscale is not None:
        out = resample(out, max(1, round(w * cfg.outscale)), max(1, round(h * cfg.outscale)))
    data = _encode(out, cfg.format, cfg.quality)
    pixels = out.shape[0] * out.shape[1]
    del out
    atomic_write_bytes(job.out, data)
    return h * w, pixels


def _tile_bar(name: str, total: int):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=Path(name).name[-24:], unit="tile", leave=False, disable=not show_progress(),
                dynamic_ncols=True, mininterval=1.0, file=sys.stderr)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, UpscaleConfig, skip=("inputs",))
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help=UpscaleConfig.__dataclass_fields__[
        "inputs"].metadata["help"])


def run(args: argparse.Namespace) -> int:
    from awm.models.checkpoint import load_model

    cfg = from_args(UpscaleConfig, args)
    d = dist.init()
    device = torch.device(dist.resolve_device(cfg.device))
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one tile shape per image: tuned once, reused per tile
    with tiling.device_scope(device):  # each image's work is scoped in upscale_array
        model = load_model(cfg.model, str(device), cfg.color_order)
    check_precision(model, cfg.precision)
    suffix = f"x{cfg.outscale:g}" if cfg.outscale is not None else f"x{model.scale}"
    out_dir = Path(cfg.out)
    check(not out_dir.is_file(), "out", cfg.out, "a folder (it is an existing file)")
    jobs = collect_jobs(cfg.inputs, out_dir, suffix, cfg.format, model.scale)
    check(any(j.error is None for j in jobs), "inputs", " ".join(cfg.inputs),  # before anything is written
          "existing images, image folders or shards (" + ("; ".join(sorted({f"{j.name}: {j.error}" for j in jobs}))
                                                         or "no image found") + ")", argument="INPUT")
    save_beside(cfg, out_dir, "upscale")
    mine = d.part.share(jobs)
    log.info("%s x%d (%s) on %s: %d inputs, %d on this rank, tile %d pad %d, %s", model.arch, model.scale,
             model.source, device, len(jobs), len(mine), cfg.tile, cfg.tile_pad, cfg.precision)
    stats: dict[str, Any] = {"rank": d.rank, "ok": 0, "failed": {}, "in_pixels": 0, "out_pixels": 0}
    t0 = time.perf_counter()
    for job in progress(mine, total=len(mine), desc="images", unit="img"):
        try:
            if job.error:
                raise ImageError(job.error)
            pin, pout = upscale_job(job, model, cfg, device)
        except Exception as e:  # noqa: BLE001 - one bad input is reported and the batch goes on
            stats["failed"][job.name] = str(e) if isinstance(e, ImageError) else f"{type(e).__name__}: {e}"
            log.error("%s: %s", job.name, stats["failed"][job.name])
            continue
        stats["ok"] += 1
        stats["in_pixels"] += pin
        stats["out_pixels"] += pout
    stats["seconds"] = time.perf_counter() - t0
    return _summarise(dist.gather_objects(stats), out_dir, cfg, model)


def _summarise(per_rank: list[dict[str, Any]], out_dir: Path, cfg: UpscaleConfig, model: LoadedModel) -> int:
    failed = {k: v for r in per_rank for k, v in r["failed"].items()}
    ok = sum(r["ok"] for r in per_rank)
    seconds = max(r["seconds"] for r in per_rank)
    in_mp = sum(r["in_pixels"] for r in per_rank) / 1e6
    out_mp = sum(r["out_pixels"] for r in per_rank) / 1e6
    summary = {"model": cfg.model, "arch": model.arch, "scale": model.scale, "tile": cfg.tile,
               "tile_pad": cfg.tile_pad, "precision": cfg.precision, "world_size": len(per_rank),
               "ok": ok, "failed": len(failed), "errors": failed, "seconds": round(seconds, 3),
               "images_per_rank": [r["ok"] + len(r["failed"]) for r in per_rank],
               "input_megapixels": round(in_mp, 3), "output_megapixels": round(out_mp, 3),
               "input_mp_per_s": round(in_mp / seconds, 4) if seconds > 0 else None,
               "output_mp_per_s": round(out_mp / seconds, 4) if seconds > 0 else None}
    if dist.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_dir / "upscale_stats.json", json.dumps(summary, indent=1, sort_keys=True))
        log.info("upscaled %d images (%d failed) in %.1f s: %.2f MP in, %.2f MP out, %.3f input MP/s, "
                 "%.3f output MP/s", ok, len(failed), seconds, in_mp, out_mp, summary["input_mp_per_s"] or 0,
                 summary["output_mp_per_s"] or 0)
    dist.destroy()
    return 1 if failed else 0
