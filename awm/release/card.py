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
from awm.eval.report import _json, _loss_summary, _train_index, _yaml

RERUN = " (its full config: `train_config.yaml`; `awm train --config train_config.yaml` reruns it)"


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
    return Training(run=run, run_name=cfg.get("name"), gan_start=cfg.get("gan_start"), steps=meta.get("step", stats.get("step")),
                    batch=batch * (ranks or 1) * int((cfg.get("optim") or {}).get("accum", 1)) if batch else None,
                    hr_patch=data.get("patch"), otf=otf, preset=data.get("degrade") or index.get("preset"),
                    dataset=str(data.get("train")) if data.get("train") else None,
                    dataset_size=index.get("nsamples"), device_hours=round(hours, 4) if hours else None,
                    ranks=ranks, precision={"no": "fp32"}.get(stats.get("precision"), stats.get("precision")), loss=_loss_summary(cfg.get("loss") or {}),
                    config_digest=meta.get("config_digest"), init=(cfg.get("model") or {}).get("init"))


def eval_summary(explicit: Path | None, run: Path | None) -> tuple[dict[str, Any], Path | None]:
    """The ``awm eval`` summary to quote: ``explicit``, else the newest one inside the run folder."""
    if explicit is not None:
        return _json(explicit), explicit
    for p in sorted(run.rglob("summary.json") if run else [], key=lambda p: p.stat().st_mtime, reverse=True):
        doc = _json(p)
        if doc.get("models"):
            return doc, p
    return {}, None


def eval_table(doc: dict[str, Any]) -> str:
    """The evaluation's Markdown table (every model it scored, bicubic included), or '' without one."""
    models, metrics = doc.get("models") or {}, doc.get("metrics") or {}
    if not models or not metrics:
        return ""
    lower = {m: bool(v.get("lower_better")) for m, v in metrics.items()}
    return results.markdown_table(models, list(metrics), lower)


def crop_grid(lr: np.ndarray, sr: np.ndarray, scale: int, name: str, path: Path, side: int = 96) -> Path:
    """LR (nearest) | bicubic | model on a central ``side``-px LR crop, through awm.eval's grid figure."""
    from awm.eval.evaluate import comparison_grid

    h, w = lr.shape[:2]
    s = min(side, h, w)
    y, x = (h - s) // 2, (w - s) // 2
    crop = lr[y:y + s, x:x + s]
    big = (s * scale, s * scale)
    cols = {"LR (nearest)": cv2.resize(crop, big, interpolation=cv2.INTER_NEAREST),
            "bicubic": cv2.resize(crop, big, interpolation=cv2.INTER_CUBIC),
            name: sr[y * scale:(y + s) * scale, x * scale:(x + s) * scale]}
    return comparison_grid([("center crop", cols)], path)


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
              f"| device-hours (wall x ranks) | {_fmt(t.device_hours)} ({_fmt(t.ranks)} ranks, "
              f"{_fmt(t.precision)}) |", f"| config digest | {_fmt(t.config_digest)} |", ""]
    if t.run_name is None:
        lines += ["This checkpoint carries no run folder, so its training is not known here.", ""]
    lines += ["## Evaluation", ""]
    lines += ([f"From `{eval_source}`:", "", table.strip(), ""] if table else
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
