"""CI cannot be green with skipped tests: tests/conftest.py and .ci/run."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SKIPPING = '''
import pytest

def test_skip():
    pytest.skip("no cluster")

@pytest.mark.skipif(True, reason="weights missing")
def test_skipif():
    pass

def test_importorskip():
    pytest.importorskip("no_such_module_awm")

@pytest.mark.xfail(reason="known", strict=True)
def test_xfail():
    assert False

def test_pass():
    pass
'''
MODULE_SKIP = 'import pytest\npytest.skip("whole module", allow_module_level=True)\n'


def _pytest(tmp_path: Path, ci: str | None, source: str) -> subprocess.CompletedProcess:
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_it.py").write_text(source)
    env = {k: v for k, v in os.environ.items() if k != "CI"} | ({"CI": ci} if ci else {})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider", str(tmp_path)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)


def test_skips_fail_under_ci(tmp_path):
    r = _pytest(tmp_path, "true", SKIPPING)
    assert r.returncode == 1, r.stdout
    summary = r.stdout.strip().splitlines()[-1]
    # a skip in setup (skipif, a fixture) reports as an error, one in the test body as a failure
    assert "2 failed" in summary and "1 error" in summary and "1 passed" in summary, r.stdout
    assert "1 xfailed" in summary and "skipped" not in summary
    assert r.stdout.count("CI=true: nothing may skip, but this skipped: ") >= 3
    for reason in ("no cluster", "weights missing", "no_such_module_awm"):
        assert reason in r.stdout
    r = _pytest(tmp_path, "true", MODULE_SKIP)
    assert r.returncode != 0 and "CI=true: nothing may skip, but this skipped: Skipped: whole module" in r.stdout


def test_skips_stay_skips_outside_ci(tmp_path):
    r = _pytest(tmp_path, None, SKIPPING)
    assert r.returncode == 0, r.stdout
    summary = r.stdout.strip().splitlines()[-1]
    assert "3 skipped" in summary and "1 passed" in summary and "1 xfailed" in summary, r.stdout
    r = _pytest(tmp_path, "false", MODULE_SKIP)
    assert r.returncode == 5 and "1 skipped" in r.stdout  # 5: nothing collected, no failure


def test_ci_run_clears_what_could_skip_or_deselect(tmp_path):
    """.ci/run with a ``make`` that only records its environment and arguments."""
    (tmp_path / "make").write_text('#!/bin/sh\necho "args=$*"\necho "CI=$CI"\n'
                                   'echo "PYTEST_ARGS=${PYTEST_ARGS-unset}"\necho "SKIP=${AWM_SKIP_SLURM-unset}"\n')
    (tmp_path / "make").chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}:{os.environ['PATH']}", "PYTEST_ARGS": "-k nothing",
           "AWM_SKIP_SLURM": "1", "CI": "false"}
    out = subprocess.run([str(ROOT / ".ci" / "run")], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["args=test", "PYTEST_ARGS=", "CI=true", "PYTEST_ARGS=unset", "SKIP=unset"]
