"""The CPU implementations of the degradation ops that :mod:`awm.data.degrade` draws and replays.

Each op takes and returns an RGB uint8 image and rounds and clips, so a replay of stored params is
bit-exact. :data:`OPS` maps an op's name (``params["ops"][i]["op"]``) to its function;
:mod:`awm.data.degrade_device` implements the same ops on a batch on the training device.
"""

from __future__ import annotations

import io as _io
import math
from fractions import Fraction
from typing import Any

import cv2
import numpy as np

from awm.imageio import encode_image

_INTERP = {"area": cv2.INTER_AREA, "bilinear": cv2.INTER_LINEAR, "bicubic": cv2.INTER_CUBIC,
           "lanczos": cv2.INTER_LANCZOS4}


def resize(img: np.ndarray, op: dict[str, Any], cache: dict | None = None) -> np.ndarray:
    """cv2.resize, except area by a power of two >= 4: successive exact 2x2 box averages (cv2's SIMD
    path; one-step INTER_AREA /4 is 5x slower and differs only by intermediate rounding)."""
    w, h = op["size"]
    f = img.shape[1] // w
    if op["interp"] != "area" or f < 2 or f & (f - 1) or img.shape[:2] != (h * f, w * f):
        return cv2.resize(img, (w, h), interpolation=_INTERP[op["interp"]])
    if cache is not None and (w, h) in cache:
        return cache[(w, h)]
    src = img if f == 2 else resize(img, {"size": [w * 2, h * 2], "interp": "area"}, cache)
    out = cv2.resize(src, (w, h), interpolation=cv2.INTER_AREA)
    if cache is not None:
        cache[(w, h)] = out
    return out


def _median(img: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    out = cv2.medianBlur(img, op["ksize"])
    m = op.get("edge_mask")
    if m:
        edges = cv2.Canny(cv2.cvtColor(img, cv2.COLOR_RGB2GRAY), m["low"], m["high"])
        r = m["dilate"]
        if r > 0:
            edges = cv2.dilate(edges, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
        out = np.where(edges[..., None] > 0, img, out)
    return out


def blur_kernel(op: dict[str, Any]) -> np.ndarray:
    """The normalised float32 kernel of a blur op, shared by the worker and device paths.

    Kinds (Real-ESRGAN's): ``gaussian`` (records without ``kind``), ``generalized``
    ``exp(-0.5 q^beta)``, ``plateau`` ``1 / (1 + q^beta)`` with ``q`` the rotated anisotropic
    quadratic form, and ``sinc``: the circular low-pass ``omega J1(omega r) / (2 pi r)``.
    """
    c = op["ksize"] // 2
    yy, xx = np.mgrid[-c:c + 1, -c:c + 1].astype(np.float64)
    kind = op.get("kind", "gaussian")
    if kind == "sinc":
        w, r = op["omega"], np.hypot(xx, yy)
        k = np.where(r > 0, w * _bessel_j1(w * r) / (2 * math.pi * np.where(r > 0, r, 1)), w * w / (4 * math.pi))
        return (k / k.sum()).astype(np.float32)
    cos, sin = math.cos(op["theta"]), math.sin(op["theta"])
    u, v = cos * xx + sin * yy, -sin * xx + cos * yy
    q = (u / op["sigma_x"]) ** 2 + (v / op["sigma_y"]) ** 2
    k = {"gaussian": lambda: np.exp(-0.5 * q), "generalized": lambda: np.exp(-0.5 * q ** op["beta"]),
         "plateau": lambda: 1 / (1 + q ** op["beta"])}[kind]()
    return (k / k.sum()).astype(np.float32)


def _bessel_j1(x: np.ndarray) -> np.ndarray:
    """J1 by Bessel's integral (1/pi) int_0^pi cos(t - x sin t) dt: the midpoint rule on this
    smooth periodic integrand is exact to ~1e-15 for |x| < 60 with 256 points (no SciPy needed)."""
    t = (np.arange(256) + 0.5) * (math.pi / 256)
    return np.cos(t - np.multiply.outer(x, np.sin(t))).mean(axis=-1)


def _blur(img: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    k, sx, sy = op["ksize"], op.get("sigma_x"), op.get("sigma_y")
    if op.get("kind", "gaussian") == "gaussian" and sx == sy:
        return cv2.GaussianBlur(img, (k, k), sx)
    return cv2.filter2D(img, -1, blur_kernel(op))


def _usm(img: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    a = op["amount"]
    k = op["ksize"]
    blurred = cv2.GaussianBlur(img, (k, k), op["sigma"])
    sharp = cv2.addWeighted(img, 1.0 + a, blurred, -a, 0)
    if op["threshold"] <= 0:
        return sharp
    mask = cv2.absdiff(img, blurred).max(axis=2, keepdims=True) > op["threshold"]
    return np.where(mask, sharp, img)


def _noise(img: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    rng = np.random.default_rng(op["seed"])
    x = img.astype(np.float32)
    shape = img.shape[:2] + ((1,) if op["gray"] else (img.shape[2],))
    if op["kind"] == "gaussian":
        noise = rng.standard_normal(shape, dtype=np.float32) * np.float32(op["strength"])
    else:
        base = x.mean(axis=2, keepdims=True) if op["gray"] else x
        noise = (rng.poisson(base).astype(np.float32) - base) * np.float32(op["strength"])
    return np.clip(x + noise + 0.5, 0, 255).astype(np.uint8)


def _image_codec(img: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    data = encode_image(img, "jpg" if op["op"] == "jpeg" else "webp", op["quality"])
    return cv2.cvtColor(cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


VIDEO_MISSING = "PyAV is not installed: this preset draws H.264/H.265 steps (pip install 'awm[video]')"


def video_available() -> bool:
    """Whether an H.264/H.265 encoder is importable (PyAV wheels bundle libx264 and libx265)."""
    try:
        import av  # noqa: F401
    except ImportError:
        return False
    return True


def _video(img: np.ndarray, op: dict[str, Any]) -> np.ndarray:
    """One intra frame through x264/x265 (yuv420p, single thread: deterministic), padded to even sizes."""
    if op.get("skipped"):  # a record written before draws stopped depending on PyAV: replay it as stored
        return img
    try:
        import av
    except ImportError:
        raise RuntimeError(VIDEO_MISSING) from None

    h, w = img.shape[:2]
    ph, pw = max(16, h + (h & 1)), max(16, w + (w & 1))
    frame = av.VideoFrame.from_ndarray(np.pad(img, ((0, ph - h), (0, pw - w), (0, 0)), mode="edge"), format="rgb24")
    frame.pts, frame.time_base = 0, Fraction(1, 1)  # explicit timestamps: the muxer rejects unset ones (EINVAL)
    codec = {"h264": "libx264", "h265": "libx265"}[op["codec"]]
    opts = {"crf": str(op["crf"]), "preset": op["preset"]}
    opts.update({"threads": "1"} if codec == "libx264" else
                {"x265-params": "pools=none:frame-threads=1:log-level=error"})
    buf = _io.BytesIO()
    with av.open(buf, "w", format="matroska") as container:
        stream = container.add_stream(codec, rate=1)
        stream.width, stream.height, stream.pix_fmt = pw, ph, "yuv420p"
        stream.options = opts
        stream.codec_context.thread_count = 1
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    buf.seek(0)
    with av.open(buf, "r") as container:
        out = next(container.decode(video=0)).to_ndarray(format="rgb24")
    return np.ascontiguousarray(out[:h, :w])


OPS = {"resize": resize, "median": _median, "blur": _blur, "usm": _usm, "noise": _noise,
        "jpeg": _image_codec, "webp": _image_codec, "video": _video}

