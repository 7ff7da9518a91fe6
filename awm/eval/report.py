"""``awm report``: the experiment table across training runs (Markdown + CSV).

A run is ``runs/<name>/`` as awm.train.train writes it: config.yaml (arch, loss, data, scale),
checkpoints/*/meta.json (step), train_stats.json, and the ``awm eval`` summaries of the run: those
``awm eval`` noted in the run's ``evals.json`` (wherever its ``--out`` was) and any summary.json
inside the run folder. One row per run; metric columns are the means of the run's model in its
newest eval summary, with the metric's direction; the baselines evaluated beside the runs
(bicubic, lanczos) get a row each per eval set, so a run that loses to bicubic shows it.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from awm.config import check, from_args
from awm.eval import results
from awm.eval.evaluate import BASELINES, EVALS_FILE, run_evals
from awm.imageio import atomic_write_text
from awm.log import get_logger
from awm.shardio.cache import ShardFetchError
from awm.shardio.locations import INDEX_NAME, has_braces, resolve
from awm.shardio.ref import is_remote

log = get_logger("awm.report")

GAN_STAGE_ONLY = ("gan.", "perceptual.")  # loss terms of the GAN stage only (awm.models.losses.LossConfig)
BASE_COLUMNS = ["run", "arch", "preset", "scale", "data_size", "steps", "loss", "status", "eval_data"]


@dataclass
class ReportConfig:
    runs: list[str] = field(default_factory=list, metadata={"help": "run folders"})
    out: str = field(default="report", metadata={"help": "output folder (report.md, report.csv)"})

    def __post_init__(self) -> None:
        check(bool(self.runs), "runs", self.runs, "at least one run folder")


def _yaml(path: Path) -> dict[str, Any]:
    return (yaml.safe_load(path.read_text()) or {}) if path.is_file() else {}


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _train_index(location: str) -> dict[str, Any]:
    """The index of a run's training shards: a local folder's index.json, or a remote index.json
    (fetched, not the shards). A brace pattern or single .tar has none; an unreachable index is
    logged and its columns stay empty, so one moved dataset does not hide the other runs."""
    if not (is_remote(location) or has_braces(location) or location.endswith(".tar")):
        p = Path(location)
        return _json(p if p.suffix == ".json" else p / INDEX_NAME)
    if has_braces(location) or location.endswith(".tar"):
        return {}
    try:
        return resolve(location).index
    except (ShardFetchError, ValueError) as e:
        log.warning("training data index of a run not readable, preset/data_size left empty: %s", e)
        return {}


def optimised_losses(cfg: dict[str, Any], steps: Any) -> list[str]:
    """The loss terms a run optimised, e.g. ``pixel.weight=1``: the non-zero weights of its loss config,
    less the GAN stage's own terms when it ended at or before ``gan_start`` (the stage never ran)."""
    terms = _weights(cfg.get("loss") or {})
    gan_start = cfg.get("gan_start")
    if isinstance(steps, int) and isinstance(gan_start, int) and gan_start >= steps:
        terms = [t for t in terms if not t.startswith(GAN_STAGE_ONLY)]
    return terms


def _weights(loss: dict[str, Any], prefix: str = "") -> list[str]:
    out = []
    for k, v in loss.items():
        if isinstance(v, dict):
            out += _weights(v, f"{prefix}{k}.")
        elif k.endswith("weight") and isinstance(v, (int, float)) and not isinstance(v, bool) and v:
            out.append(f"{prefix}{k}={v:g}")
    return out


def _steps(run: Path) -> int | None:
    steps = [m.get("step") for m in (_json(p) for p in run.glob("checkpoints/*/meta.json"))]
    steps = [s for s in steps if isinstance(s, int)]
    return max(steps) if steps else None


def _means(stats: dict[str, Any]) -> dict[str, float]:
    return {m: s["mean"] for m, s in stats.items() if s.get("mean") is not None}


def _eval(run: Path) -> tuple[dict[str, float], dict[str, bool], str]:
    """Metric means of the run's model in its newest eval summary (baselines skipped)."""
    found = run_evals(run)
    if found is None:
        return {}, {}, ""
    doc, model, _ = found
    lower = {m: bool(v.get("lower_better")) for m, v in doc.get("metrics", {}).items()}
    return _means(doc["models"][model]), lower, str(doc.get("data", ""))


def baseline_rows(runs: list[Path]) -> list[dict[str, Any]]:
    """One row per baseline and eval set, from the summaries the runs' rows come from."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for run in runs:
        found = run_evals(run)
        doc = found[0] if found else {}
        for name, stats in doc.get("models", {}).items():
            if name in BASELINES:
                rows.setdefault((name, str(doc.get("data", ""))), {
                    "run": f"{name} (baseline)", "arch": name, "scale": doc.get("scale", ""),
                    "eval_data": str(doc.get("data", "")), **_means(stats)})
    return list(rows.values())


def run_row(run: Path) -> tuple[dict[str, Any], dict[str, bool]]:
    """One table row for a run folder; a clear error when it is not one."""
    if not (run / "config.yaml").is_file() and not list(run.glob("checkpoints/*/meta.json")):
        raise FileNotFoundError(f"{run}: not a run folder (no config.yaml, no checkpoints/*/meta.json)")
    cfg = _yaml(run / "config.yaml")
    data, model = cfg.get("data") or {}, cfg.get("model") or {}
    meta = next((_json(p) for p in sorted(run.glob("checkpoints/*/meta.json"))), {})
    index = _train_index(str(data["train"])) if data.get("train") else {}
    stats = _json(run / "train_stats.json")
    means, lower, eval_data = _eval(run)
    steps = _steps(run) if _steps(run) is not None else stats.get("step", "")
    row = {"run": run.name, "arch": model.get("arch") or meta.get("arch", ""),
           "preset": data.get("degrade") or index.get("preset", ""),
           "scale": data.get("scale") or meta.get("scale", ""), "data_size": index.get("nsamples", ""),
           "steps": steps, "loss": " ".join(optimised_losses(cfg, steps)), "status": stats.get("status", ""),
           "eval_data": eval_data, **means}
    return row, lower


def report(cfg: ReportConfig) -> Path:
    rows, lower = [], {}
    for r in cfg.runs:
        row, lo = run_row(Path(r))
        rows.append(row)
        lower.update(lo)
    nruns = len(rows)
    rows += baseline_rows([Path(r) for r in cfg.runs])
    metric_cols = sorted({k for r in rows for k in r} - set(BASE_COLUMNS))
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results.write_csv(out / "report.csv", rows, BASE_COLUMNS + metric_cols)
    header = BASE_COLUMNS + [f"{m} {results.DOWN if lower.get(m) else results.UP}" for m in metric_cols]
    lines = ["# Experiments", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    # the best row per column, baselines included: a run that loses to bicubic must not look best
    best = {m: results.best_groups({x["run"]: {m: {"mean": x.get(m)}} for x in rows}, m, lower.get(m, False))
            for m in metric_cols}
    for r in rows:
        cells = [str(r.get(c, "")) for c in BASE_COLUMNS]
        for m in metric_cols:
            v = r.get(m)
            text = "" if v is None else f"{v:.4f}"
            cells.append(f"**{text}**" if text and r["run"] in best[m] and len(rows) > 1 else text)
        lines.append("| " + " | ".join(cells) + " |")
    if metric_cols:
        lines += ["", f"{results.UP} higher is better, {results.DOWN} lower is better; the best row per column "
                      "in bold, baselines included."]
        lines += [f"No run beats {' and '.join(sorted(b.removesuffix(' (baseline)') for b in best[m]))} on {m}."
                  for m in metric_cols if best[m] and all(r not in best[m] for r in (x["run"] for x in rows[:nruns]))
                  and any(rows[i].get(m) is not None for i in range(nruns))]
    else:
        lines += ["", "No evaluation found for these runs: `awm eval --models RUN_DIR ...` notes its results in "
                  f"each run's {EVALS_FILE}, wherever its --out is."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR",
                        help="run folders (runs/<name>), or one sweep folder (awm sweep: its points' table and plots)")
    parser.add_argument("--out", default=argparse.SUPPRESS,
                        help="output folder (default: report; for a sweep: <sweep>/report)")


def run(args: argparse.Namespace) -> int:
    from awm.sweep.report import is_sweep, report_sweep

    if len(args.runs) == 1 and is_sweep(Path(args.runs[0])):
        print(report_sweep(Path(args.runs[0]), getattr(args, "out", None)) / "sweep.md")
        return 0
    out = report(from_args(ReportConfig, args))
    print(out / "report.md")
    return 0
