"""``awm export``: a trained model as a complete, verified release folder.

``awm export RUN_OR_CKPT --out DIR`` writes, into DIR (atomically: a release exists only complete):

* ``NAME.safetensors``: BasicSR/spandrel layout (awm.models.checkpoint.convert, which checks that
  spandrel rebuilds the model), header metadata arch, scale, colour order, AWM version, config
  digest; ``NAME.pth`` (``params_ema``) with ``--pth``;
* ``NAME.onnx`` (fp32) and ``NAME_fp16.onnx`` / ``NAME_bf16.onnx`` on request, verified against
  torch by onnxruntime on CPU (awm.models.onnx); architectures that cannot be exported are refused
  with the reason (``--no-onnx`` releases without ONNX);
* ``NAME.ncnn.param``/``.bin`` with ``--ncnn`` (pnnx, verified by ncnn; awm.models.ncnn);
* ``NAME.json``: the OpenModelDB entry, validated against the schema, sha256/size of the files;
* ``README.md``: the model card, and ``NAME_grid.png`` (LR | bicubic | model) with the LR/SR
  images the entry lists; ``train_config.yaml``: the run's config (reruns the training);
  ``release.json``: what was verified, with the measured PSNRs.
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from awm import __version__
from awm.config import ConfigError, add_dataclass_arguments, check, from_args
from awm.imageio import atomic_write_text, encode_image, sha256_file, to_rgb8
from awm.log import get_logger
from awm.release import card, openmodeldb

log = get_logger("awm.export")


@dataclass
class ExportConfig:
    model: str = field(default="", metadata={"help": "run folder, AWM checkpoint folder or weights file",
                                             "argument": "RUN_OR_CKPT"})
    out: str = field(default="release", metadata={
        "help": "release folder: a new or empty one, or an earlier release (holding release.json), which is replaced"})
    name: str | None = field(default=None, metadata={
        "help": "release name, an OpenModelDB id like 2x-MyModel-Compact (unset: from scale, run and arch)"})
    author: str = field(default="anonymous", metadata={"help": "OpenModelDB user id of the author"})
    license: str | None = field(default="CC-BY-4.0", metadata={"help": "SPDX licence of the release"})
    tags: list[str] = field(default_factory=lambda: ["anime", "general-upscaler"], metadata={
        "help": "OpenModelDB tags"})
    description: str | None = field(default=None, metadata={"help": "entry description (unset: generated)"})
    onnx: bool = field(default=True, metadata={"help": "write and verify NAME.onnx (fp32)"})
    fp16: bool = field(default=False, metadata={"help": "also NAME_fp16.onnx (fp16 in and out)"})
    bf16: bool = field(default=False, metadata={
        "help": "also NAME_bf16.onnx, refused where onnxruntime lacks bf16 kernels (its CPU provider does)"})
    pth: bool = field(default=False, metadata={"help": "also NAME.pth (BasicSR params_ema layout)"})
    ncnn: bool = field(default=False, metadata={
        "help": "also NAME.ncnn.param/.bin through pnnx, verified with ncnn (OpenModelDB lists no ncnn resource)"})
    simplify: bool = field(default=True, metadata={"help": "simplify the ONNX graph with onnxslim"})
    eval_summary: str | None = field(default=None, metadata={
        "help": "awm eval summary.json for the card (unset: the newest inside the run folder)"})
    grid_image: str | None = field(default=None, metadata={
        "help": "LR image for the card's crop grid and ONNX check (unset: the run's first eval LR, else generated)"})
    pretrained: str | None = field(default=None, metadata={
        "help": "OpenModelDB id of the model this one was fine-tuned from (pretrainedModelG)"})
    pretrained_license: str | None = field(default=None, metadata={"help": "SPDX licence of those start weights"})
    url_base: str = field(default="https://example.invalid/REPLACE-WITH-UPLOAD-URL", metadata={
        "help": "placeholder URL prefix of the entry's resources and images"})

    def __post_init__(self) -> None:
        check(bool(self.model), "model", self.model, "a run folder, checkpoint folder or weights file")
        check(self.name is None or bool(openmodeldb.MODEL_ID.match(self.name)), "name", self.name,
              "an OpenModelDB id: <scale>x-Word(-Word)*, letters and digits")
        check(bool(openmodeldb.USER_ID.match(self.author)), "author", self.author, "letters, digits and '-'")
        check(self.pretrained is None or bool(openmodeldb.MODEL_ID.match(self.pretrained)), "pretrained",
              self.pretrained, "an OpenModelDB model id such as 4x-RealESRGAN-x4plus")
        check((self.onnx or not (self.fp16 or self.bf16)), "onnx", self.onnx, "true when fp16/bf16 are asked for")


def default_name(scale: int, stem: str, arch_id: str) -> str:
    """``{scale}x-{Stem}-{Arch}``, reduced to the characters an OpenModelDB id allows."""
    words = [w for w in re.split(r"[^a-zA-Z0-9]+", stem) if w] or ["AWM"]
    arch = {"esrgan": "ESRGAN", "compact": "Compact", "span": "SPAN", "swinir": "SwinIR", "hat": "HAT",
            "dat": "DAT", "grl": "GRL"}.get(arch_id, arch_id.capitalize())
    return "-".join([f"{scale}x", *words, arch])


def _grid_lr(cfg: ExportConfig, t: card.Training, scale: int) -> np.ndarray:
    """An LR image for the grid: the given one, the run's first eval LR, else generated content downscaled."""
    from awm import shardwrite
    from awm.data import synth
    from awm.imageio import decode_image, read_image
    from awm.shardio.read import iter_tar

    if cfg.grid_image:
        return read_image(cfg.grid_image)
    from awm.eval.report import _yaml

    cfg_run = _yaml(t.run / "config.yaml") if t.run else {}
    ev = (cfg_run.get("data") or {}).get("eval")
    if ev and Path(str(ev)).is_dir():
        for tar in shardwrite.list_shards(Path(str(ev)), "eval-"):
            for s in iter_tar(tar):
                key = next((k for k in s if k.startswith(f"lr_x{scale}.")), None)
                if key:
                    return decode_image(s[key])
    hr = synth.generate(0, 96 * scale, 96 * scale)
    return cv2.resize(hr, (96, 96), interpolation=cv2.INTER_AREA)


def _precisions(cfg: ExportConfig) -> list[str]:
    return [p for p, on in (("fp32", cfg.onnx), ("fp16", cfg.fp16), ("bf16", cfg.bf16)) if on]


def content_crop(lr: np.ndarray, multiple: int, minimum: int, label: str = "grid LR") -> tuple[str, Any]:
    """A central crop of an LR image (the run's own eval content) as a verification input."""
    from awm.imageio import to_tensor

    side = max(-(-max(64, minimum) // multiple) * multiple, multiple)
    h, w = min(side, lr.shape[0] // multiple * multiple), min(side, lr.shape[1] // multiple * multiple)
    y, x = (lr.shape[0] - h) // 2, (lr.shape[1] - w) // 2
    return f"{label} 1x{h}x{w}", to_tensor(np.ascontiguousarray(lr[y:y + h, x:x + w]))


def spandrel_id(loaded) -> str:
    """The spandrel architecture of a loaded model (its export plan's key)."""
    from awm.models.archs import ARCHS

    return ARCHS[loaded.arch].spandrel_id if loaded.arch in ARCHS else loaded.meta.get("spandrel_arch", loaded.arch)


def example_side(loaded) -> int:
    """Side of the square example input the exporters trace: two size multiples, at least 32 px."""
    return max(loaded.size_min, 2 * loaded.size_multiple, 32)


def onnx_file(loaded, sid: str, path: Path, prec: str, extra: list[tuple[str, Any]],
              simplify: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Export one precision to ``path`` and verify it on the standard inputs plus ``extra``: the export
    info and the PSNR (dB) per input. The floor is the caller's (a release refuses below it; the
    export benchmark reports the figure); ExportError when the file cannot be made or run."""
    from awm.models import onnx as ox

    meta = {"arch": loaded.arch, "scale": loaded.scale, "size_multiple": loaded.size_multiple,
            "size_min": loaded.size_min, "color_order": "RGB", "spandrel_arch": sid,
            "config_digest": loaded.meta.get("config_digest") or ""}
    info = ox.export_onnx(loaded.module, sid, path, example_side(loaded), prec, meta, simplify)
    try:
        psnrs = ox.verify(loaded.module, path, loaded.size_multiple, loaded.size_min, info["batch"], extra)
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types; say which precision failed
        raise ox.ExportError(f"{prec}: onnxruntime {ox.runtime_version()} (CPU) cannot run the exported "
                             f"file: {str(e).splitlines()[0][:300]}") from None
    return info, psnrs


def _onnx_files(cfg: ExportConfig, loaded, sid: str, name: str, tmp: Path,
                lr: np.ndarray) -> tuple[list[dict[str, Any]], dict]:
    """Export and verify each asked-for precision; ExportError when one cannot be verified."""
    from awm.models import onnx as ox

    report: dict[str, Any] = {}
    files = []
    for prec in _precisions(cfg):
        path = tmp / (f"{name}.onnx" if prec == "fp32" else f"{name}_{prec}.onnx")
        info, psnrs = onnx_file(loaded, sid, path, prec, [content_crop(lr, loaded.size_multiple, loaded.size_min)],
                                cfg.simplify)
        floor = ox.floor_db(prec)
        worst = min(psnrs.values())
        if worst < floor:
            raise ox.ExportError(f"{prec}: onnxruntime differs from torch: {psnrs} dB, floor {floor} dB")
        log.info("%s: onnxruntime vs torch %.1f dB worst (floor %.0f) on %s", path.name, worst, floor, list(psnrs))
        report[prec] = {**info, "psnr_db": psnrs, "floor_db": floor}
        files.append({"path": path, "note": f"ONNX opset {info['opset']}, {prec}, batch {info['batch']}, "
                                            f"verified {worst:.1f} dB vs torch"})
    return files, report


def ncnn_pair(loaded, name: str, out_dir: Path,
              extra: list[tuple[str, Any]]) -> tuple[Path, Path, dict[str, float]]:
    """NCNN param/bin through pnnx and ncnn's PSNR (dB) per input (the standard ones plus ``extra``);
    the floor is the caller's. ExportError when pnnx cannot convert or leaves layers ncnn lacks."""
    from awm.models import ncnn as nc

    param, weights = nc.export_ncnn(loaded.module, out_dir, name, example_side(loaded))
    return param, weights, nc.verify_ncnn(loaded.module, param, weights, loaded.size_multiple, loaded.size_min, extra)


def _ncnn_files(loaded, name: str, tmp: Path, lr: np.ndarray) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """NCNN param/bin through pnnx, verified by ncnn; ExportError below the floor, with the PSNRs."""
    from awm.models import ncnn as nc
    from awm.models.onnx import ExportError

    param, weights, psnrs = ncnn_pair(loaded, name, tmp, [content_crop(lr, loaded.size_multiple, loaded.size_min)])
    if min(psnrs.values()) < nc.FLOOR_DB:
        raise ExportError(f"ncnn: output differs from torch: {psnrs} dB, floor {nc.FLOOR_DB} dB")
    note = f"NCNN (pnnx), fp32, verified {min(psnrs.values()):.1f} dB vs torch"
    return [{"path": param, "note": note}, {"path": weights, "note": note}], {"psnr_db": psnrs, "floor_db": nc.FLOOR_DB}


RELEASE_FILE = "release.json"


def release_target(out: str | Path) -> Path:
    """``out`` as an absolute path, if exporting may write there: a missing or empty folder, or an
    earlier release (its ``release.json``), which is replaced. Anything else (a training run, a
    folder of other files, the current folder) is refused with ConfigError before any work: the
    release replaces the whole folder, and a user's files must never be what it replaces."""
    path = Path(out).expanduser().resolve()
    why = None
    if path.parent == path:
        why = "is a filesystem root"
    elif path.exists() and not path.is_dir():
        why = "is a file"
    elif path.is_dir() and any(path.iterdir()) and not (path / RELEASE_FILE).is_file():
        names = sorted(p.name for p in path.iterdir())
        why = (f"holds {len(names)} entries ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''}) "
               f"and no {RELEASE_FILE} of an earlier awm export")
    elif path.is_dir() and (path == Path.cwd().resolve() or path in Path.cwd().resolve().parents):
        why = "is the current folder or holds it"
    if why:
        raise ConfigError("out", str(out), f"a new or empty folder, or an earlier release; {path} {why}: "
                                           "nothing written, choose another --out")
    return path


def export(cfg: ExportConfig) -> Path:
    """Write the release folder for ``cfg.model``; returns its path."""
    from awm.models import onnx as ox
    from awm.models.checkpoint import _replace_dir, convert, load_model
    from awm.upscale.infer import upscale_array

    out = release_target(cfg.out)
    src = Path(cfg.model)
    loaded = load_model(src)
    check(loaded.source != "onnx", "model", cfg.model, "PyTorch weights, a checkpoint or a run (not an .onnx file)")
    sid = spandrel_id(loaded)
    arch_id = openmodeldb.ARCH_IDS.get(sid)
    check(arch_id is not None, "model", cfg.model, f"an architecture OpenModelDB names ({sid} has no id there)")
    t = card.training_facts(src, loaded.meta)
    stem = (t.run.name if t.run else src.stem) if src.name not in ("best", "last") else src.parent.parent.name
    name = cfg.name or default_name(loaded.scale, f"AWM {stem}", arch_id)
    if cfg.onnx:
        try:  # refuse before any work
            for prec in _precisions(cfg):
                ox.plan_for(sid, prec)
        except ox.ExportError as e:
            raise ox.ExportError(f"{e} (--no-onnx releases the rest)") from None
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    tmp.chmod(0o755)  # mkdtemp's 0700 would survive the rename
    try:
        files = [{"path": tmp / f"{name}.safetensors", "note": "BasicSR/spandrel layout, metadata in header"}]
        convert(src, files[0]["path"])
        if cfg.pth:
            files.append({"path": tmp / f"{name}.pth", "note": "BasicSR params_ema"})
            convert(src, files[-1]["path"])
        lr = to_rgb8(_grid_lr(cfg, t, loaded.scale))
        onnx_report: dict[str, Any] = {}
        if cfg.onnx:
            more, onnx_report = _onnx_files(cfg, loaded, sid, name, tmp, lr)
            files += more
        ncnn_report: dict[str, Any] = {}
        if cfg.ncnn:
            more, ncnn_report = _ncnn_files(loaded, name, tmp, lr)
            files += more
        sr = upscale_array(loaded, lr, tile=256, tile_pad=16)
        grid = card.crop_grid(lr, sr, loaded.scale, name, tmp / f"{name}_grid.png")
        (tmp / f"{name}_LR.png").write_bytes(encode_image(lr, "png"))
        (tmp / f"{name}_SR.png").write_bytes(encode_image(sr, "png"))
        entry = _entry(cfg, loaded, arch_id, name, t, files)
        errors = openmodeldb.validate(entry, name) + openmodeldb.check_files(entry, tmp)
        if errors:
            raise ValueError(f"OpenModelDB entry for {name} is not valid: " + "; ".join(errors))
        atomic_write_text(tmp / f"{name}.json", json.dumps(entry, indent=4, ensure_ascii=False) + "\n")
        if t.run is not None:
            shutil.copyfile(t.run / "config.yaml", tmp / "train_config.yaml")
        doc, eval_src = card.eval_summary(Path(cfg.eval_summary) if cfg.eval_summary else None, t.run)
        described = [{"file": f["path"].name, "size": f["path"].stat().st_size,
                      "sha256": sha256_file(f["path"]), "note": f["note"]} for f in files]
        atomic_write_text(tmp / "README.md", card.model_card(
            name, entry, t, described, card.eval_table(doc), eval_src, grid.name,
            cfg.pretrained_license))
        atomic_write_text(tmp / RELEASE_FILE, json.dumps(
            {"name": name, "source": str(src), "arch": loaded.arch, "spandrel_arch": sid, "scale": loaded.scale,
             "awm_version": __version__, "files": described, "onnx": onnx_report, "ncnn": ncnn_report,
             "eval_summary": str(eval_src) if eval_src else None}, indent=1, default=str))
        _replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    log.info("release %s written to %s (%s)", name, out, ", ".join(f["file"] for f in described))
    return out


def _entry(cfg: ExportConfig, loaded, arch_id: str, name: str, t: card.Training,
           files: list[dict[str, Any]]) -> dict[str, Any]:
    """The OpenModelDB entry: required fields, the training fields AWM knows, the files' resources."""
    size = [f"{k}: {v}" for k, v in sorted(loaded.hparams.items())] or None
    desc = cfg.description or (
        f"{loaded.scale}x {arch_id} model for anime wallpapers and illustrations, trained with AWM "
        f"{__version__}" + (f" (run `{t.run_name}`, {t.steps} steps, degradation `{t.preset}`)." if t.run_name else ".")
        + " See README.md of the release for the training record and evaluation.")
    entry: dict[str, Any] = {
        "name": name.split("-", 1)[1].replace("-", " "), "author": cfg.author, "license": cfg.license,
        "tags": list(cfg.tags), "description": desc, "date": datetime.date.today().isoformat(),
        "architecture": arch_id, "size": size, "scale": loaded.scale, "inputChannels": loaded.in_channels,
        "outputChannels": loaded.in_channels,
        "resources": [openmodeldb.resource(f["path"], cfg.url_base) for f in files
                      if f["path"].suffix.lstrip(".") in openmodeldb.RESOURCE_PLATFORM],
        "images": [{"type": "paired", "caption": "AWM export sample",
                    "LR": f"{cfg.url_base.rstrip('/')}/{name}_LR.png",
                    "SR": f"{cfg.url_base.rstrip('/')}/{name}_SR.png"}],
    }
    training = {"trainingIterations": t.steps, "trainingBatchSize": t.batch, "trainingHRSize": t.hr_patch,
                "trainingOTF": t.otf, "datasetSize": t.dataset_size, "pretrainedModelG": cfg.pretrained,
                "dataset": card.dataset_text(t)}
    entry.update({k: v for k, v in training.items() if v is not None})
    return entry


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_arguments(parser, ExportConfig, skip=("model",))
    parser.add_argument("model", metavar="RUN_OR_CKPT", help=ExportConfig.__dataclass_fields__["model"].metadata["help"])


def run(args: argparse.Namespace) -> int:
    """Export, print the release folder; a refused architecture or precision is exit 1 with the reason."""
    from awm.models.onnx import ExportError

    cfg = from_args(ExportConfig, args)
    try:
        out = export(cfg)
    except ExportError as e:
        log.error("export refused: %s", e)
        return 1
    print(json.dumps({"release": str(out), "files": sorted(p.name for p in out.iterdir())}))
    return 0
