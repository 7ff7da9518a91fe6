"""``awm shard``: degrade HR images into LR/HR pair shards (WebDataset tars) for training and evaluation.

The shard is the unit of work. Sources (a folder of raw-*.tar shards, or a plain folder of images)
are listed in a stable order and source i always goes to output shard i // shard_size, whatever
--workers or --part: a re-run skips finished shards (tar + stats file present) and redoes partial
ones, and array-job parts write disjoint shards into one folder. Samples follow contract 1 in
shards/README.md; bad inputs become counted skip reasons in each shard's stats, never a crash.

Cost is dominated by codecs, so HR bytes are copied untouched whenever the source already is an
8-bit RGB PNG that needs no crop and is not tiled; only the LR outputs are encoded.
With the optional extra ``awm[fast]`` (pyspng) such PNGs decode through libspng, ~2x faster than
OpenCV; channel-free chains (the seed presets) run in the decoder's channel order, no conversion.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import multiprocessing
import re
import sys
import tarfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import yaml

from awm import config, dist
from awm.config import check
from awm.data.degrade import (
    PRESETS,
    Preset,
    apply_params,
    channel_free,
    draw_params,
    encode_lr,
    get_preset,
    require_video,
)
from awm.dist import Part
from awm.errors import ConfigError
from awm.imageio import (
    IMAGE_EXTS,
    MAX_PIXELS_DEFAULT,
    ImageError,
    atomic_write_text,
    check_image_bytes,
    decode_image,
    encode_image,
    jpeg_frame,
    list_images,
    to_rgb8,
    truncated,
)
from awm.log import get_logger, progress
from awm.shardio.cache import local_path
from awm.shardio.locations import has_braces, resolve
from awm.shardio.members import group_members, tar_members
from awm.shardio.ref import is_remote
from awm.shardwrite import ShardStats, check_key, shard_done, stats_path, write_index, write_shard

try:  # optional extra 'fast': libspng decodes 8-bit RGB PNGs 2-2.5x faster than OpenCV's libpng
    import pyspng as _spng
except ImportError:
    _spng = None

log = get_logger("awm.shard")
CONFIG_NAME = "shard_config.yaml"


@dataclass
class ShardConfig:
    """What ``awm shard`` does; everything that changes the bytes of a sample lives here."""

    inp: str | None = field(default=None, metadata={"flag": "--in", "metavar": "SRC", "help":
                            "folder of raw-*.tar shards or of images; or raw shards elsewhere: an index.json "
                            "URL, a brace pattern of .tar URLs, pipe:COMMAND (awm.shardio)"})
    out: Path = field(default=Path("shards/pairs"), metadata={"help": "output folder (one split per folder)"})
    scales: list[int] = field(default_factory=lambda: [2, 4], metadata={"help": "LR scales, e.g. 2,4"})
    preset: Literal["seed", "seed-edgemask", "realesrgan", "apisr"] = field(
        default="seed", metadata={"help": "degradation preset (awm/data/degrade.py); 'seed' and 'seed-edgemask' are the original "
                                     "project's chain, named after it (the RNG is --seed)"})
    degrade: dict[str, Any] = field(default_factory=dict, metadata={
        "help": "preset field overrides, as key=value arguments: degrade.blur_sigma=0.8"})
    split: Literal["train", "eval"] = field(default="train", metadata={"help": "shard name prefix"})
    tile: int = field(default=0, metadata={"help": "train: cut HR into N px tiles (0 = whole images)"})
    tile_min: int = field(default=64, metadata={
        "help": "train, with --tile: a source with a side below the tile is kept whole along that side when "
                "both sides are >= this (the smallest training patch, data.patch); a smaller one is skipped"})
    hr_only: bool = field(default=False, metadata={
        "help": "write HR only (hr.png + json; sides multiples of the largest scale): training makes the LR "
                "on the fly with data.degrade=PRESET, new draws every crop"})
    seed: int = field(default=0, metadata={"help": "RNG seed of the per-sample degradation draws (any preset; not the 'seed' preset)"})
    workers: int = field(default=1, metadata={"help": "processes, one shard per task"})
    mp_start: Literal["auto", "fork", "spawn", "forkserver"] = field(default="auto", metadata={
        "help": "worker start method; auto = fork on Linux (starts in ms), spawn elsewhere"})
    shard_size: int = field(default=32, metadata={"help": "source images per shard (tiles stay together)"})
    part: str = field(default="auto", metadata={
        "help": "i/n: take shards with number = i mod n (array jobs); auto = from SLURM/torchrun rank"})
    lr_format: Literal["jpg", "png", "webp"] | None = field(default=None, metadata={
        "help": "LR storage codec (the last degradation); default: the preset's (jpg)"})
    quality: int | None = field(default=None, metadata={"help": "LR codec quality; default: the preset's"})
    max_pixels: int = field(default=MAX_PIXELS_DEFAULT, metadata={"help": "skip larger sources (bomb guard)"})
    min_lr_side: int = field(default=8, metadata={"help": "skip sources whose smallest LR side is shorter"})
    hr_png_level: int = field(default=3, metadata={"help": "zlib level when HR must be encoded (0-9)"})

    def __post_init__(self) -> None:
        check(self.inp is not None, "in", self.inp, "a folder of raw-*.tar shards or of images (--in)")
        check(bool(self.scales) and all(s in (1, 2, 3, 4, 8) for s in self.scales), "scales", self.scales,
              "a list from 1, 2, 3, 4, 8")
        m = max(self.scales)
        check(self.tile == 0 or (self.tile % m == 0 and self.tile // m >= self.min_lr_side), "tile", self.tile,
              f"0 or a multiple of the largest scale {m} with tile/{m} >= min_lr_side {self.min_lr_side}")
        check(self.split == "train" or self.tile == 0, "tile", self.tile, "0 for the eval split (full images)")
        check(self.tile_min >= 1, "tile_min", self.tile_min, ">= 1 (the smallest training patch)")
        check(self.workers >= 1, "workers", self.workers, ">= 1")
        check(self.shard_size >= 1, "shard_size", self.shard_size, ">= 1")
        check(0 <= self.hr_png_level <= 9, "hr_png_level", self.hr_png_level, "0..9")
        check(self.min_lr_side >= 1, "min_lr_side", self.min_lr_side, ">= 1")
        try:
            self.part_spec()
        except ValueError as e:
            raise ConfigError("part", self.part, f"auto or i/n ({e})") from None

    def part_spec(self) -> Part:
        if self.part == "auto":
            return dist.env().part
        return Part.parse(self.part)

    def preset_config(self) -> Preset:
        overrides = dict(self.degrade)
        for k in ("lr_format", "quality"):
            if getattr(self, k) is not None:
                overrides[k] = getattr(self, k)
        return get_preset(self.preset, **overrides)

    def output_identity(self) -> dict[str, Any]:
        """The fields that decide the output bytes (not workers/part): must match to reuse a folder."""
        d = config.to_dict(self)
        for k in ("workers", "mp_start", "part", "out"):
            d.pop(k)
        d["degrade"] = config.to_dict(self.preset_config())
        return d


@dataclass(frozen=True)
class Source:
    """One source image: where its bytes are (a file, or a byte range inside a raw tar)."""

    id: str
    source: str
    path: str
    offset: int = -1
    size: int = -1
    skip: str | None = None  # decided while listing (duplicate id, raw sample without an image)
    name: str = ""  # the picture's own name (an ingested file's path, a crawled post), for tables and logs

    def read(self) -> bytes:
        with open(self.path, "rb") as f:
            if self.offset < 0:
                return f.read()
            f.seek(self.offset)
            return f.read(self.size)


def _sanitize(stem: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", stem) or "_"


def _raw_tars(src: str) -> list[tuple[Path, str]]:
    """``(local file, shown name)`` of the raw shards at a location; remote ones are fetched to the cache."""
    if not is_remote(src) and Path(src).is_dir():
        return [(p, p.name) for p in sorted(Path(src).glob("raw-*.tar"))]
    try:
        refs = resolve(src).shards
    except (OSError, ValueError) as e:
        raise ConfigError("in", src, f"a folder of raw-*.tar shards or of images, or a shard location ({e})") from None
    return [(local_path(r), r.name) for r in refs]


def list_sources(src: str | Path) -> tuple[list[Source], list[str]]:
    """Stable, complete list of sources (raw-*.tar first if any) and unreadable-input messages."""
    src = str(src)
    if not is_remote(src) and not has_braces(src) and not Path(src).is_dir():
        raise ConfigError("in", src, "an existing folder of raw-*.tar shards or of images, or a shard location")
    tars = _raw_tars(src)
    items, errors = ([], []) if not tars else _list_raw(tars)
    if not tars:
        for p in list_images([Path(src)]):
            items.append(Source(_sanitize(p.stem), str(p.relative_to(src)), str(p)))
    seen: set[str] = set()
    out = []
    for s in items:
        sid = s.id
        if sid in seen and not tars:  # two files with one stem: suffix a hash of the path
            sid = f"{sid}_{hashlib.sha1(s.source.encode()).hexdigest()[:8]}"
        skip = s.skip or ("duplicate_id" if sid in seen else None)
        seen.add(sid)
        out.append(Source(sid, s.source, s.path, s.offset, s.size, skip, s.name or s.source))
    return out, errors


def _list_raw(tars: list[tuple[Path, str]]) -> tuple[list[Source], list[str]]:
    items: list[Source] = []
    errors: list[str] = []
    for tp, name in tars:
        groups: list[tuple[str, dict[str, tuple[int, int]]]] = []
        try:
            groups.extend(group_members(tar_members(tp), name))
        except (tarfile.TarError, OSError) as e:
            errors.append(f"{name}: {type(e).__name__}: {e} (samples listed before the error are kept)")
        for key, members in groups:
            ext = next((e for e in IMAGE_EXTS if e in members), None)
            try:
                check_key(key)
                bad = None if ext else "no_image"
            except ValueError:
                bad = "bad_key"
            offset, size = members[ext] if ext else next(iter(members.values()))
            items.append(Source(_sanitize(key), f"{name}/{key}.{ext}", str(tp), offset, size, bad,
                                _raw_name(tp, members.get("json"))))
    return items, errors


def _raw_name(tar: Path, member: tuple[int, int] | None) -> str:
    """A raw sample's own name from its json: the ingested file's path, or ``<source> post <id>``."""
    if member is None:
        return ""
    try:
        meta = json.loads(Source("", "", str(tar), *member).read())
    except (OSError, ValueError):
        return ""
    if not isinstance(meta, dict):
        return ""
    if meta.get("file_name") and meta.get("source") == "local":
        return str(meta["file_name"])
    return f"{meta['source']} post {meta['id']}" if meta.get("source") and meta.get("id") is not None else ""


def _is_plain_png(data: bytes) -> bool:
    """8-bit truecolour PNG (IHDR depth 8, colour type 2): its bytes can be hr.png as they are."""
    return len(data) > 26 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[24] == 8 and data[25] == 2


def decode_source(data: bytes, max_pixels: int) -> tuple[np.ndarray, bool]:
    """Pixels and whether they are in BGR order: plain PNGs through libspng when installed (RGB),
    everything else through ``awm.imageio.decode_image`` in OpenCV's order (no conversion yet)."""
    if _spng is None or not _is_plain_png(data):
        return decode_image(data, max_pixels, bgr=True), True
    probe = check_image_bytes(data, max_pixels)
    try:
        img = _spng.load(data)
    except RuntimeError as e:
        raise ImageError("undecodable", str(e)) from None
    if img.shape != (probe.height, probe.width, 3) or img.dtype != np.uint8:
        raise ImageError("size_mismatch", f"header {probe.width}x{probe.height}, pixels {img.shape}")
    return img, False


def tile_boxes(w: int, h: int, tile: int, multiple: int) -> list[tuple[int, int, int, int]]:
    """Tiles covering the image, evenly spread (overlap < one tile), corners on the scale grid; a side
    shorter than the tile is kept whole (the tiles are that long on it)."""
    def starts(n: int) -> list[int]:
        k = math.ceil(n / tile)
        return [0] if k == 1 else [round(i * (n - tile) / (k - 1)) // multiple * multiple for i in range(k)]
    return [(x, y, min(tile, w), min(tile, h)) for y in starts(h) for x in starts(w)]


def make_samples(src: Source, data: bytes, cfg: ShardConfig, preset: Preset,
                 notes: Counter) -> list[dict[str, Any]]:
    """The pair samples of one source (several when tiled); raises ImageError with a skip reason."""
    probe = check_image_bytes(data, cfg.max_pixels)
    if probe.format == "jpg" and (jpeg_frame(data) or (0, 0, 0))[2] == 4:
        raise ImageError("cmyk_jpeg")  # no ICC-aware conversion here: its colours would be guesses
    if truncated(data, probe.format):
        raise ImageError("truncated")
    m = max(cfg.scales)
    w, h = probe.width - probe.width % m, probe.height - probe.height % m
    if min(w, h) // m < cfg.min_lr_side:
        raise ImageError("too_small")
    if cfg.tile and min(w, h) < min(cfg.tile, cfg.tile_min):  # smaller than the tile, larger: kept whole
        raise ImageError("smaller_than_tile")
    img, is_bgr = decode_source(data, cfg.max_pixels)  # JPEG EXIF orientation may swap the header's w, h
    w, h = img.shape[1] - img.shape[1] % m, img.shape[0] - img.shape[0] % m
    converted = [name for name, hit in (("16bit", img.dtype == np.uint16), ("gray", img.ndim == 2),
                                        ("alpha_on_white", img.ndim == 3 and img.shape[2] == 4)) if hit]
    notes.update(converted)
    hr_src = to_rgb8(img)[:h, :w]  # to_rgb8 is channel-order free: the decoder's order is kept
    keep_bytes = not cfg.tile and not converted and (w, h) == img.shape[1::-1] and _is_plain_png(data)
    notes["hr_original_bytes" if keep_bytes else "hr_encoded"] += 1
    scales = [] if cfg.hr_only else sorted(cfg.scales)
    params = {f"x{s}": draw_params(preset, (w, h), s, cfg.seed, src.id) for s in scales}
    lr_bgr = is_bgr and all(channel_free(p) for p in params.values())  # else the chain needs true RGB
    hr = cv2.cvtColor(hr_src, cv2.COLOR_BGR2RGB) if is_bgr and not lr_bgr else hr_src
    cache: dict = {}
    lrs = {s: apply_params(hr, s, params[f"x{s}"], cache) for s in scales}
    meta = {"id": src.id, "source": src.source, "name": src.name or src.source, "scales": scales, "preset": None if cfg.hr_only else preset.name,
            "params": params, "seed": cfg.seed, "src_size": [probe.width, probe.height],
            "image_size": [w, h], "converted": converted}
    boxes = tile_boxes(w, h, cfg.tile, m) if cfg.tile else [(0, 0, w, h)]
    samples = []
    for k, (x, y, tw, th) in enumerate(boxes):
        key = f"{src.id}_t{k}" if cfg.tile else src.id
        hr_png = data if keep_bytes else _encode_png(hr_src[y:y + th, x:x + tw], cfg.hr_png_level, is_bgr)
        sample: dict[str, Any] = {"__key__": key, "hr.png": hr_png}
        for s in scales:
            p = params[f"x{s}"]
            lr = lrs[s][y // s:(y + th) // s, x // s:(x + tw) // s]
            sample[f"lr_x{s}.{p['codec']['format']}"] = encode_lr(np.ascontiguousarray(lr), p, lr_bgr)
        sample["json"] = {**meta, "hr_size": [tw, th], "tile": [x, y, tw, th] if cfg.tile else None}
        samples.append(sample)
    return samples


def _encode_png(img: np.ndarray, level: int, bgr: bool) -> bytes:
    if not bgr:
        return encode_image(np.ascontiguousarray(img), "png", level)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(img), [cv2.IMWRITE_PNG_COMPRESSION, level])
    if not ok:
        raise ImageError("encode_failed", "png")
    return buf.tobytes()


def shard_path(cfg: ShardConfig, index: int) -> Path:
    return Path(cfg.out) / f"{cfg.split}-{index:06d}.tar"


def make_shard(job: dict[str, Any]) -> dict[str, Any]:
    """Build and atomically write one output shard; returns its stats (runs in a worker process)."""
    cv2.setNumThreads(1)
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)  # skips are counted, not printed
    cfg = config.from_dict(ShardConfig, job["cfg"])
    preset = cfg.preset_config()
    path = shard_path(cfg, job["shard"])
    stats = ShardStats(path.name)
    notes: Counter = Counter()
    samples: list[dict[str, Any]] = []
    for item in job["items"]:
        src = Source(**item)
        try:
            if src.skip:
                raise ImageError(src.skip)
            samples.extend(make_samples(src, src.read(), cfg, preset, notes))
        except ImageError as e:
            stats.skip(e.reason, names=[src.source])
        except Exception as e:  # noqa: BLE001 - one bad source must not lose the shard
            log.warning("%s (%s): %s", src.id, src.source, e)
            stats.skip(f"error_{type(e).__name__}", names=[src.source])
    stats.extra = {"sources": len(job["items"]), "tiles": len(samples) if cfg.tile else 0,
                   "notes": dict(sorted(notes.items()))}
    write_shard(path, samples, stats)
    return stats.to_json()


def _check_out(cfg: ShardConfig) -> None:
    """Refuse to mix outputs of different settings in one folder; write the config beside the shards."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    identity = cfg.output_identity()
    p = out / CONFIG_NAME
    if p.is_file():
        if yaml.safe_load(p.read_text()) != identity:
            raise ConfigError("out", str(out), f"an empty folder, or one whose {CONFIG_NAME} matches these settings")
        return
    atomic_write_text(p, yaml.safe_dump(identity, sort_keys=False))


def _no_sources(inp: str, errors: list[str]) -> str:
    """Why an input has no source, with what it holds instead (file counts by suffix)."""
    folder = Path(inp)
    others = Counter(p.suffix.lower() or "(none)" for p in folder.rglob("*") if p.is_file()) if folder.is_dir() \
        else Counter()
    what = "; ".join(errors) or (f"{sum(others.values())} other file(s): {dict(others)}" if others else "empty")
    pairs = any(folder.glob("train-*.tar")) or any(folder.glob("eval-*.tar"))
    hint = "; its train-/eval-*.tar are pair shards (awm shard's output): give raw shards or images" if pairs else ""
    return f"no sources at {inp}: no raw-*.tar shard and no image file ({what}){hint}"


def shard(cfg: ShardConfig) -> dict[str, Any]:
    """Run the stage in-process: returns a summary (shards written/skipped, samples, skip counts)."""
    started = time.time()
    require_video(cfg.preset_config())  # validate preset overrides (and PyAV if needed) before any work
    sources, errors = list_sources(cfg.inp)
    if not sources:  # before the output folder exists: nothing written that looks like a finished run
        raise ValueError(_no_sources(str(cfg.inp), errors))
    _check_out(cfg)
    for e in errors:
        log.warning("unreadable input: %s", e)
    nshards = math.ceil(len(sources) / cfg.shard_size)
    part = cfg.part_spec()
    mine = [k for k in range(nshards) if part.takes(k)]
    for k in mine:  # a killed run's partial temp files; no other part ever writes these shards
        for stale in Path(cfg.out).glob(f".{shard_path(cfg, k).name}.*.tmp"):
            stale.unlink(missing_ok=True)
    todo = [k for k in mine if not shard_done(shard_path(cfg, k))]
    log.info("%d sources -> %d %s shards; part %s: %d shards, %d already done", len(sources), nshards,
             cfg.split, part, len(mine), len(mine) - len(todo))
    base = config.to_dict(cfg)
    jobs = [{"cfg": base, "shard": k,
             "items": [asdict(s) for s in sources[k * cfg.shard_size:(k + 1) * cfg.shard_size]]} for k in todo]
    results = []
    if cfg.workers == 1 or len(jobs) <= 1:
        results = [make_shard(j) for j in progress(jobs, total=len(jobs), desc="shards", unit="shard")]
    else:
        method = cfg.mp_start
        if method == "auto":
            method = "fork" if sys.platform == "linux" else "spawn"
        ctx = multiprocessing.get_context(method)
        with ctx.Pool(min(cfg.workers, len(jobs))) as pool:
            it = pool.imap_unordered(make_shard, jobs)
            results = list(progress(it, total=len(jobs), desc="shards", unit="shard"))
    extra = {"split": cfg.split, "scales": [] if cfg.hr_only else list(cfg.scales),
             "preset": None if cfg.hr_only else cfg.preset, "seed": cfg.seed, "hr_only": cfg.hr_only,
             "lr_format": None if cfg.hr_only else cfg.preset_config().lr_format, "tile": cfg.tile or None,
             "expected_shards": nshards,
             "config": CONFIG_NAME, "config_digest": config.digest(cfg.output_identity())}
    if errors:
        extra["input_errors"] = errors
    index = json.loads(write_index(cfg.out, f"{cfg.split}-", extra).read_text())
    own = results + [json.loads(stats_path(shard_path(cfg, k)).read_text()) for k in mine if k not in todo]
    part_skipped = sum((Counter(r["skipped"]) for r in own), Counter())
    summary = {"written": len(results), "already_done": len(mine) - len(todo), "nshards": index["nshards"],
               "expected_shards": nshards, "nsamples": index["nsamples"], "skipped": index["skipped"],
               "part": {"shards": len(mine), "nsamples": sum(r["nsamples"] for r in own),
                        "skipped": dict(sorted(part_skipped.items()))},
               "seconds": round(time.time() - started, 2)}
    log.info("done: %s", json.dumps(summary))
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_dataclass_arguments(parser, ShardConfig, skip=("degrade",))
    parser.add_argument("--config", default=None, help="YAML file with ShardConfig fields")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                        help=f"config overrides, e.g. degrade.blur_sigma=0.8 (presets: {', '.join(PRESETS)})")


def failure(summary: dict[str, Any]) -> str | None:
    """Why a finished run must exit 1: an unexpected exception on one of this part's sources (an
    ``error_*`` skip, logged with its source), no source at all, or none of this part's shards
    holding a sample. Expected skips are not failures. Other parts' shards are theirs to judge."""
    part = summary["part"]
    errors = {k: v for k, v in part["skipped"].items() if k.startswith("error_")}
    if errors:
        return (f"unexpected errors on {sum(errors.values())} source(s) {errors}: see the warnings above "
                "and skipped_names in the shards' *_stats.json")
    if summary["expected_shards"] == 0:
        return "no sources found"
    if part["shards"] and part["nsamples"] == 0:
        return f"no sample written (skipped: {part['skipped']})"
    return None


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(ShardConfig, args, args.overrides)
    summary = shard(cfg)
    if summary["part"]["skipped"]:
        skipped = summary["part"]["skipped"]
        log.info("skipped %d source(s): %s", sum(skipped.values()), skipped)
    why = failure(summary)
    if why:
        log.error("shard %s: %s", cfg.out, why)
        return 1
    return 0
