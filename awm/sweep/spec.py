"""A sweep specification (YAML) and the points it stands for.

    name: loss-vs-data
    train: {config: tiny-cpu, overrides: [steps=2000, data.train=shards/train]}
    eval: {name: demo-eval, data: shards/eval, metrics: [psnry, ssim]}
    search:
      sampler: grid            # or random, with trials: N (the budget) and seed
      space:
        loss.pixel.weight: [1.0, 0.5]           # a list: these values (grid or random choice)
        data.limit: [200, 2000]
        optim.lr_g: {low: 1.0e-4, high: 1.0e-3, log: true}   # a range: random search only

Points come from optuna's samplers (``GridSampler``, ``RandomSampler`` with the seed), so the
same spec always gives the same points. A point is its config delta (swept key -> value); its
id is a hash of that delta, independent of key order and of where it falls in the sampling
order, so a point keeps its id (and its run folder) when the space grows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from awm import config as cfgmod
from awm.config import check
from awm.errors import ConfigError
from awm.eval.metrics import DEFAULT_FULL_REFERENCE
from awm.log import get_logger

if TYPE_CHECKING:
    from awm.train.config import TrainConfig

log = get_logger("awm.sweep")

# A sweep folder's files (awm.sweep.sweep writes them, awm.sweep.report reads them).
SPEC_NAME, POINTS_NAME, POINT_NAME = "spec.yaml", "points.json", "point.json"
RANGE_KEYS = ("low", "high", "log", "step")
# The keys a sweep sets itself on every point: sweeping them would fight the sweep's own layout.
RESERVED = ("name", "runs", "checkpoint.resume")


@dataclass
class TrainSpec:
    config: str = field(default="tiny-cpu", metadata={"help": "recipe name or YAML file every point starts from"})
    overrides: list[str] = field(default_factory=list, metadata={
        "help": "key=value overrides shared by every point (data.train=..., steps=...)"})


@dataclass
class EvalSpec:
    name: str = field(default="", metadata={"help": "label of the eval set in the report (default: its folder name)"})
    data: str = field(default="", metadata={
        "help": "eval pair shards every point is scored on (default: the training config's data.eval)"})
    checkpoint: Literal["last", "best"] = field(default="last", metadata={
        "help": "which checkpoint of a point's run is evaluated"})
    metrics: list[str] = field(default_factory=lambda: list(DEFAULT_FULL_REFERENCE), metadata={
        "help": "metric names (awm eval --metrics)"})
    limit: int = field(default=0, metadata={"help": "only the first N eval samples (0: all)"})
    tile: int = field(default=512, metadata={"help": "LR tile size for inference (0: whole image)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda (each rank its own GPU)"})

    def __post_init__(self) -> None:
        check(bool(self.metrics), "eval.metrics", self.metrics, "at least one metric")
        check(self.limit >= 0, "eval.limit", self.limit, ">= 0")


@dataclass
class SearchSpec:
    sampler: Literal["grid", "random"] = field(default="grid", metadata={
        "help": "grid: every combination of the listed values; random: 'trials' draws"})
    space: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "dotted train config key -> a list of values, or {low, high, log, step} (random only)"})
    trials: int = field(default=0, metadata={
        "help": "the budget: points to run (random: required; grid: 0 = the whole grid, N = N of its points)"})
    seed: int = field(default=0, metadata={"help": "sampler seed (random draws, grid order under a budget)"})

    def __post_init__(self) -> None:
        check(bool(self.space), "search.space", self.space, "at least one key to sweep")
        check(self.trials >= 0, "search.trials", self.trials, ">= 0")
        check(self.sampler == "grid" or self.trials >= 1, "search.trials", self.trials,
              ">= 1 for the random sampler (its budget)")
        for key, values in self.space.items():
            check(key not in RESERVED, f"search.space.{key}", values,
                  f"a key other than {', '.join(RESERVED)} (the sweep sets those per point)")
            if isinstance(values, dict):
                check(self.sampler == "random", f"search.space.{key}", values,
                      "a list of values: a grid needs them listed (ranges are for the random sampler)")
                _check_range(key, values)
                continue
            check(isinstance(values, list) and len(values) >= 1, f"search.space.{key}", values,
                  "a non-empty list of values or a {low, high, log, step} range")
            for v in values:
                check(v is None or isinstance(v, (bool, int, float, str)), f"search.space.{key}", v,
                      "scalar values (numbers, strings, booleans, null)")


def _check_range(key: str, r: dict[str, Any]) -> None:
    where = f"search.space.{key}"
    check(set(r) <= set(RANGE_KEYS) and {"low", "high"} <= set(r), where, r,
          "a mapping with low and high (and optionally log, step)")
    low, high = r["low"], r["high"]
    check(all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in (low, high)) and low <= high,
          where, r, "numbers low <= high")
    check(not r.get("log") or low > 0, where, r, "low > 0 with log: true")
    check(not (r.get("log") and r.get("step")), where, r, "either log or step, not both")


@dataclass
class SweepSpec:
    name: str = field(default="sweep", metadata={"help": "sweep name"})
    out: str = field(default="", metadata={"help": "sweep folder (default: sweeps/<name>)"})
    processes: int = field(default=1, metadata={
        "help": "processes per point: torchrun locally, tasks of one job on SLURM (one GPU each where there are GPUs)"})
    metric: str = field(default="", metadata={
        "help": "the quality metric of the report's Pareto chart (default: the first eval metric)"})
    train: TrainSpec = field(default_factory=TrainSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    search: SearchSpec = field(default_factory=SearchSpec)

    def __post_init__(self) -> None:
        check(self.processes >= 1, "processes", self.processes, ">= 1")
        check(not self.metric or self.metric in self.eval.metrics, "metric", self.metric,
              "one of eval.metrics: " + ", ".join(self.eval.metrics))

    @property
    def folder(self) -> Path:
        return Path(self.out or Path("sweeps") / self.name)

    @property
    def quality(self) -> str:
        return self.metric or self.eval.metrics[0]


@dataclass(frozen=True)
class Point:
    """One configuration of the sweep: its swept values and a stable id made from them."""

    delta: dict[str, Any]

    @property
    def id(self) -> str:
        blob = json.dumps(self.delta, sort_keys=True, default=str).encode()
        return "p" + hashlib.sha256(blob).hexdigest()[:8]


def load_spec(path: str | Path, out: str | None = None) -> SweepSpec:
    """The spec from YAML; ``out`` replaces its folder. Every point's train config is built here, so a
    misspelt key or a bad value stops the sweep before anything runs."""
    spec = cfgmod.load(SweepSpec, path)
    if out:
        spec = dataclasses.replace(spec, out=out)
    for p in points(spec):
        point_config(spec, p, Path("."))
    return spec


def point_config(spec: SweepSpec, point: Point, folder: Path) -> TrainConfig:
    """The point's training config: the spec's recipe and overrides, its run folder, then the swept
    values (set as typed values, not re-parsed text; a swept key replaces the same override)."""
    from awm.train.config import TrainConfig, load_config

    try:
        base = load_config(spec.train.config, list(spec.train.overrides)
                           + [f"runs={folder / 'runs'}", f"name={point.id}"])
        data = cfgmod.to_dict(base)
        data["log"]["group"] = data["log"]["group"] or spec.name  # one W&B group / MLflow experiment per sweep
        for key, value in point.delta.items():
            cfgmod.set_dotted(data, key, value)
        return cfgmod.from_dict(TrainConfig, data)
    except ConfigError as e:
        raise ConfigError(f"point {point.id} ({delta_text(point.delta)}): {e.key}", e.value, e.valid) from None


def delta_text(delta: dict[str, Any]) -> str:
    """``key=value, ...``: how logs and errors name a point besides its id."""
    return ", ".join(f"{k}={v}" for k, v in delta.items())


def points(spec: SweepSpec) -> list[Point]:
    """The sweep's points, in the sampler's order (the same every time for the same spec)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    s = spec.search
    if s.sampler == "grid":
        size = math.prod(len(v) for v in s.space.values())
        sampler = optuna.samplers.GridSampler(s.space, seed=s.seed)
        budget = min(size, s.trials or size)
    else:
        sampler, budget = optuna.samplers.RandomSampler(seed=s.seed), s.trials
    found: list[Point] = []

    def record(trial: optuna.Trial) -> float:
        found.append(Point({k: _suggest(trial, k, v) for k, v in s.space.items()}))
        return 0.0

    study = optuna.create_study(sampler=sampler)
    study.optimize(record, n_trials=budget)
    unique = list({p.id: p for p in found}.values())
    if len(unique) < len(found):  # random draws from short lists repeat: fewer points than the budget
        log.warning("search: %d of %d draws repeated an earlier point; %d points", len(found) - len(unique),
                    len(found), len(unique))
    return unique


def _suggest(trial: Any, key: str, values: Any) -> Any:
    if isinstance(values, list):
        return trial.suggest_categorical(key, values)
    low, high, step, log = values["low"], values["high"], values.get("step"), bool(values.get("log"))
    if all(isinstance(x, int) for x in (low, high)) and (step is None or isinstance(step, int)):
        return trial.suggest_int(key, low, high, step=step or 1, log=log)
    return trial.suggest_float(key, float(low), float(high), step=step, log=log)
