"""Distributed details in one place: who am I, how many are we, and collectives that work on CPU.

Rank and world size come from torchrun/accelerate (RANK, WORLD_SIZE, LOCAL_RANK) or SLURM
(SLURM_PROCID, SLURM_STEP_NUM_TASKS). Without a GPU the process group uses gloo automatically.
"""

from __future__ import annotations

import atexit
import os
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

from awm.errors import ConfigError

T = TypeVar("T")
DEFAULT_TIMEOUT_S = 6 * 3600


@dataclass(frozen=True)
class Part:
    """Part ``index`` of ``count``: item ``i`` of a sequence belongs to it when ``i % count == index``.

    The one way AWM splits work: over ranks (:attr:`DistEnv.part`) and over array-job parts
    (``--part i/n``), for shards, eval samples, scored images and upscale inputs alike. The parts are
    disjoint, cover everything, and do not depend on how many items there are.
    """

    index: int = 0
    count: int = 1

    @classmethod
    def parse(cls, text: str) -> Part:
        try:
            i, n = (int(x) for x in text.split("/"))
        except ValueError:
            raise ValueError(f"--part {text!r}: expected i/n with integers, e.g. 0/4") from None
        if n < 1 or not 0 <= i < n:
            raise ValueError(f"--part {text!r}: need n >= 1 and 0 <= i < n")
        return cls(i, n)

    def takes(self, index: int) -> bool:
        return index % self.count == self.index

    def share(self, items: Sequence[T]) -> Sequence[T]:
        """This part's items of ``items``, in order (a ``range`` stays a ``range``)."""
        return items[self.index::self.count]

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


@dataclass(frozen=True)
class DistEnv:
    rank: int
    world_size: int
    local_rank: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def part(self) -> Part:
        """This rank's share of any sequence that every rank lists the same way."""
        return Part(self.rank, self.world_size)


def env() -> DistEnv:
    """Rank, world size and local rank from the launcher's environment (1 process if none)."""
    e = os.environ
    if "RANK" in e and "WORLD_SIZE" in e:
        return DistEnv(int(e["RANK"]), int(e["WORLD_SIZE"]), int(e.get("LOCAL_RANK", 0)))
    # the step's task count, set by srun only: a batch script of an N-task job also has SLURM_NTASKS=N
    # and SLURM_PROCID=0, and a process it starts without srun is alone (it would wait for N-1 peers)
    if "SLURM_PROCID" in e and int(e.get("SLURM_STEP_NUM_TASKS", 1)) > 1:
        return DistEnv(int(e["SLURM_PROCID"]), int(e["SLURM_STEP_NUM_TASKS"]), int(e.get("SLURM_LOCALID", 0)))
    return DistEnv(0, 1, 0)


def rank() -> int:
    return env().rank


def world_size() -> int:
    return env().world_size


def is_main() -> bool:
    return env().is_main


class NoGPUError(RuntimeError):
    """A run asked for CUDA and this process has no usable GPU (the message says why and what to install)."""


# The oldest Linux driver each CUDA major version runs on (NVIDIA's minor-version compatibility).
MIN_DRIVER = {"13": 580, "12": 525, "11": 450}
DRIVER_VERSION_FILE = Path("/proc/driver/nvidia/version")
CUDA12_INDEX = "https://download.pytorch.org/whl/cu126"


def _driver() -> str:
    """The NVIDIA driver situation as a phrase, read from the kernel module (no CUDA call)."""
    if os.environ.get("CUDA_VISIBLE_DEVICES") == "" or os.environ.get("CUDA_VISIBLE_DEVICES") == "-1":
        return "CUDA_VISIBLE_DEVICES hides every GPU"
    try:
        text = DRIVER_VERSION_FILE.read_text()
    except OSError:
        return f"no NVIDIA driver is loaded ({DRIVER_VERSION_FILE} is missing)"
    words = text.split()
    version = next((w for w in words if w.count(".") >= 1 and w.split(".")[0].isdigit()), "unknown")
    return f"NVIDIA driver {version} is loaded"


def require_cuda(asked_by: str) -> None:
    """Raise :class:`NoGPUError` unless torch sees a CUDA GPU: a run that asked for one must not
    quietly run on the CPU (e.g. the CUDA 13 wheel on a driver older than 580 sees no GPU)."""
    import torch

    if torch.cuda.is_available():
        return
    cuda = torch.version.cuda
    if cuda is None:
        build = f"torch {torch.__version__} is a CPU-only build"
    else:
        need = MIN_DRIVER.get(cuda.split(".")[0])
        build = f"torch {torch.__version__} is built for CUDA {cuda}" + (f" (NVIDIA driver >= {need})" if need else "")
    raise NoGPUError(f"{asked_by} asks for a CUDA GPU but torch sees none: {build}; {_driver()}. Install the "
                     f"torch wheel matching the driver (`nvidia-smi` shows its CUDA version), e.g. for CUDA 12 "
                     f"drivers: pip install torch torchvision --index-url {CUDA12_INDEX}; or choose the CPU "
                     "(device cpu)")


def local_gpu() -> int:
    """This process's GPU: ``LOCAL_RANK`` modulo the GPUs it sees, as Accelerate chooses. Sites that
    bind one GPU per task (``--gpus-per-task``, cgroup binding) show each rank one GPU, ``cuda:0``,
    where ``cuda:LOCAL_RANK`` would be an invalid ordinal."""
    import torch

    return env().local_rank % max(1, torch.cuda.device_count())


def resolve_device(name: str, key: str = "device") -> str:
    """``auto``: this process's GPU (:func:`local_gpu`) when there is one, else ``cpu``; any other
    name is checked by torch (``cpu``, ``cuda``, ``cuda:N``, ...), and a CUDA name must find a GPU
    (:func:`require_cuda`): the one resolver of every stage."""
    import torch

    if name == "auto":
        return f"cuda:{local_gpu()}" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(key, name, "auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        require_cuda(f"{key}={name}")
    return name


def backend() -> str:
    """nccl when this process has a GPU, gloo otherwise (CPU-only machines, tests)."""
    import torch

    return "nccl" if torch.cuda.is_available() else "gloo"


def timeout() -> timedelta:
    """How long a collective may wait for a peer: ``AWM_DIST_TIMEOUT_S`` seconds, default 6 hours.

    NCCL's default (10 minutes) kills ``upscale``/``eval``/``score`` ranks whose only collective is
    the final gather when one rank finishes its share long before another; a training rank that
    waits that long for a peer is better stopped by the job's own time limit.
    """
    raw = os.environ.get("AWM_DIST_TIMEOUT_S", str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(raw)
    except ValueError:
        seconds = -1.0
    if seconds <= 0:
        raise ConfigError("AWM_DIST_TIMEOUT_S", raw, "a number of seconds > 0")
    return timedelta(seconds=seconds)


def init(device: str = "auto") -> DistEnv:
    """Join the process group if launched with several processes; a no-op for one process.

    On a machine with no GPU (or with ``device="cpu"``), also tells Accelerate to run on CPU so
    ``torchrun`` works unchanged.
    The group is destroyed at interpreter exit if the caller has not done so: a process that
    exits holding one can abort in C++ ("terminate called without an active exception").
    """
    import torch
    import torch.distributed as dist

    d = env()
    gpu = torch.cuda.is_available() and device != "cpu"
    if not gpu:
        os.environ.setdefault("ACCELERATE_USE_CPU", "true")
    if d.world_size > 1 and not dist.is_initialized():
        addr, port = slurm_rendezvous() or ("127.0.0.1", "29500")
        os.environ.setdefault("MASTER_ADDR", addr)
        os.environ.setdefault("MASTER_PORT", port)
        os.environ.setdefault("RANK", str(d.rank))
        os.environ.setdefault("WORLD_SIZE", str(d.world_size))
        os.environ.setdefault("LOCAL_RANK", str(d.local_rank))
        if gpu:
            torch.cuda.set_device(local_gpu())
        dist.init_process_group("nccl" if gpu else "gloo", timeout=timeout())
        atexit.register(destroy)
    return d


def slurm_rendezvous() -> tuple[str, str] | None:
    """MASTER_ADDR/PORT for tasks that ``srun`` started without a launcher: the step's first node
    (where its task 0 runs) and a port from the job and step ids, the same in every task of every
    node (127.0.0.1 would make each node rendezvous with itself). None outside a SLURM job step of
    several tasks."""
    e = os.environ
    nodes = e.get("SLURM_STEP_NODELIST") or e.get("SLURM_JOB_NODELIST")
    if "RANK" in e or int(e.get("SLURM_STEP_NUM_TASKS", "1")) <= 1 or not nodes:
        return None
    port = random.Random(f"{e.get('SLURM_JOB_ID')}.{e.get('SLURM_STEP_ID')}").randint(20000, 60000)
    return first_host(nodes), str(port)


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: ``gpu[003-010,12],cpu1`` -> ``gpu003``."""
    out, i = "", 0
    while i < len(nodelist) and nodelist[i] != ",":
        if nodelist[i] == "[":
            end = nodelist.index("]", i)
            out += nodelist[i + 1:end].split(",")[0].split("-")[0]
            i = end + 1
        else:
            out += nodelist[i]
            i += 1
    return out


def initialized() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if initialized():
        import torch.distributed as dist

        dist.barrier()


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` in rank order on every rank (a list of one without a process group)."""
    if not initialized():
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def destroy() -> None:
    if initialized():
        import torch.distributed as dist

        dist.destroy_process_group()
