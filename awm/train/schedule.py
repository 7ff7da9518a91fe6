"""The learning-rate schedule (``schedule.*`` keys): a pure function of the step, so resuming needs no
scheduler state."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from awm.config import check


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
