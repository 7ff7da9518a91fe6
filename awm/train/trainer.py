"""The training loop, which reads like its table of contents: step -> log -> validate ->
checkpoint -> preempt.

The host reads the device only in :meth:`Trainer.log` (every ``log.every`` steps and at the
end): loss sums, gradient norms and non-finite counters travel in one reduced vector there, so
the ``max_nan_skips`` limit takes effect at the next log step. A stop request (SIGTERM, SIGINT,
SIGUSR1, :func:`awm.train.train.request_stop`) is agreed on every step on the host
(:class:`StopAgreement`) and takes effect one or two steps later, on every rank at the same step.

Fault injection for tests: ``AWM_FAULT_NONFINITE_STEP=STEP[:RANK]`` feeds a NaN input batch at
optimizer step STEP (0-based; on RANK only, default every rank).
"""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from awm import config as cfgmod
from awm.data.degrade_device import degrade_batch
from awm.data.loader import SkipCounter, augment, epoch_steps, train_loader
from awm.eval.psnr_ssim import bicubic, psnr_ssim_y
from awm.imageio import atomic_write_text
from awm.log import get_logger
from awm.train import tracking
from awm.train.components import (
    Components,
    apply_update,
    discriminator_sync,
    flops_per_pair,
    losses_and_backward,
)
from awm.train.images import image_grid, to_float
from awm.train.perf import DevicePrefetcher, peak_tflops
from awm.train.state import TrainState, save_full_state

if TYPE_CHECKING:
    from awm.train.config import TrainConfig

log = get_logger("awm.train")
START_VAL = "validation_at_start.json"


class Trainer:
    """One run: resumes its state, trains to ``cfg.steps`` or a stop, and reports stats."""

    def __init__(self, cfg: TrainConfig, c: Components, stop: threading.Event, precision: str, resume: Path | None):
        self.cfg, self.c, self.stop, self.precision = cfg, c, stop, precision
        acc = c.accelerator
        self.device, self.world, self.main = acc.device, acc.num_processes, acc.is_main_process
        self.state = TrainState()
        acc.register_for_checkpointing(self.state)
        if c.ema is not None:
            acc.register_for_checkpointing(c.ema)
        if c.deepspeed and c.discriminator is not None:  # outside the engine: saved as custom states, after the rest
            acc.register_for_checkpointing(c.discriminator_plain, c.discriminator_optimizer)
        if resume is not None:
            load_state(c, resume)
            log.info("resumed from %s at step %d", resume, self.state.step)
        self.eval_model = c.ema.module if c.ema is not None else c.generator_plain
        self.epoch = epoch_steps(cfg.data, self.world, cfg.optim.accum)
        self.skips, self.base_skips, self.val_skips = SkipCounter(), Counter(self.state.skipped), Counter()
        self.nan_skips = torch.tensor(float(self.state.nan_skips), device=self.device)
        self.nan_consecutive = torch.tensor(float(self.state.nan_consecutive), device=self.device)
        self.sums: dict[str, torch.Tensor] = {}
        self.kept = torch.zeros((), device=self.device)
        self.grad_norms: list[torch.Tensor] = []
        # FLOPs per pair of each stage, counted before any forward pass (copies of modules whose
        # spectral norm has run cannot be deep-copied).
        stages = [False] + ([True] if c.discriminator is not None else [])
        self.flops = {gan: flops_per_pair(c, cfg.data.patch, cfg.data.scale, gan) for gan in stages}
        self.peak = peak_tflops(self.device, precision, cfg.perf.peak_tflops)
        self.fault = _fault_step(acc.process_index)
        self.tracking = False
        self.last_val: dict[str, Any] = {}
        self.last_val_step = 0
        self.val_weights: list[torch.Tensor] | None = None
        self.start_val: dict[str, Any] | None = None
        self.window_start, self.wait, self.window_steps = time.perf_counter(), 0.0, 0
        self.stop_seen = False
        self.agreement = StopAgreement(stop, self.world)
        # Last: from here on the loader's worker processes exist, and only close() ends them.
        loader = train_loader(cfg.data, cfg.seed, acc.process_index, start=self.state.step * cfg.optim.accum,
                              pin_memory=self.device.type == "cuda")
        self.batches = DevicePrefetcher(iter(loader), self.device)

    def gan(self, step: int) -> bool:
        return self.c.discriminator is not None and step >= self.cfg.gan_start

    def stages(self) -> str:
        """The stages this run goes through, in words: raising ``steps`` past ``gan_start`` turns the
        GAN stage on (other losses, a discriminator, several times slower steps), never silently."""
        cfg = self.cfg
        if self.c.discriminator is None:
            return f"L1 stage only, to step {cfg.steps} (gan_start {cfg.gan_start} >= steps)"
        gan = f"GAN stage ({self.gan_terms()}) to step {cfg.steps}"
        return gan if cfg.gan_start == 0 else f"L1 stage to step {cfg.gan_start}, then the {gan}"

    def gan_terms(self) -> str:
        loss = self.cfg.loss
        terms = [f"{loss.pixel.type} x{loss.pixel.weight:g}"] + [
            f"{name} x{w:g}" for name, w in (("vgg", loss.perceptual.vgg_weight),
                                              ("anime", loss.perceptual.anime_weight), ("gan", loss.gan.weight)) if w]
        return " + ".join(terms) + ", with a discriminator"

    def announce(self) -> None:
        """What this run trains on, where, and into which folder (rank 0, once at the start)."""
        from awm.data.loader import shard_list

        cfg, d = self.cfg, self.cfg.data
        train = shard_list(d.train, "train", d.degrade)
        evals = f"eval {d.eval} ({sum(n for _, n in shard_list(d.eval, 'eval', d.degrade, 'data.eval'))} pairs)" \
            if d.eval else "no eval data"
        init = f", from {cfg.model.init}" if cfg.model.init else ""
        log.info("run %s: %s x%d%s; train %s (%d pairs in %d shards), %s; %d process(es) on %s, %s; %s",
                 cfg.run_dir, cfg.model.arch, d.scale, init, d.train, sum(n for _, n in train), len(train),
                 evals, self.world, "cpu" if self.device.type == "cpu" else self.device,
                 {"no": "fp32"}.get(self.precision, self.precision), self.stages())

    def run(self) -> dict[str, Any]:
        """Train to the end or a stop; saves the state and returns the run's stats."""
        cfg, t_start, status = self.cfg, time.perf_counter(), "done"
        if self.main:
            self.announce()
            cfgmod.save(cfg, cfg.run_dir / "config.yaml")
        tracking.start(self.c.accelerator, cfg, cfgmod.to_dict(cfg))  # rank 0's trackers; the others no-op
        self.tracking = True
        if cfg.validation.at_start and self.state.step == 0:  # the starting weights' baseline (model.init)
            self.validate_if_due(now=True)
            self.start_val = self.last_val
            if self.main:  # kept beside the state: a resumed run reports it too
                atomic_write_text(cfg.run_dir / START_VAL, json.dumps(self.start_val))
        elif (cfg.run_dir / START_VAL).is_file():
            self.start_val = json.loads((cfg.run_dir / START_VAL).read_text())
        while self.state.step < cfg.steps:
            if self.main and 0 < self.state.step == cfg.gan_start and self.gan(self.state.step):
                log.info("step %d: the GAN stage starts (gan_start=%d): %s, to step %d; steps are slower",
                         self.state.step, cfg.gan_start, self.gan_terms(), cfg.steps)
            self.train_step()
            self.stop_seen = self.stop_seen or self.agreement.poll()
            if self.state.step % cfg.log.every == 0 or self.state.step == cfg.steps:
                self.log()
                if self.state.nan_consecutive >= cfg.max_nan_skips:
                    log.error("stopping: %d consecutive steps with a non-finite loss or gradient (by step %d); "
                              "state saved, lower the learning rate or check the data",
                              self.state.nan_consecutive, self.state.step)
                    status = "nan"
                    break
            self.validate_if_due()
            self.checkpoint_if_due()
            if self.stop_seen and self.state.step < cfg.steps:
                log.warning("stop requested: saving the full state at step %d and exiting for requeue",
                            self.state.step)
                status = "preempted"
                break
            if self.state.step % cfg.checkpoint.state_every == 0 and self.state.step < cfg.steps:
                self.save_state()
        self.save_state(last=status != "nan")  # keep the last good weights out of reach of a diverged run
        return self.finish(status, time.perf_counter() - t_start)

    # -- step -------------------------------------------------------------------------------
    def train_step(self) -> None:
        """One optimizer step: data in, losses, backward, update, EMA. Never waits for the device."""
        c, cfg, step = self.c, self.cfg, self.state.step
        gan, acc = self.gan(step), c.accelerator
        factor = cfg.schedule.factor(step, self.epoch, cfg.steps)
        for opt, base in zip(c.optimizers(gan), (cfg.optim.lr_g, cfg.optim.lr_d), strict=False):
            for group in opt.param_groups:
                group["lr"] = base * factor
        step_terms: dict[str, torch.Tensor] = {}
        # Under DeepSpeed Accelerate's backward drives the generator's engine; the discriminator's
        # is plain autograd, averaged over the accumulation as Accelerate's backward would.
        d_backward = (lambda loss: (loss / cfg.optim.accum).backward()) if c.deepspeed else None
        for _ in range(cfg.optim.accum):
            lr, hr = self.next_batch(step)
            if c.cudagraphs:
                # CUDA-graph trees' contract: a new iteration begins here, so the previous one's
                # graph outputs may be overwritten; nothing from it is read after this point (loss
                # terms are eager copies, .grad lives outside the graph pool: build_components).
                torch.compiler.cudagraph_mark_step_begin()
            with acc.accumulate(*c.trained(gan)), discriminator_sync(c, gan, acc.sync_gradients):
                terms = losses_and_backward(c, lr, hr, gan, acc.backward, acc.autocast, d_backward)
                for name, value in terms.items():
                    step_terms[name] = step_terms.get(name, 0.0) + value.detach().float() / cfg.optim.accum
                if acc.sync_gradients:
                    found_inf, self.grad_norms = apply_update(c, gan, cfg.optim.grad_clip,
                                                              sum(step_terms.values()), self.world)
        if c.ema is not None:
            c.ema.update(step, found_inf)
        self.count(step_terms, found_inf)
        self.state.step += 1
        self.state.samples += cfg.data.batch_size * cfg.optim.accum * self.world
        self.window_steps += 1

    def next_batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        t0 = time.perf_counter()
        batch = next(self.batches)
        self.wait += time.perf_counter() - t0
        self.skips.update(batch)
        lr, hr = self._to_device(batch)
        if step == self.fault:
            lr = torch.full_like(lr, float("nan"))
        return lr, hr

    def _to_device(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Loader batch (uint8 NHWC, maybe prefetched to the device) -> augmented float NCHW pair."""
        dev, channels_last = self.device, self.c.channels_last
        hr = batch["hr"].to(dev, non_blocking=True)
        lr = (batch["lr"].to(dev, non_blocking=True) if "lr" in batch  # else data.degrade_on=device
              else degrade_batch(hr, batch["degrade"], self.cfg.data.scale))
        if self.cfg.data.augment:
            lr, hr = augment(lr, batch["aug"]), augment(hr, batch["aug"])  # codes stay on the CPU
        return to_float(lr, dev, channels_last), to_float(hr, dev, channels_last)

    def count(self, terms: dict[str, torch.Tensor], found_inf: torch.Tensor) -> None:
        """Device-side sums for the log (skipped steps left out) and non-finite counters."""
        zero = torch.zeros((), device=self.device)
        for name, value in terms.items():
            self.sums[name] = self.sums.get(name, zero) + torch.where(found_inf > 0, zero, value)
        self.kept += 1 - found_inf
        self.nan_skips += found_inf
        self.nan_consecutive.add_(found_inf).mul_(found_inf)

    # -- log: the only host-device synchronisation of steady-state training ----------------
    def log(self) -> None:
        cfg, acc, step = self.cfg, self.c.accelerator, self.state.step
        gan = self.gan(step - 1)
        names = sorted(self.sums)
        local = [self.nan_skips, self.nan_consecutive, *self.grad_norms,
                 *(self.sums[k] / self.kept.clamp_min(1) for k in names)]
        values = acc.reduce(torch.stack(local), "mean").tolist()
        self.state.nan_skips, self.state.nan_consecutive = round(values[0]), round(values[1])
        norms, losses = values[2:2 + len(self.grad_norms)], dict(zip(names, values[2 + len(self.grad_norms):],
                                                                        strict=True))
        now = time.perf_counter()
        seconds = max(now - self.window_start, 1e-9)
        rate = self.window_steps * cfg.data.batch_size * cfg.optim.accum * self.world / seconds
        tflops = rate / self.world * self.flops[gan] / 1e12  # per device, comparable to its peak
        if self.main:
            self.write_scalars(step, gan, losses, norms, rate, tflops, self.wait / seconds)
            mfu = f" MFU {100 * tflops / self.peak:.1f}%" if self.peak else ""
            log.info("step %d/%d %s lr %.3g %.1f samples/s %.3g TFLOP/s%s", step, cfg.steps,
                     " ".join(f"{k} {v:.4f}" for k, v in losses.items()),
                     self.c.generator_optimizer.param_groups[0]["lr"], rate, tflops, mfu)
        self.sums, self.kept = {}, torch.zeros((), device=self.device)
        self.window_start, self.wait, self.window_steps = time.perf_counter(), 0.0, 0

    def write_scalars(self, step: int, gan: bool, losses: dict[str, float], norms: list[float], rate: float,
                      tflops: float, wait_fraction: float) -> None:
        """The log step's scalars, host numbers already read, to every tracker (rank 0)."""
        c = self.c
        out: dict[str, float] = {"train/stage": 2 if gan else 1}
        out.update({f"loss/{k}": v for k, v in losses.items()})
        out["loss/total"] = sum(losses.values())
        for name, opt, norm in zip(("g", "d"), c.optimizers(gan), norms, strict=False):
            out[f"lr/{name}"], out[f"grad_norm/{name}"] = opt.param_groups[0]["lr"], norm
        out["perf/samples_per_s"], out["perf/tflops"] = rate, tflops
        if self.peak:
            out["perf/mfu"] = tflops / self.peak
        out["perf/data_wait_fraction"] = wait_fraction
        if self.device.type == "cuda":
            out["perf/gpu_mem_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        out["data/skipped"] = sum((self.base_skips + self.skips.total()).values())
        out["train/nan_skips"] = self.state.nan_skips
        c.accelerator.log(out, step=step)

    # -- validate, checkpoint, state --------------------------------------------------------
    def validate_if_due(self, now: bool = False) -> None:
        cfg, step = self.cfg, self.state.step
        if not (now or (cfg.validation.every and step % cfg.validation.every == 0) or step == cfg.steps):
            return
        previous, previous_weights = self.last_val, self.val_weights
        self.last_val, grid = validate(cfg, self.c, self.eval_model, self.val_skips)
        self.val_weights = [p.detach().double().sum() for p in self.eval_model.parameters()]
        if self.main:
            self.warn_if_stuck(previous, previous_weights)
            self.c.accelerator.log({f"val/{k}": self.last_val[k]
                                    for k in ("psnr_y", "bicubic_psnr_y", "ssim_y", "bicubic_ssim_y", "l1")}, step=step)
            if grid is not None:
                tracking.log_image(self.c.accelerator, "val/lr_bicubic_sr_hr", grid, step)
            val = self.last_val
            log.info("validation at step %d: PSNR-Y %.3f dB, bicubic %.3f dB (%+.3f dB), SSIM-Y %.4f (bicubic %.4f), "
                     "L1 %.5f, %d images", step, val["psnr_y"], val["bicubic_psnr_y"],
                     val["psnr_y"] - val["bicubic_psnr_y"], val["ssim_y"], val["bicubic_ssim_y"], val["l1"],
                     val["images"])
            self.last_val_step = step
        value = self.last_val[cfg.checkpoint.metric]
        if self.last_val["images"] and cfg.checkpoint.better(value, self.state.best):
            self.state.best, self.state.best_step = value, step
            self.save_weights("best")

    def warn_if_stuck(self, previous: dict[str, Any], previous_weights: list[torch.Tensor] | None) -> None:
        val = self.last_val
        if validation_stuck(previous, previous_weights, val, self.val_weights):
            log.warning("validation at step %d gives exactly the numbers of step %d (PSNR-Y %.6f dB, SSIM-Y %.6f) "
                        "though the weights changed: the model's output no longer follows its weights (collapsed; "
                        "%+.3f dB vs bicubic). Check the learning rate, the data and the initialisation",
                        self.state.step, self.last_val_step, val["psnr_y"], val["ssim_y"],
                        val["psnr_y"] - val["bicubic_psnr_y"])

    def checkpoint_if_due(self) -> None:
        every = self.cfg.checkpoint.every
        if every and self.state.step % every == 0:
            self.save_weights(f"step-{self.state.step:08d}")

    def save_weights(self, name: str) -> None:
        from awm.models.checkpoint import save_checkpoint

        if self.main:
            m, cfg = self.cfg.model, self.cfg
            save_checkpoint(cfg.run_dir / "checkpoints" / name, self.eval_model, m.arch, m.hparams, cfg.data.scale,
                            self.state.step, cfgmod.to_dict(cfg))

    def save_state(self, last: bool = True) -> None:
        self.state.skipped = dict(self.base_skips + self.skips.total())
        self.state.nan_skips, self.state.nan_consecutive = round(float(self.nan_skips)), round(
            float(self.nan_consecutive))
        save_full_state(self.c.accelerator, self.cfg.run_dir, self.state.step)
        if last:
            self.save_weights("last")

    def finish(self, status: str, wall: float) -> dict[str, Any]:
        cfg, state = self.cfg, self.state
        self.close()
        stats = {"status": status, "step": state.step, "steps": cfg.steps, "run_dir": str(cfg.run_dir),
                 "best": {"metric": cfg.checkpoint.metric, "value": state.best, "step": state.best_step},
                 "validation": self.last_val, "validation_at_start": self.start_val,
                 "nan_skips": state.nan_skips, "skipped": state.skipped,
                 "eval_skipped": dict(self.val_skips), "world_size": self.world, "precision": self.precision,
                 "flops_per_pair": {("gan" if k else "l1"): v for k, v in self.flops.items()},
                 "wall_s": round(wall, 2), "config_digest": cfgmod.digest(cfg)}
        if self.main:
            val = self.last_val
            if val.get("images") and val["psnr_y"] < val["bicubic_psnr_y"]:
                log.warning("the run ends %.3f dB below bicubic on its validation images (PSNR-Y %.3f vs %.3f dB): "
                            "this model is worse than a bicubic resize; train longer, check the data and the "
                            "learning rate, or fine-tune a released model (model.init)",
                            val["bicubic_psnr_y"] - val["psnr_y"], val["psnr_y"], val["bicubic_psnr_y"])
            atomic_write_text(cfg.run_dir / "train_stats.json", json.dumps(stats, indent=1, default=str))
            if status == "done":
                best = cfg.run_dir / "checkpoints" / "best"
                said = (f"best {cfg.checkpoint.metric} {state.best:.4f} at step {state.best_step}: {best}"
                        if state.best_step is not None and best.is_dir() else "no validation chose a best checkpoint")
                log.info("run %s done: step %d in %.0f s; %s; last: %s", cfg.run_dir, state.step, wall, said,
                         cfg.run_dir / "checkpoints" / "last")
        self.c.accelerator.wait_for_everyone()
        return stats


    def close(self) -> None:
        """Stop the loader workers (they ignore SIGTERM, so the trainer must end them) and the trackers."""
        self.agreement.close()
        if self.batches is not None:
            shutdown = getattr(self.batches.batches, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            self.batches = None
        if self.tracking:
            tracking.finish(self.c.accelerator)
            self.tracking = False


class StopAgreement:
    """Whether every rank has agreed to stop, asked every step without waiting for the device.

    A stop request (a signal) sets a host flag on some ranks, at different steps; all ranks must
    stop after the same step. Each step every rank all-reduces its flag (max) on a gloo group of
    CPU tensors, asynchronously, and reads the previous step's result, which has long arrived:
    every rank sees a request one or two steps after it came, whatever ``log.every`` is and
    however slow a step is, and the CUDA stream is never waited on. One process: the flag itself.
    """

    def __init__(self, stop: threading.Event, world: int):
        import numpy as np

        self.stop, self.work = stop, None
        self.group = torch.distributed.new_group(backend="gloo") if world > 1 else None
        self.flag = np.zeros(1, dtype=np.float32)  # read through numpy: no tensor method, no device
        self.tensor = torch.from_numpy(self.flag)

    def poll(self) -> bool:
        if self.group is None:
            return self.stop.is_set()
        agreed = False
        if self.work is not None:
            self.work.wait()
            agreed = bool(self.flag[0] > 0)
        self.flag[0] = float(self.stop.is_set())
        self.work = torch.distributed.all_reduce(self.tensor, torch.distributed.ReduceOp.MAX, group=self.group,
                                                 async_op=True)
        return agreed

    def close(self) -> None:
        if self.work is not None:
            self.work.wait()
            self.work = None


def load_state(c: Components, path: Path) -> None:
    """Load a saved full state into the run's components.

    A state saved while the run had no GAN stage (``gan_start >= steps`` then) holds no
    discriminator; a rerun with more steps that reaches ``gan_start`` resumes the generator, its
    optimizer, EMA and counters from it, and the discriminator starts fresh (its initial weights,
    the same on every rank).
    """
    acc = c.accelerator
    if c.deepspeed:  # the discriminator and its optimizer are the last two custom states (Trainer)
        custom = acc._custom_objects
        if c.discriminator is None or len(list(path.glob("custom_checkpoint_*.pkl"))) >= len(custom):
            acc.load_state(str(path))
            return
        acc._custom_objects = custom[:-2]
        try:
            acc.load_state(str(path))
        finally:
            acc._custom_objects = custom
        log.info("state %s was saved before the GAN stage existed in this run: the discriminator starts fresh", path)
        return
    saved = len(list(path.glob("model*.safetensors")) + list(path.glob("pytorch_model*.bin")))
    if c.discriminator is None or saved >= len(acc._models):
        acc.load_state(str(path))
        return
    # Accelerate's load_state loads every prepared model/optimizer it holds (its private lists):
    # narrowed to the generator's for this one call, then restored
    ours = {id(p) for p in c.discriminator_params}
    models, optimizers = acc._models, acc._optimizers
    acc._models = [m for m in models if not any(id(p) in ours for p in m.parameters())]
    acc._optimizers = [o for o in optimizers if o is not c.discriminator_optimizer]
    try:
        acc.load_state(str(path))
    finally:
        acc._models, acc._optimizers = models, optimizers
    log.info("state %s was saved before the GAN stage existed in this run: the discriminator starts fresh", path)


def validation_stuck(previous: dict[str, Any], previous_weights: list[torch.Tensor] | None,
                     current: dict[str, Any], weights: list[torch.Tensor]) -> bool:
    """Whether a validation gave exactly the previous one's PSNR-Y and SSIM-Y though the weights
    moved: the output no longer depends on them (a collapsed model, e.g. stuck at nearest-neighbour,
    issue 30), which the loss curve alone does not show."""
    if not previous.get("images") or previous_weights is None:
        return False
    same = (previous["psnr_y"], previous["ssim_y"]) == (current["psnr_y"], current["ssim_y"])
    return same and not all(torch.equal(a, b) for a, b in zip(previous_weights, weights, strict=True))


def _fault_step(rank: int) -> int | None:
    spec = os.environ.get("AWM_FAULT_NONFINITE_STEP")
    if not spec:
        return None
    step, _, only = spec.partition(":")
    return int(step) if not only or int(only) == rank else None


def validate(cfg: TrainConfig, c: Components, model: torch.nn.Module, skipped: Counter) -> tuple[dict[str, float], Any]:
    """PSNR/SSIM on Y (and L1) over this rank's share of the eval images, summed over ranks.

    ``bicubic_psnr_y``/``bicubic_ssim_y`` score the same LR crops upscaled by ``awm eval``'s bicubic
    baseline (:func:`awm.eval.psnr_ssim.bicubic`): the bar a model must clear, so a run that loses
    to it says so, with the number ``awm eval --crop validation.crop`` gives on the same shards.
    Runs the uncompiled module: eval image sizes vary, and would recompile a compiled one.
    """
    from awm.data.loader import eval_pairs
    from awm.imageio import to_tensor

    acc, info, v, s = c.accelerator, c.info, cfg.validation, cfg.data.scale
    sums = torch.zeros(6, dtype=torch.float64, device=acc.device)
    crops = []
    was_training = model.training
    dtype = next(model.parameters()).dtype  # bf16 under DeepSpeed without EMA (no autocast there)
    model.eval()
    pairs = eval_pairs(cfg.data.eval or cfg.data.train, s, acc.process_index, acc.num_processes,
                       v.max_images, v.crop, skipped, cfg.data.max_pixels, cfg.data.degrade)
    with torch.no_grad():
        for _, lr, hr in pairs:
            h, w = (lr.shape[0] // info.size_multiple * info.size_multiple,
                    lr.shape[1] // info.size_multiple * info.size_multiple)
            if min(h, w) < max(info.size_min, 1):
                skipped["too_small"] += 1
                continue
            lr = np.ascontiguousarray(lr[:h, :w])
            x = to_tensor(lr).to(acc.device, dtype)
            y = to_tensor(hr[:h * s, :w * s]).to(acc.device)
            with acc.autocast():
                sr = model(x).float()
            p, ss = psnr_ssim_y(sr, y, border=s)
            p_bicubic, ss_bicubic = psnr_ssim_y(to_tensor(bicubic(lr, s)).to(acc.device), y, border=s)
            sums += torch.stack([p.double().sum(), ss.double().sum(), (sr.clamp(0, 1) - y).abs().mean().double(),
                                 torch.tensor(1.0, dtype=torch.float64, device=acc.device), p_bicubic.double().sum(),
                                 ss_bicubic.double().sum()])
            if len(crops) < v.grid_images:
                k = min(32, h, w)
                y0, x0 = (h - k) // 2, (w - k) // 2
                crops.append((x[..., y0:y0 + k, x0:x0 + k], sr[..., y0 * s:(y0 + k) * s, x0 * s:(x0 + k) * s],
                              y[..., y0 * s:(y0 + k) * s, x0 * s:(x0 + k) * s]))
    model.train(was_training)
    sums = acc.reduce(sums, "sum")
    n = max(1.0, float(sums[3]))
    metrics = {"psnr_y": float(sums[0]) / n, "bicubic_psnr_y": float(sums[4]) / n, "ssim_y": float(sums[1]) / n,
               "bicubic_ssim_y": float(sums[5]) / n, "l1": float(sums[2]) / n, "images": int(sums[3])}
    grid = image_grid(*(torch.cat(t) for t in zip(*crops, strict=True)), s) if crops else None
    return metrics, grid
