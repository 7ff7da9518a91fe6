"""Training at hardware speed: FLOP counts, GPU peaks (MFU), memory format per architecture,
compile modes and batches copied to the GPU ahead of use.

MFU (model FLOPs utilisation) = achieved FLOP/s / the GPU's dense peak for the precision used.
FLOPs per training pair are counted once per stage with ``torch.utils.flop_counter`` on copies
of the models on PyTorch's ``meta`` device: no memory, no time, and no state of the real models
(spectral-norm vectors, RNG) changes, so counting cannot perturb an exactly resumed run.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn

from awm.config import check

CompileMode = Literal["none", "default", "max-autotune-no-cudagraphs", "reduce-overhead"]

# Dense (no sparsity) tensor-core peaks in TFLOP/s from the vendors' datasheets; "fp32" is the
# plain (CUDA-core) rate, "tf32" what fp32 matmuls/convs get with TF32 enabled.
PEAK_TFLOPS: dict[str, dict[str, float]] = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H100 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.8, "fp32": 60.0},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H200 NVL": {"bf16": 835.5, "fp16": 835.5, "tf32": 417.8, "fp32": 60.0},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
    "L40S": {"bf16": 362.1, "fp16": 362.1, "tf32": 183.0, "fp32": 91.6},
    "RTX 4090": {"bf16": 165.2, "fp16": 165.2, "tf32": 82.6, "fp32": 82.6},
}
# torch.cuda.get_device_name() spellings, most specific first
# ("NVIDIA H100 80GB HBM3" is the SXM part, "NVIDIA H100 PCIe" the PCIe card).
_GPU_NAMES: tuple[tuple[str, str], ...] = (
    ("H100 PCIe", r"H100.*PCIE"), ("H100 NVL", r"H100 NVL"), ("H200 NVL", r"H200 NVL"), ("H200", r"H200"),
    ("H100 SXM", r"H100"), ("A100", r"A100"), ("L40S", r"L40S"), ("RTX 4090", r"RTX 4090"),
)
# Memory format by spandrel architecture. Convnets run cuDNN's NHWC kernels without layout
# conversions (traiNNer-redux measures ESRGAN/Compact fastest in channels_last); window-attention
# transformers reshape to tokens and pay a conversion at every conv, so they stay NCHW.
CHANNELS_LAST: dict[str, bool] = {"ESRGAN": True, "Compact": True, "SPAN": True,
                                  "SwinIR": False, "HAT": False, "DAT": False, "GRL": False}


@dataclass
class PerfConfig:
    peak_tflops: float | None = field(default=None, metadata={
        "help": "the device's dense peak TFLOP/s for MFU (null: from the GPU table; no MFU on CPU)"})

    def __post_init__(self) -> None:
        check(self.peak_tflops is None or self.peak_tflops > 0, "perf.peak_tflops", self.peak_tflops,
              "null or a number > 0")


def gpu_entry(device_name: str) -> str | None:
    """The :data:`PEAK_TFLOPS` row for a ``torch.cuda.get_device_name`` string, or None."""
    for entry, pattern in _GPU_NAMES:
        if re.search(pattern, device_name, re.IGNORECASE):
            return entry
    return None


def precision_key(mixed_precision: str, tf32: bool) -> str:
    """Peak-table column for Accelerate's mixed_precision value ("no", "bf16", "fp16")."""
    if mixed_precision in ("bf16", "fp16"):
        return mixed_precision
    return "tf32" if tf32 else "fp32"


def peak_tflops(device: torch.device, mixed_precision: str, override: float | None) -> float | None:
    """Dense peak TFLOP/s of one device for this precision: the override, the GPU table, or None."""
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    entry = gpu_entry(torch.cuda.get_device_name(device))
    if entry is None:
        return None
    tf32 = torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    return PEAK_TFLOPS[entry][precision_key(mixed_precision, tf32)]


def channels_last_for(spandrel_id: str, configured: bool | None) -> bool:
    """The configured memory format, else the architecture's entry in :data:`CHANNELS_LAST`."""
    return CHANNELS_LAST.get(spandrel_id, False) if configured is None else configured


def compile_module(module: nn.Module, mode: CompileMode) -> nn.Module:
    """``torch.compile`` with ``mode`` ("none": the module itself)."""
    if mode == "none":
        return module
    return torch.compile(module, mode=None if mode == "default" else mode)


def meta_copy(module: nn.Module | None) -> nn.Module | None:
    """A copy of ``module`` on the meta device: shapes without data, for counting FLOPs."""
    return None if module is None else copy.deepcopy(module).to("meta")


def count_flops(run: Callable[[], Any]) -> int:
    """FLOPs of everything ``run`` executes (matmuls and convolutions, forward and backward)."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.random.fork_rng(devices=[]), FlopCounterMode(display=False) as counter:
        run()
    return int(counter.get_total_flops())


class DevicePrefetcher:
    """Iterates a loader's batches with ``keys`` already on the GPU.

    Batch ``n + 1`` is copied from pinned memory on a side CUDA stream while step ``n`` runs;
    the compute stream waits on that copy only when it takes the batch. On a CPU device it is
    the loader's iterator itself.
    """

    def __init__(self, batches: Iterator[dict[str, Any]], device: torch.device, keys: tuple[str, ...] = ("lr", "hr")):
        self.batches, self.device, self.keys = batches, device, keys
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.ready: dict[str, Any] | None = None

    def __iter__(self) -> DevicePrefetcher:
        return self

    def _copy_next(self) -> dict[str, Any]:
        batch = next(self.batches)
        with torch.cuda.stream(self.stream):
            for k in self.keys:
                if k in batch:  # no "lr" when the trainer makes it (data.degrade_on=device)
                    batch[k] = batch[k].to(self.device, non_blocking=True)
        return batch

    def __next__(self) -> dict[str, Any]:
        if self.stream is None:
            return next(self.batches)
        batch = self.ready if self.ready is not None else self._copy_next()
        compute = torch.cuda.current_stream(self.device)
        compute.wait_stream(self.stream)
        for k in self.keys:
            if k in batch:
                batch[k].record_stream(compute)  # the caching allocator must not reuse it during the step
        self.ready = self._copy_next()
        return batch
