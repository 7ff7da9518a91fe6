"""``awm eval``: models and baselines on eval pair shards -> one comparison table.

Works in one process or under torchrun / accelerate launch / awm submit. Every sample has a
global index (its position in ``index.json``'s shard list); rank r takes the indices
r, r+N, r+2N, ... (awm.dist.Part), upscales the LR with each model (tiled, awm.upscale.infer),
scores the result against HR and sends its rows to rank 0, which checks that every index
arrived exactly once, orders rows by index and model, and writes per_image.csv,
summary.json / summary.md, figures/ (a bar chart per metric and a grid of crops:
LR | each model | HR) and eval_stats.json.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import textwrap
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from awm import dist
from awm.config import add_dataclass_arguments, check, from_args, save_beside
from awm.errors import ConfigError
from awm.eval import metrics, results
from awm.imageio import ImageError, atomic_write_bytes, atomic_write_text
from awm.log import get_logger, progress
from awm.shardio.cache import local_path
from awm.shardio.locations import resolve
from awm.shardio.members import group_members, tar_members
from awm.shardio.read import iter_tar

log = get_logger("awm.evaluate")
BASELINES = ("bicubic", "lanczos")


@dataclass
class EvalConfig:
    data: str = field(default="", metadata={
        "help": "eval pair shards: a folder with index.json, an index.json URL, a brace pattern of .tar URLs "
                "or pipe:COMMAND (awm.shardio)", "metavar": "LOCATION"})
    scale: int = field(default=2, metadata={"help": "upscaling factor (an LR scale in the shards)"})
    models: list[str] = field(default_factory=lambda: list(BASELINES), metadata={
        "help": "bicubic, lanczos, checkpoint dirs, run dirs or foreign .pth/.safetensors (comma-separated)"})
    metrics: list[str] = field(default_factory=lambda: list(metrics.DEFAULT_FULL_REFERENCE), metadata={
        "help": "pyiqa metric names or niqe_anime (comma-separated)"})
    out: str = field(default="eval", metadata={"help": "output folder"})
    limit: int = field(default=0, metadata={"help": "only the first N samples (0: all)"})
    tile: int = field(default=512, metadata={"help": "LR tile size for model inference (0: whole image)"})
    tile_pad: int = field(default=32, metadata={"help": "overlap around each tile"})
    precision: Literal["fp32", "bf16", "fp16"] = field(default="fp32", metadata={"help": "model precision"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    crop: int | None = field(default=None, metadata={
        "help": "score a centred HR crop of N px per image, as training's validation.crop (unset: whole images)"})
    grid: int = field(default=4, metadata={"help": "samples shown in the comparison grid"})
    grid_crop: int = field(default=160, metadata={"help": "HR crop size in the comparison grid"})
    download: bool = field(default=False, metadata={
        "help": "let pyiqa download missing metric weights (off: fail fast, offline nodes)"})
    niqe_model: str | None = field(default=None, metadata={
        "help": "pristine model .mat for niqe_anime (default: the packaged one)"})

    def __post_init__(self) -> None:
        check(bool(self.data), "data", self.data, "a folder of eval shards")
        check(self.scale in (1, 2, 3, 4, 8), "scale", self.scale, "1, 2, 3, 4 or 8")
        check(bool(self.models), "models", self.models, "at least one model")
        check(bool(self.metrics), "metrics", self.metrics, "at least one metric")
        check(self.limit >= 0, "limit", self.limit, ">= 0")
        check(self.tile == 0 or self.tile >= 16, "tile", self.tile, "0 or >= 16")
        check(self.crop is None or self.crop >= 16, "crop", self.crop, ">= 16, or unset for whole images")
        check(self.grid_crop >= 16, "grid_crop", self.grid_crop, ">= 16")


class Upscaler:
    """A baseline interpolation or a loaded checkpoint behind one call: LR RGB uint8 -> SR."""

    def __init__(self, name: str, scale: int, cfg: EvalConfig, device: str):
        self.name, self.scale, self.cfg, self.device = name, scale, cfg, device
        self.model = None
        if name not in BASELINES:
            from awm.models.checkpoint import load_model

            if not Path(name).exists():
                raise ConfigError("models", name, f"{', '.join(BASELINES)} or an existing checkpoint path")
            self.model = load_model(name, device=device)
            if self.model.scale != scale:
                raise ConfigError("models", name, f"a model of scale {scale} (this one is x{self.model.scale})")

    def __call__(self, lr: np.ndarray) -> np.ndarray:
        if self.name == "bicubic":
            from awm.eval.psnr_ssim import bicubic

            return bicubic(lr, self.scale)
        if self.model is None:
            from PIL import Image

            h, w = lr.shape[:2]
            return np.array(Image.fromarray(lr).resize((w * self.scale, h * self.scale), Image.Resampling.LANCZOS))
        from awm.upscale.infer import upscale_array

        return upscale_array(self.model, lr, tile=self.cfg.tile, tile_pad=self.cfg.tile_pad,
                             precision=self.cfg.precision, device=self.device)


def iter_samples(data: str | Path, limit: int = 0):
    """(global index, sample) over the shards in index order; index = position in the set.

    A shard holding fewer samples than its index entry says stops the run: the coverage check
    would otherwise report the missing ones as lost by the ranks.
    """
    gi = 0
    for ref in resolve(data).counted().shards:
        first = gi
        for sample in iter_tar(ref):
            if limit and gi >= limit:
                return
            yield gi, sample
            gi += 1
        if gi - first != ref.nsamples:
            raise RuntimeError(f"{ref.url}: {gi - first} samples, the index says {ref.nsamples}")


def check_data(cfg: EvalConfig) -> Counter:
    """Before any model or metric loads: the shards exist and some sample holds HR and
    ``lr_x{scale}`` (tar headers only). Returns the samples' counts by reason; none usable (raw
    shards, another scale) is an error naming those counts."""
    try:
        refs = resolve(cfg.data).shards
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError("data", cfg.data, f"a location of eval pair shards ({e})") from None
    reasons: Counter = Counter()
    held: set[str] = set()
    for ref in refs:
        for _, members in group_members(tar_members(local_path(ref)), ref.url):
            if cfg.limit and sum(reasons.values()) >= cfg.limit:
                break
            lrs = {m.split(".")[0] for m in members if m.startswith("lr_x")}
            held |= lrs
            hr = any(m.split(".")[0] == "hr" for m in members)
            reasons["ok" if hr and f"lr_x{cfg.scale}" in lrs else "no_hr" if not hr else f"no_lr_x{cfg.scale}"] += 1
    if not reasons["ok"]:
        raw = any(r.name.startswith("raw-") for r in refs)
        hint = ("raw-*.tar shards hold originals only (awm ingest/crawl output)" if raw else
                f"the samples hold {', '.join(sorted(held)) or 'no LR'}")
        raise ValueError(f"none of the {sum(reasons.values())} samples at {cfg.data} can be scored at x{cfg.scale} "
                         f"({dict(reasons) or 'no samples'}): {hint}; make eval pairs with "
                         f"awm shard --split eval --scales {cfg.scale}")
    return reasons


def count_samples(data: str | Path, limit: int = 0) -> int:
    n = sum(s.nsamples for s in resolve(data).counted().shards)
    return min(n, limit) if limit else n


def decode_pair(sample: dict, scale: int, crop: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) as RGB uint8, the order of the training loader's decoder (which this one wraps),
    cropped as validation crops (``crop``); an eval sample must have its LR: ImageError with a skip
    reason otherwise."""
    from awm.data.loader import center_crop
    from awm.data.loader import decode_pair as decode_hr_lr
    hr, lr = decode_hr_lr(sample, scale, need_lr=True)
    if lr is None:
        raise ImageError(f"no_lr_x{scale}")
    return center_crop(hr, lr, scale, crop)


def _crops(lr: np.ndarray, hr: np.ndarray, srs: dict[str, np.ndarray], scale: int, crop: int) -> dict:
    """A crop at the HR's busiest spot (largest gradient energy), same region in LR and every SR."""
    c = min(crop - crop % scale, hr.shape[0] - hr.shape[0] % scale, hr.shape[1] - hr.shape[1] % scale)
    gray = hr.mean(axis=2)
    energy = np.abs(np.diff(gray, axis=0))[:, :-1] + np.abs(np.diff(gray, axis=1))[:-1]
    step = max(c // 2, scale)
    best, y0, x0 = -1.0, 0, 0
    for y in range(0, hr.shape[0] - c + 1, step):
        for x in range(0, hr.shape[1] - c + 1, step):
            e = float(energy[y:y + c, x:x + c].sum())
            if e > best:
                best, y0, x0 = e, y, x
    y0, x0 = y0 - y0 % scale, x0 - x0 % scale
    lr_c = lr[y0 // scale:(y0 + c) // scale, x0 // scale:(x0 + c) // scale]
    out = {"LR": np.repeat(np.repeat(lr_c, scale, axis=0), scale, axis=1)}
    out.update({k: v[y0:y0 + c, x0:x0 + c] for k, v in srs.items()})
    out["HR"] = hr[y0:y0 + c, x0:x0 + c]
    return out


def comparison_grid(crops: list[tuple[str, dict]], path: Path) -> Path:
    """Rows of crops (one per sample): LR (nearest) | each model | HR."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt


    cols = list(crops[0][1])
    fig, axes = plt.subplots(len(crops), len(cols), figsize=(2.2 * len(cols), 2.3 * len(crops)), dpi=100,
                             squeeze=False)
    for r, (sid, cs) in enumerate(crops):
        for c, name in enumerate(cols):
            ax = axes[r][c]
            ax.imshow(cs[name], interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:  # a long name (a release's) wrapped onto lines that fit the column, never cut
                ax.set_title("\n".join(textwrap.wrap(name, 18, break_on_hyphens=True)) or name, fontsize=8)
            if c == 0:
                ax.set_ylabel(sid, fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return atomic_write_bytes(path, buf.getvalue())


def image_name(sample: dict) -> str:
    """What a person calls a sample's picture: its shard json's ``name`` (the source file's path, or
    the crawled post), with a tile's position; the sample key for shards written before names."""
    try:
        meta = json.loads(sample.get("json") or b"{}")
    except ValueError:
        meta = {}
    name = (meta.get("name") if isinstance(meta, dict) else None) or sample["__key__"]
    tile = meta.get("tile") if isinstance(meta, dict) else None
    return f"{name} @{tile[0]},{tile[1]}" if isinstance(tile, list) and len(tile) >= 2 else str(name)


def score_rank(cfg: EvalConfig, d: dist.DistEnv) -> dict:
    """This rank's rows, grid crops, skip reasons and timing."""
    from awm.upscale.tiling import device_scope

    device = dist.resolve_device(cfg.device)
    with device_scope(device):  # cuda:N: every stream, event and buffer on GPU N, no context on GPU 0
        return _score_rank(cfg, d, device)


def _score_rank(cfg: EvalConfig, d: dist.DistEnv, device: str) -> dict:
    upscalers = [Upscaler(m, cfg.scale, cfg, device) for m in cfg.models]
    mets = metrics.create_all(cfg.metrics, device, cfg.download, cfg.niqe_model, border=cfg.scale)
    n = count_samples(cfg.data, cfg.limit)
    mine = set(d.part.share(range(n)))
    rows, crops, skipped, seen = [], [], Counter(), []
    t_up, t_metric, t0 = 0.0, 0.0, time.perf_counter()
    samples = (s for s in iter_samples(cfg.data, cfg.limit) if s[0] in mine)
    for gi, sample in progress(samples, total=len(mine), desc="eval", unit="img"):
        seen.append(gi)
        try:
            hr, lr = decode_pair(sample, cfg.scale, cfg.crop)
        except ImageError as e:
            skipped[e.reason] += 1
            continue
        srs = {}
        for up in upscalers:
            t = time.perf_counter()
            sr = srs[up.name] = up(lr)
            t_up += time.perf_counter() - t
            t = time.perf_counter()
            row = {"index": gi, "model": up.name, "image": image_name(sample), "id": sample["__key__"]}
            for m in mets:
                row[m.name] = m(sr, hr if m.full_reference else None,
                                image=f"sample {sample['__key__']} ({up.name})")
            t_metric += time.perf_counter() - t
            rows.append(row)
        if gi < cfg.grid:
            crops.append((gi, sample["__key__"], _crops(lr, hr, srs, cfg.scale, cfg.grid_crop)))
    return {"rows": rows, "crops": crops, "skipped": dict(skipped), "seen": seen,
            "lower_better": {m.name: m.lower_better for m in mets},
            "timing": {"rank": d.rank, "seconds": time.perf_counter() - t0, "upscale_s": t_up,
                       "metrics_s": t_metric, "samples": len(seen)}}


def merge(parts: list[dict], n: int, model_order: list[str]) -> tuple[list[dict], Counter]:
    """All ranks' rows in (index, model) order; raises if a sample was lost or seen twice."""
    seen = Counter(i for p in parts for i in p["seen"])
    dup = sorted(i for i, c in seen.items() if c > 1)
    lost = sorted(set(range(n)) - set(seen))
    if dup or lost:
        raise RuntimeError(f"sample coverage broken: seen twice {dup[:10]}, lost {lost[:10]}")
    order = {m: k for k, m in enumerate(model_order)}
    rows = sorted((r for p in parts for r in p["rows"]), key=lambda r: (r["index"], order[r["model"]]))
    skipped = Counter()
    for p in parts:
        skipped.update(p["skipped"])
    return rows, skipped


def write_outputs(cfg: EvalConfig, parts: list[dict], world: int) -> Path:
    out = Path(cfg.out)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    n = count_samples(cfg.data, cfg.limit)
    rows, skipped = merge(parts, n, cfg.models)
    lower = parts[0]["lower_better"]
    results.write_csv(out / "per_image.csv", rows, ["model", "image", "id", "index", *cfg.metrics])
    summary = results.summarize(rows, cfg.metrics, "model")
    paths = {m: str(Path(m).resolve()) for m in cfg.models if m not in BASELINES}
    extra = {"title": f"Evaluation x{cfg.scale} on {cfg.data}", "data": cfg.data, "scale": cfg.scale,
             "samples": n, "scored": len({r["index"] for r in rows}), "skipped": dict(skipped),
             "crop": cfg.crop, "model_paths": paths}
    results.write_summary(out, summary, cfg.metrics, lower, extra, "model")
    link_runs(paths, out / "summary.json")
    results.bar_charts(summary, cfg.metrics, lower, out / "figures")
    crops = sorted((c for p in parts for c in p["crops"]), key=lambda c: c[0])
    if crops:
        comparison_grid([(sid, cs) for _, sid, cs in crops], out / "figures" / "grid.png")
    timing = [p["timing"] for p in parts]
    total = max(t["seconds"] for t in timing)
    atomic_write_text(out / "eval_stats.json", json.dumps(
        {"world_size": world, "samples": n, "skipped": dict(skipped), "seconds": total,
         "images_per_s": n / total if total else None, "ranks": timing}, indent=1))
    return out


EVALS_FILE = "evals.json"


def run_folder(model_path: str | Path) -> Path | None:
    """The training run a model path belongs to (the run folder, or one of its checkpoints), if any."""
    p = Path(model_path)
    for d in (p, p.parent.parent):  # runs/<name>, runs/<name>/checkpoints/<which>
        if (d / "config.yaml").is_file() and (d / "checkpoints").is_dir():
            return d
    return None


def link_runs(model_paths: dict[str, str], summary: Path) -> None:
    """Note ``summary`` in each evaluated run's ``evals.json``, where ``awm report`` and ``awm export``
    look (:func:`run_evals`): the results are found wherever ``--out`` put them. Each note holds the
    summary's path relative to the run folder (a run copied or moved together with its results, or
    read from another cwd, still finds them), its absolute path (a run moved without them) and the
    run's model name in it. A run folder that cannot be written is only logged."""
    target = summary.resolve()
    for name, path in model_paths.items():
        run = run_folder(path)
        if run is None:
            continue
        record = run / EVALS_FILE
        try:
            notes = [n for n in _notes(record) if n.get("absolute") != str(target)]
            notes.append({"summary": os.path.relpath(target, run.resolve()), "absolute": str(target), "model": name})
            atomic_write_text(record, json.dumps({"summaries": notes}, indent=1))
        except (OSError, ValueError) as e:
            log.warning("could not note this evaluation in %s (awm report/export will not find it there): %s",
                        record, e)


def _notes(record: Path) -> list[dict]:
    """The notes of an ``evals.json`` (older ones held bare absolute paths)."""
    if not record.is_file():
        return []
    return [n if isinstance(n, dict) else {"absolute": str(n)} for n in json.loads(record.read_text()).get(
        "summaries", [])]


def run_evals(run: Path) -> tuple[dict, str, Path] | None:
    """The run's newest ``awm eval`` summary, the run's model name in it and its path, or None.

    Looked for in the run's ``evals.json`` (each note relative to the run folder first, then
    absolute) and among the summary.json files inside the run folder; one function for ``awm
    report`` and ``awm export``, so both quote the same evaluation."""
    found: dict[Path, str | None] = {}
    for note in _notes(run / EVALS_FILE):
        for p in ([run / note["summary"]] if note.get("summary") else []) + [Path(note.get("absolute", ""))]:
            if p.name and p.is_file():
                found.setdefault(p.resolve(), note.get("model"))
                break
    for p in run.rglob("summary.json"):
        found.setdefault(p.resolve(), None)
    for path in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True):
        doc = json.loads(path.read_text())
        models = [m for m in doc.get("models", {}) if m not in BASELINES]
        noted = found[path]
        if noted in models:
            return doc, noted, path
        where = doc.get("model_paths") or {}
        mine = [m for m in models if m in where and (r := run_folder(where[m])) and r.resolve() == run.resolve()]
        if not mine and not where and run.resolve() in path.parents:
            mine = models[:1]
        if mine:
            return doc, mine[0], path
    return None


def evaluate(cfg: EvalConfig) -> Path | None:
    """Run the evaluation on this rank; rank 0 writes and returns the output folder."""
    d = dist.init()
    check_data(cfg)
    metrics.check(cfg.metrics, cfg.download)
    part = score_rank(cfg, d)
    parts = dist.gather_objects(part)
    if not any(p["rows"] for p in parts):  # every rank sees every part: all stop alike, nothing written
        skipped = sum((Counter(p["skipped"]) for p in parts), Counter())
        raise ValueError(f"no sample of {cfg.data} was scored at x{cfg.scale} (skipped: {dict(skipped)})")
    out = write_outputs(cfg, parts, d.world_size) if d.is_main else None
    dist.barrier()
    if out:
        log.info("wrote %s (per_image.csv, summary.json, summary.md, figures/)", out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, EvalConfig)


def run(args: argparse.Namespace) -> int:
    cfg = from_args(EvalConfig, args)
    try:
        evaluate(cfg)
        save_beside(cfg, cfg.out, "eval")
    finally:
        dist.destroy()
    return 0
