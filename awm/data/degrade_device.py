"""The :mod:`awm.data.degrade` chains replayed on a whole batch on the training device (GPU, or CPU).

Why: random degradation per crop costs a CPU core ~10x more than cutting the crop (``realesrgan``
at HR 256 is a few dozen pairs/s per core), so a GPU training at 1,000+ pairs/s would need dozens
of loader cores. With ``data.degrade_on=device`` the loader ships HR crops plus each sample's
params from the same draw (:func:`awm.data.degrade.draw_params`), and :func:`degrade_batch` runs them
here, batched, with per-sample parameters.

How: every sample keeps its own op list. Each round applies one op kind to the samples whose
next op is that kind (the kind of the sample with the most ops left, so optional ops such as the
second blur or the final sinc line up with the others). Images live in one zero-padded float32
canvas with per-sample sizes on the host, so no size ever needs a device sync:

- blur (Gaussian, generalised Gaussian, plateau, sinc; the kernels of :func:`awm.data.degrade_ops.blur_kernel`)
  and the unsharp mask's Gaussian: per-sample kernels in one grouped ``conv2d``, with OpenCV's
  reflect-101 border gathered per sample;
- resize: separable gathers of OpenCV's own taps and weights per sample (``cv2.resize``'s area,
  bilinear, bicubic, Lanczos-4, including its area-upscale rule);
- median 3x3/5x5 with OpenCV's replicated border; Gaussian/Poisson noise, colour or gray;
- JPEG: libjpeg-turbo's baseline encoder + decoder as OpenCV uses them (4:2:0, ISLOW integer DCT,
  IJG tables scaled by quality, fancy upsampling) rebuilt in batched integer torch with per-sample
  qualities: bit-exact with ``cv2.imencode`` + ``cv2.imdecode`` (every quality 30..95 on generated
  and real images, tests/benchmarks/bench_jpeg_agreement.py), on CPU and CUDA alike, and no host
  sync (torchvision's CUDA codec would encode 4:4:4, i.e. other data than the shards, and sync
  per image).

Values are rounded to 0..255 after every op, as the worker path's uint8 images are, in fp32 with
TF32 off (bf16/TF32 visibly change blur and sharpening). The Gaussian uses OpenCV's fixed-point
uint8 kernel, so the ``seed`` chain is bit-exact with the worker path on CPU. Noise comes from torch generators seeded
by the samples' drawn noise seeds: deterministic for a batch (exact resume), statistically the
same as the worker's numpy noise but not the same pixels. Not on the device: H.264/H.265 and WebP
(``apisr``) and the edge-masked median (``seed-edgemask``); :func:`preset_unsupported` names them
so those presets stay in the loader workers.
"""

from __future__ import annotations

import contextlib
import functools
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from awm.data import degrade, degrade_ops

Sizes = list[tuple[int, int]]
_MODES = ("area", "bilinear", "bicubic", "lanczos")


def unsupported(params: dict[str, Any]) -> str | None:
    """Why this sample's params cannot run on the device (None: they can)."""
    for op in params["ops"]:
        if op["op"] not in _OPS:
            return f"{op['op']} steps"
        if op["op"] == "median" and op.get("edge_mask"):
            return "the edge-masked median (Canny)"
    if params["codec"]["format"] == "webp":
        return "the WebP storage codec"
    return None


def preset_unsupported(preset: degrade.Preset) -> str | None:
    """Why a preset's draws may hold steps without a device implementation (None: all run here)."""
    if isinstance(preset, degrade.APISRPreset):
        return "H.264/H.265 and WebP steps"
    if isinstance(preset, degrade.SeedPreset) and preset.edge_mask and preset.median_ksize > 1:
        return "the edge-masked median (Canny)"
    if preset.lr_format == "webp":
        return "the WebP storage codec"
    return None


def degrade_batch(hr: torch.Tensor, params: list[dict[str, Any]], scale: int) -> torch.Tensor:
    """LR patches (uint8 NHWC, HR/scale, after the storage codec) of HR patches (uint8 NHWC) on
    their device, each replaying its own params: what the worker path decodes from its LR bytes."""
    b, h, w, c = hr.shape
    if len(params) != b or c != 3 or hr.dtype != torch.uint8:
        raise ValueError(f"need uint8 NHWC RGB patches and one params record each, got {tuple(hr.shape)} "
                         f"{hr.dtype} and {len(params)} records")
    for p in params:
        why = unsupported(p)
        if why:
            raise ValueError(f"preset {p['preset']}: no device implementation of {why}")
    chains = [_chain(p) for p in params]
    pos = [0] * b
    sizes: Sizes = [(h, w)] * b
    with torch.no_grad(), torch.autocast(hr.device.type, enabled=False), _ieee_fp32(hr.device):
        x = hr.permute(0, 3, 1, 2).float()
        while True:
            left = [len(ch) - k for ch, k in zip(chains, pos, strict=True)]
            lead = max(range(b), key=left.__getitem__)
            if left[lead] == 0:
                break
            kind = chains[lead][pos[lead]]["op"]
            idx = [i for i in range(b) if left[i] and chains[i][pos[i]]["op"] == kind]
            sub_sizes = [sizes[i] for i in idx]
            sub = _take(x, idx, sub_sizes)
            y, new_sizes = _OPS[kind](sub, sub_sizes, [chains[i][pos[i]] for i in idx])
            x = _put(x, idx, y)
            for i, s in zip(idx, new_sizes, strict=True):
                sizes[i] = s
                pos[i] += 1
        want = (h // scale, w // scale)
        if any(s != want for s in sizes):
            raise ValueError(f"params give sizes {sorted(set(sizes))}, expected {want}")
        return x[:, :, :want[0], :want[1]].to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def _chain(params: dict[str, Any]) -> list[dict[str, Any]]:
    """The ops, then the storage codec as a last op (png stores losslessly: nothing to do)."""
    codec = params["codec"]
    tail = [{"op": "jpeg", "quality": codec["quality"]}] if codec["format"] == "jpg" else []
    return [*params["ops"], *tail]


@contextlib.contextmanager
def _ieee_fp32(device: torch.device) -> Iterator[None]:
    """TF32 rounds conv and matmul (the JPEG's DCT) inputs to 10 mantissa bits (~0.25 levels at
    255): IEEE fp32 here. The legacy flags, as the trainer sets them (torch refuses reads after
    mixing them with the new API)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _dev(values: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Host values on the device without a sync: a copy from pageable memory would wait for the
    stream, so CUDA copies go through pinned memory, asynchronously."""
    t = torch.from_numpy(values) if isinstance(values, np.ndarray) else torch.tensor(values, dtype=dtype)
    if device.type != "cuda":
        return t
    return t.pin_memory().to(device, non_blocking=True)


def _take(x: torch.Tensor, idx: list[int], sizes: Sizes) -> torch.Tensor:
    hm, wm = max(s[0] for s in sizes), max(s[1] for s in sizes)
    sub = x if len(idx) == x.shape[0] else x[_dev(idx, x.device)]
    return sub[:, :, :hm, :wm]


def _put(x: torch.Tensor, idx: list[int], y: torch.Tensor) -> torch.Tensor:
    """``y`` (the processed samples ``idx``) written back into the canvas, grown if needed."""
    if len(idx) == x.shape[0]:
        return y
    hm, wm = max(x.shape[2], y.shape[2]), max(x.shape[3], y.shape[3])
    if (hm, wm) != x.shape[2:]:
        grown = x.new_zeros(x.shape[0], x.shape[1], hm, wm)
        grown[:, :, :x.shape[2], :x.shape[3]] = x
        x = grown
    x[_dev(idx, x.device), :, :y.shape[2], :y.shape[3]] = y
    return x


def _half_up(x: torch.Tensor) -> torch.Tensor:
    """uint8 rounding of OpenCV's fixed-point paths (and of the worker noise's ``+0.5`` then truncate)."""
    return torch.floor(x + 0.5).clamp_(0, 255)


def _border(n: int, r: int, sizes: list[int], reflect: bool, device: torch.device) -> torch.Tensor:
    """(S, n + 2r) source indices of a padded axis: reflect-101 (filters) or replicate (median)."""
    j = torch.arange(-r, n + r, device=device)[None, :]
    size = _dev(sizes, device)[:, None]
    if not reflect:
        return torch.minimum(j.clamp(min=0), size - 1)
    period = (2 * size - 2).clamp(min=1)
    j = j.abs() % period
    return torch.where(j >= size, period - j, j)


def _pad(x: torch.Tensor, r: int, sizes: Sizes, reflect: bool) -> torch.Tensor:
    """Each sample padded by ``r`` around its own valid region (the canvas beyond it is never read)."""
    s, c, h, w = x.shape
    iy = _border(h, r, [z[0] for z in sizes], reflect, x.device)
    ix = _border(w, r, [z[1] for z in sizes], reflect, x.device)
    x = x.gather(2, iy[:, None, :, None].expand(s, c, h + 2 * r, w))
    return x.gather(3, ix[:, None, None, :].expand(s, c, h + 2 * r, w + 2 * r))


def _filter(x: torch.Tensor, sizes: Sizes, kernels: list[np.ndarray]) -> torch.Tensor:
    """Per-sample 2-D correlation (cv2.filter2D, reflect-101 border): one grouped conv2d per
    kernel size (padding a 7x7 kernel to 21x21 would cost 9x its work)."""
    ks = sorted({kr.shape[0] for kr in kernels})
    if len(ks) == 1:
        return _conv(x, sizes, np.stack(kernels))
    out = torch.empty_like(x)
    for k in ks:
        ii = [i for i, kr in enumerate(kernels) if kr.shape[0] == k]
        t = _dev(ii, x.device)
        out[t] = _conv(x[t], [sizes[i] for i in ii], np.stack([kernels[i] for i in ii]))
    return out


def _conv(x: torch.Tensor, sizes: Sizes, bank: np.ndarray) -> torch.Tensor:
    s, c, h, w = x.shape
    k = bank.shape[1]
    weight = _dev(bank, x.device).repeat_interleave(c, 0)[:, None]
    xp = _pad(x, k // 2, sizes, reflect=True).reshape(1, s * c, h + k - 1, w + k - 1)
    return F.conv2d(xp, weight, groups=s * c).reshape(s, c, h, w)


def _blur(x: torch.Tensor, sizes: Sizes, ops: list[dict[str, Any]]) -> tuple[torch.Tensor, Sizes]:
    kernels = [_gaussian_u8(op["ksize"], op["sigma_x"]) if op.get("kind", "gaussian") == "gaussian"
               and op["sigma_x"] == op["sigma_y"] else degrade_ops.blur_kernel(op) for op in ops]
    return _half_up(_filter(x, sizes, kernels)), sizes


def _gaussian_u8(ksize: int, sigma: float) -> np.ndarray:
    """The kernel cv2.GaussianBlur really applies to uint8 images: its 1-D Gaussian quantised to
    1/256 by error diffusion (symmetric, centre takes the rest), then separable in fixed point,
    rounded half up. Its products are multiples of 2^-16 below 256, exact in fp32: bit-exact."""
    c = ksize // 2
    x = np.arange(-c, c + 1, dtype=np.float64)
    g = np.exp(-x * x / (2 * sigma * sigma))
    g /= g.sum()
    q = np.zeros(ksize)
    err = 0.0
    for i in range(c):
        v = g[i] * 256 + err
        q[i] = q[-1 - i] = np.rint(v)
        err = v - q[i]
    q[c] = 256 - 2 * q[:c].sum()
    return (np.outer(q, q) / 65536).astype(np.float32)


def _usm(x: torch.Tensor, sizes: Sizes, ops: list[dict[str, Any]]) -> tuple[torch.Tensor, Sizes]:
    """cv2 unsharp mask: uint8 Gaussian, addWeighted (round half to even), optional threshold."""
    blurred = _half_up(_filter(x, sizes, [_gaussian_u8(op["ksize"], op["sigma"]) for op in ops]))
    alpha = _dev([1.0 + op["amount"] for op in ops], x.device, torch.float32)[:, None, None, None]
    beta = _dev([-op["amount"] for op in ops], x.device, torch.float32)[:, None, None, None]
    sharp = torch.round(x * alpha + blurred * beta).clamp_(0, 255)
    thr = _dev([op["threshold"] for op in ops], x.device, torch.float32)[:, None, None, None]
    mask = ((x - blurred).abs().amax(1, keepdim=True) > thr) | (thr <= 0)
    return torch.where(mask, sharp, x), sizes


def _median(x: torch.Tensor, sizes: Sizes, ops: list[dict[str, Any]]) -> tuple[torch.Tensor, Sizes]:
    """cv2.medianBlur (replicated border), grouped by kernel size."""
    out = torch.empty_like(x)
    s, c, h, w = x.shape
    for k in sorted({op["ksize"] for op in ops}):
        ii = [i for i, op in enumerate(ops) if op["ksize"] == k]
        t = _dev(ii, x.device)
        xp = _pad(x[t], k // 2, [sizes[i] for i in ii], reflect=False)
        win = xp.unfold(2, k, 1).unfold(3, k, 1).reshape(len(ii), c, h, w, k * k)
        # the lower median by sorting: torch.median(dim) also computes indices, which have no
        # deterministic CUDA kernel (use_deterministic_algorithms); the values are the same
        out[t] = win.sort(-1).values[..., (k * k - 1) // 2]
    return out, sizes


def _resize(x: torch.Tensor, sizes: Sizes, ops: list[dict[str, Any]]) -> tuple[torch.Tensor, Sizes]:
    """cv2.resize per sample, separably: each output row/column is a weighted sum of a few gathered
    source rows/columns (OpenCV's own taps and weights). Samples are grouped by tap count (linear
    2, cubic 4, Lanczos 8, area ~scale + 1), each group one batched pass."""
    new = [(int(op["size"][1]), int(op["size"][0])) for op in ops]
    mode = [_MODES.index(op["interp"]) for op in ops]
    down = [ho <= hi and wo <= wi for (hi, wi), (ho, wo) in zip(sizes, new, strict=True)]
    group = [1 if (m == 0 and not a) else m for m, a in zip(mode, down, strict=True)]
    out = x.new_zeros(x.shape[0], x.shape[1], max(z[0] for z in new), max(z[1] for z in new))
    for g in sorted(set(group)):
        ii = [i for i, k in enumerate(group) if k == g]
        sub_sizes = [sizes[i] for i in ii]
        sub = _take(x, ii, sub_sizes)
        iy, wy = _resize_taps([z[0] for z in sub_sizes], [new[i][0] for i in ii], [mode[i] for i in ii],
                              [down[i] for i in ii], x.device)
        ix, wx = _resize_taps([z[1] for z in sub_sizes], [new[i][1] for i in ii], [mode[i] for i in ii],
                              [down[i] for i in ii], x.device)
        y = _apply_taps(_apply_taps(sub, ix, wx, 3), iy, wy, 2)
        if len(ii) == len(ops):
            return _half_up(y), new
        out[_dev(ii, x.device), :, :y.shape[2], :y.shape[3]] = y
    return _half_up(out), new


def _apply_taps(x: torch.Tensor, idx: torch.Tensor, w: torch.Tensor, dim: int) -> torch.Tensor:
    """Along ``dim`` (2: rows, 3: columns): out[d] = sum_t w[d, t] * x[idx[d, t]], per sample."""
    shape = list(x.shape)
    shape[dim] = idx.shape[1]
    view = (x.shape[0], 1, -1, 1) if dim == 2 else (x.shape[0], 1, 1, -1)
    out = None
    for t in range(idx.shape[2]):
        g = x.gather(dim, idx[..., t].reshape(view).expand(shape)).mul_(w[..., t].reshape(view))
        out = g if out is None else out.add_(g)
    return out


def _resize_taps(n_in: list[int], n_out: list[int], mode: list[int], area_down: list[bool],
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Source indices and weights (S, max n_out, taps) of cv2.resize along one axis (weight 0 past
    each sample's sizes).

    OpenCV's INTER_AREA averages by overlap only when both axes shrink; otherwise it interpolates
    linearly at ``floor(d * scale)`` with its own fraction rule (reproduced here). Coordinates are
    float64 like OpenCV's; only the kinds present are built, decided on the host (no device sync).
    """
    present = {0 if (k == 0 and a) else 4 if k == 0 else k for k, a in zip(mode, area_down, strict=True)}
    f64 = {"dtype": torch.float64, "device": device}
    ni = _dev(n_in, device, torch.float64)[:, None]
    no = _dev(n_out, device, torch.float64)[:, None]
    inv = no / ni
    sc = 1.0 / inv
    d = torch.arange(max(n_out), **f64)[None, :]
    m = _dev(mode, device)[:, None]
    ad = _dev(area_down, device)[:, None]
    x = (d + 0.5) * sc - 0.5
    sx = torch.floor(x)
    fx = x - sx
    up_area = (m == 0) & ~ad
    if 4 in present:
        sxa = torch.floor(d * sc)
        fxa = (d + 1) - (sxa + 1) * inv
        sx = torch.where(up_area, sxa, sx)
        fx = torch.where(up_area, torch.where(fxa <= 0, 0.0, fxa - torch.floor(fxa)), fx)
    lin = (m == 1) | up_area
    lo, hi = lin & (sx < 0), lin & (sx >= ni - 1)
    sx = torch.where(lo, 0.0, torch.where(hi, ni - 1, sx))
    fx = torch.where(lo | hi, 0.0, fx)
    kinds: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (use, first tap, weights)
    if present & {1, 4}:
        kinds.append((lin, sx, torch.stack([1 - fx, fx], -1)))
    if 2 in present:
        kinds.append((m == 2, sx - 1, torch.stack(_cubic(fx), -1)))
    if 3 in present:
        kinds.append((m == 3, sx - 3, torch.stack(_lanczos4(fx), -1)))
    if 0 in present:  # area, shrinking: overlap with each source pixel / cell width
        f1 = d * sc
        first = torch.floor(f1)
        j = first[..., None] + torch.arange(math.ceil(max(i / o for i, o in zip(n_in, n_out, strict=True))) + 1,
                                            **f64)
        ov = (torch.minimum((f1 + sc)[..., None], j + 1) - torch.maximum(f1[..., None], j)).clamp(min=0)
        cell = torch.minimum(sc, ni - f1).clamp(min=1e-9)[..., None]
        kinds.append(((m == 0) & ad, first, torch.where((ov > 1e-3) & (j < ni[..., None]), ov, 0.0) / cell))
    taps = max(k[2].shape[-1] for k in kinds)
    idx = torch.zeros(len(n_in), d.shape[1], taps, dtype=torch.long, device=device)
    w = torch.zeros(len(n_in), d.shape[1], taps, **f64)
    for use, first, wt in kinds:
        t = torch.arange(wt.shape[-1], **f64)
        src = torch.minimum((first[..., None] + t).clamp(min=0), ni[..., None] - 1).long()
        pad = taps - wt.shape[-1]
        idx = torch.where(use[..., None], F.pad(src, (0, pad)), idx)
        w = torch.where(use[..., None], F.pad(wt, (0, pad)), w)
    return idx, torch.where((d < no)[..., None], w, 0.0).float()


def _cubic(x: torch.Tensor) -> list[torch.Tensor]:
    """OpenCV's bicubic coefficients (A = -0.75) for taps -1..2."""
    a = -0.75
    c0 = ((a * (x + 1) - 5 * a) * (x + 1) + 8 * a) * (x + 1) - 4 * a
    c1 = ((a + 2) * x - (a + 3)) * x * x + 1
    c2 = ((a + 2) * (1 - x) - (a + 3)) * (1 - x) * (1 - x) + 1
    return [c0, c1, c2, 1 - c0 - c1 - c2]


def _lanczos4(x: torch.Tensor) -> list[torch.Tensor]:
    """OpenCV's Lanczos-4 coefficients for taps -3..4, normalised; a pulse at integer positions."""
    t = [x + 3 - i for i in range(8)]
    safe = [torch.where(v.abs() < 1e-7, 1.0, v) for v in t]
    c = [torch.sin(math.pi * v) * torch.sin(math.pi * v / 4) / (v * v) for v in safe]
    total = sum(c)
    pulse = x < torch.finfo(torch.float32).eps
    return [torch.where(pulse, float(i == 3), ci / total) for i, ci in enumerate(c)]


def _noise(x: torch.Tensor, sizes: Sizes, ops: list[dict[str, Any]]) -> tuple[torch.Tensor, Sizes]:
    """Gaussian (sigma in 0..255 units) or Poisson noise, colour or gray, as the worker's ``_noise``.

    One generator per (kind, gray) group, seeded from the group's drawn seeds: one call per group.
    """
    out = x.clone()
    s, c, h, w = x.shape
    for kind, gray in sorted({(op["kind"], bool(op["gray"])) for op in ops}):
        ii = [i for i, op in enumerate(ops) if op["kind"] == kind and bool(op["gray"]) == gray]
        t = _dev(ii, x.device)
        g = torch.Generator(device=x.device)
        g.manual_seed(int(np.random.SeedSequence([int(ops[i]["seed"]) for i in ii]).generate_state(1, np.uint64)[0]))
        strength = _dev([ops[i]["strength"] for i in ii], x.device, torch.float32)[:, None, None, None]
        sub = x[t]
        if kind == "gaussian":
            n = torch.randn(len(ii), 1 if gray else c, h, w, generator=g, device=x.device) * strength
        else:
            base = sub.mean(1, keepdim=True) if gray else sub
            n = (torch.poisson(base, generator=g) - base) * strength
        out[t] = _half_up(sub + n)
    return out, sizes


# The IJG standard tables (JPEG Annex K.1, K.2) in natural order, as libjpeg's jcparam.c holds them.
_STD_LUMA = [16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55, 14, 13, 16, 24, 40, 57, 69, 56,
             14, 17, 22, 29, 51, 87, 80, 62, 18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
             49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99]
_STD_CHROMA = [17, 18, 24, 47, 99, 99, 99, 99, 18, 21, 26, 66, 99, 99, 99, 99, 24, 26, 56, 99, 99, 99, 99, 99,
               47, 66, 99, 99, 99, 99, 99, 99] + [99] * 32


def _fix(v: float) -> int:
    """libjpeg's FIX(): a constant in 16-bit fixed point."""
    return int(v * 65536 + 0.5)


def _quant_tables(quality: torch.Tensor) -> torch.Tensor:
    """(S, 2, 8, 8) luma/chroma tables of per-sample qualities: jpeg_quality_scaling then
    jpeg_add_quant_table with force_baseline (integer maths, as libjpeg)."""
    q = quality.clamp(1, 100)
    scale = torch.where(q < 50, 5000 // q, 200 - 2 * q)
    return ((_base_tables(q.device) * scale.view(-1, 1, 1, 1) + 50) // 100).clamp(1, 255)


@functools.cache
def _base_tables(device: torch.device) -> torch.Tensor:
    """The IJG base tables (1, 2, 8, 8) int32 on ``device``, built once per device: not a copy from
    the host at every JPEG of every step."""
    return _dev([_STD_LUMA, _STD_CHROMA], device, torch.int32).view(1, 2, 8, 8)


# libjpeg's ISLOW DCT constants: FIX(c) in 13-bit fixed point (jfdctint.c, jidctint.c).
_C = {k: int(v * 8192 + 0.5) for k, v in {
    "0_298": 0.298631336, "0_390": 0.390180644, "0_541": 0.541196100, "0_765": 0.765366865,
    "0_899": 0.899976223, "1_175": 1.175875602, "1_501": 1.501321110, "1_847": 1.847759065,
    "1_961": 1.961570560, "2_053": 2.053119869, "2_562": 2.562915447, "3_072": 3.072711026}.items()}


def _descale(x: torch.Tensor, n: int) -> torch.Tensor:
    return (x + (1 << (n - 1))) >> n


def _odd_rotation(t0: torch.Tensor, t1: torch.Tensor, t2: torch.Tensor,
                  t3: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The odd part shared by libjpeg's ISLOW FDCT (t0..t3 = tmp4..tmp7) and IDCT (in 7, 5, 3, 1)."""
    z1, z2, z3, z4 = t0 + t3, t1 + t2, t0 + t2, t1 + t3
    z5 = (z3 + z4) * _C["1_175"]
    z1, z2 = z1 * -_C["0_899"], z2 * -_C["2_562"]
    z3, z4 = z3 * -_C["1_961"] + z5, z4 * -_C["0_390"] + z5
    return (t0 * _C["0_298"] + z1 + z3, t1 * _C["2_053"] + z2 + z4,
            t2 * _C["3_072"] + z2 + z3, t3 * _C["1_501"] + z1 + z4)


def _fdct_1d(x: torch.Tensor, first: bool) -> torch.Tensor:
    """One pass of jpeg_fdct_islow along the last axis (rows first, then columns)."""
    d = x.unbind(-1)
    t0, t7, t1, t6 = d[0] + d[7], d[0] - d[7], d[1] + d[6], d[1] - d[6]
    t2, t5, t3, t4 = d[2] + d[5], d[2] - d[5], d[3] + d[4], d[3] - d[4]
    t10, t13, t11, t12 = t0 + t3, t0 - t3, t1 + t2, t1 - t2
    if first:
        o0, o4, n = (t10 + t11) << 2, (t10 - t11) << 2, 11
    else:
        o0, o4, n = _descale(t10 + t11, 2), _descale(t10 - t11, 2), 15
    z1 = (t12 + t13) * _C["0_541"]
    o7, o5, o3, o1 = _odd_rotation(t4, t5, t6, t7)
    return torch.stack([o0, _descale(o1, n), _descale(z1 + t13 * _C["0_765"], n), _descale(o3, n), o4,
                        _descale(o5, n), _descale(z1 - t12 * _C["1_847"], n), _descale(o7, n)], -1)


def _idct_1d(x: torch.Tensor, n: int) -> torch.Tensor:
    """One pass of jpeg_idct_islow along the last axis (columns first, descale 11; rows, 18)."""
    v = x.unbind(-1)
    z1 = (v[2] + v[6]) * _C["0_541"]
    e2, e3 = z1 - v[6] * _C["1_847"], z1 + v[2] * _C["0_765"]
    e0, e1 = (v[0] + v[4]) << 13, (v[0] - v[4]) << 13
    t10, t13, t11, t12 = e0 + e3, e0 - e3, e1 + e2, e1 - e2
    o0, o1, o2, o3 = _odd_rotation(v[7], v[5], v[3], v[1])
    return _descale(torch.stack([t10 + o3, t11 + o2, t12 + o1, t13 + o0,
                                 t13 - o0, t12 - o1, t11 - o2, t10 - o3], -1), n)


def _blocks_roundtrip(planes: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """Level shift, 8x8 DCT, quantisation, dequantisation, IDCT of (..., H, W) int32 planes with one
    (..., 8, 8) table each: libjpeg's ISLOW FDCT (output scaled by 8), its quantiser (divide by
    8 q rounding half away from zero), its ISLOW IDCT. In int32: libjpeg's design keeps every
    product of 8-bit samples within 32 bits (its JLONG is 32-bit on 32-bit platforms), and GPUs
    emulate int64 multiplies."""
    *lead, h, w = planes.shape
    blocks = (planes - 128).view(*lead, h // 8, 8, w // 8, 8).transpose(-3, -2)  # (..., hb, wb, 8, 8)
    coef = _fdct_1d(_fdct_1d(blocks, True).transpose(-1, -2), False).transpose(-1, -2)
    q8 = (table * 8)[..., None, None, :, :]
    qc = torch.div(coef.abs() + q8 // 2, q8, rounding_mode="floor") * torch.sign(coef)
    cols = _idct_1d((qc * (q8 // 8)).transpose(-1, -2), 11).transpose(-1, -2)
    pix = (_idct_1d(cols, 18) + 128).clamp_(0, 255)
    return pix.transpose(-3, -2).reshape(*lead, h, w)


def _jpeg(x: torch.Tensor, sizes: Sizes, ops: list[dict[str, Any]]) -> tuple[torch.Tensor, Sizes]:
    """A baseline JPEG round trip per sample, batched in torch, step for step as cv2.imencode +
    cv2.imdecode (libjpeg-turbo defaults) do it: RGB -> YCbCr (BT.601 full range, libjpeg's fixed
    point), each sample's edge replicated to a multiple of 16 (chroma rows past the last one copied
    after downsampling, as jcprepct pads), 4:2:0 chroma (2x2 sums with libjpeg's alternating bias),
    ISLOW DCT, the IJG tables scaled by each sample's quality, ISLOW IDCT, libjpeg's "fancy"
    triangle chroma upsampling, back to RGB. Integer maths throughout: bit-exact with OpenCV.

    Qualities and sizes reach the device asynchronously (pinned copies): no host sync, and no
    per-image loop (Huffman coding is lossless, so it is skipped).
    """
    s, _, h, w = x.shape
    dev = x.device
    hp, wp = -(-h // 16) * 16, -(-w // 16) * 16
    hs = _dev([z[0] for z in sizes], dev)[:, None]
    ws = _dev([z[1] for z in sizes], dev)[:, None]
    iy = torch.minimum(torch.arange(hp, device=dev)[None, :], hs - 1)  # each sample's edge replicated
    ix = torch.minimum(torch.arange(wp, device=dev)[None, :], ws - 1)
    rgb = _gather_axis(_gather_axis(x, iy, 2), ix, 3).to(torch.int32)
    r, g, b = rgb.unbind(1)
    half, off = 1 << 15, 128 << 16
    y = (_fix(0.299) * r + _fix(0.587) * g + _fix(0.114) * b + half) >> 16
    cb = (-_fix(0.16874) * r - _fix(0.33126) * g + _fix(0.5) * b + off + half - 1) >> 16
    cr = (_fix(0.5) * r - _fix(0.41869) * g - _fix(0.08131) * b + off + half - 1) >> 16
    # int32 as libjpeg (sum() of an integer tensor would promote to int64: twice the memory and time)
    c = torch.stack([cb, cr], 1).view(s, 2, hp // 2, 2, wp // 2, 2).sum((3, 5), dtype=torch.int32)
    c = (c + 1 + torch.arange(wp // 2, device=dev, dtype=torch.int32) % 2) >> 2
    ch, cw = (hs + 1) // 2, (ws + 1) // 2
    # jcprepct pads the bottom after downsampling: chroma rows past each sample's last are copies of it
    c = _gather_axis(c, torch.minimum(torch.arange(hp // 2, device=dev)[None, :], ch - 1), 2)
    tables = _quant_tables(_dev([int(op["quality"]) for op in ops], dev, torch.int32))
    y = _blocks_roundtrip(y, tables[:, 0])
    c = _blocks_roundtrip(c, tables[:, 1:2])
    c = _fancy_upsample(c, ch, cw)
    cb, cr = c[:, 0] - 128, c[:, 1] - 128
    out = torch.stack([y + ((_fix(1.402) * cr + half) >> 16),
                       y + ((-_fix(0.34414) * cb - _fix(0.71414) * cr + half) >> 16),
                       y + ((_fix(1.772) * cb + half) >> 16)], 1)
    return out[:, :, :h, :w].clamp_(0, 255).float(), sizes


def _fancy_upsample(c: torch.Tensor, ch: torch.Tensor, cw: torch.Tensor) -> torch.Tensor:
    """libjpeg's h2v2_fancy_upsample: each output pixel 9/16, 3/16, 3/16, 1/16 of its nearest
    chroma samples, rounding biases 8 (even columns) and 7 (odd), the chroma plane's last real row
    and column (``ch``, ``cw``: (S, 1) each) replicated beyond it."""
    s, k, h, w = c.shape
    up, down = _neighbours(h, ch, c.device)
    col_sums = torch.stack([3 * c + _gather_axis(c, up, 2), 3 * c + _gather_axis(c, down, 2)], 3)
    col_sums = col_sums.view(s, k, 2 * h, w)
    left, right = _neighbours(w, cw, c.device)
    return torch.stack([(3 * col_sums + _gather_axis(col_sums, left, 3) + 8) >> 4,
                        (3 * col_sums + _gather_axis(col_sums, right, 3) + 7) >> 4], 4).view(s, k, 2 * h, 2 * w)


def _neighbours(n: int, size: torch.Tensor, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(S, n) indices of the previous and next sample along an axis, replicated at 0 and size - 1."""
    i = torch.arange(n, device=device)[None, :]
    return (i - 1).clamp(min=0).expand(size.shape[0], n), torch.minimum(i + 1, size - 1)


def _gather_axis(x: torch.Tensor, idx: torch.Tensor, dim: int) -> torch.Tensor:
    """x (S, C, H, W) gathered along ``dim`` (2 or 3) by per-sample indices (S, n)."""
    view = (idx.shape[0], 1, -1, 1) if dim == 2 else (idx.shape[0], 1, 1, -1)
    shape = list(x.shape)
    shape[dim] = idx.shape[1]
    return x.gather(dim, idx.reshape(view).expand(shape))


_OPS: dict[str, Callable[[torch.Tensor, Sizes, list[dict[str, Any]]], tuple[torch.Tensor, Sizes]]] = {
    "resize": _resize, "blur": _blur, "median": _median, "usm": _usm, "noise": _noise, "jpeg": _jpeg}
