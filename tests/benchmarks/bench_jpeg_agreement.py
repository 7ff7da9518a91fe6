"""Device-path JPEG (awm.data.degrade_device) against OpenCV's encoder + decoder at equal quality.

Why: the worker path and the shards store LR through cv2.imencode (libjpeg-turbo, 4:2:0); the
device path replays the same JPEG in torch. This measures how close, per quality, on generated
anime-style images (awm.data.synth, odd sizes) and the real images of ../shared/data/real when
present (cropped to --crop). Measured 2026-12-02 on CPU (OpenCV 5.0's libjpeg-turbo): bit-exact in
all 1,188 cases (18 images x qualities 30..95), which tests/unit/data/test_degrade_device.py holds
the device path to. Also printed: cv2's own round trip vs the source, so the
agreement reads against the size of the JPEG's change.

Run by hand: .venv/bin/python tests/benchmarks/bench_jpeg_agreement.py [--device cuda]
Prints one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np
import torch

from awm.data.degrade_device import degrade_batch
from awm.data.synth import generate

REAL = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "real"


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255**2 / mse)


def cv2_jpeg(img: np.ndarray, q: int) -> np.ndarray:
    """OpenCV's JPEG round trip of an RGB image (its defaults: 4:2:0, ISLOW DCT, fancy upsampling)."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, q])
    assert ok
    return cv2.cvtColor(cv2.imdecode(buf, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)


def images(n_synth: int, crop: int, real: Path) -> dict[str, np.ndarray]:
    out = {f"synth{k}": generate(100 + k, 160 + 37 * k, 120 + 23 * k) for k in range(n_synth)}
    rng = np.random.default_rng(0)  # as the realesrgan chain feeds its JPEGs: after Gaussian noise
    out |= {f"{n}+noise": np.clip(i + rng.normal(0, 14, i.shape), 0, 255).astype(np.uint8) for n, i in list(out.items())}
    for f in sorted(real.glob("*")) if real.is_dir() else []:
        img = cv2.imread(str(f), cv2.IMREAD_COLOR)
        if img is not None:
            out[f.stem] = np.ascontiguousarray(cv2.cvtColor(img, cv2.COLOR_BGR2RGB)[:crop, :crop])
    return out


def agreement(imgs: dict[str, np.ndarray], qualities: list[int],
              dev: torch.device) -> dict[str, dict[int, tuple[float, int]]]:
    """(PSNR, max abs difference) of the device path vs cv2, per image and quality; one device
    batch per image (all qualities)."""
    out: dict[str, dict[int, tuple[float, int]]] = {}
    for name, img in imgs.items():
        recs = [{"preset": "bench", "scale": 1, "ops": [{"op": "jpeg", "quality": q}],
                 "codec": {"format": "png", "quality": None}} for q in qualities]
        hr = torch.from_numpy(img)[None].expand(len(qualities), *img.shape).contiguous().to(dev)
        got = degrade_batch(hr, recs, 1).cpu().numpy()
        out[name] = {}
        for g, q in zip(got, qualities, strict=True):
            want = cv2_jpeg(img, q)
            out[name][q] = (psnr(g, want), int(np.abs(g.astype(int) - want).max()))
    return out


def _db(v: float) -> float | None:
    """JSON has no infinity: null is a bit-exact match."""
    return None if math.isinf(v) else round(v, 2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--synth", type=int, default=6, help="generated images")
    ap.add_argument("--crop", type=int, default=384, help="real images cropped to this square at most")
    ap.add_argument("--real", type=Path, default=REAL, help="folder of real images (skipped when absent)")
    ap.add_argument("--step", type=int, default=1, help="quality step over 30..95")
    args = ap.parse_args()
    qualities = list(range(30, 96, args.step))
    imgs = images(args.synth, args.crop, args.real)
    scores = agreement(imgs, qualities, torch.device(args.device))
    per_q = {q: min(s[q][0] for s in scores.values()) for q in qualities}
    for q in qualities:
        print(f"q{q:3d}  min {per_q[q]:6.2f} dB  " + " ".join(f"{n}={s[q][0]:.1f}" for n, s in scores.items()))
    cases = [v for s in scores.values() for v in s.values()]
    ref = {name: round(float(np.mean([psnr(cv2_jpeg(img, q), img) for q in qualities])), 2)
           for name, img in imgs.items()}
    print(json.dumps({"device": args.device, "images": {n: list(i.shape) for n, i in imgs.items()},
                      "qualities": [qualities[0], qualities[-1], args.step], "cases": len(cases),
                      "bit_exact_cases": sum(d == 0 for _, d in cases), "max_abs_diff": max(d for _, d in cases),
                      "floor_db": _db(min(per_q.values())),
                      "min_db_per_quality": {q: _db(v) for q, v in per_q.items()},
                      "cv2_vs_source_mean_db": ref}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
