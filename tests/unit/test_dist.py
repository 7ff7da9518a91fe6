"""awm.dist without a launcher: work split into parts, the rendezvous that ranks started by plain ``srun`` agree on."""

import sys
from pathlib import Path

import pytest

from awm import dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from support import free_port  # noqa: E402


def test_parts_split_any_sequence_disjointly_and_completely():
    part = dist.Part.parse("1/3")
    assert [i for i in range(7) if part.takes(i)] == [1, 4] == list(part.share(range(7)))
    jobs = list("abcdefg")
    shares = [dist.DistEnv(r, 3, 0).part.share(jobs) for r in range(3)]
    assert sorted(x for s in shares for x in s) == jobs and shares[1] == ["b", "e"]
    assert str(part) == "1/3" and dist.DistEnv(2, 4, 0).part == dist.Part(2, 4)
    for bad in ("3/3", "x", "1/0"):
        with pytest.raises(ValueError):
            dist.Part.parse(bad)


@pytest.mark.parametrize("nodelist, first", [
    ("n1", "n1"), ("n[1-2]", "n1"), ("n2,n1", "n2"), ("gpu[003-010,012],cpu1", "gpu003"),
    ("rack[2-3]-node[07-08]", "rack2-node07"),
])
def test_first_host_of_a_slurm_node_list(nodelist, first):
    assert dist.first_host(nodelist) == first


def test_srun_tasks_rendezvous_at_the_first_node_of_their_step(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_STEP_NODELIST"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    monkeypatch.setenv("SLURM_JOB_ID", "123456")
    monkeypatch.setenv("SLURM_STEP_ID", "0")
    monkeypatch.setenv("SLURM_PROCID", "9")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "16")
    assert dist.env() == dist.DistEnv(9, 16, 0)
    addr, port = dist.slurm_rendezvous()
    assert addr == "gpu07" and 20000 <= int(port) <= 60000 and dist.slurm_rendezvous() == (addr, port)
    monkeypatch.setenv("SLURM_STEP_ID", "1")  # a second step of the same job may run meanwhile
    assert dist.slurm_rendezvous() != (addr, port)
    monkeypatch.setenv("SLURM_STEP_NODELIST", "gpu08")  # srun -w gpu08 inside the 2-node job
    assert dist.slurm_rendezvous()[0] == "gpu08"
    monkeypatch.setenv("RANK", "3")
    assert dist.slurm_rendezvous() is None  # a launcher (torchrun, submitit) already set the rendezvous


def test_a_batch_script_without_srun_is_one_process(monkeypatch):
    """The batch step of a 16-task job has SLURM_NTASKS=16 and SLURM_PROCID=0 but no step task count."""
    for k in ("RANK", "WORLD_SIZE", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("SLURM_PROCID", "0")
    monkeypatch.setenv("SLURM_NTASKS", "16")
    monkeypatch.setenv("SLURM_JOB_NODELIST", "gpu[07-08]")
    assert dist.env() == dist.DistEnv(0, 1, 0) and dist.slurm_rendezvous() is None


def test_one_device_resolver_for_every_stage(monkeypatch):
    import torch

    from awm.errors import ConfigError

    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert dist.resolve_device("auto") == ("cuda:1" if torch.cuda.is_available() else "cpu")
    assert dist.resolve_device("cpu") == "cpu"
    with pytest.raises(ConfigError, match="'device'.*'gpu0'.*auto, cpu, cuda or cuda:N"):
        dist.resolve_device("gpu0")


def test_a_rank_bound_to_one_gpu_uses_that_gpu(monkeypatch):
    """Sites that bind one GPU per task show local rank 5 one GPU: cuda:5 would be an invalid
    ordinal. The device is LOCAL_RANK modulo the GPUs the process sees, as Accelerate chooses.
    (No GPU here: torch's device count is what the test sets.)"""
    import torch

    monkeypatch.setenv("RANK", "13")
    monkeypatch.setenv("WORLD_SIZE", "16")
    monkeypatch.setenv("LOCAL_RANK", "5")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for count, index in ((8, 5), (1, 0), (2, 1)):
        monkeypatch.setattr(torch.cuda, "device_count", lambda count=count: count)
        assert dist.local_gpu() == index and dist.resolve_device("auto") == f"cuda:{index}"


def test_asking_for_cuda_without_a_gpu_says_why_and_what_to_install(monkeypatch, tmp_path):
    """A hidden GPU, then a loaded driver too old for the wheel (faked through the kernel's version
    file): both fail with torch's CUDA version, the driver situation and the CUDA 12 wheel index."""
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    import torch

    if torch.cuda.is_available():  # CUDA was initialised before the variable: the GPU stays visible
        pytest.skip("this process already sees a GPU")
    with pytest.raises(dist.NoGPUError, match="device=cuda asks for a CUDA GPU.*CUDA_VISIBLE_DEVICES hides") as e:
        dist.resolve_device("cuda")
    assert f"CUDA {torch.version.cuda}" in str(e.value) and dist.CUDA12_INDEX in str(e.value)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    fake = tmp_path / "version"
    fake.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  550.54.14  Thu Feb 22 01:44:30 UTC 2024\n")
    monkeypatch.setattr(dist, "DRIVER_VERSION_FILE", fake)
    with pytest.raises(dist.NoGPUError, match="NVIDIA driver 550.54.14 is loaded"):
        dist.require_cuda("precision=fp16")
    monkeypatch.setattr(dist, "DRIVER_VERSION_FILE", tmp_path / "missing")
    with pytest.raises(dist.NoGPUError, match="no NVIDIA driver is loaded"):
        dist.resolve_device("cuda:0", key="upscale --device")
    assert dist.resolve_device("cpu") == "cpu"


def test_process_groups_wait_hours_for_a_late_rank(monkeypatch):
    """The group awm.dist creates carries AWM_DIST_TIMEOUT_S (default hours, not NCCL's 10 min):
    upscale/eval/score ranks that finish early wait at the final gather for the slow one."""
    import os
    import subprocess
    import sys

    from awm.errors import ConfigError

    code = ("import torch, torch.distributed as d; from awm import dist; dist.init(); "
            "print(d.group.WORLD._get_backend(torch.device('cpu')).options._timeout.total_seconds()); dist.barrier(); dist.destroy()")
    env = {**os.environ, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()), "WORLD_SIZE": "2",
           "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "AWM_DIST_TIMEOUT_S": "4321"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env={**env, "RANK": str(r), "LOCAL_RANK": str(r)},
                              stdout=subprocess.PIPE, text=True) for r in range(2)]
    assert [float(p.communicate(timeout=120)[0].split()[-1]) for p in procs] == [4321, 4321]
    monkeypatch.delenv("AWM_DIST_TIMEOUT_S", raising=False)
    assert dist.timeout().total_seconds() == dist.DEFAULT_TIMEOUT_S
    assert dist.DEFAULT_TIMEOUT_S >= 3600
    monkeypatch.setenv("AWM_DIST_TIMEOUT_S", "0")
    with pytest.raises(ConfigError, match="AWM_DIST_TIMEOUT_S"):
        dist.timeout()
