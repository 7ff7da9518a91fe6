"""Integration fixtures: the project's real two-node SLURM cluster (tests/integration/slurm_up.sh).

``slurm_cluster`` (session scope) brings the cluster up once when the tests run as root on a
Debian machine with apt (as ``make test`` does in CI; ~35 s on a fresh machine, ~0 s when it is
already up), exports SLURM_CONF so that sbatch/sacct and the jobs find it, and stops the daemons
it started at the end. Set AWM_SKIP_SLURM=1 to skip the SLURM tests locally; under CI=true every
skip, this one included, is a failure (tests/conftest.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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


@pytest.fixture(scope="session", autouse=True)
def cpu_only():
    """Every process these tests start runs on the CPU, on any host: with a GPU visible, 2-rank
    ``torchrun`` runs would put rank 1 on ``cuda:1`` (``set_device(1)`` fails on a 1-GPU host) and
    take NCCL instead of the gloo the tests are written for. The GPU paths have their own script
    (tests/gpu/run.sh). Every child environment these tests build starts from ``os.environ``."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CUDA_VISIBLE_DEVICES", "")
        yield


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


class Node:
    """A test-cluster node seen from outside: its processes (those in its network namespace), a power
    loss (``die``) and a boot that puts it back in service (``boot``, slurm_up.sh restarts a dead slurmd)."""

    def __init__(self, name: str):
        self.name = name

    def pids(self) -> list[int]:
        ns = os.stat(f"/run/netns/awm-slurm-{self.name}").st_ino
        pids = []
        for d in Path("/proc").iterdir():
            try:
                if d.name.isdigit() and os.stat(d / "ns" / "net").st_ino == ns:
                    pids.append(int(d.name))
            except OSError:  # the process ended meanwhile
                pass
        return pids

    def die(self) -> None:
        """Kill its slurmd, job steps and tasks at once, then mark it DOWN (as slurmctld would, later)."""
        # Freeze first, so that nothing on the node finishes while it is being killed, and until a
        # fresh look finds no new process: one forked after a look (a task slurmd was just starting)
        # would otherwise survive the "power loss", finish its work and write its results.
        frozen: set[int] = set()
        while new := [pid for pid in self.pids() if pid not in frozen]:
            for pid in new:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGSTOP)
            frozen.update(new)
        for pid in frozen:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["scontrol", "update", f"NodeName={self.name}", "State=DOWN", "Reason=test: node died"],
                       check=True)

    def boot(self) -> None:
        up = subprocess.run([str(HERE / "slurm_up.sh")], capture_output=True, text=True, timeout=300,
                            env={**os.environ, "SLURM_ROOT": str(SLURM_ROOT)})
        assert up.returncode == 0, up.stdout + up.stderr


@pytest.fixture
def node_n2(slurm_cluster):
    """Node n2, to kill mid-job; booted again (if it died) when the test ends."""
    node = Node("n2")
    yield node
    node.boot()
