"""The pieces of one training step: the components it touches and ``losses_and_backward``.

Everything here is built once per run by :func:`build_components`; the loop in
:mod:`awm.train.trainer` drives it. The hot path never waits for the device: a non-finite step is
detected and skipped on the device (fused AdamW's ``found_inf``, the mechanism GradScaler
uses: weights, moments and step counts stay as they were), loss scalars stay on the device, and
EMA/optimizer updates are multi-tensor ops whose count does not grow with the parameter count.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from awm import config as cfgmod
from awm import dist
from awm.config import check
from awm.models import losses
from awm.models.archs import build_model, get_spec, model_info
from awm.train import finetune, tracking
from awm.train.ema import EMA
from awm.train.perf import channels_last_for, compile_module, count_flops, meta_copy

if TYPE_CHECKING:
    from awm.models.archs import ModelInfo
    from awm.train.config import TrainConfig


@dataclass
class Components:
    """Models, optimisers and losses of a run, prepared for this process's device and launcher.

    ``generator``/``discriminator`` are what the step calls (compiled, DDP-wrapped);
    ``*_plain`` are the bare modules (EMA source, validation, checkpoints, FLOP counting);
    ``adversary`` is the discriminator as the generator's loss calls it (compiled, not DDP).
    Models are prepared (DDP) first and compiled after, and their saved states have bare keys.
    """

    accelerator: Any
    info: ModelInfo
    channels_last: bool
    generator: nn.Module
    generator_plain: nn.Module
    generator_params: list[nn.Parameter]
    generator_optimizer: torch.optim.Optimizer
    pixel_loss: nn.Module
    ema: EMA | None = None
    discriminator: nn.Module | None = None
    discriminator_plain: nn.Module | None = None
    adversary: nn.Module | None = None
    discriminator_params: list[nn.Parameter] = dataclasses.field(default_factory=list)
    discriminator_optimizer: torch.optim.Optimizer | None = None
    generator_loss: nn.Module | None = None
    discriminator_loss: nn.Module | None = None
    artifact_loss: nn.Module | None = None  # LDL/FFL/MS-SSIM/colour terms, both stages
    ema_model: nn.Module | None = None  # the EMA generator, run when LDL needs its output
    deepspeed: bool = False  # its engine steps inside backward: no device-side skip there
    # The generator's input dtype when it differs from the loader's float32: DeepSpeed casts the
    # parameters to bf16/fp16 but never the inputs, and Accelerate turns its autocast off under
    # DeepSpeed, so an fp32 batch would meet bf16 weights ("Input type (float) and weight type
    # (BFloat16) should be the same").
    input_dtype: torch.dtype | None = None
    cudagraphs: bool = False  # model.compile=reduce-overhead on CUDA: see build_components and the trainer

    def optimizers(self, gan: bool) -> list[torch.optim.Optimizer]:
        return [self.generator_optimizer] + ([self.discriminator_optimizer] if gan else [])

    def trained(self, gan: bool) -> list[nn.Module]:
        return [self.generator] + ([self.discriminator] if gan else [])


def make_optimizer(params: list[nn.Parameter], lr: float, betas: tuple[float, float], weight_decay: float,
                   device: torch.device, deepspeed: bool) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for all tensors, and it can skip a step on a device flag) on CPU
    and CUDA; multi-tensor under DeepSpeed, which runs the step inside its engine."""
    fused = not deepspeed and device.type in ("cpu", "cuda")
    return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay,
                             fused=fused or None, foreach=None if fused else True)


class GlobalMean(nn.Module):
    """``AdaptiveAvgPool2d(1)`` as a mean over height and width: the same values, and a backward
    that CUDA computes deterministically (adaptive average pooling's backward has no such kernel)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((-2, -1), keepdim=True)


def deterministic_pools(module: nn.Module) -> int:
    """Replace every ``AdaptiveAvgPool2d(1)`` inside ``module`` (HAT's and DAT's channel attention)
    by :class:`GlobalMean`; returns how many. No parameters or state keys change."""
    count = 0
    for parent in module.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GlobalMean())
                count += 1
    return count


def _trainable(module: nn.Module) -> list[nn.Parameter]:
    return [p for p in module.parameters() if p.requires_grad]


def skip_buffer_broadcasts(prepared: nn.Module) -> None:
    """DDP re-sends no buffers before each forward: every rank computes the same ones (spectral-norm
    vectors from identical weights), and DAT's constant buffers (90 MiB) would go out every step.

    Set on the wrapper, which every torch reads at each forward: Accelerate's
    ``DistributedDataParallelKwargs(broadcast_buffers=False)`` makes torch >= 2.13 warn on every rank
    (a FutureWarning naming ``forward_sync_buffers``, which Accelerate cannot pass).
    """
    if isinstance(prepared, nn.parallel.DistributedDataParallel):
        prepared.broadcast_buffers = False


def build_components(cfg: TrainConfig, precision: str, resume: Path | None) -> Components:
    """Accelerator, models (DDP-wrapped, then compiled), fused optimisers, EMA and losses; ``resume``
    (the saved state the run resumes from, or None) decides whether ``model.init`` weights are loaded."""
    from accelerate import Accelerator
    from accelerate.utils import (
        DataLoaderConfiguration,
        DistributedType,
        InitProcessGroupKwargs,
        set_seed,
    )

    scale, m = cfg.data.scale, cfg.model
    resuming = resume is not None
    init = finetune.prepare(cfg, resuming)  # fills model.arch/hparams from model.init when null
    if get_spec(m.arch).spandrel_id in WINDOW_MASKED and "img_size" not in m.hparams and init is None:
        # spandrel's SwinIR/DAT/GRL precompute their shifted-window masks for img_size and rebuild
        # them on the CPU, with a blocking copy, at every forward of another size (HAT always
        # does): build for the LR patch. Saved in config.yaml and the checkpoints' hparams.
        m.hparams["img_size"] = cfg.data.patch // scale
    info = model_info(m.arch, scale, **m.hparams)
    if precision == "fp16" and not info.supports_fp16:
        raise cfgmod.ConfigError("precision", "fp16", f"fp32 or bf16 for {m.arch}: spandrel marks its architecture "
                                 "unsafe in half precision (supports_half=False)")
    # Under DeepSpeed, Accelerate creates the process group through deepspeed.init_distributed
    # with this backend: gloo on CPU, where Accelerate would otherwise choose none and leave every
    # process training alone (world size 1). Otherwise awm.dist.init has created the group.
    ds_env = os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"
    handlers = [InitProcessGroupKwargs(backend=dist.backend(), timeout=dist.timeout())] if ds_env else []
    acc = Accelerator(mixed_precision=precision, gradient_accumulation_steps=cfg.optim.accum,
                      dataloader_config=DataLoaderConfiguration(dispatch_batches=False, split_batches=False),
                      step_scheduler_with_optimizer=False, kwargs_handlers=handlers,
                      log_with=tracking.build(cfg, resuming) or None)
    deepspeed = acc.distributed_type == DistributedType.DEEPSPEED
    gan = cfg.gan_start < cfg.steps
    if deepspeed:
        if gan and precision == "fp16":
            raise cfgmod.ConfigError("precision", "fp16", "bf16 or fp32 for a GAN stage under DeepSpeed (the "
                                     "discriminator runs outside its engine, with no loss scaler of its own)")
        ds = acc.state.deepspeed_plugin.deepspeed_config
        ds["train_micro_batch_size_per_gpu"] = cfg.data.batch_size
        ds["gradient_clipping"] = cfg.optim.grad_clip
    set_seed(cfg.seed)  # same initial weights on every rank
    cuda = acc.device.type == "cuda"
    if cfg.deterministic and cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS's condition for determinism
    # On CUDA an op without a deterministic kernel warns instead of failing (torch's warn_only):
    # the known ones are replaced (discriminators.upsample2x, deterministic_pools, the device median).
    torch.use_deterministic_algorithms(cfg.deterministic, warn_only=cfg.deterministic and cuda)
    torch.backends.cudnn.benchmark = not cfg.deterministic
    torch.backends.cuda.matmul.allow_tf32 = not cfg.deterministic  # fp32 runs: TF32 tensor cores
    q = cfg.data.patch // scale
    check(q % info.size_multiple == 0 and q >= info.size_min, "data.patch", cfg.data.patch,
          f"an HR patch whose LR side is a multiple of {info.size_multiple} and >= {info.size_min} for {m.arch}")
    # DeepSpeed flattens parameters into contiguous buffers (a channels_last weight cannot be viewed so)
    channels_last = channels_last_for(get_spec(m.arch).spandrel_id, m.channels_last) and not deepspeed
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    generator = build_model(m.arch, scale, **m.hparams)
    if init is not None:
        finetune.load_generator(generator, init, cfg)
    generator = generator.to(acc.device, memory_format=fmt)
    if cfg.deterministic:
        deterministic_pools(generator)
    ema = EMA(generator, cfg.ema) if cfg.ema.enabled else None
    betas, wd = (cfg.optim.betas[0], cfg.optim.betas[1]), cfg.optim.weight_decay
    g_params = _trainable(generator)
    g_opt = make_optimizer(g_params, cfg.optim.lr_g, betas, wd, acc.device, deepspeed)
    c = Components(acc, info, channels_last, generator, generator, g_params, g_opt,
                   losses.build_pixel_loss(cfg.loss).to(acc.device), ema, deepspeed=deepspeed)
    c.artifact_loss = losses.build_artifact_loss(cfg.loss)
    if c.artifact_loss is not None and c.artifact_loss.needs_ema:
        check(ema is not None, "loss.ldl.weight", cfg.loss.ldl.weight, "0 when ema.enabled is false "
              "(LDL's artifact map compares the output with the EMA generator's)")
        c.ema_model = ema.module
    if gan:
        d = losses.build_discriminator(m.discriminator)
        finetune.load_discriminator(d, cfg, resuming)
        d = d.to(acc.device, memory_format=fmt)
        c.discriminator_plain, c.discriminator_params = d, _trainable(d)
        c.discriminator_optimizer = make_optimizer(c.discriminator_params, cfg.optim.lr_d, betas, wd,
                                                   acc.device, deepspeed=False)
        c.generator_loss = losses.build_generator_loss(cfg.loss).to(acc.device)
        half = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        c.generator_loss.settle_backbones(half, fmt)
        c.discriminator_loss = losses.build_discriminator_loss(cfg.loss).to(acc.device)
        c.adversary = compile_module(d, m.compile)
        if deepspeed:
            # Accelerate gives its DeepSpeed engine one model: the discriminator stays outside it, a
            # float32 module under torch's DDP with its own fused optimizer (the trainer registers
            # both for checkpointing and steps them in apply_update).
            ddp_d = d
            if acc.num_processes > 1:
                ids = [acc.device] if acc.device.type == "cuda" else None
                ddp_d = nn.parallel.DistributedDataParallel(d, device_ids=ids)
        else:
            ddp_d, c.discriminator_optimizer = acc.prepare(d, c.discriminator_optimizer)
        skip_buffer_broadcasts(ddp_d)
        c.discriminator = compile_module(ddp_d, m.compile)
        _canonical_state_keys(ddp_d)
    # Compile what DDP wraps, not the other way round (Accelerate's own order with its dynamo
    # plugin): dynamo's DDPOptimizer then splits the graph at DDP's bucket boundaries, so the
    # gradient all-reduce overlaps the backward; a DDP-wrapped compiled module all-reduces after it.
    if deepspeed:  # its engine saves and loads the module's states itself (strictly), without Accelerate's hooks
        compiled = compile_module(generator, m.compile)
        _bare_state_dict_keys(compiled)
        _canonical_state_keys(compiled)
        c.generator, c.generator_optimizer = acc.prepare(compiled, g_opt)
    else:
        prepared, c.generator_optimizer = acc.prepare(generator, g_opt)
        skip_buffer_broadcasts(prepared)
        c.generator = compile_module(prepared, m.compile)
        _canonical_state_keys(prepared)
        acc.register_save_state_pre_hook(_bare_saved_keys)
    c.cudagraphs = m.compile == "reduce-overhead" and acc.device.type == "cuda"
    if c.cudagraphs:
        # CUDA-graph trees own their outputs' memory, and a replay overwrites it. Gradients the
        # compiled backward hands to AccumulateGrad become .grad as they are (in the graph's pool)
        # when .grad is None, then die at the next replay (the GAN stage's discriminator, the next
        # micro-step of optim.accum): keep .grad allocated outside the pool and accumulate into it.
        for p in c.generator_params + c.discriminator_params:
            p.grad = torch.zeros_like(p)
    if deepspeed:
        dtype = next(generator.parameters()).dtype
        c.input_dtype = None if dtype == torch.float32 else dtype
    return c


WINDOW_MASKED = ("SwinIR", "HAT", "DAT", "GRL")  # spandrel ids whose masks depend on img_size
WRAPPER_PREFIXES = ("module.", "_orig_mod.")  # DDP's and torch.compile's submodule names


def bare_key(key: str) -> str:
    """A state key without the prefixes wrappers add (``module._orig_mod.conv.weight`` -> ``conv.weight``)."""
    while key.startswith(WRAPPER_PREFIXES):
        key = key.split(".", 1)[1]
    return key


def _bare_saved_keys(models: list[nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str) -> None:
    """Accelerate's save-state hook: model states are saved under the bare module's keys, so a run
    resumes whether or not ``model.compile`` or the process count (DDP) changed in between."""
    for state in weights:
        for key in list(state):
            state[bare_key(key)] = state.pop(key)


def _bare_state_dict_keys(module: nn.Module) -> None:
    """``module.state_dict()`` under the bare module's keys: what DeepSpeed's engine saves of a
    compiled generator (``_orig_mod.`` otherwise, which a run resumed without compile refused)."""

    def strip(_module, state, at, _metadata):
        for key in [k for k in state if k.startswith(at)]:
            state[at + bare_key(key[len(at):])] = state.pop(key)

    module.register_state_dict_post_hook(strip)


def _canonical_state_keys(module: nn.Module) -> None:
    """Let ``module`` (maybe DDP-wrapped or compiled) load a state saved with or without wrapper
    prefixes (states written before :func:`_bare_saved_keys`, or by a compiled model, have them)."""
    if isinstance(module, torch.nn.parallel.DistributedDataParallel):
        prefix = "module."
    else:
        prefix = "_orig_mod." if isinstance(module, torch._dynamo.eval_frame.OptimizedModule) else ""

    def rekey(_module, state, at, *_):
        for key in [k for k in state if k.startswith(at)]:
            state[at + prefix + bare_key(key[len(at):])] = state.pop(key)

    module.register_load_state_dict_pre_hook(rekey)


def losses_and_backward(c: Components, lr: torch.Tensor, hr: torch.Tensor, gan: bool,
                        backward: Callable[..., None] | None = None,
                        autocast: Callable[[], Any] = contextlib.nullcontext,
                        d_backward: Callable[[torch.Tensor], None] | None = None) -> dict[str, torch.Tensor]:
    """Generator loss and backward, then (GAN stage) the discriminator's; returns the loss terms.

    The generator's backward reaches only the generator's parameters (``inputs=``): the
    discriminator inside its loss gets no gradient from it, with no per-parameter toggling
    (except under DeepSpeed: :func:`_adversary_logits`). ``d_backward`` (default ``backward``)
    runs the discriminator's: under DeepSpeed Accelerate's backward would step the generator's engine.
    """
    backward = backward or (lambda loss, **kw: loss.backward(**kw))
    if c.input_dtype is not None:
        lr = lr.to(c.input_dtype)
    with autocast():
        sr = c.generator(lr)
        if gan:
            terms = c.generator_loss(sr, hr, _adversary_logits(c, sr))
        else:
            terms = {"pixel": c.pixel_loss(sr, hr)}
        if c.artifact_loss is not None:
            terms.update(c.artifact_loss(sr, hr, _ema_output(c, lr)))
        loss = sum(terms.values())
    if not gan:
        backward(loss)  # only the generator is in the graph (and DeepSpeed's backward takes no inputs=)
        return terms
    backward(loss, **({} if c.deepspeed else {"inputs": c.generator_params}))
    with autocast():
        d_terms = c.discriminator_loss(c.discriminator(torch.cat([hr, _for_discriminator(c, sr.detach())])))
    (d_backward or backward)(sum(d_terms.values()))
    return {**terms, **d_terms}


def _for_discriminator(c: Components, sr: torch.Tensor) -> torch.Tensor:
    """``sr`` in the discriminator's float32: under DeepSpeed the generator computes in bf16 with
    no autocast to reconcile the two."""
    return sr if c.input_dtype is None else sr.float()


def _adversary_logits(c: Components, sr: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
    """The discriminator's logits on ``sr`` for the generator's loss. DeepSpeed's backward takes no
    ``inputs=``: there the discriminator's parameters leave this graph, so the generator's loss
    leaves no gradient on them."""
    if not c.deepspeed:
        return c.adversary(sr)
    params = c.discriminator_params
    for p in params:
        p.requires_grad_(False)
    try:
        return c.adversary(_for_discriminator(c, sr))
    finally:
        for p in params:
            p.requires_grad_(True)


def discriminator_sync(c: Components, gan: bool, sync: bool) -> contextlib.AbstractContextManager:
    """No gradient all-reduce for the discriminator on a micro-step before the last of ``optim.accum``.

    Accelerate's ``accumulate`` does this for the models it prepared, and under ZeRO-2 for none:
    the discriminator of a DeepSpeed run is torch's DDP, outside Accelerate."""
    ddp = getattr(c.discriminator, "_orig_mod", c.discriminator)
    if c.deepspeed and gan and not sync and isinstance(ddp, nn.parallel.DistributedDataParallel):
        return ddp.no_sync()
    return contextlib.nullcontext()


def _ema_output(c: Components, lr: torch.Tensor) -> torch.Tensor | None:
    """The EMA generator's output on this batch (LDL's reference), without a graph."""
    if c.ema_model is None:
        return None
    # The EMA copy stays float32; under DeepSpeed bf16 the batch was cast to the engine's dtype and
    # no autocast reconciles them ("Input type (c10::BFloat16) and bias type (float)").
    dtype = next(c.ema_model.parameters()).dtype
    with torch.no_grad():
        return c.ema_model(lr.to(dtype))


def flops_per_pair(c: Components, patch: int, scale: int, gan: bool) -> int:
    """Training FLOPs per (LR, HR) pair of one stage: forward and backward of every network.

    Counted on meta-device copies (no memory, time or state of the real models); an
    architecture whose forward cannot run on meta is counted on copies on its own device.
    """
    q, batch = patch // scale, 2

    def run_on(device: torch.device | None) -> int:
        copy = (lambda m: meta_copy(m)) if device is None else (lambda m: _device_copy(m))
        g = copy(c.generator_plain)
        d = copy(c.discriminator_plain) if gan else None
        twin = dataclasses.replace(c, generator=g, generator_params=_trainable(g), pixel_loss=copy(c.pixel_loss),
                                   discriminator=d, adversary=d, discriminator_params=_trainable(d) if gan else [],
                                   generator_loss=copy(c.generator_loss) if gan else None,
                                   discriminator_loss=copy(c.discriminator_loss) if gan else None,
                                   artifact_loss=copy(c.artifact_loss), ema_model=copy(c.ema_model))
        where = device or torch.device("meta")
        lr, hr = torch.rand(batch, 3, q, q, device=where), torch.rand(batch, 3, q * scale, q * scale, device=where)
        return count_flops(lambda: losses_and_backward(twin, lr, hr, gan))

    try:
        return run_on(None) // batch
    except (NotImplementedError, RuntimeError):
        return run_on(c.accelerator.device) // batch


def _device_copy(module: nn.Module | None) -> nn.Module | None:
    return None if module is None else copy.deepcopy(module)


def _clip(group: list[nn.Parameter], max_norm: float, device: torch.device) -> torch.Tensor:
    """The group's gradient norm (a device tensor), clipped to ``max_norm`` unless that is 0."""
    grads = [p.grad for p in group if p.grad is not None]
    if not grads:
        return torch.zeros((), device=device)
    if max_norm:
        return torch.nn.utils.clip_grad_norm_(group, max_norm, foreach=True)
    return torch.nn.utils.get_total_norm(grads, foreach=True)  # the norm alone: log, non-finite check


def non_finite_flag(values: list[torch.Tensor], world_size: int) -> torch.Tensor:
    """1.0 on the device when any value is NaN/inf on any rank, else 0.0; never read by the host.

    Gradient norms are global already; losses are per rank, so the flag is max-reduced (an
    async collective) to make every rank skip the same steps.
    """
    flag = torch.stack([v.detach().float().reshape(()) for v in values]).isfinite().all().logical_not().float()
    if world_size > 1:
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return flag


def apply_update(c: Components, gan: bool, grad_clip: float, step_loss: torch.Tensor,
                 world_size: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Clip, flag a non-finite step, step the optimisers (a no-op on the device when flagged).

    Returns the flag and the gradient norms (device tensors).
    """
    acc = c.accelerator
    params = [c.generator_params] + ([c.discriminator_params] if gan else [])
    # fp16's GradScaler: each optimizer is unscaled once here, clipped, stepped by its own fused
    # kernel, and the scale updated once after all of them. Accelerate's optimizer step would run
    # scaler.step + scaler.update() per optimizer: update() forgets that the next optimizer was
    # unscaled, so the discriminator's gradients were divided by the scale twice.
    scaler = None if c.deepspeed else acc.scaler
    if c.deepspeed:  # the engine has clipped and stepped inside backward; its norm, never read here
        norm = acc.deepspeed_engine_wrapped.engine.get_global_grad_norm()  # (Accelerate's getter calls .item())
        norms = [torch.zeros((), device=acc.device) if norm is None else torch.as_tensor(norm, device=acc.device)]
        norms += [_clip(group, grad_clip, acc.device) for group in params[1:]]  # the discriminator's, outside it
    else:
        if scaler is not None:
            # (GradScaler also refuses a second unscale_ before update(), which Accelerate's
            # clip_grad_norm_ would do per group)
            for opt in c.optimizers(gan):
                scaler.unscale_(_bare_optimizer(opt))
        norms = [_clip(group, grad_clip, acc.device) for group in params]
    found_inf = non_finite_flag([step_loss, *norms], world_size)
    for opt in c.optimizers(gan):
        if c.deepspeed and opt is c.generator_optimizer:
            opt.step()
        else:
            bare = _bare_optimizer(opt)
            bare.found_inf = found_inf  # read by the fused kernel on the device, as GradScaler's is
            bare.step()  # gradients are in sync here (called on the accumulation's last micro-step)
        opt.zero_grad(set_to_none=not c.cudagraphs)
    if scaler is not None:
        scaler.update()  # backs the scale off when an unscale_ above found inf/NaN gradients
    return found_inf, norms


def _bare_optimizer(opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside Accelerate's wrapper."""
    return opt.optimizer if hasattr(opt, "optimizer") else opt
