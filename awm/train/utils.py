"""Pieces of the training loop that are easier to test on their own: EMA, learning-rate schedules,
image grids, and the atomic full-state directory (Y-channel PSNR/SSIM: :mod:`awm.eval.psnr_ssim`). Each config
dataclass sits beside the code that uses it.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from awm.config import check
from awm.imageio import atomic_write_text, usual_mode


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = field(default=0.999, metadata={"help": "per-step decay (applied as decay**every)"})
    start: int = field(default=0, metadata={"help": "step from which EMA averages (copies before)"})
    every: int = field(default=1, metadata={
        "help": "update every N steps with decay**N: same horizon, 1/N of the memory traffic"})

    def __post_init__(self) -> None:
        check(0 <= self.decay < 1, "ema.decay", self.decay, "in [0, 1)")
        check(self.every >= 1, "ema.every", self.every, ">= 1")
        check(self.start >= 0, "ema.start", self.start, ">= 0")


class EMA(nn.Module):
    """Exponential moving average of a model's parameters; buffers are copied as they are.

    Kept in float32 whatever the training precision, so averaging small updates does not round
    away. Updates are a handful of multi-tensor (``torch._foreach_*``) ops whatever the number of
    parameter tensors; a step whose update was skipped on the device (``skipped`` = 1) leaves
    the average unchanged without the host ever reading the flag.
    """

    def __init__(self, model: nn.Module, cfg: EMAConfig):
        super().__init__()
        self.cfg = cfg
        self.module = copy.deepcopy(model).float().eval().requires_grad_(False)
        # The source's tensors, bound once (plain lists: not part of this module's state_dict).
        self._source = (list(model.parameters()), list(model.buffers()))
        self._params = list(self.module.parameters())
        self._buffers_ = list(self.module.buffers())
        self._weight: torch.Tensor | None = None
        self._scratch: list[torch.Tensor] = []

    @torch.no_grad()
    def update(self, step: int, skipped: torch.Tensor | None = None) -> None:
        """Average after optimizer step ``step`` (0-based); copies before ``cfg.start``."""
        params, buffers = self._source
        if self._buffers_:
            torch._foreach_copy_(self._buffers_, buffers)
        if step < self.cfg.start:
            torch._foreach_copy_(self._params, params)
            return
        if (step + 1) % self.cfg.every:
            return
        weight = 1.0 - self.cfg.decay ** self.cfg.every
        if skipped is None:
            torch._foreach_lerp_(self._params, params, weight)
            return
        if self._weight is None:
            self._weight = torch.empty((), device=skipped.device)
            # one persistent buffer per parameter, not a fresh copy of every parameter each step
            self._scratch = [torch.empty_like(p) for p in self._params]
        torch.mul(1.0 - skipped, weight, out=self._weight)  # 0 when the step was skipped
        diff = self._scratch
        torch._foreach_copy_(diff, params)  # also casts bf16 sources (DeepSpeed) to the float32 average
        torch._foreach_sub_(diff, self._params)
        torch._foreach_mul_(diff, self._weight)
        torch._foreach_add_(self._params, diff)


@dataclass
class ScheduleConfig:
    kind: Literal["constant", "step", "multistep", "cosine"] = "step"
    warmup_steps: int = 0
    step_epochs: int = field(default=30, metadata={"help": "kind=step: decay every N epochs (30: the original project's)"})
    milestones: list[int] = field(default_factory=list, metadata={"help": "kind=multistep: steps"})
    gamma: float = 0.5
    min_ratio: float = field(default=0.0, metadata={"help": "kind=cosine: final lr / base lr"})

    def __post_init__(self) -> None:
        check(self.warmup_steps >= 0, "schedule.warmup_steps", self.warmup_steps, ">= 0")
        check(self.step_epochs >= 1, "schedule.step_epochs", self.step_epochs, ">= 1")
        check(0 < self.gamma <= 1, "schedule.gamma", self.gamma, "in (0, 1]")

    def factor(self, step: int, epoch_steps: int, total: int) -> float:
        """The learning-rate multiplier at ``step`` (see :func:`lr_factor`)."""
        return lr_factor(self.kind, step, warmup=self.warmup_steps, period=self.step_epochs * epoch_steps,
                         milestones=self.milestones, gamma=self.gamma, total=total, min_ratio=self.min_ratio)


def lr_factor(kind: str, step: int, *, warmup: int = 0, period: int = 1, milestones: list[int] | None = None,
              gamma: float = 0.5, total: int = 1, min_ratio: float = 0.0) -> float:
    """Learning-rate multiplier at ``step``; a pure function of the step, so resuming needs no scheduler state.

    ``step``: decay by ``gamma`` every ``period`` steps (the seed's "every 30 epochs");
    ``multistep``: by ``gamma`` at each milestone; ``cosine``: to ``min_ratio`` after the warm-up.
    """
    warm = min(1.0, (step + 1) / warmup) if warmup else 1.0
    if kind == "constant":
        f = 1.0
    elif kind == "step":
        f = gamma ** (step // max(1, period))
    elif kind == "multistep":
        f = gamma ** sum(step >= m for m in milestones or [])
    elif kind == "cosine":
        t = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
        f = min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))
    else:
        raise ValueError(f"unknown schedule {kind!r}")
    return warm * f


def to_float(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC from the loader -> float NCHW in [0, 1] on the device (converted there, not in workers)."""
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def image_grid(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Rows of LR (nearest) | bicubic | SR | HR crops, CHW in [0, 1], for TensorBoard."""
    from torchvision.utils import make_grid

    near = F.interpolate(lr, scale_factor=scale, mode="nearest")
    tiles = torch.stack([near, bicubic(lr, scale), sr.clamp(0, 1), hr], 1).flatten(0, 1)
    return make_grid(tiles.float().cpu(), nrow=4, padding=2, pad_value=1.0)


@dataclass
class CheckpointConfig:
    every: int = field(default=5000, metadata={"help": "periodic checkpoints/step-%08d every N steps (0: off)"})
    state_every: int = field(default=1000, metadata={"help": "full resume state every N steps"})
    metric: str = field(default="psnr_y", metadata={"help": "validation metric that picks 'best'"})
    mode: Literal["max", "min"] = "max"
    resume: bool = field(default=True, metadata={"help": "resume from runs/<name>/state when present"})

    def __post_init__(self) -> None:
        check(self.every >= 0 and self.state_every >= 1, "checkpoint.every/state_every",
              (self.every, self.state_every), "every >= 0, state_every >= 1")
        check(self.metric in ("psnr_y", "ssim_y", "l1"), "checkpoint.metric", self.metric, "psnr_y, ssim_y or l1")

    def better(self, value: float, best: float | None) -> bool:
        """Whether ``value`` beats the best so far under ``mode``."""
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best


@dataclass
class TrainState:
    """Loop counters saved with the full state (the data position is ``step``)."""

    step: int = 0
    nan_skips: int = 0
    nan_consecutive: int = 0
    best: float | None = None
    best_step: int | None = None
    samples: int = 0
    skipped: dict[str, int] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, d: dict[str, Any]) -> None:
        for k, v in d.items():
            setattr(self, k, v)


COMPLETE = "complete.json"


def latest_state(run_dir: Path) -> Path | None:
    """The newest complete state dir: ``state/``, or ``state.old/`` if a swap was interrupted."""
    for name in ("state", "state.old"):
        p = run_dir / name
        if (p / COMPLETE).is_file():
            return p
    return None


def save_full_state(accelerator, run_dir: Path, step: int) -> Path:
    """All ranks write ``state.tmp``; rank 0 marks it complete, then swaps it in (old kept until then)."""
    tmp, final, old = run_dir / "state.tmp", run_dir / "state", run_dir / "state.old"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp), safe_serialization=True)
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        usual_mode(tmp)  # safetensors writes 0600 files, whatever the umask
        atomic_write_text(tmp / COMPLETE, json.dumps({"step": step, "world_size": accelerator.num_processes}))
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final
