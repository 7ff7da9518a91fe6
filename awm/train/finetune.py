"""Start training from released weights: ``model.init`` (generator) and ``model.init_discriminator``.

The generator's file is anything :func:`awm.models.checkpoint.load_model` reads (AWM checkpoint
or run dirs, APISR ``model_state_dict``, BasicSR ``params_ema``/``params``, plain state dicts,
safetensors, whatever spandrel detects), never unpickling code. The architecture and its
hyperparameters come from the file when ``model.arch`` is null; when it is set, the file must
match it. A file trained on BGR (APISR, by ``model.init_color_order: auto``) has the channel swap
folded into its first and last convs, so the network computes in RGB like every AWM model and a
validation before the first update equals evaluating the file with its colour handling.

Resolved values (arch, hparams, colour order) are written back into the config, so the run's
``config.yaml`` and every checkpoint's meta record them. A run that resumes from its state ignores
the init weights: the state wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import yaml
from torch import nn

from awm.errors import ConfigError
from awm.log import get_logger
from awm.models.checkpoint import (
    TRAINED_COLOR_ORDER,
    basicsr_names,
    fold_bgr,
    load_model,
    normalize_state_dict,
    read_weights,
)
from awm.models.loaded import CheckpointError

if TYPE_CHECKING:
    from awm.train.config import TrainConfig

log = get_logger("awm.train")
SHOWN = 5  # tensors listed in an error message, one per line, before "... and N more"


class InitMismatchError(CheckpointError):
    """``model.init_strict`` and the file's tensors differ from the model's (names or shapes): the run
    fails on its input (exit 1), not on a malformed config."""


@dataclass
class InitWeights:
    """The generator weights to start from, in the key layout of the architecture they belong to."""

    file: str
    source: str
    module: nn.Module
    scale: int
    color_order: str


def _resolved_before(cfg: TrainConfig) -> dict[str, Any]:
    """The model section the run's first start resolved and saved (``config.yaml``), or {}."""
    saved = cfg.run_dir / "config.yaml"
    return (yaml.safe_load(saved.read_text()) or {}).get("model", {}) if saved.is_file() else {}


def prepare(cfg: TrainConfig, resuming: bool) -> InitWeights | None:
    """Read ``model.init``, resolve arch/hparams/colour order into ``cfg.model``; None when there is no
    init or the run resumes. A resumed run takes what its first start resolved from its
    ``config.yaml`` (the state wins; the file is read only if that is missing)."""
    m = cfg.model
    if m.init is None:
        return None
    before = _resolved_before(cfg) if resuming else {}
    if before.get("init") == str(m.init) and before.get("arch"):
        if m.arch is None:
            m.arch, m.hparams = before["arch"], dict(before.get("hparams") or {})
        if m.init_color_order == "auto":
            m.init_color_order = before.get("init_color_order", "auto")
        log.info("model.init %s ignored: resuming from the run's saved state (the state wins)", m.init)
        return None
    try:
        loaded = load_model(m.init)
    except CheckpointError as e:
        raise ConfigError("model.init", m.init, f"a weights file or checkpoint load_model reads ({e})") from None
    if m.arch is None:
        if loaded.source != "awm" and loaded.meta.get("spandrel_arch") == loaded.arch:
            raise ConfigError("model.init", m.init, f"weights of an AWM architecture; spandrel reads "
                              f"{loaded.arch} {loaded.hparams}, which no entry of awm.models.archs reproduces: "
                              "set model.arch and model.hparams (and model.init_strict=false to load what fits)")
        m.arch, m.hparams = loaded.arch, dict(loaded.hparams)
        log.info("model.init %s: architecture %s %s from the file", m.init, m.arch, m.hparams)
    order = TRAINED_COLOR_ORDER.get(loaded.source, "rgb") if m.init_color_order == "auto" else m.init_color_order
    m.init_color_order = order
    if resuming:
        log.info("model.init %s ignored: resuming from the run's saved state (the state wins)", m.init)
        return None
    module = loaded.module
    if order == "bgr":
        try:
            module = fold_bgr(module, loaded.size_multiple, loaded.size_min)
        except CheckpointError as e:
            raise ConfigError("model.init_color_order", "bgr", f"rgb for this architecture ({e})") from None
        log.info("model.init %s: trained on BGR (%s); channel swap folded into the first and last convs",
                 m.init, loaded.source)
    return InitWeights(str(m.init), loaded.source, module, loaded.scale, order)


def _diff(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor]
          ) -> tuple[list[str], list[str], list[tuple[str, tuple, tuple]]]:
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    mismatched = [(k, tuple(theirs[k].shape), tuple(ours[k].shape))
                  for k in ours if k in theirs and theirs[k].shape != ours[k].shape]
    return missing, unexpected, mismatched


def _table(missing: list[str], unexpected: list[str], mismatched: list[tuple[str, tuple, tuple]],
           limit: int | None = None) -> str:
    """The tensors that differ, one indented line each; past ``limit``, a last line "... and N more"."""
    rows = ([f"shape mismatch {k}: file {list(a)} vs model {list(b)}" for k, a, b in mismatched]
            + [f"missing from the file {k}" for k in missing] + [f"unexpected in the file {k}" for k in unexpected])
    more = len(rows) - limit if limit is not None and len(rows) > limit else 0
    shown = rows[:limit] if limit is not None else rows
    return "\n".join(f"  {r}" for r in shown + ([f"... and {more} more"] if more else []))


def load_state(module: nn.Module, state: dict[str, torch.Tensor], strict: bool, key: str, file: str,
               expected: str, rename: tuple[dict[str, str], dict[str, str]] | None = None) -> dict[str, Any]:
    """Load ``state`` into ``module``: all of it (``strict``, else ConfigError naming the keys that
    differ) or the tensors whose name and shape fit, logging a table of the rest.

    ``rename``: (module's keys, state's keys) -> shared names to match and show by (BasicSR's for
    RRDBNet, where spandrel's own keys shift with the block count).
    """
    ours_names, theirs_names = rename or ({}, {})
    ours = {ours_names.get(k, k): v for k, v in module.state_dict().items()}
    back = {ours_names.get(k, k): k for k in module.state_dict()}
    state = {theirs_names.get(k, k): v for k, v in state.items()}
    missing, unexpected, mismatched = _diff(ours, state)
    if (missing or unexpected or mismatched) and strict:
        raise InitMismatchError(f"{key}={file}: the weights do not fit {expected} (set model.init_strict=false "
                                f"to load the tensors that fit):\n{_table(missing, unexpected, mismatched, SHOWN)}")
    skip = {k for k, _, _ in mismatched} | set(unexpected)
    fitting = {back[k]: v for k, v in state.items() if k not in skip}
    module.load_state_dict(fitting, strict=False)
    if missing or unexpected or mismatched:
        log.warning("%s %s: loaded %d tensors; not loaded:\n%s", key, file, len(fitting),
                    _table(missing, unexpected, mismatched))
    return {"loaded": len(fitting), "missing": missing, "unexpected": unexpected,
            "mismatched": [k for k, _, _ in mismatched]}


def load_generator(generator: nn.Module, init: InitWeights, cfg: TrainConfig) -> None:
    """Copy the init weights into the freshly built generator (same class; hparams and scale checked
    through the tensors' names and shapes)."""
    m = cfg.model
    if type(init.module) is not type(generator):
        raise ConfigError("model.arch", m.arch, f"an architecture of the init file's class "
                          f"({type(init.module).__name__}; the model is {type(generator).__name__}), or null "
                          "to take it from the file")
    if init.scale != cfg.data.scale and m.init_strict:  # an upsampler cannot be reused across scales
        raise InitMismatchError(f"model.init={init.file}: the scales differ: the file is a x{init.scale} model and "
                                f"this run trains x{cfg.data.scale} (data.scale={cfg.data.scale}); start from a "
                                f"x{cfg.data.scale} file, or train x{init.scale} with data.scale={init.scale} (and "
                                f"shards holding lr_x{init.scale})")
    expected = f"model.arch={m.arch} {m.hparams} at data.scale={cfg.data.scale}"
    report = load_state(generator, init.module.state_dict(), m.init_strict, "model.init", init.file, expected,
                        (basicsr_names(generator), basicsr_names(init.module)))
    log.info("model.init %s (%s, colour order %s): %d tensors loaded", init.file, init.source, init.color_order,
             report["loaded"])


def _discriminator_state(path: Path, keys: set[str]) -> dict[str, torch.Tensor]:
    """A discriminator's tensors from a weights file, or from a run (or state) dir's saved models."""
    if path.is_file():
        return normalize_state_dict(read_weights(path))[0]
    candidates = sorted([*path.glob("state/model*.safetensors"), *path.glob("model*.safetensors")])
    states = [normalize_state_dict(read_weights(p))[0] for p in candidates]
    for state in states:
        if set(state) == keys:
            return state
    if not states:
        raise CheckpointError(f"{path}: no such file, and no state/model*.safetensors in it")
    return max(states, key=lambda s: len(set(s) & keys))  # nearest: the strict check names what differs


def load_discriminator(discriminator: nn.Module, cfg: TrainConfig, resuming: bool) -> None:
    """``model.init_discriminator`` into the discriminator (no colour folding: realness maps are
    read as they are)."""
    m = cfg.model
    if m.init_discriminator is None:
        return
    if resuming:
        log.info("model.init_discriminator %s ignored: resuming from the run's saved state", m.init_discriminator)
        return
    try:
        state = _discriminator_state(Path(m.init_discriminator), set(discriminator.state_dict()))
    except CheckpointError as e:
        raise ConfigError("model.init_discriminator", m.init_discriminator, f"a discriminator's weights ({e})") from None
    report = load_state(discriminator, state, m.init_strict, "model.init_discriminator", m.init_discriminator,
                        f"model.discriminator {m.discriminator}")
    log.info("model.init_discriminator %s: %d tensors loaded", m.init_discriminator, report["loaded"])
