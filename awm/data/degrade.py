"""Degradations that turn an HR wallpaper into its LR training input, reproducibly.

A preset (typed config) *draws* a list of operations with concrete parameters from a per-sample
RNG seeded by (global seed, sample id, scale) through SHA-256, so a sample degrades the same on
any machine, worker count or shard split. The drawn list is stored in the sample's json and
``apply_params`` replays it bit-exactly: the stored params are the ground truth, not the preset.

Every chain ends with a storage codec ``params["codec"]`` = {"format", "quality"}: the LR is
kept as those bytes (``encode_lr``), so the codec IS the last degradation and the LR decoded
from the shard is exactly what training sees. ``png`` means no final lossy step.

Images are RGB uint8 between operations (every op rounds and clips), so replays are exact.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, Literal

import cv2
import numpy as np

from awm.config import check, from_dict, help_field, to_dict
from awm.data.degrade_ops import OPS, VIDEO_MISSING, resize, video_available
from awm.errors import ConfigError
from awm.imageio import encode_image

Interp = Literal["area", "bilinear", "bicubic", "lanczos"]
LrFormat = Literal["jpg", "png", "webp"]
_RANDOM_INTERPS = ("area", "bilinear", "bicubic")



def _check_codec(p: Any) -> None:
    check(p.quality is None or 1 <= p.quality <= 100, "quality", p.quality, "1..100 or null (drawn)")
    lo, hi = p.quality_range
    check(1 <= lo <= hi <= 100, "quality_range", p.quality_range, "1 <= lo <= hi <= 100")


@dataclass(frozen=True)
class SeedPreset:
    """The seed notebook's chain: area /s, median 3x3, Gaussian sigma 0.6 (3x3), USM amount 0.5
    (Gaussian sigma 1.0, 5x5, no threshold), JPEG q85. Deterministic: no parameter is random.

    ``edge_mask`` (preset ``seed-edgemask``, the seed's TODO): the median is applied only outside
    the line art: Canny(low, high) on the downsampled gray image, dilated by ``mask_dilate`` px.
    """

    name: str = "seed"
    resize: Interp = help_field("downsampling filter", "area")
    median_ksize: int = help_field("median filter size (odd; 1 = off)", 3)
    edge_mask: bool = help_field("median only outside a dilated Canny edge mask", False)
    canny_low: int = help_field("Canny low threshold (edge mask)", 50)
    canny_high: int = help_field("Canny high threshold (edge mask)", 150)
    mask_dilate: int = help_field("edge mask dilation radius in LR pixels", 1)
    blur_sigma: float = help_field("Gaussian blur sigma in LR pixels (0 = off)", 0.6)
    blur_ksize: int = help_field("Gaussian kernel size (odd)", 3)
    usm_amount: float = help_field("unsharp-mask amount (0 = off)", 0.5)
    usm_sigma: float = help_field("unsharp-mask Gaussian sigma", 1.0)
    usm_ksize: int = help_field("unsharp-mask Gaussian kernel size (odd)", 5)
    usm_threshold: int = help_field("unsharp-mask threshold on |img - blur| (0..255)", 0)
    lr_format: LrFormat = help_field("LR storage codec (the last degradation)", "jpg")
    quality: int | None = help_field("codec quality (JPEG/WebP); null draws from quality_range", 85)
    quality_range: tuple[int, int] = help_field("codec quality range when quality is null", (85, 85))

    def __post_init__(self) -> None:
        check(self.median_ksize in (1, 3, 5), "median_ksize", self.median_ksize, "1, 3 or 5")
        check(self.blur_ksize % 2 == 1 and self.usm_ksize % 2 == 1, "blur_ksize/usm_ksize",
              (self.blur_ksize, self.usm_ksize), "odd sizes")
        check(self.blur_sigma >= 0 and self.usm_amount >= 0 and self.usm_sigma > 0, "blur_sigma/usm",
              (self.blur_sigma, self.usm_amount, self.usm_sigma), "non-negative, usm_sigma > 0")
        check(0 <= self.canny_low <= self.canny_high, "canny_low", self.canny_low, "0 <= low <= high")
        _check_codec(self)

    def draw(self, rng: np.random.Generator, size: tuple[int, int], scale: int) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = [_resize_op(size, scale, self.resize)]
        if self.median_ksize > 1:
            mask = ({"low": self.canny_low, "high": self.canny_high, "dilate": self.mask_dilate}
                    if self.edge_mask else None)
            ops.append({"op": "median", "ksize": self.median_ksize, "edge_mask": mask})
        if self.blur_sigma > 0:
            ops.append({"op": "blur", "ksize": self.blur_ksize, "sigma_x": self.blur_sigma,
                        "sigma_y": self.blur_sigma, "theta": 0.0})
        if self.usm_amount > 0:
            ops.append({"op": "usm", "amount": self.usm_amount, "sigma": self.usm_sigma, "ksize": self.usm_ksize,
                        "threshold": self.usm_threshold})
        return ops


@dataclass(frozen=True)
class RealESRGANPreset:
    """Second-order random degradation in the spirit of Real-ESRGAN (ranges from its paper's setup).

    Each order: blur (iso/aniso kernel, size odd in ``kernel_size``, sigmas in ``sigma*``, rotation
    uniform; Gaussian, generalised Gaussian (shape ``betag``) or plateau (``betap``) by
    ``kernel_prob``; with ``sinc_prob`` a circular sinc low-pass instead), random resize
    (up/down/keep with ``resize_prob``, factor in ``resize*``, random area/bilinear/bicubic), noise (Gaussian sigma in ``noise_sigma*`` 0..255 units, else
    Poisson scale in ``poisson*``; gray noise with ``gray_prob``), JPEG in ``jpeg_range``. Order 2
    blur happens with ``blur2_prob``; it ends with a resize to exactly HR/scale, a sinc filter with
    ``final_sinc_prob`` and the storage JPEG (quality drawn from ``quality_range``) as the final step.
    With ``kernel_prob=[1, 0, 0]``, ``sinc_prob=0`` and ``final_sinc_prob=0`` the draws are exactly
    those of versions before these kernels existed.
    """

    name: str = "realesrgan"
    kernel_size: tuple[int, int] = help_field("blur kernel size range (odd sizes)", (7, 21))
    aniso_prob: float = help_field("probability of an anisotropic kernel", 0.5)
    sigma1: tuple[float, float] = help_field("order-1 blur sigma range", (0.2, 3.0))
    sigma2: tuple[float, float] = help_field("order-2 blur sigma range", (0.2, 1.5))
    blur2_prob: float = help_field("probability of the order-2 blur", 0.8)
    kernel_prob: tuple[float, float, float] = help_field("probabilities of Gaussian, generalised Gaussian, plateau kernels",
                                                 (0.7, 0.15, 0.15))
    betag: tuple[float, float] = help_field("generalised-Gaussian shape range (1 = Gaussian)", (0.5, 4.0))
    betap: tuple[float, float] = help_field("plateau shape range", (1.0, 2.0))
    sinc_prob: float = help_field("probability that an order's blur is a sinc low-pass", 0.1)
    final_sinc_prob: float = help_field("probability of a sinc low-pass after the final resize", 0.8)
    resize_prob: tuple[float, float, float] = help_field("probabilities of up, down, keep", (0.2, 0.7, 0.1))
    resize1: tuple[float, float] = help_field("order-1 resize factor range (relative)", (0.15, 1.5))
    resize2: tuple[float, float] = help_field("order-2 resize factor range (relative)", (0.3, 1.2))
    gaussian_prob: float = help_field("probability of Gaussian (else Poisson) noise", 0.5)
    gray_prob: float = help_field("probability that the noise is gray", 0.4)
    noise_sigma1: tuple[float, float] = help_field("order-1 Gaussian noise sigma (0..255)", (1.0, 30.0))
    noise_sigma2: tuple[float, float] = help_field("order-2 Gaussian noise sigma (0..255)", (1.0, 25.0))
    poisson1: tuple[float, float] = help_field("order-1 Poisson noise scale", (0.05, 3.0))
    poisson2: tuple[float, float] = help_field("order-2 Poisson noise scale", (0.05, 2.5))
    jpeg_range: tuple[int, int] = help_field("order-1 in-memory JPEG quality range", (30, 95))
    lr_format: LrFormat = help_field("LR storage codec (the last degradation)", "jpg")
    quality: int | None = help_field("storage quality; null draws from quality_range", None)
    quality_range: tuple[int, int] = help_field("storage JPEG quality range (order-2 JPEG)", (30, 95))

    def __post_init__(self) -> None:
        lo, hi = self.kernel_size
        check(3 <= lo <= hi and lo % 2 == 1 and hi % 2 == 1, "kernel_size", self.kernel_size, "odd, 3 <= lo <= hi")
        check(abs(sum(self.resize_prob) - 1) < 1e-6, "resize_prob", self.resize_prob, "three probabilities summing to 1")
        check(len(self.kernel_prob) == 3 and min(self.kernel_prob) >= 0 and abs(sum(self.kernel_prob) - 1) < 1e-6,
              "kernel_prob", self.kernel_prob, "three probabilities summing to 1")
        check(0 < self.betag[0] <= self.betag[1] and 0 < self.betap[0] <= self.betap[1], "betag/betap",
              (self.betag, self.betap), "0 < lo <= hi")
        check(0 <= self.sinc_prob <= 1 and 0 <= self.final_sinc_prob <= 1, "sinc_prob/final_sinc_prob",
              (self.sinc_prob, self.final_sinc_prob), "probabilities in [0, 1]")
        _check_codec(self)

    def _blur(self, rng: np.random.Generator, sigma: tuple[float, float]) -> dict[str, Any]:
        """One order's kernel. A draw is skipped where its probability is 0, so the old draws stay."""
        if self.sinc_prob > 0 and rng.random() < self.sinc_prob:
            k = int(rng.integers(self.kernel_size[0] // 2, self.kernel_size[1] // 2 + 1)) * 2 + 1
            return _sinc_op(rng, k, math.pi / 3 if k < 13 else math.pi / 5)
        op = _blur_op(rng, self.kernel_size, sigma, self.aniso_prob)
        if self.kernel_prob[0] < 1:
            kind = int(rng.choice(3, p=list(self.kernel_prob)))
            if kind:
                op["kind"] = ("generalized", "plateau")[kind - 1]
                op["beta"] = float(rng.uniform(*(self.betag if kind == 1 else self.betap)))
        return op

    def draw(self, rng: np.random.Generator, size: tuple[int, int], scale: int) -> list[dict[str, Any]]:
        ops: list[dict[str, Any]] = []
        cur = size
        for order in (1, 2):
            sigma, rs, ns, ps = ((self.sigma1, self.resize1, self.noise_sigma1, self.poisson1) if order == 1
                                 else (self.sigma2, self.resize2, self.noise_sigma2, self.poisson2))
            if order == 1 or rng.random() < self.blur2_prob:
                ops.append(self._blur(rng, sigma))
            factor = _resize_factor(rng, rs, self.resize_prob)
            cur = (max(4, round(cur[0] * factor)), max(4, round(cur[1] * factor)))
            ops.append({"op": "resize", "size": list(cur), "interp": _choice(rng, _RANDOM_INTERPS)})
            ops.append(_noise_op(rng, self.gaussian_prob, self.gray_prob, ns, ps))
            if order == 1:
                ops.append({"op": "jpeg", "quality": int(rng.integers(self.jpeg_range[0], self.jpeg_range[1] + 1))})
        ops.append(_resize_op(size, scale, _choice(rng, _RANDOM_INTERPS)))
        if self.final_sinc_prob > 0 and rng.random() < self.final_sinc_prob:
            k = int(rng.integers(self.kernel_size[0] // 2, self.kernel_size[1] // 2 + 1)) * 2 + 1
            ops.append(_sinc_op(rng, k, math.pi / 3))
        return ops


VideoCodec = Literal["h264", "h265"]


@dataclass(frozen=True)
class APISRPreset:
    """Codec-oriented degradation in the spirit of APISR (anime production: compression, shuffled resize).

    Order 1: blur (sigma in ``sigma1``), resize (factor in ``resize1``), light noise with ``noise_prob``,
    then one compression drawn from ``codecs1`` with ``codec1_prob``: JPEG/WebP at quality in
    ``image_quality`` or an H.264/H.265 intra frame (CRF in ``crf_range``, x264/x265 ``video_preset``
    through PyAV, the ``awm[video]`` extra). The draw never looks at what is installed, so a sample's
    params are the same on every machine; applying a video step without PyAV raises. Order 2: blur with
    ``blur2_prob``, noise and the resize to HR/scale in shuffled order, an intra video frame with
    ``video2_prob``, then the storage codec (quality drawn from ``quality_range``).
    """

    name: str = "apisr"
    kernel_size: tuple[int, int] = help_field("blur kernel size range (odd sizes)", (7, 15))
    aniso_prob: float = help_field("probability of an anisotropic kernel", 0.5)
    sigma1: tuple[float, float] = help_field("order-1 blur sigma range", (0.2, 2.0))
    sigma2: tuple[float, float] = help_field("order-2 blur sigma range", (0.2, 1.2))
    blur2_prob: float = help_field("probability of the order-2 blur", 0.6)
    resize_prob: tuple[float, float, float] = help_field("probabilities of up, down, keep", (0.1, 0.8, 0.1))
    resize1: tuple[float, float] = help_field("order-1 resize factor range (relative)", (0.3, 1.2))
    noise_prob: float = help_field("probability of noise in each order", 0.3)
    noise_sigma: tuple[float, float] = help_field("Gaussian noise sigma (0..255)", (1.0, 10.0))
    poisson: tuple[float, float] = help_field("Poisson noise scale", (0.05, 1.0))
    codecs1: tuple[str, ...] = help_field("order-1 codecs (jpeg, webp, h264, h265)", ("jpeg", "webp", "h264", "h265"))
    codec1_prob: tuple[float, ...] = help_field("probabilities of codecs1", (0.4, 0.2, 0.2, 0.2))
    image_quality: tuple[int, int] = help_field("in-memory JPEG/WebP quality range", (20, 95))
    crf_range: tuple[int, int] = help_field("H.264/H.265 CRF range", (20, 32))
    video2_prob: float = help_field("probability of an order-2 intra video frame", 0.5)
    video_preset: str = help_field("x264/x265 speed preset", "fast")
    lr_format: LrFormat = help_field("LR storage codec (the last degradation)", "jpg")
    quality: int | None = help_field("storage quality; null draws from quality_range", None)
    quality_range: tuple[int, int] = help_field("storage quality range", (40, 95))

    def __post_init__(self) -> None:
        check(set(self.codecs1) <= {"jpeg", "webp", "h264", "h265"} and len(self.codecs1) == len(self.codec1_prob)
              and abs(sum(self.codec1_prob) - 1) < 1e-6, "codecs1", self.codecs1,
              "codecs from jpeg, webp, h264, h265 with as many probabilities summing to 1")
        check(abs(sum(self.resize_prob) - 1) < 1e-6, "resize_prob", self.resize_prob, "three probabilities summing to 1")
        _check_codec(self)

    def draw(self, rng: np.random.Generator, size: tuple[int, int], scale: int) -> list[dict[str, Any]]:
        ops = [_blur_op(rng, self.kernel_size, self.sigma1, self.aniso_prob)]
        factor = _resize_factor(rng, self.resize1, self.resize_prob)
        cur = (max(4, round(size[0] * factor)), max(4, round(size[1] * factor)))
        ops.append({"op": "resize", "size": list(cur), "interp": _choice(rng, _RANDOM_INTERPS)})
        if rng.random() < self.noise_prob:
            ops.append(_noise_op(rng, 0.5, 0.5, self.noise_sigma, self.poisson))
        codec = str(rng.choice(list(self.codecs1), p=list(self.codec1_prob)))
        ops.append(self._codec_op(rng, codec))
        stage2: list[dict[str, Any]] = [_resize_op(size, scale, _choice(rng, _RANDOM_INTERPS))]
        if rng.random() < self.blur2_prob:
            stage2.append(_blur_op(rng, self.kernel_size, self.sigma2, self.aniso_prob))
        if rng.random() < self.noise_prob:
            stage2.append(_noise_op(rng, 0.5, 0.5, self.noise_sigma, self.poisson))
        order = rng.permutation(len(stage2))
        ops.extend(stage2[int(i)] for i in order)
        if rng.random() < self.video2_prob:
            ops.append(self._codec_op(rng, _choice(rng, ("h264", "h265"))))
        return ops

    def _codec_op(self, rng: np.random.Generator, codec: str) -> dict[str, Any]:
        if codec in ("jpeg", "webp"):
            return {"op": codec, "quality": int(rng.integers(self.image_quality[0], self.image_quality[1] + 1))}
        return {"op": "video", "codec": codec, "crf": int(rng.integers(self.crf_range[0], self.crf_range[1] + 1)),
                "preset": self.video_preset}

    def needs_video(self) -> bool:
        """Whether a draw can contain an H.264/H.265 step (then PyAV must be installed to apply it)."""
        return self.video2_prob > 0 or any(c in ("h264", "h265") and p > 0
                                           for c, p in zip(self.codecs1, self.codec1_prob, strict=True))


Preset = SeedPreset | RealESRGANPreset | APISRPreset
PRESETS: dict[str, tuple[type, dict[str, Any]]] = {
    "seed": (SeedPreset, {}),
    "seed-edgemask": (SeedPreset, {"name": "seed-edgemask", "edge_mask": True}),
    "realesrgan": (RealESRGANPreset, {}),
    "apisr": (APISRPreset, {}),
}


def get_preset(name: str, **overrides: Any) -> Preset:
    """A preset config by name; ``overrides`` (e.g. lr_format="png", quality=90) replace its fields."""
    if name not in PRESETS:
        raise ConfigError("preset", name, ", ".join(PRESETS))
    cls, base = PRESETS[name]
    data = {**to_dict(cls(**base)), **{k: v for k, v in overrides.items() if v is not None}}
    return from_dict(cls, data, prefix="degrade.")


def sample_rng(seed: int, sample_id: str, scale: int) -> np.random.Generator:
    """Per-sample RNG from a SHA-256 of (seed, id, scale): stable across processes (unlike hash())."""
    digest = hashlib.sha256(f"awm-degrade/{seed}/{sample_id}/x{scale}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:16], "little"))


def draw_params(preset: Preset, size: tuple[int, int], scale: int, seed: int, sample_id: str) -> dict[str, Any]:
    """The full, replayable parameter record of one sample at one scale (``size`` = HR (w, h))."""
    w, h = size
    if w % scale or h % scale:
        raise ValueError(f"HR size {w}x{h} is not a multiple of scale {scale}: crop it first")
    rng = sample_rng(seed, sample_id, scale)
    ops = _round_floats(preset.draw(rng, size, scale))
    q = preset.quality
    if q is None and preset.lr_format != "png":
        q = int(rng.integers(preset.quality_range[0], preset.quality_range[1] + 1))
    return {"preset": preset.name, "scale": scale, "ops": ops,
            "codec": {"format": preset.lr_format, "quality": None if preset.lr_format == "png" else q}}


def degrade(hr: np.ndarray, scale: int, preset: Preset, seed: int, sample_id: str) -> tuple[np.ndarray, dict]:
    """LR (RGB uint8, exactly HR/scale, before the storage codec) and the params that reproduce it."""
    params = draw_params(preset, (hr.shape[1], hr.shape[0]), scale, seed, sample_id)
    return apply_params(hr, scale, params), params


def apply_params(hr: np.ndarray, scale: int, params: dict[str, Any],
                 cache: dict[tuple[int, int], np.ndarray] | None = None) -> np.ndarray:
    """Replay stored params on the HR (RGB uint8); bit-exact with what ``degrade`` returned.

    ``cache`` (one dict per HR image) shares area downsamples of the HR between scales: x4 reuses
    the x2 result, which is how x4 is defined anyway (see :func:`awm.data.degrade_ops.resize`).
    """
    img = hr
    for i, op in enumerate(params["ops"]):
        img = resize(img, op, cache) if i == 0 and op["op"] == "resize" else OPS[op["op"]](img, op)
    h, w = hr.shape[:2]
    if img.shape[:2] != (h // scale, w // scale):
        raise ValueError(f"params give {img.shape[1]}x{img.shape[0]}, expected {w // scale}x{h // scale}")
    return img


def encode_lr(lr: np.ndarray, params: dict[str, Any], bgr: bool = False) -> bytes:
    """The storage codec, the chain's last step: the bytes kept in the shard as ``lr_x{s}.<format>``.

    ``bgr=True`` takes an LR in OpenCV's order (from a channel-free chain) and gives the same bytes.
    """
    codec = params["codec"]
    if not bgr:
        return encode_image(lr, codec["format"], codec["quality"])
    fmt, q = codec["format"], codec["quality"]
    flags = {"jpg": [cv2.IMWRITE_JPEG_QUALITY, q], "webp": [cv2.IMWRITE_WEBP_QUALITY, q],
             "png": [cv2.IMWRITE_PNG_COMPRESSION, 3 if q is None else q]}[fmt]
    ok, buf = cv2.imencode("." + fmt, lr, flags)
    if not ok:
        raise ValueError(f"encoding the LR as {fmt} failed")
    return buf.tobytes()


def channel_free(params: dict[str, Any]) -> bool:
    """True when every op treats R, G and B alike, so the chain may run on BGR data unchanged."""
    return all(op["op"] in ("resize", "blur", "usm") or (op["op"] == "median" and not op.get("edge_mask"))
               for op in params["ops"])


def _round_floats(ops: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drawn floats rounded to 4 decimals before use, so the json record is short and exact."""
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in op.items()} for op in ops]


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _resize_op(size: tuple[int, int], scale: int, interp: str) -> dict[str, Any]:
    return {"op": "resize", "size": [size[0] // scale, size[1] // scale], "interp": interp}


def _resize_factor(rng: np.random.Generator, span: tuple[float, float], probs: tuple[float, float, float]) -> float:
    mode = int(rng.choice(3, p=list(probs)))
    if mode == 0:
        return float(rng.uniform(1.0, span[1]))
    return float(rng.uniform(span[0], 1.0)) if mode == 1 else 1.0


def _blur_op(rng: np.random.Generator, ksize: tuple[int, int], sigma: tuple[float, float],
             aniso_prob: float) -> dict[str, Any]:
    k = int(rng.integers(ksize[0] // 2, ksize[1] // 2 + 1)) * 2 + 1
    sx = float(rng.uniform(*sigma))
    if rng.random() < aniso_prob:
        return {"op": "blur", "ksize": k, "sigma_x": sx, "sigma_y": float(rng.uniform(*sigma)),
                "theta": float(rng.uniform(-math.pi, math.pi))}
    return {"op": "blur", "ksize": k, "sigma_x": sx, "sigma_y": sx, "theta": 0.0}


def _sinc_op(rng: np.random.Generator, ksize: int, omega_lo: float) -> dict[str, Any]:
    return {"op": "blur", "kind": "sinc", "ksize": ksize, "omega": float(rng.uniform(omega_lo, math.pi))}


def _noise_op(rng: np.random.Generator, gaussian_prob: float, gray_prob: float,
              sigma: tuple[float, float], poisson: tuple[float, float]) -> dict[str, Any]:
    gaussian = rng.random() < gaussian_prob
    strength = float(rng.uniform(*(sigma if gaussian else poisson)))
    return {"op": "noise", "kind": "gaussian" if gaussian else "poisson", "strength": strength,
            "gray": bool(rng.random() < gray_prob), "seed": int(rng.integers(2**31))}


def require_video(preset: Preset) -> None:
    """Refuse, before any work, a preset whose samples need PyAV on a machine without it: skipping
    the step would make the same sample differ between machines."""
    if isinstance(preset, APISRPreset) and preset.needs_video() and not video_available():
        raise ConfigError("preset", preset.name, f"a preset without video steps ({VIDEO_MISSING})")
