"""tests/gpu/run.sh, the one-GPU check script: on a machine without a GPU it says so and exits
non-zero without a traceback; its driver runs its sections and writes its JSON (CPU dry run)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(ROOT / "tests" / "gpu" / "run.sh"), *args], capture_output=True, text=True,
                          timeout=600, env={**os.environ, "PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": "",
                                            **(env or {})})


def test_without_a_gpu_it_says_so_and_exits_nonzero():
    p = _run()
    assert p.returncode == 3, p.stdout + p.stderr
    assert "no CUDA GPU found" in p.stdout and "--cpu-dry-run" in p.stdout
    assert "Traceback" not in p.stdout + p.stderr


def test_cpu_dry_run_runs_sections_and_writes_one_json(tmp_path):
    out = tmp_path / "gpu.json"
    p = _run("--cpu-dry-run", "--sections", "fused_adamw_found_inf,stop_latency,multi_rank_note", "--out", str(out))
    assert p.returncode == 0, p.stdout + p.stderr
    report = json.loads(out.read_text())
    assert json.loads(p.stdout.strip().splitlines()[-1]) == report
    s = report["sections"]
    assert s["fused_adamw_found_inf"]["status"] == "pass" and s["multi_rank_note"]["status"] == "skipped"
    assert s["stop_latency"]["status"] == "skipped"  # CUDA-only sections are left out of a dry run
    assert report["defects"]["6 silent CPU fallback"] == {"device_cuda": "not chosen"}
    assert _run("--sections", "nonsense", "--cpu-dry-run").returncode == 2
