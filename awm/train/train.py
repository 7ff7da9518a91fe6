"""``awm train``: configuration and entry point of one readable training loop from pair shards.

Runs the same under ``awm train``, ``accelerate launch -m awm train`` and ``torchrun -m awm
train`` (CPU: gloo, automatically), and in-process through :func:`train` (``awm submit``).
Two stages: L1 warm-up, then L1 + perceptual + GAN with a discriminator (``gan_start``).
bf16 autocast without a GradScaler, gradient accumulation that syncs only on the last
micro-step, EMA of the generator, validation on eval shards split over ranks, ``best`` by a
validation metric. The full state is written atomically to ``runs/<name>/state`` and a run
resumes from it bit-exactly (the data position is the step, see :mod:`awm.data.loader`; learning
rates are a pure function of the step). SIGTERM/SIGUSR1 or :func:`request_stop` save it at the
next log step and return ``status: preempted``.

Where things live: :mod:`awm.train.trainer` (components, the step's losses/backward/update),
:mod:`awm.train.loop` (the loop, logging, validation), :mod:`awm.train.utils` (EMA, schedules,
state), :mod:`awm.train.perf` (FLOPs/MFU, memory format, compile, prefetching).
"""

from __future__ import annotations

import argparse
import os
import signal
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import torch

from awm import config as cfgmod
from awm import dist
from awm.config import check
from awm.data.loader import DataConfig
from awm.models.discriminators import DiscriminatorConfig
from awm.models.losses import LossConfig
from awm.train.loop import Trainer
from awm.train.perf import CompileMode, PerfConfig
from awm.train.trainer import build_components
from awm.train.utils import CheckpointConfig, EMAConfig, ScheduleConfig

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", what a requeueing wrapper looks for
RECIPES = Path(__file__).parent / "recipes"
_stop = threading.Event()
__all__ = ["CheckpointConfig", "EMAConfig", "ModelConfig", "OptimConfig", "ScheduleConfig", "TrainConfig",
           "load_config", "request_stop", "train"]


@dataclass
class ModelConfig:
    arch: str = field(default="rrdb-6b", metadata={"help": "architecture name from awm.models.archs.ARCHS"})
    hparams: dict[str, Any] = field(default_factory=dict)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    channels_last: bool | None = field(default=None, metadata={
        "help": "NHWC memory format (null: by architecture, awm.train.perf.CHANNELS_LAST: convnets yes, transformers no)"})
    compile: bool | CompileMode = field(default="none", metadata={
        "help": "torch.compile mode for generator and discriminator: none, default, max-autotune-no-cudagraphs, "
                "reduce-overhead (CUDA graphs; static shapes); true means default"})

    def __post_init__(self) -> None:
        if isinstance(self.compile, bool):
            self.compile = "default" if self.compile else "none"
        check(self.compile in get_args(CompileMode), "model.compile", self.compile,
              ", ".join(get_args(CompileMode)))


@dataclass
class OptimConfig:
    lr_g: float = 2e-4
    lr_d: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    weight_decay: float = 0.0
    grad_clip: float = field(default=0.0, metadata={"help": "max gradient norm (0: no clipping; norm still logged)"})
    accum: int = field(default=1, metadata={"help": "micro-batches per optimizer step"})

    def __post_init__(self) -> None:
        check(self.lr_g > 0 and self.lr_d > 0, "optim.lr_g/lr_d", (self.lr_g, self.lr_d), "> 0")
        check(len(self.betas) == 2, "optim.betas", self.betas, "two numbers")
        check(self.accum >= 1, "optim.accum", self.accum, ">= 1")
        check(self.grad_clip >= 0, "optim.grad_clip", self.grad_clip, ">= 0")


@dataclass
class ValidationConfig:
    every: int = field(default=1000, metadata={"help": "validate every N steps (0: only at the end)"})
    max_images: int = 64
    crop: int | None = field(default=256, metadata={"help": "centred HR crop per eval image (null: whole)"})
    grid_images: int = 4


@dataclass
class LogConfig:
    every: int = field(default=50, metadata={
        "help": "TensorBoard scalars and a console line every N steps; the only steps where the host reads "
                "the device, so stop requests and max_nan_skips act here"})

    def __post_init__(self) -> None:
        check(self.every >= 1, "log.every", self.every, ">= 1")


@dataclass
class TrainConfig:
    name: str = field(default="run", metadata={"help": "run name: outputs go to <runs>/<name>"})
    runs: str = field(default="runs", metadata={"help": "folder holding runs"})
    seed: int = 0
    steps: int = field(default=100_000, metadata={"help": "total optimizer steps (both stages)"})
    gan_start: int = field(default=50_000, metadata={"help": "step where the GAN stage starts (>= steps: L1 only)"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "auto: the launcher's setting (accelerate config), else bf16 on a bf16 GPU, else fp32"})
    deterministic: bool = False
    max_nan_skips: int = field(default=20, metadata={
        "help": "consecutive non-finite steps before stopping (checked at log steps)"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    log: LogConfig = field(default_factory=LogConfig)
    perf: PerfConfig = field(default_factory=PerfConfig)

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, ">= 1")
        check(self.gan_start >= 0, "gan_start", self.gan_start, ">= 0")
        check(self.max_nan_skips >= 1, "max_nan_skips", self.max_nan_skips, ">= 1")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs) / self.name


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A recipe by name (``awm/train/recipes/<name>.yaml``) or a YAML path, plus ``key=value`` overrides."""
    p = Path(name_or_path)
    if not p.is_file():
        p = RECIPES / f"{name_or_path}.yaml"
        if not p.is_file():
            names = sorted(q.stem for q in RECIPES.glob("*.yaml"))
            raise cfgmod.ConfigError("config", str(name_or_path), "a YAML file or a recipe: " + ", ".join(names))
    return cfgmod.load(TrainConfig, p, overrides)


def request_stop() -> None:
    """Ask a running :func:`train` to save its full state at the next log step and return."""
    _stop.set()


def _precision(cfg: TrainConfig) -> str:
    """Accelerate's mixed_precision value: "no" (fp32), "bf16" or "fp16"."""
    if cfg.precision != "auto":
        return "no" if cfg.precision == "fp32" else cfg.precision
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    if launcher:
        return launcher
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run ``cfg.run_dir``; returns its stats (``status``: done|preempted|nan).

    Reentrant: the process group and Accelerate's state are released on return, and signal
    handlers are restored; nothing calls ``sys.exit``.
    """
    had_group = dist.initialized()
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true":
        # DeepSpeed joins its own process group, and ACCELERATE_USE_CPU (set by dist.init
        # without a GPU) would make Accelerate ignore it. Accelerate 1.15 leaves
        # num_processes at 1 for DeepSpeed on a machine without GPUs (no backend chosen), so
        # several CPU processes would each train alone: refuse that instead.
        if dist.world_size() > 1 and not torch.cuda.is_available():
            raise cfgmod.ConfigError("launcher", "DeepSpeed with several CPU processes", "DeepSpeed on GPUs, "
                                     "or 1 CPU process (Accelerate treats each CPU process as world size 1)")
        os.environ.pop("ACCELERATE_USE_CPU", None)  # an inherited value would silently turn DeepSpeed off
    else:
        dist.init()
    _stop.clear()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1):
            previous[sig] = signal.signal(sig, lambda *_: _stop.set())
    try:
        precision = _precision(cfg)
        trainer = Trainer(cfg, build_components(cfg, precision), _stop, precision)
        try:
            return trainer.run()
        finally:
            trainer.close()  # also on errors: loader workers ignore SIGTERM, so only this ends them
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        if not had_group:
            dist.destroy()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="NAME_OR_PATH",
                        help="recipe name (" + ", ".join(sorted(q.stem for q in RECIPES.glob("*.yaml")))
                        + ") or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, dotted for nesting: data.train=shards/x steps=1000")


def run(args: argparse.Namespace) -> int:
    stats = train(load_config(args.config, args.overrides))
    return {"done": 0, "preempted": EXIT_PREEMPTED}.get(stats["status"], 1)
