"""Tiled inference: any image size through an SR network, seamless, in memory bounded by the tile.

Why not tile like Real-ESRGAN (hard cuts) or like APISR (downscale big inputs)? Hard cuts leave
seams where a tile's border pixels, computed without context, meet the next tile. Here tiles
overlap and are blended with a smooth separable window:

* Along each axis the (virtually reflect-padded) image is covered by ``n`` equal tiles whose
  starts are multiples of the model's ``size_multiple`` (window attention then sees the same
  window grid as a whole-image pass) and whose size is the smallest that covers the axis with
  the requested overlap (so a 1080-row image does not pay for three 512-row tiles).
* Inside the overlap of two neighbours, the outer quarter next to each tile's edge gets weight
  0 (pixels computed with truncated context are discarded) and the middle half a raised-cosine
  ramp, so the two weights sum to one. Weights are products of 1-D windows, hence the
  normalisation is a product of two 1-D sums and no weight canvas is needed.
* Tiles run in row-major order; a float32 band one tile high accumulates them, and rows that no
  later tile touches are normalised and handed to a sink (which converts them to the output
  dtype) as soon as the next tile row starts. The sink's canvas is the only image-sized buffer.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F

Source = Callable[[int, int, int, int], torch.Tensor]  # (y0, y1, x0, x1) -> 1xCxhxw float on device
Sink = Callable[[int, torch.Tensor], None]  # (first output row, C x rows x W float in [0,1]ish)


def _ceil_to(v: int, m: int) -> int:
    return -(-v // m) * m


@dataclass(frozen=True)
class AxisPlan:
    """Tiles along one axis, in input pixels: ``length`` real, ``padded`` after reflect padding."""

    length: int
    padded: int
    tile: int
    starts: tuple[int, ...]


def plan_axis(length: int, tile: int, overlap: int, multiple: int = 1, minimum: int = 1) -> AxisPlan:
    """Cover ``length`` with equal tiles of at most ``tile`` (0: one tile) overlapping by >= ``overlap``.

    Sizes, starts and the overlap are multiples of ``multiple``; every tile is >= ``minimum``.
    """
    a = max(1, int(multiple))
    floor_min = _ceil_to(max(1, int(minimum)), a)
    padded = max(_ceil_to(length, a), floor_min)
    t = padded if tile <= 0 else max(tile // a * a, floor_min)
    if padded <= t:
        return AxisPlan(length, padded, padded, (0,))
    ov = min(_ceil_to(max(0, overlap), a), t // 2 // a * a)
    n = -(-(padded - ov) // (t - ov))
    size = max(_ceil_to(-(-(padded + (n - 1) * ov) // n), a), floor_min)
    k = (padded - size) // a
    return AxisPlan(length, padded, size, tuple((i * k // (n - 1)) * a for i in range(n)))


def _ramp(n: int) -> torch.Tensor:
    """Rising weights over an overlap of ``n`` output pixels: 0, raised cosine, 1 (quarter, half, quarter)."""
    t = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    r = 0.5 - 0.5 * torch.cos(2 * math.pi * (t - 0.25))
    return torch.where(t < 0.25, 0.0, torch.where(t > 0.75, 1.0, r))


def axis_weights(ap: AxisPlan, scale: int) -> list[torch.Tensor]:
    """1-D output-pixel weights of each tile; neighbours' weights sum to one over their overlap."""
    out = []
    size = ap.tile * scale
    for i, s in enumerate(ap.starts):
        w = torch.ones(size, dtype=torch.float64)
        if i > 0:
            ov = (ap.starts[i - 1] + ap.tile - s) * scale
            w[:ov] *= _ramp(ov)
        if i + 1 < len(ap.starts):
            ov = (s + ap.tile - ap.starts[i + 1]) * scale
            w[size - ov:] *= _ramp(ov).flip(0)
        out.append(w)
    return out


def _weight_sum(ap: AxisPlan, weights: list[torch.Tensor], scale: int) -> torch.Tensor:
    total = torch.zeros(ap.padded * scale, dtype=torch.float64)
    for s, w in zip(ap.starts, weights, strict=True):
        total[s * scale:s * scale + w.numel()] += w
    if float(total.min()) <= 0:
        raise AssertionError(f"tile plan leaves output pixels without weight: {ap}")
    return total


@dataclass(frozen=True)
class TilePlan:
    """The tile grid of one image: row-major tiles, each ``y.tile`` x ``x.tile`` input pixels."""

    y: AxisPlan
    x: AxisPlan
    scale: int

    @property
    def ntiles(self) -> int:
        return len(self.y.starts) * len(self.x.starts)

    def tiles(self) -> list[tuple[int, int]]:
        return [(i, j) for i in range(len(self.y.starts)) for j in range(len(self.x.starts))]


def plan(height: int, width: int, scale: int, tile: int, overlap: int, multiple: int = 1,
         minimum: int = 1) -> TilePlan:
    """The tile grid for an image of ``height`` x ``width`` input pixels (see :func:`plan_axis`)."""
    return TilePlan(plan_axis(height, tile, overlap, multiple, minimum),
                    plan_axis(width, tile, overlap, multiple, minimum), int(scale))


def device_scope(device: torch.device | str) -> AbstractContextManager:
    """``torch.cuda.device(device)`` for a CUDA device (a no-op context elsewhere): inside it the
    current device is the chosen one, so streams, events, pinned host buffers and cuDNN handles
    belong to that GPU and ``cuda:1`` opens no context on GPU 0. ``cuda`` without an index keeps
    the current device (``awm.dist.init`` sets it to this rank's GPU)."""
    device = torch.device(device)
    return torch.cuda.device(device) if device.type == "cuda" else nullcontext()


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on ``device``; to CUDA through pinned memory without blocking the host (a
    pageable copy waits for the stream). Pinned blocks come from torch's caching host allocator,
    which keeps each one until the copies queued on it have run."""
    if device.type != "cuda":
        return t.to(device)
    return t.pin_memory().to(device, non_blocking=True)


def reflect_pad(t: torch.Tensor, bottom: int, right: int) -> torch.Tensor:
    """Pad NCHW at the bottom/right by mirroring (repeatedly if the pad exceeds the size; 1 px repeats)."""
    while bottom > 0 or right > 0:
        pb, pr = min(bottom, t.shape[-2] - 1), min(right, t.shape[-1] - 1)
        if (bottom and pb == 0) or (right and pr == 0):
            return F.pad(t, (0, right, 0, bottom), mode="replicate")
        t = F.pad(t, (0, pr, 0, pb), mode="reflect")
        bottom, right = bottom - pb, right - pr
    return t


def run_tiles(net: Callable[[torch.Tensor], torch.Tensor], source: Source, tp: TilePlan, channels: int,
              sink: Sink, device: torch.device | str, batch: int = 1,
              on_tiles: Callable[[int], None] | None = None) -> None:
    """Run ``net`` over every tile of ``tp`` and stream the blended output rows to ``sink``.

    ``net`` maps a float32 Bx?xhxw batch to Bx``channels``x(h*scale)x(w*scale) float32; ``sink``
    receives finished rows (output coordinates, already cropped to the real image) in order.
    """
    s, device = tp.scale, torch.device(device)
    wy, wx = axis_weights(tp.y, s), axis_weights(tp.x, s)
    inv_y = to_device((1.0 / _weight_sum(tp.y, wy, s)).float(), device)
    inv_x = to_device((1.0 / _weight_sum(tp.x, wx, s)).float(), device)
    wy = [to_device(w.float(), device) for w in wy]
    wx = [to_device(w.float(), device) for w in wx]
    th, tw = tp.y.tile * s, tp.x.tile * s
    out_h, out_w = tp.y.length * s, tp.x.length * s
    band = torch.zeros(channels, th, tp.x.padded * s, dtype=torch.float32, device=device)
    band_y0 = 0

    def finalise(upto: int) -> None:
        nonlocal band_y0
        k = upto - band_y0
        real = min(upto, out_h) - band_y0
        if real > 0:
            rows = band[:, :real, :out_w] * inv_y[band_y0:band_y0 + real, None] * inv_x[None, :out_w]
            sink(band_y0, rows)
        if k >= th:
            band.zero_()
        else:
            band[:, :th - k] = band[:, k:].clone()
            band[:, th - k:] = 0
        band_y0 = upto

    tiles = tp.tiles()
    for b0 in range(0, len(tiles), max(1, batch)):
        chunk = tiles[b0:b0 + max(1, batch)]
        inputs = []
        for i, j in chunk:
            y0, x0 = tp.y.starts[i], tp.x.starts[j]
            y1, x1 = min(y0 + tp.y.tile, tp.y.length), min(x0 + tp.x.tile, tp.x.length)
            inputs.append(reflect_pad(source(y0, y1, x0, x1), y0 + tp.y.tile - y1, x0 + tp.x.tile - x1))
        out = net(torch.cat(inputs))
        if tuple(out.shape[1:]) != (channels, th, tw):
            raise ValueError(f"model returned {tuple(out.shape[1:])} for a {tp.y.tile}x{tp.x.tile} tile, "
                             f"expected {(channels, th, tw)}: is the scale (x{s}) right?")
        for (i, j), o in zip(chunk, out, strict=True):
            y = tp.y.starts[i] * s
            if y > band_y0:
                finalise(y)
            x = tp.x.starts[j] * s
            band[:, :, x:x + tw] += o * (wy[i][:, None] * wx[j][None, :])
        if on_tiles is not None:
            on_tiles(len(chunk))
    finalise(tp.y.padded * s)
