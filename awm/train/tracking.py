"""Experiment trackers through Accelerate's tracker API: TensorBoard, Weights & Biases, MLflow.

``log.trackers`` picks them; Accelerate starts them on rank 0 only (``Accelerator(log_with=...)``,
``init_trackers``, ``log``, ``get_tracker``). Where they write comes from the standard environment
only (``WANDB_MODE``, ``WANDB_DIR``, ``WANDB_PROJECT``, ``MLFLOW_TRACKING_URI``,
``MLFLOW_EXPERIMENT_NAME``), never from credentials in a config.

A run is named after its run folder, and the tracker run ids are kept in that folder
(:data:`IDS_NAME`): a resumed run (a preempted, requeued job) continues the same W&B and MLflow
run, so it is one curve. ``log.group`` (set by ``awm sweep`` to the sweep's name) is the W&B
group and the MLflow experiment, so a sweep's points are runs side by side in the trackers' own
comparison views.
"""

from __future__ import annotations

import importlib.util
import json
import netrc
import os
import secrets
import string
from pathlib import Path
from typing import TYPE_CHECKING, Any

from awm.errors import ConfigError
from awm.imageio import atomic_write_text

if TYPE_CHECKING:
    import torch

    from awm.train.config import TrainConfig

IDS_NAME = "trackers.json"
DEFAULT_PROJECT = "awm"
OFFLINE_WANDB = ("offline", "dryrun", "disabled")


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config -> ``{"a.b.c": value}``; what every tracker takes as parameters (lists, None and
    empty mappings as their JSON text: TensorBoard's hparams and MLflow's params are scalars)."""
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(flatten(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = json.dumps(v, default=str)
    return out


def preflight(names: list[str]) -> None:
    """Fail at start, in one line, when a tracker asked for cannot work: its package is not
    installed, the MLflow server does not answer, or W&B is online without credentials."""
    missing = [n for n in names if importlib.util.find_spec(n) is None]
    if missing:
        raise ConfigError("log.trackers", names, f"trackers whose package is installed; missing: "
                          f"{', '.join(missing)} (pip install 'awm[track]')")
    if "mlflow" in names:
        _check_mlflow_server()
    if "wandb" in names:
        _check_wandb_login()


def _check_mlflow_server() -> None:
    import requests

    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if not uri.startswith(("http://", "https://")):
        return  # a local store (file/sqlite), or MLflow's default: nothing to reach
    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10).raise_for_status()
    except requests.RequestException as e:
        raise ConfigError("log.trackers", "mlflow", f"an MLflow server that answers at MLFLOW_TRACKING_URI={uri} "
                          f"({type(e).__name__}); start it, fix the variable, or drop mlflow") from None


def _check_wandb_login() -> None:
    if os.environ.get("WANDB_MODE", "online") in OFFLINE_WANDB or os.environ.get("WANDB_API_KEY"):
        return
    host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("://")[-1].split("/")[0]
    try:
        found = netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        found = False
    if not found:
        raise ConfigError("log.trackers", "wandb", f"W&B credentials for {host} (wandb login, or WANDB_API_KEY), "
                          "or WANDB_MODE=offline to write runs to sync later")


def _ids(run_dir: Path) -> dict[str, str]:
    p = run_dir / IDS_NAME
    return json.loads(p.read_text()) if p.is_file() else {}


def build(cfg: TrainConfig, resuming: bool) -> list[Any]:
    """Accelerate's tracker objects for ``Accelerator(log_with=...)``; nothing starts until
    ``init_trackers``. ``resuming``: continue the tracker runs whose ids the run folder holds."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    run_dir, name, group = cfg.run_dir, cfg.run_dir.name, cfg.log.group
    ids = _ids(run_dir) if resuming else {}
    out: list[Any] = []
    for tracker in cfg.log.trackers:
        if tracker == "tensorboard":
            out.append(TensorBoardTracker("tb", run_dir))  # <run>/tb, where AWM always wrote it
        elif tracker == "wandb":
            kw: dict[str, Any] = {"name": name, "group": group, "id": ids.get("wandb") or _wandb_id(),
                                  "resume": "allow"}
            if not os.environ.get("WANDB_DIR"):
                kw["dir"] = str(run_dir)
            out.append(WandBTracker(os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), **kw))
        elif tracker == "mlflow":
            t = MLflowTracker(os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_PROJECT), run_name=name,
                              run_id=ids.get("mlflow"))
            if group:
                t.experiment_name = group  # a sweep's points share its experiment, whatever the environment says
            out.append(t)
    return out


def _wandb_id() -> str:
    """A new W&B run id (W&B's alphabet, base 36), chosen here so the run folder can keep it."""
    return "".join(secrets.choice(string.ascii_lowercase + string.digits) for _ in range(8))


def start(acc: Any, cfg: TrainConfig, config: dict[str, Any]) -> None:
    """Start the run's trackers (rank 0), log the flattened config to each new tracker run, and
    keep the run ids in the run folder.

    A continued tracker run gets no parameters again: MLflow refuses to change one (``steps``
    raised to train further), and its first start logged them.
    """
    if not acc.log_with:
        return
    acc.init_trackers(cfg.run_dir.name)
    if not acc.is_main_process:
        return
    before, flat, ids = _ids(cfg.run_dir), flatten(config), {}
    for t in acc.trackers:
        if t.name == "wandb":
            ids["wandb"] = t.run.id
        elif t.name == "mlflow":
            ids["mlflow"] = t.active_run.info.run_id
        continued = (before.get(t.name) == ids.get(t.name) if t.name in ids
                     else (cfg.run_dir / "tb").is_dir() and bool(list((cfg.run_dir / "tb").glob("*/hparams.yml"))))
        if not continued:
            t.store_init_configuration(flat)
    if ids:
        atomic_write_text(cfg.run_dir / IDS_NAME, json.dumps(ids))


def log_image(acc: Any, tag: str, grid: torch.Tensor, step: int) -> None:
    """The validation grid (CHW in [0, 1]) to every tracker that stores images."""
    import numpy as np

    hwc = (grid.clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    for t in acc.trackers:
        if t.name == "tensorboard":
            t.tracker.add_image(tag, grid, step)
        elif t.name == "wandb":
            t.log_images({tag: [hwc]}, step=step)
        elif t.name == "mlflow":
            import mlflow

            mlflow.log_image(hwc, key=tag.replace("/", "_"), step=step)


def finish(acc: Any) -> None:
    """End the tracker runs (rank 0: W&B and MLflow runs marked finished, files flushed).

    Not ``Accelerator.end_training``: that also destroys the process group, which the caller
    (or the sweep point around it) still uses.
    """
    for t in acc.trackers:
        t.finish()
    acc.trackers = []


def log_final(run_dir: Path, trackers: list[str], params: dict[str, Any], metrics: dict[str, float],
              step: int) -> None:
    """Add a finished run's results (a sweep point's eval metrics and cost) to its W&B/MLflow runs,
    reopened by the ids in its folder.

    One process (the point's rank 0), after training ended its trackers and Accelerate's state:
    the trackers' own clients, each run closed again whatever happens (a run left active in
    this process would capture the next point's training).
    """
    ids = _ids(run_dir)
    if "mlflow" in trackers and "mlflow" in ids:
        import mlflow

        with mlflow.start_run(run_id=ids["mlflow"]):
            mlflow.log_params(params)
            mlflow.log_metrics(metrics, step=step)
    if "wandb" in trackers and "wandb" in ids:
        import wandb

        kw: dict[str, Any] = {} if os.environ.get("WANDB_DIR") else {"dir": str(run_dir)}
        with wandb.init(project=os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT), id=ids["wandb"], resume="allow",
                        **kw) as run:
            run.config.update(params, allow_val_change=True)
            run.summary.update(metrics)  # what W&B's run tables and parallel coordinates compare
