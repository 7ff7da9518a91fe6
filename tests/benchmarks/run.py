"""`make bench`: run benchmarks, append their figures to results.jsonl, regenerate the README table.

    python tests/benchmarks/run.py                 # every benchmark this machine can run
    python tests/benchmarks/run.py --only crawl,dedup
    python tests/benchmarks/run.py --only stale    # those whose README row is stale or imported
    python tests/benchmarks/run.py --table         # only regenerate the table (relabels stale rows)
    python tests/benchmarks/run.py --list          # name, freshness and measured paths

A benchmark is measured on a committed tree: one whose measured paths have uncommitted changes
is refused (its record names HEAD, which would be a lie). Each record holds the benchmark's
printed JSON, its rows, commit, date, CPU model, cores and the load average before and after.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from registry import BENCHES, Bench, by_name, rows_for  # noqa: E402
from results import README, REPO, RESULTS, append, git, latest, load, stale_reason, write_readme  # noqa: E402


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def last_json(stdout: str) -> dict[str, Any]:
    """The JSON object a benchmark prints last (possibly indented over several lines)."""
    lines = stdout.splitlines()
    for i in range(len(lines) - 1, -1, -1):
        if lines[i].startswith("{"):
            try:
                return json.loads("\n".join(lines[i:]))
            except json.JSONDecodeError:
                continue
    raise ValueError("the benchmark printed no JSON object last")


def unavailable(bench: Bench) -> str | None:
    """Why this machine cannot run ``bench`` now, or None."""
    if bench.args is None:
        return "not runnable by make bench (a GPU-only or hand-made row)"
    if bench.needs == "cuda":
        import torch
        if not torch.cuda.is_available():
            return "needs a CUDA device"
    if bench.needs == "demo" and not (REPO / "runs" / "demo" / "run").exists():
        return "needs `make demo` first (runs/demo/run)"
    return None


def measure(bench: Bench) -> dict[str, Any]:
    dirty = git("status", "--porcelain", "--", *bench.paths, f"tests/benchmarks/{bench.script}").stdout.strip()
    if dirty:
        raise SystemExit(f"{bench.name}: uncommitted changes in measured paths, commit first:\n{dirty}")
    commit = git("rev-parse", "HEAD").stdout.strip()
    env = {**os.environ, **bench.env, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, str(REPO / "tests" / "benchmarks" / bench.script), *bench.args]
    print(f"== {bench.name}: {' '.join(cmd[1:])}", flush=True)
    before = list(os.getloadavg())
    start = datetime.datetime.now(datetime.timezone.utc)
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True)
    out = []
    for line in proc.stdout:
        sys.stdout.write(line)
        out.append(line)
    if proc.wait():
        raise BenchFailed(f"{bench.name}: {cmd[1]} exited with {proc.returncode}")
    try:
        figures = last_json("".join(out))
    except ValueError as e:
        raise BenchFailed(f"{bench.name}: {e}") from None
    return {"benchmark": bench.name, "script": bench.script, "args": list(bench.args), "commit": commit,
            "date": start.isoformat(timespec="seconds"), "cpu": cpu_model(), "cores": os.cpu_count(),
            "load_before": [round(x, 2) for x in before], "load_after": [round(x, 2) for x in os.getloadavg()],
            "rows": rows_for(bench, figures), "figures": figures}


class BenchFailed(RuntimeError):
    """A benchmark script exited non-zero: no record is written for it."""


def select(only: str | None, records: list[dict[str, Any]]) -> list[Bench]:
    if not only:
        return list(BENCHES)
    names = by_name()
    last = latest(records)
    out: list[Bench] = []
    for word in only.split(","):
        if word == "stale":
            out += [b for b in BENCHES if b.name not in last or stale_reason(b, last[b.name])]
        else:
            hits = [b for n, b in names.items() if n == word or n.startswith(word + "-")]
            if not hits:
                raise SystemExit(f"unknown benchmark {word!r}; known: {', '.join(names)}, stale")
            out += hits
    return list({b.name: b for b in out}.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=os.environ.get("BENCH") or None, help="comma-separated names, or 'stale'")
    ap.add_argument("--table", action="store_true", help="only regenerate the README table")
    ap.add_argument("--list", action="store_true", help="list benchmarks with their freshness")
    a = ap.parse_args()
    records = load()
    if a.list:
        last = latest(records)
        for b in BENCHES:
            why = stale_reason(b, last[b.name]) if b.name in last else "no record"
            print(f"{b.name:20s} {'fresh' if not why else 'STALE: ' + why}\n{'':20s} paths: {' '.join(b.paths)}")
        return
    failed: list[str] = []
    if not a.table:
        skipped = []
        for bench in select(a.only, records):
            why = unavailable(bench)
            if why:
                skipped.append(f"{bench.name}: {why}")
                continue
            try:
                rec = measure(bench)
            except BenchFailed as e:  # the others still run; the exit status says it failed
                failed.append(str(e))
                continue
            records.append(append(rec))
        for s in skipped:
            print("skipped", s)
        for s in failed:
            print("FAILED", s)
    write_readme(records)
    print(f"wrote {RESULTS.relative_to(REPO)} and the table in {README.name}")
    if failed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
