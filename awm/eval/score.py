"""``awm score``: no-reference quality of any images (e.g. another upscaler's outputs).

Same outputs as ``awm eval`` minus the model dimension: per_image.csv (input, image, each
metric), summary.json / summary.md grouped by the input argument the image came from (so
``awm score outA/ outB/`` compares two folders), figures/ (a bar chart per metric). Sharded the
same way: image k of the sorted list goes to rank k mod N; rank 0 gathers and checks coverage.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from awm import dist
from awm.config import add_dataclass_arguments, check, from_args, save_beside
from awm.eval import metrics, results
from awm.eval.evaluate import merge
from awm.imageio import ImageError, atomic_write_text, list_images, read_image
from awm.log import get_logger, progress

log = get_logger("awm.score")


@dataclass
class ScoreConfig:
    inputs: list[str] = field(default_factory=list, metadata={"help": "images or folders"})
    metrics: list[str] = field(default_factory=lambda: list(metrics.DEFAULT_NO_REFERENCE), metadata={
        "help": "no-reference pyiqa metric names or niqe_anime (comma-separated)"})
    out: str = field(default="scores", metadata={"help": "output folder"})
    device: str = field(default="auto", metadata={"help": "auto, cpu, cuda, cuda:N"})
    download: bool = field(default=False, metadata={
        "help": "let pyiqa download missing metric weights (off: fail fast, offline nodes)"})
    niqe_model: str | None = field(default=None, metadata={
        "help": "pristine model .mat for niqe_anime (default: the packaged one)"})

    def __post_init__(self) -> None:
        check(bool(self.inputs), "inputs", self.inputs, "at least one image or folder")
        check(bool(self.metrics), "metrics", self.metrics, "at least one metric")


def list_inputs(inputs: list[str]) -> list[tuple[str, Path]]:
    """(input argument, image path) for every image, in a deterministic order."""
    found = []
    for arg in inputs:
        p = Path(arg)
        if not p.exists():
            raise FileNotFoundError(f"{arg}: no such file or folder")
        found += [(arg, img) for img in list_images([p])]
    if not found:
        raise FileNotFoundError(f"no images found in {', '.join(inputs)}")
    return found


def score_rank(cfg: ScoreConfig, items: list[tuple[str, Path]], d: dist.DistEnv) -> dict:
    """This rank's rows, skip reasons and timing, with every CUDA object on the chosen device."""
    from awm.upscale.tiling import device_scope

    device = dist.resolve_device(cfg.device)
    with device_scope(device):  # cuda:N: streams and buffers on GPU N, no context on GPU 0
        return _score_rank(cfg, items, d, device)


def _score_rank(cfg: ScoreConfig, items: list[tuple[str, Path]], d: dist.DistEnv, device: str) -> dict:
    mets = metrics.create_all(cfg.metrics, device, cfg.download, cfg.niqe_model)
    full_ref = [m.name for m in mets if m.full_reference]
    if full_ref:
        raise ValueError(f"{', '.join(full_ref)} need a reference image; awm score takes no-reference metrics "
                         "(use awm eval for full-reference ones)")
    mine = list(d.part.share(range(len(items))))
    rows, skipped, t0 = [], Counter(), time.perf_counter()
    for i in progress(mine, total=len(mine), desc="score", unit="img"):
        source, path = items[i]
        try:
            img = read_image(path)
        except ImageError as e:
            skipped[e.reason] += 1
            continue
        row = {"index": i, "input": source, "image": str(path)}
        for m in mets:
            row[m.name] = m(img, image=str(path))
        rows.append(row)
    return {"rows": rows, "seen": mine, "skipped": dict(skipped),
            "lower_better": {m.name: m.lower_better for m in mets},
            "timing": {"rank": d.rank, "seconds": time.perf_counter() - t0, "images": len(mine)}}


def write_outputs(cfg: ScoreConfig, items: list, parts: list[dict], world: int) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for p in parts:
        for r in p["rows"]:
            r["model"] = ""
    rows, skipped = merge(parts, len(items), [""])
    for r in rows:
        del r["model"]
    lower = parts[0]["lower_better"]
    results.write_csv(out / "per_image.csv", rows, ["input", "image", "index", *cfg.metrics])
    summary = results.summarize(rows, cfg.metrics, "input")
    results.write_summary(out, summary, cfg.metrics, lower,
                          {"title": "No-reference scores", "images": len(items), "skipped": dict(skipped)},
                          "input")
    results.bar_charts(summary, cfg.metrics, lower, out / "figures")
    total = max(p["timing"]["seconds"] for p in parts)
    atomic_write_text(out / "score_stats.json", json.dumps(
        {"world_size": world, "images": len(items), "skipped": dict(skipped), "seconds": total,
         "ranks": [p["timing"] for p in parts]}, indent=1))
    return out


def score(cfg: ScoreConfig) -> Path | None:
    """Score on this rank; rank 0 writes and returns the output folder."""
    d = dist.init()
    metrics.check(cfg.metrics, cfg.download)
    items = list_inputs(cfg.inputs)
    parts = dist.gather_objects(score_rank(cfg, items, d))
    out = write_outputs(cfg, items, parts, d.world_size) if d.is_main else None
    dist.barrier()
    if out:
        log.info("wrote %s (per_image.csv, summary.json, summary.md, figures/)", out)
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", metavar="IMAGES_OR_DIRS", help="images or folders to score")
    add_dataclass_arguments(parser, ScoreConfig, skip=("inputs",))


def run(args: argparse.Namespace) -> int:
    cfg = from_args(ScoreConfig, args)
    try:
        score(cfg)
        save_beside(cfg, cfg.out, "score")
    finally:
        dist.destroy()
    return 0
