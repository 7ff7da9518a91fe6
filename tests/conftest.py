"""Under ``CI=true`` a skipped test is a failed test: a green CI run has run every test.

Skips stay available locally (no SLURM, no ../shared, AWM_SKIP_SLURM=1), where they are reported
as skips; in CI the same skip reason becomes the failure message. Expected failures (xfail) are
not skips and are left alone.
"""

from __future__ import annotations

import os

import pytest


def ci() -> bool:
    """Whether this run is CI (the convention every CI service follows: CI=true)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def _fail_skip(report: pytest.TestReport | pytest.CollectReport) -> None:
    if not (ci() and report.skipped and not hasattr(report, "wasxfail")):
        return
    reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
    report.outcome = "failed"
    report.longrepr = f"CI=true: nothing may skip, but this skipped: {reason}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    outcome = yield
    _fail_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector: pytest.Collector):
    outcome = yield
    _fail_skip(outcome.get_result())
