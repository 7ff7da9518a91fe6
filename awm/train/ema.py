"""The exponential moving average of the generator's weights (``ema.*`` keys) and its config."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
from torch import nn

from awm.config import check


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
