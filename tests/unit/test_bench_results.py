"""The README's Performance table is results.jsonl rendered, and never calls a stale figure current.

A failure here means: a benchmark's code changed after its row was measured (re-measure with
`make bench BENCH=stale`, or relabel with `make bench-table`), or someone edited the table by hand.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from registry import BENCHES, Bench, by_name, rows_for  # noqa: E402
from results import README, REPO, append, load, readme_table, render_table, stale_reason  # noqa: E402
from run import last_json  # noqa: E402


def test_readme_table_is_results_rendered_with_freshness_of_this_tree() -> None:
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout: freshness needs the history")
    assert subprocess.run(["git", "-C", str(REPO), "rev-parse", "--is-shallow-repository"],
                          capture_output=True, text=True).stdout.strip() == "false", "shallow clone: fetch the history"
    want = render_table(load())
    got = readme_table(README.read_text())
    assert got == want, ("README.md's Performance table differs from tests/benchmarks/results.jsonl as of this "
                         "tree: run `make bench BENCH=stale` (re-measure) or `make bench-table` (relabel stale rows)")


def test_every_record_names_a_benchmark_and_every_measured_path_exists() -> None:
    names = by_name()
    for rec in load():
        assert rec["benchmark"] in names, f"results.jsonl names unknown benchmark {rec['benchmark']!r}"
        assert rec["rows"], f"{rec['benchmark']}: a record without rows"
        if rec.get("commit"):
            for key in ("date", "cpu", "cores", "load_before", "load_after", "figures", "args"):
                assert key in rec, f"{rec['benchmark']}: measured record lacks {key!r}"
    scripts = {b.script for b in BENCHES}
    for f in (REPO / "tests" / "benchmarks").glob("bench_*.py"):
        assert f.name in scripts, f"{f.name} is not in tests/benchmarks/registry.py: `make bench` would never run it"
    for b in BENCHES:
        assert (REPO / "tests" / "benchmarks" / b.script).is_file(), b.script
        for p in b.paths:
            assert (REPO / p).exists(), f"registry.py maps {b.name} to {p}, which is not in the tree (moved?)"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          check=True, capture_output=True, text=True).stdout.strip()


def _luma_record(repo: Path, **fields: object) -> dict:
    """A measured ``luma`` record on the HEAD of ``repo``, a fresh one-commit repository of ``pkg/a.py``."""
    _git(repo, "init", "-q")
    (repo / "pkg").mkdir()
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "a")
    return {"benchmark": "luma", "commit": _git(repo, "rev-parse", "HEAD"), "args": [],
            "date": "2026-12-05T00:00:00+00:00", "cpu": "c", "cores": 2, "load_before": [1.0], "load_after": [1.0],
            **fields}


def test_a_row_turns_stale_when_its_code_changes_after_the_measured_commit(tmp_path: Path) -> None:
    _git(tmp_path, "init", "-q")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    (tmp_path / "other.py").write_text("y = 1\n")
    (tmp_path / "tests" / "benchmarks").mkdir(parents=True)
    (tmp_path / "tests" / "benchmarks" / "bench_dedup.py").write_text("z = 1\n")
    _git(tmp_path, "add", ".")
    _git(tmp_path, "commit", "-qm", "a")
    measured = _git(tmp_path, "rev-parse", "HEAD")
    bench = Bench("dedup", "bench_dedup.py", (), ("pkg",))
    rec = {"benchmark": "dedup", "commit": measured, "args": [], "date": "2026-12-04T00:00:00+00:00", "cpu": "c",
           "cores": 2, "load_before": [1.0, 1, 1], "load_after": [2.0, 1, 1],
           "rows": [{"what": "w", "result": "r", "baseline": "b"}]}
    (tmp_path / "other.py").write_text("y = 2\n")
    _git(tmp_path, "commit", "-qam", "unrelated change")
    assert stale_reason(bench, rec, tmp_path) is None
    assert "from an earlier tree" not in render_table([rec], tmp_path, (bench,))
    (tmp_path / "pkg" / "a.py").write_text("x = 2\n")
    _git(tmp_path, "commit", "-qam", "measured code changed")
    first = _git(tmp_path, "rev-parse", "HEAD")
    assert f"`pkg` ({first[:9]})" in stale_reason(bench, rec, tmp_path)
    assert "**from an earlier tree**" in render_table([rec], tmp_path, (bench,))
    table = render_table([rec], tmp_path, (bench,))
    (tmp_path / "pkg" / "a.py").write_text("x = 3\n")
    _git(tmp_path, "commit", "-qam", "a second change")
    assert render_table([rec], tmp_path, (bench,)) == table  # a stale row's label names the first change
    (tmp_path / "pkg" / "a.py").write_text("x = 1\n")
    _git(tmp_path, "commit", "-qam", "back")
    rec["commit"] = _git(tmp_path, "rev-parse", "HEAD")
    assert stale_reason(bench, rec, tmp_path) is None
    (tmp_path / "tests" / "benchmarks" / "bench_dedup.py").write_text("z = 2\n")
    _git(tmp_path, "commit", "-qam", "the benchmark itself changed")
    assert "bench_dedup.py" in stale_reason(bench, rec, tmp_path)
    assert "not in this history" in stale_reason(bench, {**rec, "commit": "0" * 40}, tmp_path)
    assert stale_reason(bench, {**rec, "commit": None, "source": "imported"}, tmp_path) == "imported"


def test_last_json_reads_an_indented_object_after_progress_lines() -> None:
    assert last_json('progress {"a": 1}\n{\n "b": {\n  "c": 2\n }\n}\n') == {"b": {"c": 2}}
    with pytest.raises(ValueError, match="no JSON"):
        last_json("no figures\n")


def test_a_registered_benchmark_without_a_record_reads_not_measured_yet(tmp_path: Path) -> None:
    (tmp_path / "tests" / "benchmarks").mkdir(parents=True)
    (tmp_path / "tests" / "benchmarks" / "bench_x.py").write_text('"""What x measures.\n\nMore."""\n')
    table = render_table([], tmp_path, (Bench("x", "bench_x.py", ("--n", "2"), ("pkg",)), Bench("y", "bench_y.py", None, ())))
    rows = table.splitlines()[2:]
    assert rows == ["| What x measures. | `bench_x.py` `--n 2` | not measured yet |  | `make bench BENCH=x` measures it |",
                    "| y | `bench_y.py` | not measured yet |  | no run here can produce it |"]


def _export_figures() -> dict:
    ok = {"floor_db": 50.0, "passes": True, "seconds": 3.0}
    return {"scale": 2, "formats": ["onnx_fp32", "onnx_fp16", "ncnn"],
            "versions": {"torch": "2.14.1", "onnxruntime": "1.32.0", "ncnn": "1.0.20261020"},
            "real": {"dir": "r", "images": ["a.png", "b.png"]}, "demo": {"skipped": "no runs/demo/run"},
            "models": [
                {"model": "compact-tiny", "trained": False, "onnx_fp32": {**ok, "min_db": 132.76, "min_db_real": 130.04},
                 "onnx_fp16": {**ok, "floor_db": 40.0, "min_db": 66.79, "min_db_real": 63.45},
                 "ncnn": {**ok, "min_db": "identical", "min_db_real": 127.9}},
                {"model": "span-tiny", "trained": False, "onnx_fp32": {**ok, "min_db": 93.3, "min_db_real": None},
                 "onnx_fp16": {**ok, "floor_db": 40.0, "min_db": 25.07, "min_db_real": 22.11, "passes": False},
                 "ncnn": {"refused": "pnnx could not convert the model: " + "x " * 80, "seconds": 130.0}},
                {"model": "dat-tiny", "trained": False, "onnx_fp32": {"refused": "DAT cannot be exported to ONNX: why",
                                                                      "seconds": 0.0},
                 "onnx_fp16": {"refused": "DAT cannot be exported to ONNX: why", "seconds": 0.0},
                 "ncnn": {"refused": "pnnx left operators ncnn has no layer for: Tensor.fill", "seconds": 9.0}}]}


def test_export_rows_give_each_formats_worst_db_per_arch_floors_and_refusals() -> None:
    (row,) = rows_for(by_name()["export"], _export_figures())
    assert row["result"] == (
        "ONNX fp32: compact-tiny 133 [130], span-tiny 93.3, dat-tiny refused; "
        "ONNX fp16: compact-tiny 66.8 [63.5], span-tiny 25.1 [22.1] **below the floor: refused**, dat-tiny refused; "
        "NCNN fp32: compact-tiny identical [128], span-tiny refused, dat-tiny refused; "
        "slowest export and check span-tiny NCNN fp32, 130 s")
    assert row["baseline"].startswith("floors a release enforces: ONNX fp32 50 dB, ONNX fp16 40 dB, NCNN fp32 50 dB; "
                                      "refused: span-tiny NCNN fp32: pnnx could not convert the model: x x")
    assert row["baseline"].endswith(" ...; dat-tiny ONNX fp32 and ONNX fp16: DAT cannot be exported to ONNX: why; "
                                    "dat-tiny NCNN fp32: pnnx left operators ncnn has no layer for: Tensor.fill")
    assert "2 real images" in row["what"] and "not in this run (`make demo` first)" in row["what"]
    figs = _export_figures()
    figs["models"][0]["trained"] = True
    del figs["demo"]
    assert rows_for(by_name()["export"], figs)[0]["result"].startswith("ONNX fp32: demo compact-tiny (trained) 133")


def test_rows_are_rendered_from_the_figures_by_todays_registry_or_kept_when_the_layout_is_older(tmp_path: Path) -> None:
    bench = Bench("luma", "bench_luma.py", (), ("pkg",),
                  lambda fig: [{"what": "luma", "result": f"{fig['colours']} colours", "baseline": "exact"}])
    rec = _luma_record(tmp_path, rows=[{"what": "luma", "result": "stored when measured", "baseline": "b"}],
                       figures={"colours": 7})
    assert "| 7 colours |" in render_table([rec], tmp_path, (bench,))
    rec["figures"] = {"older_layout": 7}
    assert "| stored when measured |" in render_table([rec], tmp_path, (bench,))


def test_a_record_carried_over_from_a_lost_history_names_the_commit_it_was_taken_on(tmp_path: Path) -> None:
    bench = Bench("luma", "bench_luma.py", (), ("pkg",), None)
    rec = _luma_record(tmp_path, measured_commit="f" * 40, rows=[{"what": "luma", "result": "r", "baseline": "b"}])
    table = render_table([rec], tmp_path, (bench,))
    assert f"`{rec['commit'][:9]}` (taken on `fffffffff`, same code) 2026-12-05" in table
    assert "earlier tree" not in table


def test_a_record_renders_the_same_when_measured_and_when_read_back(tmp_path: Path) -> None:
    """run.py writes the README in the run that measured; the freshness test renders from the file."""
    bench = Bench("luma", "bench_luma.py", (), ("pkg",),
                  lambda fig: [{"what": "luma", "result": ", ".join(fig["per"]), "baseline": "b"}])
    measured = _luma_record(tmp_path, rows=[], figures={"per": {"psnry": 1, "ssim": 2, "niqe_anime": 3}})
    stored = append(measured, tmp_path / "results.jsonl")
    assert render_table([stored], tmp_path, (bench,)) == render_table(load(tmp_path / "results.jsonl"), tmp_path, (bench,))
