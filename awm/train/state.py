"""What a run keeps to resume and to pick its best checkpoint: the loop counters (:class:`TrainState`),
the ``checkpoint.*`` config, and the atomic full-state directory (``state/``, ``complete.json``)."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from awm.config import check
from awm.imageio import atomic_write_text, usual_mode


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
