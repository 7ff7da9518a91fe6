"""``awm train``: configuration and entry point of one readable training loop from pair shards.

Runs the same under ``awm train``, ``accelerate launch -m awm train`` and ``torchrun -m awm
train`` (CPU: gloo, automatically), and in-process through :func:`train` (``awm submit``).
Two stages: L1 warm-up, then L1 + perceptual + GAN with a discriminator (``gan_start``).
bf16 autocast without a GradScaler, gradient accumulation that syncs only on the last
micro-step, EMA of the generator, validation on eval shards split over ranks, ``best`` by a
validation metric. The full state is written atomically to ``runs/<name>/state`` and a run
resumes from it bit-exactly (the data position is the step, see :mod:`awm.data.loader`; learning
rates are a pure function of the step). SIGTERM, SIGUSR1, SIGINT (Ctrl-C) or :func:`request_stop`
save it within two steps and return ``status: preempted``; a second Ctrl-C aborts at once.

Where things live: :mod:`awm.train.config` (the typed configuration), :mod:`awm.train.components`
(components, the step's losses/backward/update), :mod:`awm.train.trainer` (the loop, logging,
validation), :mod:`awm.train.ema`, :mod:`awm.train.schedule`, :mod:`awm.train.state` (resume state,
checkpoint settings), :mod:`awm.train.images` (batches to images, grids), :mod:`awm.train.perf`
(FLOPs/MFU, memory format, compile, prefetching).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from typing import Any

import torch

from awm import config as cfgmod
from awm import dist
from awm.log import get_logger
from awm.train.components import build_components
from awm.train.config import RECIPES, TrainConfig, load_config
from awm.train.preflight import check_inputs
from awm.train.state import latest_state
from awm.train.trainer import Trainer

log = get_logger("awm.train")
EXIT_PREEMPTED = 75  # EX_TEMPFAIL: "try again later", what a requeueing wrapper looks for
_stop = threading.Event()
__all__ = ["EXIT_PREEMPTED", "TrainConfig", "load_config", "request_stop", "train"]


def request_stop() -> None:
    """Ask a running :func:`train` to save its full state within two steps and return."""
    _stop.set()


def _on_stop_signal(sig: int, _frame: object) -> None:
    """A stop request; Ctrl-C (SIGINT) is one too, the stop button of a workstation, and a second
    Ctrl-C aborts at once (KeyboardInterrupt) when waiting for the save is not wanted."""
    if sig == signal.SIGINT and _stop.is_set():
        raise KeyboardInterrupt
    _stop.set()


def _precision(cfg: TrainConfig) -> str:
    """Accelerate's mixed_precision value: "no" (fp32), "bf16" or "fp16"."""
    if cfg.precision != "auto":
        return "no" if cfg.precision == "fp32" else cfg.precision
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION")
    # Under DeepSpeed the launcher's value is always "no" (Accelerate refuses a mixed_precision
    # beside a deepspeed_config_file), so it is no choice: the recipe's auto decides.
    if launcher and not _deepspeed():
        return launcher
    gpu = cfg.device != "cpu" and torch.cuda.is_available()
    return "bf16" if gpu and torch.cuda.is_bf16_supported() else "no"


def _deepspeed() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() == "true"


def _asks_for_cuda(cfg: TrainConfig) -> str | None:
    """What in this run asks for a GPU (a phrase for the error), or None: ``device=cuda``, fp16
    (no GradScaler or autocast on a CPU), a DeepSpeed launch (DeepSpeed takes its CPU accelerator
    when torch sees no GPU, so a broken CUDA install would train on the CPU), or, with
    ``precision: auto``, a launcher whose mixed precision is bf16/fp16 (AWM's GPU launch configs;
    the CPU ones say 'no'). ``device=cpu`` is the explicit way to any of them on a CPU."""
    if cfg.device == "cuda":
        return "device=cuda"
    if cfg.device == "cpu":
        return None
    if cfg.precision == "fp16":
        return "precision=fp16"
    if _deepspeed():
        return "the DeepSpeed launch (add device=cpu to train with DeepSpeed's CPU accelerator)"
    launcher = os.environ.get("ACCELERATE_MIXED_PRECISION", "no")
    if cfg.precision == "auto" and launcher in ("bf16", "fp16") and not _deepspeed():
        return f"the launch config (mixed_precision: {launcher}; add device=cpu to train on the CPU)"
    return None


def finished(cfg: TrainConfig) -> dict[str, Any] | None:
    """The stats of ``cfg.run_dir`` when that run is already done at ``cfg.steps`` or beyond (so
    resuming it would train nothing and only rewrite its outputs), else None."""
    path = cfg.run_dir / "train_stats.json"
    if not cfg.checkpoint.resume or not path.is_file():
        return None
    try:
        stats = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    done = isinstance(stats, dict) and stats.get("status") == "done" and int(stats.get("step", -1)) >= cfg.steps
    return stats if done else None


def train(cfg: TrainConfig) -> dict[str, Any]:
    """Train (or resume) the run ``cfg.run_dir``; returns its stats (``status``: done|preempted|nan).

    A run already done at ``cfg.steps`` is left as it is: its stats are returned, nothing is written.
    Reentrant: the process group and Accelerate's state are released on return, and signal
    handlers are restored; nothing calls ``sys.exit``.
    """
    stats = finished(cfg)
    if stats is not None:
        if dist.rank() == 0:
            log.info("run %s already finished at step %d of %d (%s): nothing to do; raise steps= to train "
                     "further, or use another name=", cfg.run_dir, stats["step"], cfg.steps,
                     cfg.run_dir / "train_stats.json")
        return stats
    had_group = dist.initialized()
    asked = _asks_for_cuda(cfg)
    if asked:
        dist.require_cuda(asked)
    if _deepspeed():
        if cfg.device == "cpu" and torch.cuda.is_available():
            raise cfgmod.ConfigError("device", "cpu", "auto or cuda under DeepSpeed on a machine with GPUs (its engine "
                                     "takes the GPU; CUDA_VISIBLE_DEVICES= hides them to train on the CPU)")
        # DeepSpeed joins its own process group (Accelerate calls deepspeed.init_distributed,
        # with gloo on CPU: see build_components), and ACCELERATE_USE_CPU (set by dist.init
        # without a GPU) would make Accelerate ignore it.
        os.environ.pop("ACCELERATE_USE_CPU", None)  # an inherited value would silently turn DeepSpeed off
    else:
        dist.init(cfg.device)
    _stop.clear()
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            previous[sig] = signal.signal(sig, _on_stop_signal)
    try:
        # Resolved once and handed down: the checks, the components (which weights to start from)
        # and the loop (what to load) act on the same saved state.
        resume = latest_state(cfg.run_dir) if cfg.checkpoint.resume else None
        check_inputs(cfg, resume)
        precision = _precision(cfg)
        trainer = Trainer(cfg, build_components(cfg, precision, resume), _stop, precision, resume)
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
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved configuration (recipe + overrides) as YAML and exit")
    parser.epilog = ("config keys (key = default (type) help; a recipe sets its own values, "
                     "--print-config shows them):\n" + "\n".join(cfgmod.describe_keys(TrainConfig)))


def run(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        import yaml

        print(yaml.safe_dump(cfgmod.to_dict(cfg), sort_keys=False), end="")
        return 0
    stats = train(cfg)
    if stats["status"] == "preempted" and dist.rank() == 0:  # the last line before a launcher's own traceback
        log.warning("stopped: state saved at step %d of %d in %s; re-run the same command to resume",
                    stats["step"], stats["steps"], cfg.run_dir / "state")
    return {"done": 0, "preempted": EXIT_PREEMPTED}.get(stats["status"], 1)
