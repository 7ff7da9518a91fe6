"""The training configuration: one typed dataclass per section, loaded from a recipe and overrides.

Every other module of :mod:`awm.train` imports its configuration from here, so the entry
(:mod:`awm.train.train`), the loop (:mod:`awm.train.trainer`) and the step's components
(:mod:`awm.train.components`) never import each other in a circle.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

from awm import config as cfgmod
from awm.config import check
from awm.data.loader import DataConfig
from awm.models.discriminators import DiscriminatorConfig
from awm.models.losses import LossConfig
from awm.train.ema import EMAConfig
from awm.train.perf import CompileMode, PerfConfig
from awm.train.schedule import ScheduleConfig
from awm.train.state import CheckpointConfig

RECIPES = Path(__file__).parent / "recipes"
# Accelerate's names of the experiment trackers log.trackers offers; each needs the package of that name.
TRACKERS = ("tensorboard", "wandb", "mlflow")
__all__ = ["RECIPES", "TRACKERS", "CheckpointConfig", "EMAConfig", "LogConfig", "ModelConfig", "OptimConfig", "ScheduleConfig",
           "TrainConfig", "ValidationConfig", "load_config"]


@dataclass
class ModelConfig:
    arch: str | None = field(default=None, metadata={
        "help": "architecture name from awm.models.archs.ARCHS (null: from model.init, else rrdb-6b)"})
    hparams: dict[str, Any] = field(default_factory=dict)
    init: str | None = field(default=None, metadata={
        "help": "start from these weights: an AWM checkpoint/run dir or a released .pth/.safetensors (APISR, "
                "BasicSR params_ema/params, plain state dict, anything spandrel detects); ignored on resume"})
    init_discriminator: str | None = field(default=None, metadata={
        "help": "start the discriminator from a weights file or an AWM run/state dir; ignored on resume"})
    init_color_order: Literal["auto", "rgb", "bgr"] = field(default="auto", metadata={
        "help": "channel order model.init was trained on; auto: by its origin (APISR bgr, others rgb); "
                "bgr is folded into the first/last convs so the network computes in RGB"})
    init_strict: bool = field(default=True, metadata={
        "help": "every tensor of model.init must fit (else exit naming the keys); false: load what fits, "
                "log the rest"})
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    channels_last: bool | None = field(default=None, metadata={
        "help": "NHWC memory format (null: by architecture, awm.train.perf.CHANNELS_LAST: convnets yes, transformers no)"})
    compile: bool | CompileMode = field(default="none", metadata={
        "help": "torch.compile mode for generator and discriminator: none, default, max-autotune-no-cudagraphs, "
                "reduce-overhead (CUDA graphs; static shapes); true means default"})

    def __post_init__(self) -> None:
        if self.arch is None and self.init is None:
            self.arch = "rrdb-6b"
        check(self.arch is not None or not self.hparams, "model.hparams", self.hparams,
              "{} when model.arch is null (taken from model.init with the architecture)")
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
    at_start: bool = field(default=False, metadata={
        "help": "also validate before the first update (a fine-tuning start's baseline; train_stats.json "
                "validation_at_start); it may become 'best'"})


@dataclass
class LogConfig:
    every: int = field(default=50, metadata={
        "help": "tracker scalars and a console line every N steps; the only steps where the host reads "
                "the device, so max_nan_skips acts here (stop requests act within two steps)"})

    trackers: list[str] = field(default_factory=lambda: ["tensorboard"], metadata={
        "help": "experiment trackers (Accelerate's): tensorboard (<run>/tb), wandb, mlflow; where they write comes "
                "from WANDB_MODE/WANDB_DIR/WANDB_PROJECT and MLFLOW_TRACKING_URI/MLFLOW_EXPERIMENT_NAME"})
    group: str | None = field(default=None, metadata={
        "help": "the W&B group and MLflow experiment of this run (awm sweep sets the sweep's name)"})

    def __post_init__(self) -> None:
        check(self.every >= 1, "log.every", self.every, ">= 1")
        for t in self.trackers:
            check(t in TRACKERS, "log.trackers", t, ", ".join(TRACKERS))
        check(len(set(self.trackers)) == len(self.trackers), "log.trackers", self.trackers, "each tracker once")


@dataclass
class TrainConfig:
    name: str = field(default="run", metadata={"help": "run name: outputs go to <runs>/<name>"})
    runs: str = field(default="runs", metadata={"help": "folder holding runs"})
    seed: int = 0
    steps: int = field(default=100_000, metadata={"help": "total optimizer steps (both stages)"})
    gan_start: int = field(default=50_000, metadata={"help": "step where the GAN stage starts (>= steps: L1 only)"})
    precision: Literal["auto", "fp32", "bf16", "fp16"] = field(default="auto", metadata={
        "help": "auto: the launcher's setting (accelerate config), else bf16 on a bf16 GPU, else fp32"})
    device: Literal["auto", "cpu", "cuda"] = field(default="auto", metadata={
        "help": "auto: this rank's GPU if there is one, else the CPU; cuda: fail at start without a GPU "
                "(never a silent CPU run); cpu: the CPU even with GPUs"})
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
