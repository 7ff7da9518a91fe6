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
- JPEG through real codecs: ``torchvision.io.encode_jpeg``/``decode_jpeg`` (nvJPEG on CUDA).

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
import math
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.io import ImageReadMode, decode_jpeg, encode_jpeg

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
    """TF32 rounds conv inputs to 10 mantissa bits (~0.25 levels at 255): IEEE fp32 here. The
    legacy flag, as the trainer sets it (torch refuses reads after mixing it with the new API)."""
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = old


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


def _jpeg(x: torch.Tensor, sizes: Sizes, ops: list[dict[str, Any]]) -> tuple[torch.Tensor, Sizes]:
    """A real JPEG round trip per sample (libjpeg-turbo on CPU, nvJPEG on CUDA): one encode call
    per quality (the codec takes one), then one batched decode of them all."""
    imgs = [x[i, :, :h, :w].to(torch.uint8).contiguous() for i, (h, w) in enumerate(sizes)]
    data: list[torch.Tensor] = [torch.empty(0)] * len(ops)
    for q in sorted({int(op["quality"]) for op in ops}):
        ii = [i for i, op in enumerate(ops) if int(op["quality"]) == q]
        for i, e in zip(ii, encode_jpeg([imgs[i] for i in ii], quality=q), strict=True):
            data[i] = e
    out = torch.zeros_like(x)
    decoded = decode_jpeg([d.cpu() for d in data], mode=ImageReadMode.RGB, device=x.device)
    for i, img in enumerate(decoded):
        out[i, :, :img.shape[1], :img.shape[2]] = img
    return out, sizes


_OPS: dict[str, Callable[[torch.Tensor, Sizes, list[dict[str, Any]]], tuple[torch.Tensor, Sizes]]] = {
    "resize": _resize, "blur": _blur, "median": _median, "usm": _usm, "noise": _noise, "jpeg": _jpeg}
