"""awm.dist without a launcher: the rendezvous that ranks started by plain ``srun`` agree on."""

import pytest

from awm import dist


@pytest.mark.parametrize("nodelist, first", [
    ("n1", "n1"), ("n[1-2]", "n1"), ("n2,n1", "n2"), ("gpu[003-010,012],cpu1", "gpu003"),
    ("rack[2-3]-node[07-08]", "rack2-node07"),
])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert dist.first_host(nodelist) == first


def test_srun_tasks_rendezvous_at_the_first_node(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    assert dist.slurm_rendezvous() == ("gpu07", str(20000 + 123456 % 40000))
    monkeypatch.setenv("SLURM_NTASKS", "1")
    assert dist.slurm_rendezvous() is None  # one task: no process group
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("RANK", "3")
    assert dist.slurm_rendezvous() is None  # a launcher (torchrun, submitit) already set the rendezvous
