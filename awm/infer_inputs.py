"""What ``awm upscale`` works on: files, folders and pair shards expanded into one ordered job list.

Every rank builds the same list and takes ``jobs[rank::world]``. Problems found while listing
(missing path, sample without the model's LR scale, an output that would overwrite an input or
another job's output) become jobs that carry an ``error``, so they are reported per input like
decode failures and never stop the rest.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from awm.io import decode_image, list_images, read_image
from awm.shards import list_shards, read_index


@dataclass(frozen=True)
class Job:
    """One image to upscale: a file, or ``member`` of the tar shard at ``path``."""

    name: str
    path: Path
    out: Path
    member: str | None = None
    error: str | None = None

    def read(self, max_pixels: int) -> np.ndarray:
        if self.member is None:
            return read_image(self.path, max_pixels)
        with tarfile.open(self.path) as tar:
            f = tar.extractfile(self.member)
            data = f.read() if f is not None else b""
        return decode_image(data, max_pixels)


def _shard_files(folder: Path) -> list[Path]:
    index = read_index(folder)
    return [folder / s["url"] for s in index.get("shardlist", [])] or list_shards(folder)


def _shard_jobs(tar_path: Path, out_dir: Path, suffix: str, fmt: str, scale: int) -> list[Job]:
    """One job per sample: its ``lr_x{scale}`` image, output named by the sample key."""
    want = f"lr_x{scale}"
    try:
        with tarfile.open(tar_path) as tar:
            names = [m.name for m in tar.getmembers() if m.isfile()]
    except (OSError, tarfile.TarError) as e:
        return [Job(str(tar_path), tar_path, out_dir, error=f"unreadable shard: {e}")]
    samples: dict[str, dict[str, str]] = {}
    for name in names:
        key, _, ext = Path(name).name.partition(".")
        samples.setdefault(key, {})[ext.split(".")[0]] = name
    jobs = []
    for key, members in samples.items():
        name, out = f"{tar_path.name}:{key}", out_dir / f"{key}_{suffix}.{fmt}"
        if want in members:
            jobs.append(Job(name, tar_path, out, member=members[want]))
        else:
            have = ", ".join(sorted(k for k in members if k.startswith("lr_x"))) or "none"
            jobs.append(Job(name, tar_path, out, error=f"no {want} image in sample (LR scales: {have})"))
    return jobs


def collect_jobs(inputs: list[str], out_dir: Path, suffix: str, fmt: str, scale: int) -> list[Job]:
    """Expand inputs (files, image folders, shard folders with index.json, .tar shards) into jobs.

    Outputs are ``out_dir/<stem>_<suffix>.<fmt>``; folder inputs keep their sub-folder layout.
    """
    jobs: list[Job] = []
    for raw in inputs:
        p = Path(raw)
        if not p.exists():
            jobs.append(Job(raw, p, out_dir, error="not found"))
        elif p.is_dir() and (p / "index.json").is_file():
            for tar in _shard_files(p):
                jobs.extend(_shard_jobs(tar, out_dir, suffix, fmt, scale))
        elif p.is_dir():
            for f in list_images([p]):
                rel = f.relative_to(p)
                jobs.append(Job(str(f), f, out_dir / rel.parent / f"{rel.stem}_{suffix}.{fmt}"))
        elif p.suffix == ".tar":
            jobs.extend(_shard_jobs(p, out_dir, suffix, fmt, scale))
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
