"""What ``awm upscale`` works on: files, folders and pair shards expanded into one ordered job list.

Every rank builds the same list and takes its share (:attr:`awm.dist.DistEnv.part`). Problems found while listing
(missing path, sample without the model's LR scale, an output that would overwrite an input or
another job's output, a folder or shard set with nothing to upscale) become jobs that carry an
``error``, so they are reported per input like decode failures and never stop the rest, and the
run exits 1. Two files of one folder sharing a stem (``a.png``, ``a.jpg``) get their extension
in the output name (``a_png_x2.png``, ``a_jpg_x2.png``). Outputs are never read back as inputs:
a file that is another listed file's output, in a folder where ``awm upscale`` has written
(``upscale_stats.json``), is an earlier output (rerunning into the input folder).

Shards may be anywhere :mod:`awm.shardio` reads (a folder with index.json, a .tar, an index.json
URL, a brace pattern of .tar URLs, pipe:); remote ones are fetched to the shard cache while listing.
"""

from __future__ import annotations

import tarfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from awm.imageio import decode_image, list_images, read_image
from awm.log import get_logger
from awm.shardio.cache import local_path
from awm.shardio.locations import INDEX_NAME, has_braces, resolve
from awm.shardio.members import index_samples
from awm.shardio.ref import is_remote

log = get_logger("awm.upscale")
STATS_NAME = "upscale_stats.json"


@dataclass(frozen=True)
class Job:
    """One image to upscale: a file, or the ``member`` ``(offset, size)`` of the local tar at ``path``."""

    name: str
    path: Path
    out: Path
    member: tuple[int, int] | None = None
    error: str | None = None

    def read(self, max_pixels: int) -> np.ndarray:
        if self.member is None:
            return read_image(self.path, max_pixels)
        offset, size = self.member
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(size)
        return decode_image(data, max_pixels)


def _shard_jobs(tar_path: Path, shown: str, out_dir: Path, suffix: str, fmt: str, scale: int) -> list[Job]:
    """One job per sample of a local tar: its ``lr_x{scale}`` image, output named by the sample key."""
    want = f"lr_x{scale}"
    try:
        samples = index_samples(tar_path)
    except (OSError, tarfile.TarError) as e:
        return [Job(shown, tar_path, out_dir, error=f"unreadable shard: {e}")]
    jobs = []
    for key, members in samples:
        name, out = f"{shown}:{key}", out_dir / f"{key}_{suffix}.{fmt}"
        stems = {ext.split(".")[0]: ext for ext in members}
        if want in stems:
            jobs.append(Job(name, tar_path, out, member=members[stems[want]]))
        else:
            have = ", ".join(sorted(k for k in stems if k.startswith("lr_x"))) or "none"
            raw = "; a raw shard's original: upscale the image files, or pair shards" if "hr" not in stems else ""
            jobs.append(Job(name, tar_path, out, error=f"no {want} image in sample (LR scales: {have}{raw})"))
    return jobs


def _location_jobs(location: str, out_dir: Path, suffix: str, fmt: str, scale: int) -> list[Job]:
    """Jobs of every shard at a shard location; remote shards are fetched to the cache first."""
    jobs: list[Job] = []
    refs = resolve(location).shards
    for ref in refs:
        jobs.extend(_shard_jobs(local_path(ref), ref.name, out_dir, suffix, fmt, scale))
    return jobs or [Job(location, Path(location), out_dir, error=f"no samples in its {len(refs)} shard(s)")]


def _folder_jobs(folder: Path, out_dir: Path, suffix: str, fmt: str) -> list[Job]:
    """Jobs of the images under a folder (sub-folder layout kept), earlier outputs left out."""
    files = list_images([folder])
    rels = [f.relative_to(folder) for f in files]
    stems = Counter((r.parent, r.stem) for r in rels)
    outs = {f: out_dir / r.parent / (f"{r.stem}_{r.suffix[1:]}_{suffix}.{fmt}" if stems[(r.parent, r.stem)] > 1
                                     else f"{r.stem}_{suffix}.{fmt}") for f, r in zip(files, rels, strict=True)}
    ours = {o.resolve() for o in outs.values() if (o.parent / STATS_NAME).is_file()}
    earlier = [f for f in files if f.resolve() in ours]
    if earlier:
        log.info("%s: %d earlier output(s) of awm upscale left out as inputs (e.g. %s)", folder, len(earlier),
                 earlier[0].name)
    jobs = [Job(str(f), f, outs[f]) for f in files if f.resolve() not in ours]
    if jobs:
        return jobs
    others = Counter(q.suffix.lower() or "(none)" for q in folder.rglob("*")
                     if q.is_file() and q not in files and q.name not in (STATS_NAME, "upscale_config.yaml"))
    what = [f"{n} earlier output(s)" for n in [len(earlier)] if n]
    what += [f"{sum(others.values())} other file(s): {dict(others)}"] if others else []
    return [Job(str(folder), folder, out_dir, error=f"no image to upscale ({'; '.join(what) or 'empty folder'})")]


def collect_jobs(inputs: list[str], out_dir: Path, suffix: str, fmt: str, scale: int) -> list[Job]:
    """Expand inputs (files, image folders, shard folders with index.json, .tar shards, shard URLs,
    brace patterns, pipe:) into jobs.

    Outputs are ``out_dir/<stem>_<suffix>.<fmt>``; folder inputs keep their sub-folder layout.
    """
    jobs: list[Job] = []
    for raw in inputs:
        p = Path(raw)
        if is_remote(raw) or has_braces(raw):
            jobs.extend(_location_jobs(raw, out_dir, suffix, fmt, scale))
        elif not p.exists():
            jobs.append(Job(raw, p, out_dir, error="not found"))
        elif p.is_dir() and (p / INDEX_NAME).is_file():
            jobs.extend(_location_jobs(str(p), out_dir, suffix, fmt, scale))
        elif p.is_dir():
            jobs.extend(_folder_jobs(p, out_dir, suffix, fmt))
        elif p.suffix == ".tar":
            jobs.extend(_shard_jobs(p, p.name, out_dir, suffix, fmt, scale))
        else:
            jobs.append(Job(raw, p, out_dir / f"{p.stem}_{suffix}.{fmt}"))
    return _check_outputs(jobs)


def _check_outputs(jobs: list[Job]) -> list[Job]:
    """Refuse outputs that are an input file or that an earlier job already writes."""
    inputs = {j.path.resolve() for j in jobs if j.error is None}
    claimed: dict[Path, str] = {}
    checked = []
    for j in jobs:
        if j.error is None:
            target = j.out.resolve()
            if target in inputs:
                j = Job(j.name, j.path, j.out, j.member, f"output {j.out} would overwrite an input")
            elif target in claimed:
                j = Job(j.name, j.path, j.out, j.member, f"output {j.out} is already written for {claimed[target]}")
            else:
                claimed[target] = j.name
        checked.append(j)
    return checked
