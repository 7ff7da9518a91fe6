"""Image decode/encode and atomic file writes.

OpenCV works in BGR; the rest of AWM works in RGB. The conversion happens here, once:
``decode_image`` returns RGB(A) or gray arrays and ``encode_image`` takes them. Tensors are
float RGB in [0, 1], NCHW (``to_tensor`` / ``from_tensor``).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# The one list of image formats every stage reads (ingest, split, crawl, shard, loader, eval,
# upscale): the format's name (sniff_format's) -> the file suffixes that declare it.
IMAGE_FORMATS: dict[str, tuple[str, ...]] = {
    "png": (".png",), "jpg": (".jpg", ".jpeg", ".jpe"), "webp": (".webp",), "bmp": (".bmp",), "tiff": (".tif", ".tiff")}
IMAGE_SUFFIXES = tuple(s for suffixes in IMAGE_FORMATS.values() for s in suffixes)
# tar member extensions an image may be stored under (format names and their suffixes)
IMAGE_EXTS = tuple(dict.fromkeys([*IMAGE_FORMATS, *(s[1:] for s in IMAGE_SUFFIXES)]))


def format_of_suffix(suffix: str) -> str | None:
    """The format a file suffix or extension (``.JPEG``, ``jpg``) declares; None for a non-image one."""
    ext = "." + suffix.lower().lstrip(".")
    return next((name for name, suffixes in IMAGE_FORMATS.items() if ext in suffixes), None)
MAX_PIXELS_DEFAULT = 25_600_000

cv2.setNumThreads(1)
_UMASK = os.umask(0)
os.umask(_UMASK)


class ImageError(ValueError):
    """An image could not be used; ``reason`` is a short machine-friendly skip reason."""

    def __init__(self, reason: str, detail: str = ""):
        self.reason = reason
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True)
class Probe:
    """What the header says, read before any pixel is decoded (decompression-bomb guard)."""

    format: str  # 'png' | 'jpg' | 'webp' | 'gif' | 'bmp' | 'tiff'
    width: int
    height: int


def sniff_format(data: bytes) -> str | None:
    """Image format from magic bytes, or None; never trust a file suffix or an API's file_ext."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "gif"
    if data[:2] == b"BM":
        return "bmp"
    if data[:4] in (b"II*\x00", b"MM\x00*"):
        return "tiff"
    return None


def jpeg_frame(data: bytes) -> tuple[int, int, int] | None:
    """(width, height, colour components) from a JPEG's SOF header (4 components = CMYK/YCCK)."""
    i, n = 2, len(data)
    while i + 9 < n:
        if data[i] != 0xFF:
            i += 1
            continue
        marker = data[i + 1]
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7 or marker == 0xFF:
            i += 1 if marker == 0xFF else 2
            continue
        (seglen,) = struct.unpack(">H", data[i + 2:i + 4])
        if marker in (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF):
            h, w = struct.unpack(">HH", data[i + 5:i + 9])
            return w, h, data[i + 9]
        i += 2 + seglen
    return None


def probe(data: bytes) -> Probe | None:
    """Format and size from the header only; None when the bytes are not a known image."""
    fmt = sniff_format(data)
    try:
        if fmt == "png" and len(data) >= 24 and data[12:16] == b"IHDR":
            w, h = struct.unpack(">II", data[16:24])
            return Probe(fmt, w, h)
        if fmt == "jpg":
            frame = jpeg_frame(data)
            return Probe(fmt, frame[0], frame[1]) if frame else None
        if fmt == "webp" and len(data) >= 30:
            chunk = data[12:16]
            if chunk == b"VP8 ":
                w, h = struct.unpack("<HH", data[26:30])
                return Probe(fmt, w & 0x3FFF, h & 0x3FFF)
            if chunk == b"VP8L":
                b = data[21:25]
                w = 1 + (((b[1] & 0x3F) << 8) | b[0])
                h = 1 + (((b[3] & 0xF) << 10) | (b[2] << 2) | ((b[1] & 0xC0) >> 6))
                return Probe(fmt, w, h)
            if chunk == b"VP8X":
                w = 1 + int.from_bytes(data[24:27], "little")
                h = 1 + int.from_bytes(data[27:30], "little")
                return Probe(fmt, w, h)
        if fmt == "gif" and len(data) >= 10:
            w, h = struct.unpack("<HH", data[6:10])
            return Probe(fmt, w, h)
        if fmt == "bmp" and len(data) >= 26:
            w, h = struct.unpack("<ii", data[18:26])
            return Probe(fmt, abs(w), abs(h))
        if fmt == "tiff":
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
            return Probe(fmt, img.shape[1], img.shape[0]) if img is not None else None
    except struct.error:
        return None
    return None


def check_image_bytes(data: bytes, max_pixels: int = MAX_PIXELS_DEFAULT, min_side: int = 1) -> Probe:
    """Validate bytes before decoding: known format, sane size, under the pixel cap."""
    if not data:
        raise ImageError("empty_file")
    p = probe(data)
    if p is None:
        raise ImageError("not_an_image" if sniff_format(data) is None else "bad_header")
    if p.width <= 0 or p.height <= 0:
        raise ImageError("bad_header", f"{p.width}x{p.height}")
    if p.width * p.height > max_pixels:
        raise ImageError("too_many_pixels", f"{p.width}x{p.height} > {max_pixels}")
    if min(p.width, p.height) < min_side:
        raise ImageError("too_small", f"{p.width}x{p.height} < {min_side}")
    return p


def decode_image(data: bytes, max_pixels: int = MAX_PIXELS_DEFAULT, bgr: bool = False) -> np.ndarray:
    """Decode to an RGB, RGBA or gray (2-D) array, uint8 or uint16, checking the header first.

    Raises ImageError with a skip reason for anything unusable (truncated, bomb, not an image).
    ``bgr=True`` keeps OpenCV's BGR(A) order: saves a full-image conversion for channel-free work.
    """
    p = check_image_bytes(data, max_pixels)
    # JPEG: ANYCOLOR keeps gray as gray and applies EXIF orientation (UNCHANGED would ignore it).
    flags = cv2.IMREAD_ANYCOLOR if p.format == "jpg" else cv2.IMREAD_UNCHANGED
    if truncated(data, p.format):  # before decoding: a cut file is 'truncated' wherever it is read (awm.skips)
        raise ImageError("truncated")
    img = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    if img is None:
        raise ImageError("undecodable", p.format)
    if {img.shape[0], img.shape[1]} != {p.height, p.width}:
        raise ImageError("size_mismatch", f"header {p.width}x{p.height}, pixels {img.shape[1]}x{img.shape[0]}")
    if img.dtype not in (np.uint8, np.uint16):
        if img.dtype == np.float32:
            img = np.clip(img * 65535.0, 0, 65535).astype(np.uint16)
        else:
            raise ImageError("unsupported_depth", str(img.dtype))
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[:, :, 0]
    if bgr:
        return img
    if img.ndim == 3 and img.shape[2] == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGR2RGB)
    elif img.ndim == 3 and img.shape[2] == 4:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGBA)
    return img


def truncated(data: bytes, fmt: str) -> bool:
    """Whether a JPEG or PNG stops before its end marker (decoders fill the rest with grey).

    JPEG: no EOI after the last scan header (entropy-coded data stuffs 0xFF, so FF D9 there is
    the real end; an EXIF thumbnail's EOI comes before the image's scans). PNG: no IEND chunk.
    Bytes after the end marker, which some tools append, are not truncation.
    """
    if fmt == "jpg":
        sos = data.rfind(b"\xff\xda")
        return sos < 0 or data.find(b"\xff\xd9", sos) < 0
    if fmt == "png":
        end = data.rfind(b"\x00\x00\x00\x00IEND")
        return end < 0 or len(data) < end + 12
    return False


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS_DEFAULT) -> np.ndarray:
    """Read and decode a file (see ``decode_image``; JPEG EXIF orientation is applied)."""
    return decode_image(Path(path).read_bytes(), max_pixels)


def encode_image(img: np.ndarray, fmt: str, quality: int | None = None) -> bytes:
    """Encode an RGB(A)/gray array (uint8/uint16) to 'png', 'jpg' or 'webp' bytes, deterministically."""
    fmt = "jpg" if fmt == "jpeg" else fmt
    if img.ndim == 3 and img.shape[2] == 3:
        bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)
    elif img.ndim == 3 and img.shape[2] == 4:
        bgr = cv2.cvtColor(img, cv2.COLOR_RGBA2BGRA)
    else:
        bgr = img
    params: list[int] = []
    if fmt == "jpg":
        if bgr.dtype != np.uint8:
            raise ImageError("unsupported_depth", "JPEG is 8-bit only")
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality or 95)]
    elif fmt == "webp":
        params = [cv2.IMWRITE_WEBP_QUALITY, int(quality or 95)]
    elif fmt == "png":
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3 if quality is None else int(quality)]
    else:
        raise ImageError("unsupported_format", fmt)
    ok, buf = cv2.imencode("." + fmt, bgr, params)
    if not ok:
        raise ImageError("encode_failed", fmt)
    return buf.tobytes()


def to_rgb8(img: np.ndarray, background: int = 255) -> np.ndarray:
    """Any decoded image as 8-bit RGB: 16-bit scaled, gray expanded, alpha composited on ``background``."""
    if img.dtype == np.uint16:
        img = ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    if img.ndim == 2:
        return cv2.cvtColor(img, cv2.COLOR_GRAY2RGB)
    if img.shape[2] == 4:
        rgb = img[:, :, :3].astype(np.float32)
        a = img[:, :, 3:4].astype(np.float32) / 255.0
        return np.clip(rgb * a + background * (1.0 - a) + 0.5, 0, 255).astype(np.uint8)
    return img


def to_tensor(img: np.ndarray):
    """HWC RGB array (uint8/uint16/float) -> float32 tensor 1xCxHxW in [0, 1]."""
    import torch

    scale = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}.get(img.dtype, 1.0)
    arr = img[:, :, None] if img.ndim == 2 else img
    t = torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1).float().div_(scale)
    return t.unsqueeze(0)


def from_tensor(t, dtype=np.uint8) -> np.ndarray:
    """Tensor CxHxW or 1xCxHxW in [0, 1] -> HWC array (rounded, clipped) of ``dtype``."""
    if t.dim() == 4:
        t = t[0]
    peak = 65535.0 if dtype == np.uint16 else 255.0
    arr = (t.detach().float().clamp(0, 1) * peak).round().permute(1, 2, 0).cpu().numpy().astype(dtype)
    return arr[:, :, 0] if arr.shape[2] == 1 else arr


def atomic_write_bytes(path: Path, data: bytes) -> Path:
    """Write via a temp file in the same folder, fsync, then rename: readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        usual_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def usual_mode(path: str | Path) -> Path:
    """Give a file (or a folder, with everything under it) the mode a plain ``open`` would:
    0666/0777 less the umask. ``mkstemp``/``mkdtemp`` and safetensors create 0600/0700, which
    teammates on shared cluster storage cannot read."""
    path = Path(path)
    todo = [path, *path.rglob("*")] if path.is_dir() else [path]
    for p in todo:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_UMASK)
    return path


def atomic_write_text(path: Path, text: str) -> Path:
    """Text version of ``atomic_write_bytes``."""
    return atomic_write_bytes(path, text.encode())


def list_images(paths: list[str | Path], suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Files given directly plus image files found (recursively, sorted) in given folders."""
    out: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix.lower() in suffixes))
        else:
            out.append(p)
    return out


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks (staged weights, release files)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
