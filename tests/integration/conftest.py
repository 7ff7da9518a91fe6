"""Integration fixtures: the project's real two-node SLURM cluster (tests/integration/slurm_up.sh).

``slurm_cluster`` (session scope) brings the cluster up once when the tests run as root on a
Debian machine with apt (as ``make test`` does in CI; ~35 s on a fresh machine, ~0 s when it is
already up), exports SLURM_CONF so that sbatch/sacct and the jobs find it, and stops the daemons
it started at the end. Set AWM_SKIP_SLURM=1 to skip the SLURM tests locally; under CI=true every
skip, this one included, is a failure (tests/conftest.py).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

HERE = Path(__file__).parent
SLURM_ROOT = Path(os.environ.get("SLURM_ROOT", "/tmp/awm-slurm"))


def _skip_reason() -> str | None:
    if os.environ.get("AWM_SKIP_SLURM") == "1":
        return "AWM_SKIP_SLURM=1"
    if os.geteuid() != 0:
        return "the SLURM test cluster installs Debian packages and starts daemons: run as root"
    if shutil.which("apt-get") is None and shutil.which("slurmctld") is None:
        return "the SLURM test cluster needs Debian's apt-get (or slurm already installed)"
    return None


def _up() -> bool:
    pids = [SLURM_ROOT / "run" / f"{d}.pid" for d in ("slurmctld", "slurmd-n1", "slurmd-n2", "slurmdbd")]
    for p in pids:
        try:
            os.kill(int(p.read_text()), 0)
        except (OSError, ValueError):
            return False
    return True


@pytest.fixture(scope="session")
def slurm_cluster():
    """SLURM_CONF of a running cluster (nodes n1, n2) with accounting; skips with the reason if impossible."""
    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    started = not _up()
    log = SLURM_ROOT.parent / "awm-slurm-up.log"
    with open(log, "w") as f:
        proc = subprocess.run([str(HERE / "slurm_up.sh")], stdout=f, stderr=subprocess.STDOUT,
                              env={**os.environ, "SLURM_ROOT": str(SLURM_ROOT)}, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"slurm_up.sh failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    conf = str(SLURM_ROOT / "etc" / "slurm.conf")
    previous = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = conf  # sbatch exports it to the jobs (scontrol requeue needs it)
    yield conf
    if previous is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = previous
    if started:
        subprocess.run([str(HERE / "slurm_down.sh")], env={**os.environ, "SLURM_ROOT": str(SLURM_ROOT)},
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120)
