"""``awm train``: one readable training loop from pair shards, on one CPU or many GPUs.

Runs the same under ``awm train``, ``accelerate launch -m awm train`` and ``torchrun -m awm
train`` (CPU: gloo, automatically), and in-process through :func:`train` (``awm submit``).
Two stages: L1 warm-up, then L1 + perceptual + GAN with a discriminator (``gan_start``).
bf16 autocast without a GradScaler, gradient accumulation that syncs only on the last
micro-step (``accelerator.accumulate``), EMA of the generator, validation on eval shards split
over ranks, ``best`` by a validation metric. The full state is written atomically to
``runs/<name>/state`` and a run resumes from it bit-exactly (the data position is the step,
see :mod:`awm.data`; learning rates are a pure function of the step). SIGTERM/SIGUSR1 or
:func:`request_stop` save it at the next step boundary and return ``status: preempted``.
"""

from __future__ import annotations

import argparse
import math
import os
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from awm import config as cfgmod
from awm.config import check
from awm.data import DataConfig, augment
from awm.discriminators import DiscriminatorConfig
from awm.losses import LossConfig
from awm.train_utils import (
    EMA,
    TrainState,
    image_grid,
    latest_state,
    lr_factor,
    psnr_ssim_y,
    save_full_state,
    to_float,
)

EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", what a requeueing wrapper looks for
RECIPES = Path(__file__).parent / "recipes"
_stop = threading.Event()


@dataclass
class ModelConfig:
    arch: str = field(default="rrdb-6b", metadata={"help": "architecture name from awm.models.ARCHS"})
    hparams: dict[str, Any] = field(default_factory=dict)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    channels_last: bool = True
    compile: bool = False


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
class ScheduleConfig:
    kind: Literal["constant", "step", "multistep", "cosine"] = "step"
    warmup_steps: int = 0
    step_epochs: int = field(default=30, metadata={"help": "kind=step: decay every N epochs (the seed's)"})
    milestones: list[int] = field(default_factory=list, metadata={"help": "kind=multistep: steps"})
    gamma: float = 0.5
    min_ratio: float = field(default=0.0, metadata={"help": "kind=cosine: final lr / base lr"})

    def __post_init__(self) -> None:
        check(self.warmup_steps >= 0, "schedule.warmup_steps", self.warmup_steps, ">= 0")
        check(self.step_epochs >= 1, "schedule.step_epochs", self.step_epochs, ">= 1")
        check(0 < self.gamma <= 1, "schedule.gamma", self.gamma, "in (0, 1]")


@dataclass
class EMAConfig:
    enabled: bool = True
    decay: float = 0.999
    start: int = field(default=0, metadata={"help": "step from which EMA averages (copies before)"})

    def __post_init__(self) -> None:
        check(0 <= self.decay < 1, "ema.decay", self.decay, "in [0, 1)")


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


@dataclass
class ValidationConfig:
    every: int = field(default=1000, metadata={"help": "validate every N steps (0: only at the end)"})
    max_images: int = 64
    crop: int | None = field(default=256, metadata={"help": "centred HR crop per eval image (null: whole)"})
    grid_images: int = 4


@dataclass
class LogConfig:
    every: int = field(default=50, metadata={"help": "TensorBoard scalars and a console line every N steps"})

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
    max_nan_skips: int = field(default=20, metadata={"help": "consecutive non-finite steps before stopping"})
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def __post_init__(self) -> None:
        check(self.steps >= 1, "steps", self.steps, ">= 1")
        check(self.gan_start >= 0, "gan_start", self.gan_start, ">= 0")
        check(self.max_nan_skips >= 1, "max_nan_skips", self.max_nan_skips, ">= 1")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs) / self.name


def load_config(name_or_path: str | Path, overrides: list[str] | None = None) -> TrainConfig:
    """A recipe by name (``awm/recipes/<name>.yaml``) or a YAML path, plus ``key=value`` overrides."""
    p = Path(name_or_path)
    if not p.is_file():
        p = RECIPES / f"{name_or_path}.yaml"
        if not p.is_file():
            names = sorted(q.stem for q in RECIPES.glob("*.yaml"))
            raise cfgmod.ConfigError("config", str(name_or_path), "a YAML file or a recipe: " + ", ".join(names))
    return cfgmod.load(TrainConfig, p, overrides)


def request_stop() -> None:
    """Ask a running :func:`train` to save its full state at the next step boundary and return."""
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
    from awm import dist

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
        return _run(cfg, _stop, _precision(cfg))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
        if not had_group:
            dist.destroy()


def _setup(cfg: TrainConfig, precision: str):
    """Accelerator, models, optimisers and losses, prepared for this process's device and launcher."""
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, DistributedType, set_seed

    from awm import losses
    from awm.models import build_model, model_info

    acc = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.optim.accum,
                      dataloader_config=DataLoaderConfiguration(dispatch_batches=False, split_batches=False),
                      step_scheduler_with_optimizer=False)
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    gan = cfg.gan_start < cfg.steps
    if deepspeed:
        if gan:
            raise cfgmod.ConfigError("gan_start", cfg.gan_start, f">= steps ({cfg.steps}) under DeepSpeed: "
                                     "Accelerate gives one DeepSpeed engine one model, so no discriminator")
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        ds["gradient_clipping"] = cfg.optim.grad_clip
    set_seed(cfg.seed)  # same initial weights on every rank
    torch.use_deterministic_algorithms(cfg.deterministic)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    scale, m = cfg.data.scale, cfg.model
    info = model_info(m.arch, scale, **m.hparams)
    q = cfg.data.patch // scale
    check(q % info.size_multiple == 0 and q >= info.size_min, "data.patch", cfg.data.patch,
          f"an HR patch whose LR side is a multiple of {info.size_multiple} and >= {info.size_min} for {m.arch}")
    fmt = torch.channels_last if m.channels_last else torch.contiguous_format
    g = build_model(m.arch, scale, **m.hparams).to(acc.device, memory_format=fmt)
    ema = EMA(g, cfg.ema.decay) if cfg.ema.enabled else None
    betas = tuple(cfg.optim.betas)
    opt_g = torch.optim.AdamW(g.parameters(), lr=cfg.optim.lr_g, betas=betas, weight_decay=cfg.optim.weight_decay)
    crit = losses.build_generator_loss(cfg.loss).to(acc.device) if gan else None
    pixel = losses.build_pixel_loss(cfg.loss).to(acc.device)
    d = opt_d = d_crit = None
    if gan:
        d = losses.build_discriminator(m.discriminator).to(acc.device, memory_format=fmt)
        opt_d = torch.optim.AdamW(d.parameters(), lr=cfg.optim.lr_d, betas=betas, weight_decay=cfg.optim.weight_decay)
        d_crit = losses.build_discriminator_loss(cfg.loss).to(acc.device)
    if m.compile:
        g = torch.compile(g)
        d = torch.compile(d) if d is not None else None
    g, opt_g = acc.prepare(g, opt_g)
    if gan:
        d, opt_d = acc.prepare(d, opt_d)
    if ema is not None:
        ema.to(acc.device)
    return acc, info, g, opt_g, d, opt_d, ema, pixel, crit, d_crit


def _validate(cfg: TrainConfig, acc, model: torch.nn.Module, info, skipped) -> tuple[dict[str, float], Any]:
    """PSNR/SSIM on Y (and L1) over this rank's share of the eval images, summed over ranks."""
    from awm.data import eval_pairs
    from awm.io import to_tensor

    v, s = cfg.validation, cfg.data.scale
    sums = torch.zeros(4, dtype=torch.float64, device=acc.device)
    crops = []
    was_training = model.training
    model.eval()
    pairs = eval_pairs(cfg.data.eval or cfg.data.train, s, acc.process_index, acc.num_processes,
                       v.max_images, v.crop, skipped, cfg.data.max_pixels)
    with torch.no_grad():
        for _, lr, hr in pairs:
            h, w = (lr.shape[0] // info.size_multiple * info.size_multiple,
                    lr.shape[1] // info.size_multiple * info.size_multiple)
            if min(h, w) < max(info.size_min, 1):
                skipped["eval_too_small"] += 1
                continue
            x = to_tensor(lr[:h, :w]).to(acc.device)
            y = to_tensor(hr[:h * s, :w * s]).to(acc.device)
            with acc.autocast():
                sr = model(x).float()
            p, ss = psnr_ssim_y(sr, y, border=s)
            sums += torch.stack([p.double().sum(), ss.double().sum(), (sr.clamp(0, 1) - y).abs().mean().double(),
                                 torch.tensor(1.0, dtype=torch.float64, device=acc.device)])
            if len(crops) < v.grid_images:
                c = min(32, h, w)
                y0, x0 = (h - c) // 2, (w - c) // 2
                crops.append((x[..., y0:y0 + c, x0:x0 + c], sr[..., y0 * s:(y0 + c) * s, x0 * s:(x0 + c) * s],
                              y[..., y0 * s:(y0 + c) * s, x0 * s:(x0 + c) * s]))
    model.train(was_training)
    sums = acc.reduce(sums, "sum")
    n = max(1.0, float(sums[3]))
    metrics = {"psnr_y": float(sums[0]) / n, "ssim_y": float(sums[1]) / n, "l1": float(sums[2]) / n,
               "images": int(sums[3])}
    grid = image_grid(*(torch.cat(t) for t in zip(*crops, strict=True)), s) if crops else None
    return metrics, grid


def _better(cfg: TrainConfig, value: float, best: float | None) -> bool:
    if best is None:
        return True
    return value > best if cfg.checkpoint.mode == "max" else value < best


def _run(cfg: TrainConfig, stop: threading.Event, precision: str) -> dict[str, Any]:
    from collections import Counter

    from torch.utils.tensorboard import SummaryWriter

    from awm.checkpoint import save_checkpoint
    from awm.data import SkipCounter, epoch_steps, train_loader
    from awm.io import atomic_write_text
    from awm.log import get_logger

    log = get_logger("awm.train")
    acc, info, g, opt_g, d, opt_d, ema, pixel, crit, d_crit = _setup(cfg, precision)
    run_dir, main, dev = cfg.run_dir, acc.is_main_process, acc.device
    state = TrainState()
    acc.register_for_checkpointing(state)
    if ema is not None:
        acc.register_for_checkpointing(ema)
    resume = latest_state(run_dir) if cfg.checkpoint.resume else None
    if resume is not None:
        acc.load_state(str(resume))
        log.info("resumed from %s at step %d", resume, state.step)
    if main:
        cfgmod.save(cfg, run_dir / "config.yaml")
    config_dict = cfgmod.to_dict(cfg)
    g_plain = acc.unwrap_model(g, keep_torch_compile=False)  # eval sizes vary: no recompiles
    d_plain = acc.unwrap_model(d) if d is not None else None
    eval_model = ema.module if ema is not None else g_plain
    accum, world, cl = cfg.optim.accum, acc.num_processes, cfg.model.channels_last
    ep = epoch_steps(cfg.data, world, accum)
    loader = train_loader(cfg.data, cfg.seed, acc.process_index, start=state.step * accum,
                          pin_memory=dev.type == "cuda")
    it = iter(loader)
    writer = SummaryWriter(str(run_dir / "tb")) if main else None
    skips, base_skips, val_skips = SkipCounter(), Counter(state.skipped), Counter()
    status, last_val, t_start = "done", {}, time.perf_counter()
    t_log, wait, n_log = time.perf_counter(), 0.0, 0
    gn_g = gn_d = torch.tensor(0.0)

    def save_state(last: bool = True) -> None:
        state.skipped = dict(base_skips + skips.total())
        save_full_state(acc, run_dir, state.step)
        if main and last:
            save_checkpoint(run_dir / "checkpoints" / "last", eval_model, cfg.model.arch, cfg.model.hparams,
                            cfg.data.scale, state.step, config_dict)

    while state.step < cfg.steps:
        step = state.step
        gan = d is not None and step >= cfg.gan_start
        f = lr_factor(cfg.schedule.kind, step, warmup=cfg.schedule.warmup_steps, period=cfg.schedule.step_epochs * ep,
                      milestones=cfg.schedule.milestones, gamma=cfg.schedule.gamma, total=cfg.steps,
                      min_ratio=cfg.schedule.min_ratio)
        for group in opt_g.param_groups:
            group["lr"] = cfg.optim.lr_g * f
        for group in opt_d.param_groups if opt_d is not None else []:
            group["lr"] = cfg.optim.lr_d * f
        terms: dict[str, torch.Tensor] = {}
        for _ in range(accum):
            t0 = time.perf_counter()
            batch = next(it)
            wait += time.perf_counter() - t0
            skips.update(batch)
            x, y = batch["lr"].to(dev, non_blocking=True), batch["hr"].to(dev, non_blocking=True)
            if cfg.data.augment:
                codes = batch["aug"].to(dev)
                x, y = augment(x, codes), augment(y, codes)
            x, y = to_float(x, dev, cl), to_float(y, dev, cl)
            with acc.accumulate(*([g, d] if gan else [g])):
                with acc.autocast():
                    sr = g(x)
                    if gan:
                        d_plain.requires_grad_(False)
                        parts = crit(sr, y, d_plain(sr))
                    else:
                        parts = {"pixel": pixel(sr, y)}
                    loss = sum(parts.values())
                acc.backward(loss)
                if gan:
                    d_plain.requires_grad_(True)
                    with acc.autocast():
                        d_parts = d_crit(d(torch.cat([y, sr.detach()])))
                    acc.backward(sum(d_parts.values()))
                    parts.update(d_parts)
                for k, v in parts.items():
                    terms[k] = terms.get(k, 0.0) + v.detach().float() / accum
                if acc.sync_gradients:
                    clip = cfg.optim.grad_clip or math.inf
                    gn_g = acc.clip_grad_norm_(g.parameters(), clip)
                    gn_g = torch.as_tensor(0.0 if gn_g is None else gn_g, dtype=torch.float32)
                    if gan:
                        gn_d = acc.clip_grad_norm_(d.parameters(), clip)
                    total = sum(terms.values())
                    bad = not (torch.isfinite(total) and torch.isfinite(gn_g) and (not gan or torch.isfinite(gn_d)))
                    flags = acc.reduce(torch.tensor([float(stop.is_set()), float(bad)], device=dev), "sum")
                    if flags[1] > 0:
                        state.nan_skips += 1
                        state.nan_consecutive += 1
                    else:
                        opt_g.step()
                        if gan:
                            opt_d.step()
                        state.nan_consecutive = 0
                    opt_g.zero_grad(set_to_none=True)
                    if gan:
                        opt_d.zero_grad(set_to_none=True)
        if ema is not None and flags[1] == 0:
            ema.update(g_plain, copy_only=step < cfg.ema.start)
        state.step += 1
        state.samples += cfg.data.batch_size * accum * world
        n_log += 1
        if state.nan_consecutive >= cfg.max_nan_skips:
            log.error("stopping: %d consecutive steps with a non-finite loss or gradient (last at step %d); "
                      "state saved, lower the learning rate or check the data", state.nan_consecutive, step)
            status = "nan"
            break
        if state.step % cfg.log.every == 0 or state.step == cfg.steps:
            vals = acc.reduce(torch.stack([terms[k] for k in sorted(terms)]), "mean")
            if main:
                now = time.perf_counter()
                writer.add_scalar("train/stage", 2 if gan else 1, state.step)
                for k, v in zip(sorted(terms), vals.tolist(), strict=True):
                    writer.add_scalar(f"loss/{k}", v, state.step)
                writer.add_scalar("loss/total", float(vals.sum()), state.step)
                writer.add_scalar("lr/g", opt_g.param_groups[0]["lr"], state.step)
                writer.add_scalar("grad_norm/g", float(gn_g), state.step)
                if gan:
                    writer.add_scalar("lr/d", opt_d.param_groups[0]["lr"], state.step)
                    writer.add_scalar("grad_norm/d", float(gn_d), state.step)
                rate = n_log * cfg.data.batch_size * accum * world / max(now - t_log, 1e-9)
                writer.add_scalar("perf/samples_per_s", rate, state.step)
                writer.add_scalar("perf/data_wait_fraction", wait / max(now - t_log, 1e-9), state.step)
                if dev.type == "cuda":
                    writer.add_scalar("perf/gpu_mem_gib", torch.cuda.max_memory_allocated(dev) / 2**30, state.step)
                writer.add_scalar("data/skipped", sum((base_skips + skips.total()).values()), state.step)
                writer.add_scalar("train/nan_skips", state.nan_skips, state.step)
                log.info("step %d/%d %s lr %.3g %.1f samples/s", state.step, cfg.steps,
                         " ".join(f"{k} {v:.4f}" for k, v in zip(sorted(terms), vals.tolist(), strict=True)),
                         opt_g.param_groups[0]["lr"], rate)
                t_log, wait, n_log = now, 0.0, 0
        if (cfg.validation.every and state.step % cfg.validation.every == 0) or state.step == cfg.steps:
            last_val, grid = _validate(cfg, acc, eval_model, info, val_skips)
            if main:
                for k in ("psnr_y", "ssim_y", "l1"):
                    writer.add_scalar(f"val/{k}", last_val[k], state.step)
                if grid is not None:
                    writer.add_image("val/lr_bicubic_sr_hr", grid, state.step)
                log.info("validation at step %d: %s", state.step, last_val)
            value = last_val[cfg.checkpoint.metric]
            if last_val["images"] and _better(cfg, value, state.best):
                state.best, state.best_step = value, state.step
                if main:
                    save_checkpoint(run_dir / "checkpoints" / "best", eval_model, cfg.model.arch, cfg.model.hparams,
                                    cfg.data.scale, state.step, config_dict)
        if main and cfg.checkpoint.every and state.step % cfg.checkpoint.every == 0:
            save_checkpoint(run_dir / "checkpoints" / f"step-{state.step:08d}", eval_model, cfg.model.arch,
                            cfg.model.hparams, cfg.data.scale, state.step, config_dict)
        if flags[0] > 0 and state.step < cfg.steps:
            log.warning("stop requested: saving the full state at step %d and exiting for requeue", state.step)
            status = "preempted"
            break
        if state.step % cfg.checkpoint.state_every == 0 and state.step < cfg.steps:
            save_state()
    save_state(last=status != "nan")  # keep the last good weights out of reach of a diverged run
    del it, loader
    if writer is not None:
        writer.close()
    wall = time.perf_counter() - t_start
    stats = {"status": status, "step": state.step, "steps": cfg.steps, "run_dir": str(run_dir),
             "best": {"metric": cfg.checkpoint.metric, "value": state.best, "step": state.best_step},
             "validation": last_val, "nan_skips": state.nan_skips, "skipped": state.skipped,
             "eval_skipped": dict(val_skips), "world_size": world, "precision": precision,
             "wall_s": round(wall, 2), "config_digest": cfgmod.digest(cfg)}
    if main:
        import json

        atomic_write_text(run_dir / "train_stats.json", json.dumps(stats, indent=1, default=str))
    acc.wait_for_everyone()
    return stats


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, metavar="NAME_OR_PATH",
                        help="recipe name (" + ", ".join(sorted(q.stem for q in RECIPES.glob("*.yaml")))
                        + ") or a YAML file")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="config overrides, dotted for nesting: data.train=shards/x steps=1000")


def run(args: argparse.Namespace) -> int:
    stats = train(load_config(args.config, args.overrides))
    return {"done": 0, "preempted": EXIT_PREEMPTED}.get(stats["status"], 1)
