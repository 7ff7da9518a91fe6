"""OpenModelDB entries: build one for a release and check it against the database's schema.

The checks are written from ``src/lib/schema.ts`` of github.com/OpenModelDB/open-model-database
(``Model``, ``ExtraModelProperties``, ``Resource`` = pth | safetensors | onnx, ``Image`` = paired |
standalone, and the id patterns at its end) and its ``data/architectures.json`` ids. An entry's
file name is its model id (``2x-Name-Arch.json``), so the id pattern applies to the release name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from awm.imageio import sha256_file

MODEL_ID = re.compile(r"^\d+x-[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
USER_ID = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
TAG_ID = re.compile(r"^[a-zA-Z0-9]+(?:-[a-zA-Z0-9]+)*$")
DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
SHA256 = re.compile(r"^[0-9a-f]{64}$")

# spandrel architecture id -> OpenModelDB architecture id (data/architectures.json).
ARCH_IDS = {"ESRGAN": "esrgan", "Compact": "compact", "SPAN": "span", "DAT": "dat", "HAT": "hat",
            "SwinIR": "swinir", "GRL": "grl", "OmniSR": "omnisr", "RealPLKSR": "realplksr", "ATD": "atd",
            "RGT": "rgt", "DRCT": "drct", "SRFormer": "srformer", "RealCUGAN": "real-cugan"}
# resource type -> platform (PthFile, SafetensorsFile, OnnxFile)
RESOURCE_PLATFORM = {"pth": "pytorch", "safetensors": "pytorch", "onnx": "onnx"}

_STR, _INT, _NUM, _BOOL = "string", "integer", "number", "boolean"
REQUIRED: dict[str, tuple[str, ...]] = {
    "name": (_STR,), "author": (_STR, "string[]"), "license": (_STR, "null"), "tags": ("string[]",),
    "description": (_STR,), "date": (_STR,), "architecture": (_STR,), "size": ("string[]", "null"),
    "scale": (_NUM,), "inputChannels": (_NUM,), "outputChannels": (_NUM,), "resources": ("array",),
    "images": ("array",),
}
OPTIONAL: dict[str, tuple[str, ...]] = {
    "trainingIterations": (_NUM,), "trainingEpochs": (_NUM,), "trainingBatchSize": (_NUM, _STR),
    "trainingHRSize": (_NUM,), "trainingOTF": (_BOOL,), "dataset": (_STR,), "datasetSize": (_NUM,),
    "pretrainedModelG": (_STR,), "pretrainedModelD": (_STR,), "thumbnail": ("object",),
}


def _is(value: Any, kind: str) -> bool:
    if kind == _STR:
        return isinstance(value, str)
    if kind == _NUM:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == _BOOL:
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "string[]":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "array":
        return isinstance(value, list)
    if kind == "object":
        return isinstance(value, dict)
    raise ValueError(kind)


def _fields(obj: dict[str, Any], required: dict[str, tuple[str, ...]], optional: dict[str, tuple[str, ...]],
            where: str) -> list[str]:
    errors = [f"{where}{k}: missing (required)" for k in required if k not in obj]
    for k, v in obj.items():
        kinds = required.get(k) or optional.get(k)
        if kinds is None:
            errors.append(f"{where}{k}: not a field of the schema")
        elif not any(_is(v, kind) for kind in kinds):
            errors.append(f"{where}{k}: {type(v).__name__} {v!r:.60}, expected {' | '.join(kinds)}")
    return errors


def _resource(r: Any, i: int) -> list[str]:
    where = f"resources[{i}]."
    if not isinstance(r, dict):
        return [f"resources[{i}]: expected an object"]
    errors = _fields(r, {"type": (_STR,), "platform": (_STR,), "size": (_NUM,), "sha256": (_STR,),
                         "urls": ("string[]",)}, {}, where)
    kind = r.get("type")
    if kind not in RESOURCE_PLATFORM:
        errors.append(f"{where}type: {kind!r}, expected one of {', '.join(RESOURCE_PLATFORM)}")
    elif r.get("platform") != RESOURCE_PLATFORM[kind]:
        errors.append(f"{where}platform: {r.get('platform')!r}, a {kind} file is {RESOURCE_PLATFORM[kind]!r}")
    if isinstance(r.get("sha256"), str) and not SHA256.match(r["sha256"]):
        errors.append(f"{where}sha256: not 64 lowercase hex digits")
    return errors


def _image(img: Any, i: int) -> list[str]:
    where = f"images[{i}]."
    if not isinstance(img, dict):
        return [f"images[{i}]: expected an object"]
    opt = {"caption": (_STR,), "thumbnail": (_STR,)}
    if img.get("type") == "paired":
        return _fields(img, {"type": (_STR,), "LR": (_STR,), "SR": (_STR,)}, opt, where)
    if img.get("type") == "standalone":
        return _fields(img, {"type": (_STR,), "url": (_STR,)}, opt, where)
    return [f"{where}type: {img.get('type')!r}, expected 'paired' or 'standalone'"]


def validate(entry: dict[str, Any], model_id: str) -> list[str]:
    """Every way ``entry`` (file ``model_id``.json) breaks the schema; empty when it is valid."""
    errors = [] if MODEL_ID.match(model_id) else [f"id {model_id!r}: does not match {MODEL_ID.pattern}"]
    errors += _fields(entry, REQUIRED, OPTIONAL, "")
    authors = entry.get("author")
    for a in [authors] if isinstance(authors, str) else authors if isinstance(authors, list) else []:
        if not USER_ID.match(a):
            errors.append(f"author: {a!r} does not match {USER_ID.pattern}")
    errors += [f"tags: {t!r} does not match {TAG_ID.pattern}" for t in entry.get("tags") or []
               if isinstance(t, str) and not TAG_ID.match(t)]
    if isinstance(entry.get("date"), str) and not DATE.match(entry["date"]):
        errors.append(f"date: {entry['date']!r}, expected yyyy-mm-dd")
    if entry.get("architecture") not in ARCH_IDS.values():
        errors.append(f"architecture: {entry.get('architecture')!r}, expected an OpenModelDB id "
                      f"({', '.join(sorted(ARCH_IDS.values()))})")
    if isinstance(entry.get("scale"), (int, float)) and (entry["scale"] < 1 or entry["scale"] != int(entry["scale"])):
        errors.append(f"scale: {entry['scale']!r}, expected a positive integer")
    for i, r in enumerate(entry.get("resources") or []):
        errors += _resource(r, i)
    for i, img in enumerate(entry.get("images") or []):
        errors += _image(img, i)
    return errors


def resource(path: Path, url_base: str) -> dict[str, Any]:
    """A Resource for a release file: its type, platform, size and sha256, and a URL to fill in."""
    kind = path.suffix.lstrip(".").lower()
    return {"platform": RESOURCE_PLATFORM[kind], "type": kind, "size": path.stat().st_size,
            "sha256": sha256_file(path), "urls": [f"{url_base.rstrip('/')}/{path.name}"]}


def check_files(entry: dict[str, Any], folder: Path) -> list[str]:
    """Resources whose file (by URL basename, in ``folder``) is missing or differs in size or sha256."""
    errors = []
    for i, r in enumerate(entry.get("resources", [])):
        path = folder / r["urls"][0].rsplit("/", 1)[-1]
        if not path.is_file():
            errors.append(f"resources[{i}]: {path.name} not in {folder}")
        elif path.stat().st_size != r["size"] or sha256_file(path) != r["sha256"]:
            errors.append(f"resources[{i}]: {path.name} differs from its size/sha256")
    return errors
