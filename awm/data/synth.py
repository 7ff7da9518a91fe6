"""Deterministic anime-style test images: cel-shaded shapes, gradients, line art, textures.

Tests and the built-in demo use these instead of downloaded data (licence-clean: generated).
They imitate what makes anime wallpapers hard for SR: flat cel regions with a hard shadow
tone, soft gradients and highlights, dark anti-aliased line art of varying width, blurred
backgrounds, hair-like strands, screen tone and small sparkles. The same seed always gives
the same pixels.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from awm.imageio import atomic_write_bytes, encode_image

# Common wallpaper aspect ratios (w, h) and a few odd ones.
ASPECTS = [(16, 9), (16, 10), (21, 9), (4, 3), (3, 2), (1, 1), (9, 16), (2, 3)]


def _color(rng: np.random.Generator, sat: tuple[float, float] = (0.25, 0.9),
           val: tuple[float, float] = (0.45, 1.0)) -> np.ndarray:
    h = rng.uniform(0, 180)
    s = rng.uniform(*sat) * 255
    v = rng.uniform(*val) * 255
    hsv = np.uint8([[[h, s, v]]])
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0, 0].astype(np.float32)


def _gradient(h: int, w: int, c0: np.ndarray, c1: np.ndarray, angle: float, radial: bool,
              center: tuple[float, float] = (0.5, 0.5)) -> np.ndarray:
    yy = np.arange(h, dtype=np.float32)[:, None]
    xx = np.arange(w, dtype=np.float32)[None, :]
    if radial:
        t = np.hypot((xx / w - center[0]) * w / max(h, w), (yy / h - center[1]) * h / max(h, w)) * 1.6
    else:
        t = np.cos(angle) * xx / w + np.sin(angle) * yy / h
        lo, hi = float(t.min()), float(t.max())
        t = (t - lo) * (1.0 / max(hi - lo, 1e-6))
    t = np.clip(t, 0, 1, out=t)[..., None]
    return c0 + (c1 - c0) * t


def _blob(rng: np.random.Generator, cx: float, cy: float, r: float, n: int = 9) -> np.ndarray:
    """A smooth closed curve (wobbly ellipse) as an int polygon."""
    ang = np.linspace(0, 2 * np.pi, n * 8, endpoint=False)
    radius = np.full_like(ang, r)
    for k in range(1, 4):
        radius += r * rng.uniform(0, 0.25 / k) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    sx, sy = rng.uniform(0.6, 1.4), rng.uniform(0.6, 1.4)
    pts = np.stack([cx + radius * np.cos(ang) * sx, cy + radius * np.sin(ang) * sy], 1)
    return np.round(pts * 16).astype(np.int32)  # 4 fractional bits for LINE_AA


def _bezier(p: np.ndarray, n: int = 48) -> np.ndarray:
    t = np.linspace(0, 1, n)[:, None]
    pts = ((1 - t) ** 3) * p[0] + 3 * ((1 - t) ** 2) * t * p[1] + 3 * (1 - t) * t ** 2 * p[2] + t ** 3 * p[3]
    return np.round(pts * 16).astype(np.int32)


def _fill(canvas: np.ndarray, mask: np.ndarray, color: np.ndarray | float) -> None:
    """Blend ``color`` (scalar, RGB or an image) into ``canvas`` where ``mask`` > 0, in its bounding box only."""
    x, y, bw, bh = cv2.boundingRect((mask > 0).astype(np.uint8))
    if bw == 0 or bh == 0:
        return
    box = (slice(y, y + bh), slice(x, x + bw))
    m = mask[box][..., None]
    c = color[box] if isinstance(color, np.ndarray) and color.ndim == 3 else color
    canvas[box] += m * (c - canvas[box])


def _poly_mask(shape: tuple[int, int], pts: np.ndarray) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    cv2.fillPoly(m, [pts], 255, cv2.LINE_AA, shift=4)
    return m.astype(np.float32) / 255.0


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    bg = _gradient(h, w, _color(rng, val=(0.6, 1.0)), _color(rng, val=(0.3, 0.9)),
                   rng.uniform(0, np.pi), bool(rng.random() < 0.3))
    # soft out-of-focus shapes (blurred background), clouds, bokeh
    layer = bg.copy()
    for _ in range(rng.integers(3, 9)):
        pts = _blob(rng, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.3) * max(h, w))
        _fill(layer, _poly_mask((h, w), pts), _color(rng, sat=(0.1, 0.6), val=(0.5, 1.0)))
    k = max(3, int(max(h, w) * rng.uniform(0.01, 0.04)) | 1)
    layer = cv2.GaussianBlur(layer, (k, k), 0)
    for _ in range(rng.integers(0, 12)):
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        r = int(rng.uniform(0.005, 0.03) * max(h, w)) + 1
        overlay = layer.copy()
        cv2.circle(overlay, c, r, _color(rng, sat=(0, 0.3), val=(0.85, 1.0)).tolist(), -1, cv2.LINE_AA)
        a = rng.uniform(0.2, 0.6)
        layer = cv2.addWeighted(overlay, a, layer, 1 - a, 0)
    return layer


def _cel_shape(rng: np.random.Generator, img: np.ndarray, line: np.ndarray, scale: float) -> None:
    """A cel-shaded shape: base tone, hard shadow tone, soft highlight, dark outline."""
    h, w = img.shape[:2]
    cx, cy = rng.uniform(0.1, 0.9) * w, rng.uniform(0.1, 0.9) * h
    r = rng.uniform(0.04, 0.22) * scale
    pts = _blob(rng, cx, cy, r)
    mask = _poly_mask((h, w), pts)
    base = _color(rng)
    shade = _gradient(h, w, base * rng.uniform(1.0, 1.1), base * rng.uniform(0.8, 0.95),
                      rng.uniform(0, 2 * np.pi), False)
    _fill(img, mask, np.clip(shade, 0, 255))
    # hard-edged shadow: the shape shifted, intersected with itself
    dx, dy = rng.uniform(-0.35, 0.35, 2) * r
    shadow = _poly_mask((h, w), pts + np.round(np.array([dx, dy]) * 16).astype(np.int32))
    shadow = np.clip(mask - shadow, 0, 1)
    _fill(img, shadow * rng.uniform(0.5, 0.9), base * rng.uniform(0.45, 0.7))
    # soft highlight
    if rng.random() < 0.7:
        hl = np.zeros((h, w), np.float32)
        hc = (int(cx - dx * 0.8), int(cy - dy * 0.8))
        cv2.ellipse(hl, hc, (max(1, int(r * 0.3)), max(1, int(r * 0.15))), rng.uniform(0, 180), 0, 360, 1.0, -1,
                    cv2.LINE_AA)
        k = max(3, int(r * 0.2) | 1)
        hl = cv2.GaussianBlur(hl, (k, k), 0) * mask * rng.uniform(0.3, 0.8)
        _fill(img, hl, 255.0)
    thick = max(1, int(round(rng.uniform(0.6, 2.5) * scale / 512)))
    cv2.polylines(line, [pts], True, 1.0, thick, cv2.LINE_AA, shift=4)


def _strands(rng: np.random.Generator, img: np.ndarray, line: np.ndarray, scale: float) -> None:
    """Hair-like bundles of curves: filled ribbons with fine inner strokes."""
    h, w = img.shape[:2]
    color = _color(rng)
    x0, y0 = rng.uniform(0, w), rng.uniform(0, h * 0.6)
    for _ in range(rng.integers(3, 10)):
        p = np.array([[x0, y0]] + [[x0 + rng.uniform(-0.3, 0.3) * scale, y0 + rng.uniform(0.05, 0.4) * scale * (k + 1)]
                                   for k in range(3)], np.float32)
        width = rng.uniform(0.01, 0.04) * scale
        left, right = _bezier(p), _bezier(p + np.array([width, 0], np.float32))
        ribbon = np.concatenate([left, right[::-1]])
        _fill(img, _poly_mask((h, w), ribbon), color * rng.uniform(0.8, 1.1))
        thick = max(1, int(round(scale / 700)))
        cv2.polylines(line, [left, right], False, 1.0, thick, cv2.LINE_AA, shift=4)
        cv2.polylines(line, [_bezier(p + np.array([width / 2, 0], np.float32))], False,
                      rng.uniform(0.3, 0.6), 1, cv2.LINE_AA, shift=4)


def _eye(rng: np.random.Generator, img: np.ndarray, line: np.ndarray, scale: float) -> None:
    """Concentric gradient ellipses with a specular highlight, like an anime eye."""
    h, w = img.shape[:2]
    c = (int(rng.uniform(0.1, 0.9) * w), int(rng.uniform(0.1, 0.9) * h))
    ax = (max(2, int(rng.uniform(0.02, 0.06) * scale)), max(3, int(rng.uniform(0.03, 0.08) * scale)))
    m = np.zeros((h, w), np.float32)
    cv2.ellipse(m, c, ax, 0, 0, 360, 1.0, -1, cv2.LINE_AA)
    grad = _gradient(h, w, _color(rng, val=(0.2, 0.5)), _color(rng, val=(0.7, 1.0)), np.pi / 2, False)
    _fill(img, m, grad)
    cv2.ellipse(img, c, (max(1, ax[0] // 2), max(1, ax[1] // 2)), 0, 0, 360, (20, 15, 30), -1, cv2.LINE_AA)
    cv2.circle(img, (c[0] - ax[0] // 3, c[1] - ax[1] // 3), max(1, ax[0] // 3), (255, 255, 255), -1, cv2.LINE_AA)
    cv2.ellipse(line, c, ax, 0, 0, 360, 1.0, max(1, int(scale / 400)), cv2.LINE_AA)


def _texture(rng: np.random.Generator, img: np.ndarray, scale: float) -> None:
    """Screen tone dots or hatching inside a region, and sparkles."""
    h, w = img.shape[:2]
    pts = _blob(rng, rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.05, 0.2) * scale)
    region = _poly_mask((h, w), pts)
    period = max(3, int(rng.uniform(3, 8) * scale / 1024) + 3)
    yy, xx = np.mgrid[0:h, 0:w]
    if rng.random() < 0.5:
        pattern = (((xx % period) - period / 2) ** 2 + ((yy % period) - period / 2) ** 2 < (period / 3.5) ** 2)
    else:
        pattern = ((xx + yy) % period) < max(1, period // 3)
    _fill(img, region * pattern.astype(np.float32) * rng.uniform(0.2, 0.5), _color(rng, val=(0.1, 0.4)))
    for _ in range(rng.integers(0, 15)):
        c = (int(rng.uniform(0, w)), int(rng.uniform(0, h)))
        s = int(rng.uniform(0.004, 0.015) * scale) + 2
        cv2.line(img, (c[0] - s, c[1]), (c[0] + s, c[1]), (255, 255, 240), 1, cv2.LINE_AA)
        cv2.line(img, (c[0], c[1] - s), (c[0], c[1] + s), (255, 255, 240), 1, cv2.LINE_AA)


def generate(seed: int, width: int = 1024, height: int = 576, alpha: bool = False) -> np.ndarray:
    """One anime-style image (RGB, or RGBA with a soft-edged subject), identical for the same arguments."""
    rng = np.random.default_rng([seed, width, height])
    h, w = height, width
    scale = float(max(h, w))
    img = _background(rng, h, w)
    line = np.zeros((h, w), np.float32)
    for _ in range(rng.integers(4, 12)):
        _cel_shape(rng, img, line, scale)
    for _ in range(rng.integers(0, 3)):
        _strands(rng, img, line, scale)
    for _ in range(rng.integers(0, 3)):
        _eye(rng, img, line, scale)
    for _ in range(rng.integers(0, 3)):
        _texture(rng, img, scale)
    ink = _color(rng, sat=(0.2, 0.6), val=(0.05, 0.25))
    _fill(img, np.clip(line, 0, 1), ink)
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    if alpha:
        a = np.zeros((h, w), np.float32)
        pts = _blob(rng, w / 2, h / 2, 0.35 * min(h, w))
        a = _poly_mask((h, w), pts)
        out = np.dstack([out, np.round(a * 255).astype(np.uint8)])
    return out


def random_size(rng: np.random.Generator, long_side: tuple[int, int] = (640, 1280)) -> tuple[int, int]:
    """A wallpaper-like (width, height) with one of the common aspect ratios."""
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    long = int(rng.integers(long_side[0], long_side[1] + 1))
    if aw >= ah:
        return long, max(16, round(long * ah / aw))
    return max(16, round(long * aw / ah)), long


def write_dataset(out_dir: str | Path, n: int, seed: int = 0, long_side: tuple[int, int] = (640, 1280),
                  fmt: str = "png") -> list[Path]:
    """Write ``n`` generated wallpapers as files (skipping ones already there); returns their paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        rng = np.random.default_rng([seed, i, 7])
        w, h = random_size(rng, long_side)
        p = out / f"gen_{seed}_{i:05d}.{fmt}"
        if not p.exists():
            atomic_write_bytes(p, encode_image(generate(seed * 100_003 + i, w, h), fmt, 95 if fmt == "jpg" else None))
        paths.append(p)
    return paths
