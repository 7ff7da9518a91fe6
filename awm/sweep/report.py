"""``awm report SWEEP_DIR``: a sweep's points in one table, metric-vs-key plots and a Pareto chart.

Per point: its config delta, state, the eval metrics (means of its model in ``runs/<id>/eval``;
the baselines scored beside them, bicubic and lanczos, get a row and a line in each plot),
the steps trained, and its compute: wall time of its recorded attempts (train + eval) as
GPU-hours (GPU points: seconds x processes) or CPU-hours (CPU points: seconds x processes x
threads, the cores it held), and the training TFLOP (``train_stats.json``'s FLOPs per pair of
each stage x the pairs each step trains). An attempt killed before it recorded adds no time.

Writes ``sweep.md`` and ``sweep.csv`` and, in ``figures/``, ``metrics_vs_<key>.png`` (one per
swept key, a panel per metric, a line per combination of the other keys) and
``pareto_<metric>.png`` (quality vs TFLOP, the points no other point beats on both in red).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import yaml

from awm.eval import results
from awm.eval.evaluate import BASELINES
from awm.imageio import atomic_write_bytes, atomic_write_text
from awm.sweep.spec import POINT_NAME, SPEC_NAME, Point, SweepSpec, points

COMPUTE = ["steps", "wall_s", "gpu_h", "cpu_h", "tflop"]


def is_sweep(folder: Path) -> bool:
    return (folder / SPEC_NAME).is_file() and (folder / "runs").is_dir()


def _json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def eval_means(run: Path) -> tuple[dict[str, float], dict[str, bool]]:
    """The point's model's metric means from its eval summary, and each metric's direction."""
    doc = _json(run / "eval" / "summary.json")
    models = [s for m, s in doc.get("models", {}).items() if m not in BASELINES]
    if not models:
        return {}, {}
    means = {m: s["mean"] for m, s in models[0].items() if s.get("mean") is not None}
    return means, {m: bool(v.get("lower_better")) for m, v in doc.get("metrics", {}).items()}


def baseline_means(folder: Path, pts: list[Point]) -> dict[str, dict[str, float]]:
    """The baselines evaluated beside the points (bicubic, lanczos), from the first point's eval
    summary that has them (every point is scored on the same eval set): the reference a sweep whose
    points all lose to bicubic must be read against."""
    for p in pts:
        doc = _json(folder / "runs" / p.id / "eval" / "summary.json")
        found = {name: {m: s["mean"] for m, s in stats.items() if s.get("mean") is not None}
                 for name, stats in doc.get("models", {}).items() if name in BASELINES}
        if found:
            return found
    return {}


def train_tflop(run: Path) -> float | None:
    """Training FLOPs of the run's steps: FLOPs per pair of each stage x pairs per step, in TFLOP."""
    stats = _json(run / "train_stats.json")
    cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
    flops, step = stats.get("flops_per_pair") or {}, stats.get("step")
    if "l1" not in flops or not isinstance(step, int) or not cfg:
        return None
    pairs = cfg["data"]["batch_size"] * cfg["optim"]["accum"] * stats.get("world_size", 1)
    gan_steps = max(0, step - cfg["gan_start"]) if "gan" in flops else 0
    return ((step - gan_steps) * flops["l1"] + gan_steps * flops.get("gan", 0)) * pairs / 1e12


def point_row(folder: Path, point: Point) -> tuple[dict[str, Any], dict[str, bool]]:
    run = folder / "runs" / point.id
    rec = _json(run / POINT_NAME)
    attempts = rec.get("attempts", [])
    wall = sum(a.get("train_s", 0.0) + a.get("eval_s", 0.0) for a in attempts)
    gpu = sum((a.get("train_s", 0.0) + a.get("eval_s", 0.0)) * a.get("processes", 1)
              for a in attempts if a.get("device") == "cuda")
    cpu = sum((a.get("train_s", 0.0) + a.get("eval_s", 0.0)) * a.get("processes", 1) * a.get("threads", 1)
              for a in attempts if a.get("device") == "cpu")
    means, lower = eval_means(run)
    stats = _json(run / "train_stats.json")
    row = {"point": point.id, "state": rec.get("state", "pending"), **point.delta, **means,
           "steps": stats.get("step", ""), "wall_s": round(wall, 1) if attempts else "",
           "gpu_h": gpu / 3600 if gpu else "", "cpu_h": cpu / 3600 if cpu else "", "tflop": train_tflop(run)}
    return row, lower


def pareto(rows: list[dict[str, Any]], metric: str, lower_better: bool) -> set[str]:
    """Points no other point beats on both quality and TFLOP (at least as good on both, better on one)."""
    have = [r for r in rows if isinstance(r.get(metric), float) and isinstance(r.get("tflop"), float)]
    sign = -1 if lower_better else 1
    out = set()
    for r in have:
        q, c = sign * r[metric], r["tflop"]
        if not any(sign * o[metric] >= q and o["tflop"] <= c and (sign * o[metric] > q or o["tflop"] < c)
                   for o in have):
            out.add(r["point"])
    return out


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else ""
    return "" if v is None else str(v)


def _save(fig: Any, path: Path) -> Path:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def _positions(ax: Any, values: list[Any]) -> dict[str, float]:
    """x position of each of a key's values (by its text): the number itself (a log axis over two
    decades or more), else the index of the sorted category."""
    numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
    if numeric:
        if min(values) > 0 and max(values) / min(values) >= 100:
            ax.set_xscale("log")
        return {str(v): float(v) for v in values}
    cats = sorted({str(v) for v in values})
    ax.set_xticks(range(len(cats)), cats)
    return {c: float(i) for i, c in enumerate(cats)}


def _baseline_lines(ax: Any, baselines: dict[str, dict[str, float]], metric: str) -> None:
    for (name, means), style in zip(sorted(baselines.items()), ("--", ":"), strict=False):
        if metric in means:
            ax.axhline(means[metric], color="gray", linestyle=style, label=name)


def plot_metric_vs_key(rows: list[dict[str, Any]], keys: list[str], metric_cols: list[str], key: str,
                       path: Path, baselines: dict[str, dict[str, float]] | None = None) -> Path:
    """One panel per metric: the metric against ``key``, a line per combination of the other keys,
    the baselines as horizontal lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    others = [k for k in keys if k != key]
    fig, axes = plt.subplots(len(metric_cols), 1, figsize=(6, 3 * len(metric_cols)), squeeze=False)
    for ax, m in zip(axes[:, 0], metric_cols, strict=True):
        x = _positions(ax, [r[key] for r in rows])
        groups: dict[str, list[tuple[float, float]]] = {}
        for r in rows:
            if isinstance(r.get(m), float):
                label = ", ".join(f"{k}={r[k]}" for k in others) or "all"
                groups.setdefault(label, []).append((x[str(r[key])], r[m]))
        for label, xy in groups.items():
            xy.sort()
            ax.plot([a for a, _ in xy], [b for _, b in xy], marker="o", label=label)
        _baseline_lines(ax, baselines or {}, m)
        ax.set_xlabel(key)
        ax.set_ylabel(m)
        if len(ax.get_legend_handles_labels()[1]) > 1:
            ax.legend(fontsize=7)
    return _save(fig, path)


def plot_pareto(rows: list[dict[str, Any]], metric: str, lower_better: bool, front: set[str], path: Path,
                baselines: dict[str, dict[str, float]] | None = None) -> Path:
    """Quality against training TFLOP; the Pareto front in red, joined in compute order."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    have = [r for r in rows if isinstance(r.get(metric), float) and isinstance(r.get("tflop"), float)]
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.scatter([r["tflop"] for r in have], [r[metric] for r in have], color="tab:blue", label="point")
    best = sorted((r for r in have if r["point"] in front), key=lambda r: r["tflop"])
    ax.plot([r["tflop"] for r in best], [r[metric] for r in best], color="tab:red", marker="o", label="Pareto front")
    for r in have:
        ax.annotate(r["point"], (r["tflop"], r[metric]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    _baseline_lines(ax, baselines or {}, metric)
    costs = [r["tflop"] for r in have if r["tflop"] > 0]
    if costs and max(costs) / min(costs) >= 100:
        ax.set_xscale("log")
    ax.set_xlabel("training TFLOP")
    ax.set_ylabel(f"{metric} ({'lower' if lower_better else 'higher'} is better)")
    ax.legend(fontsize=7)
    return _save(fig, path)


def report_sweep(folder: Path, out: Path | None = None) -> Path:
    """The sweep's table (Markdown + CSV) and figures, in ``out`` (default ``<sweep>/report``)."""
    from awm.config import load

    spec = load(SweepSpec, folder / SPEC_NAME)
    out = Path(out) if out else folder / "report"
    pts = points(spec)
    keys = list(spec.search.space)
    rows, lower = [], {}
    for p in pts:
        row, lo = point_row(folder, p)
        rows.append(row)
        lower.update(lo)
    metric_cols = [m for m in spec.eval.metrics if any(m in r for r in rows)]
    metric = spec.quality
    front = pareto(rows, metric, lower.get(metric, False))
    for r in rows:
        r["pareto"] = "*" if r["point"] in front else ""
    columns = ["point", "state", *keys, *metric_cols, *COMPUTE, "pareto"]
    baselines = baseline_means(folder, pts)
    table = rows + [{"point": f"{name} (baseline)", **means} for name, means in sorted(baselines.items())]
    results.write_csv(out / "sweep.csv", table, columns)
    figures = []
    if metric_cols:
        for k in keys:
            safe = k.replace("/", "_")
            figures.append(plot_metric_vs_key(rows, keys, metric_cols, k, out / "figures" / f"metrics_vs_{safe}.png",
                                              baselines))
    if metric in metric_cols:
        figures.append(plot_pareto(rows, metric, lower.get(metric, False), front,
                                   out / "figures" / f"pareto_{metric}.png", baselines))
    head = [*keys, *(f"{m} {results.DOWN if lower.get(m) else results.UP}" for m in metric_cols)]
    header = ["point", "state", *head, *COMPUTE, "pareto"]
    eval_name = spec.eval.name or Path(spec.eval.data).name or "the runs' data.eval"
    lines = [f"# Sweep {spec.name}", "",
             f"{len(rows)} points ({spec.search.sampler} over {', '.join(keys)}), {spec.train.config} + "
             f"{len(spec.train.overrides)} overrides, evaluated on {eval_name} ({spec.eval.checkpoint} checkpoint).",
             "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in table:
        lines.append("| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |")
    lines += ["", f"{results.UP} higher is better, {results.DOWN} lower is better. wall_s: wall seconds of the "
              "recorded attempts (train + eval); gpu_h/cpu_h: GPU-hours / CPU core-hours; tflop: training FLOPs. "
              f"pareto: no other point has better {metric} for less training compute. Baseline rows: the same "
              "eval set upscaled without a model.", ""]
    done = [r[metric] for r in rows if isinstance(r.get(metric), float)]
    best = (min if lower.get(metric) else max)(done) if done else None
    for name, means in sorted(baselines.items()):
        if best is not None and metric in means and (min if lower.get(metric) else max)(best, means[metric]) != best:
            lines += [f"No point beats {name} on {metric} ({name} {means[metric]:.4g}, best point {best:.4g}).", ""]
    lines += [f"![{f.stem}](figures/{f.name})" for f in figures]
    atomic_write_text(out / "sweep.md", "\n".join(lines) + "\n")
    return out
