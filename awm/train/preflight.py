"""What ``awm train`` checks before it builds a model: errors at step 0, not at the first validation.

A mistyped ``data.eval`` used to surface at the first validation (step 500 of ``tiny-cpu``) with no
checkpoint written; a run name reused with another scale ended in a raw ``size mismatch for
body.26.weight`` from the state load. Both are ConfigErrors now, raised on every rank before any
model, optimiser or loader exists.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any

import yaml

from awm.data.loader import check_data
from awm.errors import ConfigError
from awm.models.archs import resolve_hparams
from awm.train.config import TrainConfig
from awm.train.tracking import preflight as preflight_trackers

# What a saved state's tensors depend on: a resumed run must agree on these.
STATE_KEYS = ("model.arch", "model.hparams", "model.discriminator", "data.scale")


def _get(d: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        d = d.get(part, {}) if isinstance(d, dict) else {}
    return d


def state_identity(cfg: dict[str, Any]) -> dict[str, Any]:
    """The :data:`STATE_KEYS` of a config mapping, hyperparameters completed with the arch's defaults."""
    out = {k: _get(cfg, k) for k in STATE_KEYS}
    with contextlib.suppress(KeyError, TypeError, ValueError):  # an unknown arch in an old run: as written
        out["model.hparams"] = resolve_hparams(out["model.arch"], **(out["model.hparams"] or {}))
    return out


def check_run_dir(cfg: TrainConfig, resume: Path | None) -> None:
    """A run folder with a saved state is resumed: refuse a config whose model or scale differs from it."""
    from awm import config as cfgmod

    saved_path = cfg.run_dir / "config.yaml"
    if resume is None or not saved_path.is_file():
        return
    saved = state_identity(yaml.safe_load(saved_path.read_text()) or {})
    new = state_identity(cfgmod.to_dict(cfg))
    # model.arch null: taken from model.init's file, or on resume from this run's own config.yaml
    from_file = new["model.arch"] is None and cfg.model.init is not None
    diff = [k for k in STATE_KEYS if saved[k] != new[k] and not (from_file and k in ("model.arch", "model.hparams"))]
    if diff:
        raise ConfigError("name", cfg.name, f"a new run name, or the settings of the run it resumes in {cfg.run_dir} "
                                            f"({'; '.join(f'{k}: {saved[k]} there, {new[k]} here' for k in diff)}); "
                                            "delete that folder to start it over")


def check_inputs(cfg: TrainConfig, resume: Path | None) -> None:
    """Every check that can fail before the expensive part of a run starts (``resume``: the saved
    state the run will resume from, None for a fresh start)."""
    check_run_dir(cfg, resume)
    check_data(cfg.data)
    preflight_trackers(cfg.log.trackers)
