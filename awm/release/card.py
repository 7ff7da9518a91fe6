"""What a release says about its model: training facts from the run folder, the model card, the crop grid.

Everything comes from files AWM wrote: the run's ``config.yaml`` (recipe, data, batch, patch,
degradation), ``train_stats.json`` (steps, wall time, ranks), the training shards' ``index.json``
(sample count, preset) and an ``awm eval`` ``summary.json``. A checkpoint outside a run folder
(or a foreign weights file) has none of these; its card says so instead of guessing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from awm.eval import results
from awm.eval.report import _json, _train_index, _yaml, optimised_losses

RERUN = " (its full config: `train_config.yaml`; `awm train --config train_config.yaml` reruns it)"
GRID_SIDE = 128  # LR pixels of the card's crop: enough picture to judge, small enough to see pixels


@dataclass
class Training:
    """The training facts a release can state (None: unknown, e.g. a foreign checkpoint)."""

    run: Path | None = None
    run_name: str | None = None
    gan_start: int | None = None
    steps: int | None = None
    batch: int | None = None
    hr_patch: int | None = None
    otf: bool | None = None
    preset: str | None = None
    dataset: str | None = None
    dataset_size: int | None = None
    device_hours: float | None = None
    ranks: int | None = None
    precision: str | None = None
    loss: list[str] = field(default_factory=list)
    config_digest: str | None = None
    init: str | None = None  # model.init: the weights file the run was fine-tuned from
    validation: dict[str, Any] = field(default_factory=dict)  # the run's last validation (train_stats.json)


def run_dir_of(path: Path) -> Path | None:
    """The run folder a checkpoint path belongs to (the run itself, or ``<run>/checkpoints/<name>``)."""
    for p in (path, path.parent.parent):
        if (p / "config.yaml").is_file() and (p / "checkpoints").is_dir():
            return p
    return None


def training_facts(path: Path, meta: dict[str, Any]) -> Training:
    """What the run behind ``path`` (checkpoint meta ``meta``) records about its training."""
    run = run_dir_of(path) if path.is_dir() else None
    cfg = (meta.get("config") or {}) if run is None else _yaml(run / "config.yaml")
    if not cfg:
        return Training(steps=meta.get("step"))
    data = cfg.get("data") or {}
    stats = _json(run / "train_stats.json") if run else {}
    ranks = stats.get("world_size")
    index = _train_index(str(data["train"])) if data.get("train") else {}
    otf = bool(data.get("degrade"))
    batch = data.get("batch_size")
    hours = stats.get("wall_s", 0) * (ranks or 1) / 3600 if stats.get("wall_s") else None
    loss = optimised_losses(cfg, meta.get("step", stats.get("step")))
    validation = dict(stats.get("validation") or {}, step=stats.get("step")) if stats.get("validation") else {}
    return Training(run=run, run_name=cfg.get("name"), gan_start=cfg.get("gan_start"), steps=meta.get("step", stats.get("step")),
                    batch=batch * (ranks or 1) * int((cfg.get("optim") or {}).get("accum", 1)) if batch else None,
                    hr_patch=data.get("patch"), otf=otf, preset=data.get("degrade") or index.get("preset"),
                    dataset=str(data.get("train")) if data.get("train") else None,
                    dataset_size=index.get("nsamples"), device_hours=round(hours, 4) if hours else None,
                    ranks=ranks, precision={"no": "fp32"}.get(stats.get("precision"), stats.get("precision")), loss=loss,
                    config_digest=meta.get("config_digest"), init=(cfg.get("model") or {}).get("init"),
                    validation=validation)


def eval_summary(explicit: Path | None, run: Path | None) -> tuple[dict[str, Any], Path | None]:
    """The ``awm eval`` summary to quote: ``explicit``, else the run's newest, found as ``awm report``
    finds it (:func:`awm.eval.evaluate.run_evals`: wherever its ``--out`` was)."""
    from awm.eval.evaluate import run_evals

    if explicit is not None:
        return _json(explicit), explicit
    found = run_evals(run) if run else None
    return (found[0], found[2]) if found else ({}, None)


def eval_table(doc: dict[str, Any]) -> str:
    """The evaluation's Markdown table (every model it scored, bicubic included), or '' without one."""
    models, metrics = doc.get("models") or {}, doc.get("metrics") or {}
    if not models or not metrics:
        return ""
    lower = {m: bool(v.get("lower_better")) for m, v in metrics.items()}
    return results.markdown_table(models, list(metrics), lower)


def vs_bicubic(doc: dict[str, Any]) -> list[str]:
    """One line per evaluated model: each metric's difference to bicubic, said as better or worse."""
    models, metrics = doc.get("models") or {}, doc.get("metrics") or {}
    base = models.get("bicubic")
    if not base:
        return []
    lines = []
    for name, stats in models.items():
        if name in ("bicubic", "lanczos"):
            continue
        parts = []
        for m, info in metrics.items():
            a, b = (stats.get(m) or {}).get("mean"), (base.get(m) or {}).get("mean")
            if a is None or b is None:
                continue
            better = a < b if info.get("lower_better") else a > b
            parts.append(f"{m} {a - b:+.4g} ({'better' if better else 'worse' if a != b else 'equal'})")
        if parts:
            lines.append(f"`{name}` vs bicubic: " + ", ".join(parts) + ".")
    return lines


def _validation(v: dict[str, Any]) -> str:
    """The run's last validation against bicubic on the same crops, in one table cell."""
    if not v.get("images") or v.get("psnr_y") is None or v.get("bicubic_psnr_y") is None:
        return "unknown"
    text = (f"PSNR-Y {v['psnr_y']:.3f} dB vs bicubic {v['bicubic_psnr_y']:.3f} dB "
            f"({v['psnr_y'] - v['bicubic_psnr_y']:+.3f} dB)")
    if v.get("ssim_y") is not None:
        text += f", SSIM-Y {v['ssim_y']:.4f}" + (f" vs bicubic {v['bicubic_ssim_y']:.4f}"
                                                 if v.get("bicubic_ssim_y") is not None else "")
    return f"{text}; step {_fmt(v.get('step'))}, {v['images']} images"


def detailed_window(img: np.ndarray, side: int) -> tuple[int, int]:
    """(y, x) of the ``side``-px square with the most gradient energy: a centre crop of a wallpaper
    is often flat sky or a black square; the card must show where upscaling matters (edges, lines)."""
    gray = cv2.cvtColor(img[..., :3], cv2.COLOR_RGB2GRAY) if img.ndim == 3 else img
    g = gray.astype(np.float32) / (65535.0 if gray.dtype == np.uint16 else 255.0)
    energy = cv2.Sobel(g, cv2.CV_32F, 1, 0) ** 2 + cv2.Sobel(g, cv2.CV_32F, 0, 1) ** 2
    total = cv2.integral(energy.astype(np.float64))
    h, w = g.shape
    step = max(1, side // 8)
    best, where = -1.0, ((h - side) // 2, (w - side) // 2)
    for y in range(0, h - side + 1, step):
        for x in range(0, w - side + 1, step):
            e = total[y + side, x + side] - total[y, x + side] - total[y + side, x] + total[y, x]
            if e > best:
                best, where = e, (y, x)
    return where


def crop_grid(lr: np.ndarray, sr: np.ndarray, scale: int, name: str, path: Path, side: int = GRID_SIDE) -> Path:
    """LR (nearest) | bicubic | model on the ``side``-px LR crop with the most detail, through awm.eval's
    grid figure."""
    from awm.eval.evaluate import comparison_grid

    h, w = lr.shape[:2]
    s = min(side, h, w)
    y, x = detailed_window(lr, s)
    crop = lr[y:y + s, x:x + s]
    big = (s * scale, s * scale)
    cols = {"LR (nearest)": cv2.resize(crop, big, interpolation=cv2.INTER_NEAREST),
            "bicubic": cv2.resize(crop, big, interpolation=cv2.INTER_CUBIC),
            name: sr[y * scale:(y + s) * scale, x * scale:(x + s) * scale]}
    return comparison_grid([(f"crop at {x},{y}", cols)], path)


def dataset_text(t: Training) -> str | None:
    """OpenModelDB's ``dataset``: what the data was, for readers elsewhere; a URL is kept, a local path
    (meaningless off this machine) is not."""
    from awm.shardio.ref import is_remote

    if not t.dataset:
        return None
    where = f" from {t.dataset}" if is_remote(t.dataset) else ""
    size = f"{t.dataset_size} " if t.dataset_size else ""
    return f"{size}anime wallpaper HR/LR pairs{where} (AWM shards, degradation preset {_fmt(t.preset)})"


def _stages(t: Training) -> str:
    if t.gan_start is None or t.steps is None:
        return "stages unknown"
    return "L1 only" if t.gan_start >= t.steps else f"L1 to step {t.gan_start}, then GAN"


def _fmt(v: Any, unit: str = "") -> str:
    return "unknown" if v is None else f"{v}{unit}"


def model_card(name: str, entry: dict[str, Any], t: Training, files: list[dict[str, Any]], table: str,
               eval_source: Path | None, grid: str | None, start_licence: str | None) -> str:
    """README.md of a release: purpose, training, evaluation, files (with verification), licence."""
    arch, scale = entry["architecture"], entry["scale"]
    lines = [f"# {name}", "", f"{scale}x super-resolution for anime wallpapers and illustrations "
             f"({arch}, {', '.join(entry['size'] or [])}), trained with AWM. RGB in, RGB out, float [0, 1].", ""]
    lines += ["## How it was trained", "", "| | |", "| --- | --- |",
              f"| run | {_fmt(t.run_name)}{RERUN if t.run else ''} |",
              f"| steps | {_fmt(t.steps)} ({_stages(t)}) |",
              f"| batch (all ranks) | {_fmt(t.batch)} |", f"| HR patch | {_fmt(t.hr_patch, ' px')} |",
              f"| degradation preset | {_fmt(t.preset)}{' (on the fly)' if t.otf else ''} |",
              f"| training data | {_fmt(t.dataset)} ({_fmt(t.dataset_size)} pairs) |",
              f"| loss | {', '.join(t.loss) or 'unknown'} |",
              f"| validation (last, vs bicubic on the same crops) | {_validation(t.validation)} |",
              f"| device-hours (wall x ranks) | {_fmt(t.device_hours)} ({_fmt(t.ranks)} ranks, "
              f"{_fmt(t.precision)}) |", f"| config digest | {_fmt(t.config_digest)} |", ""]
    if t.run_name is None:
        lines += ["This checkpoint carries no run folder, so its training is not known here.", ""]
    lines += ["## Evaluation", ""]
    lines += ([f"From `{eval_source}`:", "", table.strip(), "", *vs_bicubic(_json(eval_source)), ""] if table else
              ["No `awm eval` results were found for this model (run `awm eval` and export again).", ""])
    if grid:
        lines += ["## Example", "", f"![LR, bicubic and {name}]({grid})", ""]
    lines += ["## Files", "", "| file | bytes | sha256 | notes |", "| --- | --- | --- | --- |"]
    for f in files:
        lines.append(f"| `{f['file']}` | {f['size']} | `{f['sha256'][:16]}…` | {f.get('note', '')} |")
    lines += ["", "The `.safetensors` (and `.pth`) use the BasicSR key layout that spandrel, chaiNNer and "
              "traiNNer read; `awm upscale --model FILE` runs any of them (`.onnx` through onnxruntime). "
              f"`{name}.json` is an OpenModelDB entry: replace the resource URLs with where you upload the files.",
              "", "## Licence", ""]
    start = f"`{Path(t.init).name}` (`model.init`)" if t.init else "a model"
    if start_licence:
        lines.append(f"Weights started from {start}, licensed {start_licence}: that licence applies to this release.")
    elif t.init:
        lines.append(f"Fine-tuned from {start}: its licence applies to this release; state it with "
                     "`awm export --pretrained-license SPDX` (and `--pretrained ID` for OpenModelDB).")
    else:
        lines.append(f"Trained from scratch; released under {entry['license'] or 'no licence yet'}.")
    return "\n".join(lines) + "\n"
