"""``awm split SRC --out DIR``: one folder of images -> ``DIR/train`` and ``DIR/eval`` with no
picture on both sides.

An eval set that shares pictures with training measures memory, not upscaling. Wallpaper
folders hold the same picture many times over: the same file twice, a re-encode, a resize, a
crop-free variant. So images are grouped first, by the hashes the crawl and ingest dedup with
(:mod:`awm.acquire.clean`: md5 for exact copies, the 64-bit DCT perceptual hash within
``--near-dup`` bits for near ones, transitively), and whole groups go to one side. Groups are
drawn in an order fixed by ``--seed`` and their content (not file names), until the eval side
holds ``--eval-fraction`` of the images; a group larger than what is left stays in train.

The sides are links (or copies, ``--copy``) keeping the relative paths, ready for
``awm ingest DIR/train`` and ``awm ingest DIR/eval``; ``DIR/split.json`` lists every file's side
and group (named by its best copy, the one ingest keeps: ``best_copy``), and the files skipped (unreadable
images, named by reason as everywhere: awm.skips).
A rerun into the same ``--out`` replaces what the previous run made there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from awm import skips
from awm.acquire import clean
from awm.config import add_dataclass_arguments, check, from_args, help_field, save_beside
from awm.errors import ConfigError
from awm.imageio import IMAGE_SUFFIXES, MAX_PIXELS_DEFAULT, ImageError, atomic_write_text, list_images
from awm.log import get_logger, progress

log = get_logger("awm.split")
MANIFEST = "split.json"


@dataclass
class SplitConfig:
    src: Path = help_field("folder of images (searched recursively)", default=Path("."), argument="SRC_DIR")
    out: Path = help_field("output folder: train/, eval/ and split.json", default=Path("data/split"))
    eval_fraction: float = help_field("share of the images that goes to eval (whole duplicate groups)",
                                      default=0.1)
    near_dup: int = help_field("perceptual-hash distance (bits of 64) that joins two images' groups; "
                               "-1: exact copies only", default=4)
    seed: int = help_field("orders the groups drawn for eval (same seed and images: same split)", default=0)
    copy: bool = help_field("copy the files instead of linking them", default=False)
    max_pixels: int = help_field("skip images with more pixels than this (checked before decoding)",
                                 default=MAX_PIXELS_DEFAULT)
    workers: int = help_field("threads reading and hashing", default=2)
    progress: bool = help_field("show a progress bar", default=True)

    def __post_init__(self) -> None:
        self.src, self.out = Path(self.src), Path(self.out)
        check(self.src.is_dir(), "src", str(self.src), "an existing folder")
        check(0.0 < self.eval_fraction < 1.0, "eval_fraction", self.eval_fraction, "0 < eval_fraction < 1")
        check(self.near_dup >= -1, "near_dup", self.near_dup, ">= -1 (-1: exact copies only)")
        check(1 <= self.workers <= 64, "workers", self.workers, "1..64")
        src, out = self.src.resolve(), self.out.resolve()
        check(not out.is_relative_to(src), "out", str(self.out), f"a folder outside src ({self.src})")


def _hash(path: Path, max_pixels: int) -> clean.Checked | str:
    """One image's hashes and what ranks its copies (size, format, JPEG quality), or its skip reason."""
    try:
        c = clean.check_image(path.read_bytes(), clean.allowed_formats(True), max_pixels, 1)
    except ImageError as e:
        return e.reason
    except OSError:
        return "unreadable"
    return c


def assign(groups: list[int], md5s: list[str], fraction: float, seed: int) -> list[str]:
    """'train' or 'eval' per image: whole groups, drawn in an order fixed by seed and content,
    until eval holds ``round(fraction * n)`` images (at least one when there are two groups)."""
    members: dict[int, list[int]] = {}
    for i, g in enumerate(groups):
        members.setdefault(g, []).append(i)
    order = sorted(members, key=lambda g: hashlib.sha256(f"{seed}:{min(md5s[i] for i in members[g])}"
                                                          .encode()).hexdigest())
    target = max(1, round(fraction * len(groups))) if len(members) > 1 else 0
    side = ["train"] * len(groups)
    taken = 0
    for g in order:
        if taken + len(members[g]) <= target:
            for i in members[g]:
                side[i] = "eval"
            taken += len(members[g])
    if taken == 0 and target:  # every group larger than the target: the smallest one
        for i in members[min(order, key=lambda g: len(members[g]))]:
            side[i] = "eval"
    return side


def best_copies(groups: list[int], checked: list[clean.Checked]) -> dict[int, int]:
    """{group: the member to keep} by :func:`clean.keep_rank`, the rule ingest and the merge keep by."""
    members: dict[int, list[int]] = {}
    for k, g in enumerate(groups):
        members.setdefault(g, []).append(k)
    rank = [clean.keep_rank(c.width, c.height, c.format, c.jpeg_quality, c.md5) for c in checked]
    return {g: min(ks, key=rank.__getitem__) for g, ks in members.items()}


def _check_out(out: Path) -> None:
    """``out`` is new or an earlier split's: never someone else's train/ or eval/."""
    if not (out / MANIFEST).is_file():
        for part in ("train", "eval"):
            if (out / part).exists() and any((out / part).iterdir()):
                raise ConfigError("out", str(out), f"a new folder or an earlier split's (it has {part}/ but no "
                                  f"{MANIFEST})")


def _clear_previous(out: Path) -> None:
    manifest = out / MANIFEST
    if manifest.is_file():
        for rel, entry in json.loads(manifest.read_text())["files"].items():
            (out / entry["split"] / rel).unlink(missing_ok=True)


def split(cfg: SplitConfig) -> dict[str, Any]:
    """Hash, group and place every image of ``cfg.src``; returns the manifest written to split.json.

    A split that would leave a side empty fails before anything is written (or an earlier split removed).
    """
    _check_out(cfg.out)
    paths = list_images([cfg.src])
    if not paths:
        raise ValueError(f"{cfg.src}: no image to split ({', '.join(IMAGE_SUFFIXES)}); nothing written")
    with ThreadPoolExecutor(cfg.workers) as pool:
        results = list(progress(pool.map(lambda p: _hash(p, cfg.max_pixels), paths), total=len(paths),
                                desc="split", unit="img", enabled=cfg.progress))
    rels = [p.relative_to(cfg.src).as_posix() for p in paths]
    ok = [i for i, r in enumerate(results) if isinstance(r, clean.Checked)]
    skipped: dict[str, int] = {}
    names: dict[str, list[str]] = {}
    for i, r in enumerate(results):
        if isinstance(r, str):
            skipped[r] = skipped.get(r, 0) + 1
            skips.add_name(names, r, rels[i])
    md5s = [results[i].md5 for i in ok]
    groups = clean.duplicate_groups(md5s, [results[i].phash for i in ok], cfg.near_dup)
    sides = assign(groups, md5s, cfg.eval_fraction, cfg.seed)
    if "eval" not in sides or "train" not in sides:
        raise ValueError(f"{cfg.src}: {len(ok)} usable images in {len(set(groups))} duplicate groups (skipped: "
                         f"{skipped or 'none'}) cannot fill both train and eval (eval needs images that are "
                         "not copies of training ones); nothing written")
    _clear_previous(cfg.out)
    best = best_copies(groups, [results[i] for i in ok])
    files = {}
    for k, i in enumerate(ok):
        dst = cfg.out / sides[k] / rels[i]
        dst.parent.mkdir(parents=True, exist_ok=True)
        if cfg.copy:
            shutil.copy2(paths[i], dst)
        else:
            os.symlink(paths[i].resolve(), dst)
        files[rels[i]] = {"split": sides[k], "group": rels[ok[best[groups[k]]]], "md5": md5s[k],
                          "best_copy": best[groups[k]] == k}
    manifest = {"src": str(cfg.src), "eval_fraction": cfg.eval_fraction, "near_dup": cfg.near_dup,
                "seed": cfg.seed, "images": len(ok), "groups": len(set(groups)),
                "train": sides.count("train"), "eval": sides.count("eval"),
                "skipped": dict(sorted(skipped.items())), "skipped_names": dict(sorted(names.items())),
                "files": files}
    atomic_write_text(cfg.out / MANIFEST, json.dumps(manifest, indent=1))
    return manifest


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", metavar="SRC_DIR", type=Path, help="folder of images (searched recursively)")
    add_dataclass_arguments(parser, SplitConfig, skip=("src",))


def run(args: argparse.Namespace) -> int:
    cfg = from_args(SplitConfig, args)
    m = split(cfg)
    save_beside(cfg, cfg.out, "split")
    log.info("split %s: %d images in %d groups -> train %d, eval %d (%s/train, %s/eval); skipped %s",
             cfg.src, m["images"], m["groups"], m["train"], m["eval"], cfg.out, cfg.out, m["skipped"])
    return 0
