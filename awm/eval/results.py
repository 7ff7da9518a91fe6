"""Per-image score rows -> summary statistics, CSV, Markdown table and bar charts.

Shared by ``awm eval`` (rows per model and sample), ``awm score`` (rows per image) and
``awm report``. Sums use ``math.fsum`` (exactly rounded), so the summary does not depend on the
order in which ranks delivered their rows: N ranks give the same numbers as one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from awm.imageio import atomic_write_bytes, atomic_write_text

UP, DOWN = "↑", "↓"


def stats(values: Sequence[float]) -> dict[str, Any]:
    """mean, sample std, count, 95% CI (Student t) over the finite values; NaNs counted as failed."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(finite)
    out: dict[str, Any] = {"mean": None, "std": None, "count": n, "failed": len(values) - n,
                           "ci95": None}
    if n == 0:
        return out
    mean = math.fsum(finite) / n
    out["mean"] = mean
    if n > 1:
        from scipy.stats import t

        std = math.sqrt(math.fsum((v - mean) ** 2 for v in finite) / (n - 1))
        half = float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)
        out["std"], out["ci95"] = std, [mean - half, mean + half]
    else:
        out["std"] = 0.0
    return out


def summarize(rows: list[dict[str, Any]], metrics: list[str], group: str | None) -> dict[str, dict]:
    """{group value: {metric: stats}} in first-seen order; one group named "all" when group is None."""
    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(str(r[group]) if group else "all", []).append(r)
    return {g: {m: stats([r.get(m, float("nan")) for r in rs]) for m in metrics} for g, rs in groups.items()}


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "" if not math.isfinite(v) else repr(v)
    return str(v)


def write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> Path:
    """Rows as CSV (floats written with repr: exact round trip; NaN as an empty cell)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in rows:
        w.writerow([_cell(r.get(c, "")) for c in columns])
    return atomic_write_text(Path(path), buf.getvalue())


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def best_groups(summary: dict[str, dict], metric: str, lower_better: bool) -> set[str]:
    """The group(s) with the best mean for ``metric`` (ties all marked)."""
    means = {g: s[metric]["mean"] for g, s in summary.items() if s[metric]["mean"] is not None}
    if not means:
        return set()
    best = (min if lower_better else max)(means.values())
    return {g for g, v in means.items() if v == best}


def _fmt(v: float) -> str:
    return f"{v:.4f}" if abs(v) < 100 else f"{v:.2f}"


def markdown_table(summary: dict[str, dict], metrics: list[str], lower_better: dict[str, bool],
                   group_label: str = "model") -> str:
    """Mean ± 95% CI half-width per group and metric; the best per column in bold; arrows in headers."""
    header = [group_label] + [f"{m} {DOWN if lower_better[m] else UP}" for m in metrics] + ["n"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    best = {m: best_groups(summary, m, lower_better[m]) for m in metrics}
    for g, s in summary.items():
        cells = [g]
        for m in metrics:
            st = s[m]
            if st["mean"] is None:
                cells.append("n/a")
                continue
            text = _fmt(st["mean"])
            if st["ci95"]:
                text += f" ± {_fmt((st['ci95'][1] - st['ci95'][0]) / 2)}"
            cells.append(f"**{text}**" if g in best[m] and len(summary) > 1 else text)
        cells.append(str(max((s[m]["count"] + s[m]["failed"] for m in metrics), default=0)))
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\n{UP} higher is better, {DOWN} lower is better; mean ± half-width of the 95% confidence "
            "interval; best per column in bold.\n")
    return "\n".join(lines) + "\n" + note


def value_range(means: list[float], errs: list[float]) -> tuple[float, float] | None:
    """The value axis of a bar chart: near the data, so 1-2 dB between 28 dB bars stays visible (from 0
    they all look alike); None (matplotlib's own, from 0) when the values span 0 or reach near it."""
    ends = [(m - e, m + e) for m, e in zip(means, errs, strict=True) if math.isfinite(m)]
    if not ends:
        return None
    lo, hi = min(a for a, _ in ends), max(b for _, b in ends)
    span = max(hi - lo, 1e-6 * max(abs(lo), abs(hi)), 1e-12)
    if lo <= 0 or lo < 2 * span:
        return None
    return lo - span, hi + 0.25 * span


def bar_charts(summary: dict[str, dict], metrics: list[str], lower_better: dict[str, bool],
               out_dir: Path) -> list[Path]:
    """One PNG per metric: a bar per group with its 95% CI as the error bar and its value on it; the
    axis starts near the data (:func:`value_range`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    groups = list(summary)
    for m in metrics:
        means = [summary[g][m]["mean"] if summary[g][m]["mean"] is not None else float("nan") for g in groups]
        errs = [((s := summary[g][m])["ci95"][1] - s["ci95"][0]) / 2 if summary[g][m]["ci95"] else 0.0
                for g in groups]
        fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(groups) + 1.5), 3.5), dpi=100)
        bars = ax.bar(range(len(groups)), means, yerr=errs, capsize=4, color="#4c72b0")
        ax.bar_label(bars, labels=[_fmt(v) if math.isfinite(v) else "" for v in means], fontsize=8)
        limits = value_range(means, errs)
        if limits is not None:
            ax.set_ylim(*limits)
        ax.set_xticks(range(len(groups)), [g if len(g) <= 18 else "…" + g[-17:] for g in groups],
                      rotation=20, ha="right")
        ax.set_title(f"{m} ({'lower' if lower_better[m] else 'higher'} is better)")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png")
        plt.close(fig)
        safe = "".join(c if c.isalnum() or c in "-_+" else "_" for c in m)
        paths.append(atomic_write_bytes(out_dir / f"{safe}.png", buf.getvalue()))
    return paths


def write_summary(out_dir: Path, summary: dict[str, dict], metrics: list[str], lower_better: dict[str, bool],
                  extra: dict[str, Any], group_label: str) -> None:
    """summary.json (stats + direction of every metric) and summary.md (the table)."""
    doc = {"metrics": {m: {"lower_better": lower_better[m]} for m in metrics}, group_label + "s": summary,
           **extra}
    atomic_write_text(out_dir / "summary.json", json.dumps(doc, indent=1))
    title = extra.get("title", "Results")
    atomic_write_text(out_dir / "summary.md", f"# {title}\n\n" + markdown_table(summary, metrics, lower_better,
                                                                                 group_label))
