"""Does the demo's model beat bicubic on real anime images it never saw? (issue: the demo's goal)

Run by hand after `make demo`: .venv/bin/python tests/benchmarks/bench_quality.py [--model runs/demo/run]
The real images of ../shared/data/real are sharded with the demo's settings (2x, `seed` preset,
eval split: whole images), then `awm eval` scores bicubic and the model with PSNR on Y and
niqe_anime (and standard NIQE when staged). Goal: >= +0.5 dB PSNR-Y and a lower niqe_anime.
Also reports the per-image deltas and counts, because the set is small (6 images, one of them a
photo; niqe_anime cannot score the ones under 192 px). Read niqe_anime with care: its pristine
model (awm/assets/niqe_anime.mat) was fitted on images from awm.data.synth, the same generator (other
seeds) that makes the demo's training and eval images, so on the demo's own eval split it is
not an independent judge; here, on real images, it is, but only as far as these few images go.
The JSON line printed last holds the figures.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
REAL = REPO.parent / "shared" / "data" / "real"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(REPO / "runs" / "demo" / "run"))
    ap.add_argument("--real", default=str(REAL))
    args = ap.parse_args()
    if not Path(args.real).is_dir():
        sys.exit(f"{args.real} not found: this benchmark needs the real test images")
    if not Path(args.model).exists():
        sys.exit(f"{args.model} not found: run `make demo` first (or pass --model)")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        awm = [sys.executable, "-m", "awm"]
        subprocess.run([*awm, "shard", "--in", args.real, "--out", str(tmp / "eval"), "--split", "eval",
                        "--scales", "2", "--preset", "seed"], check=True, capture_output=True)
        from awm.eval import weights

        metrics = ["psnry", "niqe_anime"] + ([] if weights.missing_for("niqe") else ["niqe"])
        subprocess.run([*awm, "eval", "--data", str(tmp / "eval"), "--scale", "2",
                        "--models", f"bicubic,{args.model}", "--metrics", ",".join(metrics),
                        "--out", str(tmp / "res")], check=True, capture_output=True)
        rows = list(csv.DictReader((tmp / "res" / "per_image.csv").open()))
        summary = json.loads((tmp / "res" / "summary.json").read_text())
    by_model: dict[str, dict[str, dict[str, float]]] = {}
    for r in rows:
        by_model.setdefault(r["model"], {})[r["id"]] = r
    names = list(by_model)
    bic, model = names[0], names[1]
    deltas = {m: {} for m in metrics}
    for sid, rb in by_model[bic].items():
        rm = by_model[model][sid]
        for m in metrics:
            if rb.get(m) not in ("", None) and rm.get(m) not in ("", None):
                deltas[m][sid] = round(float(rm[m]) - float(rb[m]), 4)
    means = {m: {"bicubic": summary_mean(summary, bic, m), "model": summary_mean(summary, model, m)}
             for m in metrics}
    fit = json.loads((REPO / "awm" / "assets" / "niqe_anime.json").read_text())
    result = {
        "images": len(by_model[bic]),
        "psnry_images_model_better": sum(v > 0 for v in deltas["psnry"].values()),
        "niqe_anime_images_scored": len(deltas["niqe_anime"]),
        "niqe_anime_images_model_better": sum(v < 0 for v in deltas["niqe_anime"].values()),
        "niqe_anime_fitted_on": f"{fit['synth']} awm.data.synth images (seeds from {fit['synth_seed']}), "
                                f"{len(fit['data'])} real folders: the demo's own generator",
        "mean": means,
        "psnry_gain_db": round(means["psnry"]["model"] - means["psnry"]["bicubic"], 4),
        "psnry_gain_median_db": round(statistics.median(deltas["psnry"].values()), 4),
        "niqe_anime_change": round(means["niqe_anime"]["model"] - means["niqe_anime"]["bicubic"], 4),
        "per_image_delta": deltas,
        "goal": {"psnry_gain_db": 0.5, "niqe_anime_change": "< 0"},
    }
    result["goal_met"] = result["psnry_gain_db"] >= 0.5 and result["niqe_anime_change"] < 0
    print(json.dumps(result))


def summary_mean(summary: dict, model: str, metric: str) -> float:
    return round(float(summary["models"][model][metric]["mean"]), 4)


if __name__ == "__main__":
    main()
