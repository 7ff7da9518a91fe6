"""How niqe_anime and standard NIQE rank bicubic vs sharper reconstructions (lower = better).

Run by hand: .venv/bin/python tests/benchmarks/bench_niqe_anime.py
For each image (../shared/data/real, skipped when absent, and generated awm.data.synth images with
seeds never used for the packaged fit), HR is downscaled x2 (INTER_AREA) and brought back to HR
size by bicubic, lanczos and bicubic + unsharp mask; HR itself is the sharpest. A metric that
suits anime should score HR best and bicubic worst. Standard NIQE needs
../shared/data/weights/niqe_modelparameters.mat. The JSON line printed last holds the means and,
per set, how many images support the ranking: the packaged niqe_anime model was fitted on
awm.data.synth images, so the "generated" set (other seeds of the same generator) is not an
independent check; only the "real" set is, and it is small (the images >= 192 px).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO / ".." / "shared" / "data"


def variants(hr: np.ndarray) -> dict[str, np.ndarray]:
    h, w = hr.shape[0] // 2 * 2, hr.shape[1] // 2 * 2
    hr = hr[:h, :w]
    lr = cv2.resize(hr, (w // 2, h // 2), interpolation=cv2.INTER_AREA)
    bic = cv2.resize(lr, (w, h), interpolation=cv2.INTER_CUBIC)
    blur = cv2.GaussianBlur(bic, (0, 0), 1.0)
    usm = np.clip(bic.astype(np.float32) * 1.8 - blur.astype(np.float32) * 0.8, 0, 255).astype(np.uint8)
    return {"bicubic": bic, "lanczos": cv2.resize(lr, (w, h), interpolation=cv2.INTER_LANCZOS4),
            "bicubic+usm": usm, "hr": hr}


def main() -> None:
    from awm.data.synth import generate
    from awm.eval import metrics
    from awm.imageio import read_image, to_rgb8

    sets: dict[str, list[tuple[str, np.ndarray]]] = {}
    real = SHARED / "real"
    if real.is_dir():
        imgs = [(p.name, to_rgb8(read_image(p))) for p in sorted(real.iterdir()) if p.suffix in (".png", ".jpg")]
        sets["real"] = [(n, i) for n, i in imgs if min(i.shape[:2]) >= 192]
    sets["generated"] = [(f"synth{s}", generate(s, 768, 432)) for s in range(5000, 5006)]
    mets = {"niqe_anime": metrics.create("niqe_anime", "cpu")}
    std_mat = SHARED / "weights" / "niqe_modelparameters.mat"
    if std_mat.is_file():
        import pyiqa

        net = pyiqa.create_metric("niqe", device="cpu", pretrained_model_path=str(std_mat))
        mets["niqe"] = metrics.Metric("niqe", False, True, net)
    fit = json.loads((REPO / "awm" / "assets" / "niqe_anime.json").read_text())
    out: dict = {"niqe_anime_fitted_on": {"synth_images": fit["synth"], "synth_first_seed": fit["synth_seed"],
                                          "real_folders": len(fit["data"])}}
    for set_name, items in sets.items():
        per: dict[str, dict[str, list[float]]] = {m: {} for m in mets}
        for name, hr in items:
            for vname, img in variants(hr).items():
                for mname, m in mets.items():
                    v = m(img)
                    per[mname].setdefault(vname, []).append(v)
                    print(f"{set_name} {name} {vname} {mname}={v:.4f}", file=sys.stderr)
        out[set_name] = {"images": [n for n, _ in items], "count": len(items),
                         "independent_of_the_fit": set_name == "real"}
        for mname, d in per.items():
            means = {k: float(np.mean([x for x in v if math.isfinite(x)])) for k, v in d.items()}
            out[set_name][mname] = {"mean": {k: round(v, 4) for k, v in means.items()},
                                    "rank_best_first": sorted(means, key=means.get),
                                    "images_hr_beats_bicubic": sum(a < b for a, b in zip(d["hr"], d["bicubic"], strict=True))}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
