"""Metric and backbone weight files for nodes without internet: list, stage, verify.

pyiqa, torchvision, timm and CLIP each download on first use into their own cache; offline, a
missing file costs pyiqa ~40 s of retries before an unclear failure. This registry says which
file each metric needs and where the library will look, so ``awm weights stage --from DIR``
can put files there ahead of time (sha256-checked where the digest is known) and
:func:`missing_for` lets a stage fail in well under a second, naming the file and the command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

STAGE_HINT = "awm weights stage --from DIR"
_PYIQA_HF = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights/resolve/main/"
_TV = "https://download.pytorch.org/models/"
_CLIP_RN50 = ("https://openaipublic.azureedge.net/clip/models/afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762/RN50.pt")


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file; ``cache`` says whose cache it lives in (pyiqa, torchvision, clip, hf:<repo>)."""

    filename: str
    cache: str
    url: str
    sha256: str | None = None
    sha256_prefix: str | None = None
    used_by: tuple[str, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.cache}/{self.filename}"


def _pyiqa(name: str, *used_by: str) -> WeightFile:
    return WeightFile(name, "pyiqa", _PYIQA_HF + name, used_by=used_by)


def _tv(name: str, *used_by: str) -> WeightFile:
    # torchvision names carry the first 8 hex digits of the file's sha256 (torch.hub checks them).
    return WeightFile(name, "torchvision", _TV + name, sha256_prefix=name.rsplit("-", 1)[1].split(".")[0],
                      used_by=used_by)


# Explicit registry: pyiqa 0.1.x file names (from its archs' default_model_urls) and the
# backbones those archs create with pretrained=True.
METRIC_WEIGHTS: tuple[WeightFile, ...] = (
    _pyiqa("niqe_modelparameters.mat", "niqe"),
    _pyiqa("niqe_matlab_params.mat", "niqe_matlab"),
    _pyiqa("ILNIQE_templateModel.mat", "ilniqe"),
    _pyiqa("brisque_svm_weights.pth", "brisque"),
    _pyiqa("brisque_matlab.mat", "brisque_matlab"),
    _pyiqa("LPIPS_v0.1_alex-df73285e.pth", "lpips"),
    _pyiqa("LPIPS_v0.1_vgg-a78928a0.pth", "lpips-vgg"),
    _pyiqa("DISTS_weights-f5e65c96.pth", "dists"),
    _pyiqa("ckpt_koniq10k.pt", "maniqa"),
    _pyiqa("MANIQA_PIPAL-ae6d356b.pth", "maniqa-pipal"),
    _pyiqa("ckpt_kadid10k.pt", "maniqa-kadid"),
    _pyiqa("CLIP-IQA+_learned_prompts-603f3273.pth", "clipiqa+"),
    _pyiqa("musiq_koniq_ckpt-e95806b9.pth", "musiq"),
    _pyiqa("musiq_ava_ckpt-e8d3f067.pth", "musiq-ava"),
    _pyiqa("musiq_spaq_ckpt-358bb6af.pth", "musiq-spaq"),
    _pyiqa("musiq_paq2piq_ckpt-364c0c84.pth", "musiq-paq2piq"),
    _pyiqa("cfanet_nr_koniq_res50-9a73138b.pth", "topiq_nr"),
    _tv("alexnet-owt-7be5be79.pth", "lpips"),
    _tv("vgg16-397923af.pth", "lpips-vgg", "dists"),
    _tv("resnet50-0676ba61.pth", "topiq_nr"),
    WeightFile("RN50.pt", "clip", _CLIP_RN50,
               sha256="afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762",
               used_by=("clipiqa", "clipiqa+")),
    WeightFile("model.safetensors", "hf:timm/vit_base_patch8_224.augreg2_in21k_ft_in1k",
               "https://huggingface.co/timm/vit_base_patch8_224.augreg2_in21k_ft_in1k/resolve/main/"
               "model.safetensors", used_by=("maniqa", "maniqa-pipal", "maniqa-kadid")),
)

TRAINING_WEIGHTS: tuple[WeightFile, ...] = (_tv("vgg19-dcbb9e9d.pth", "perceptual-vgg19"),)


def _backbone_weights() -> tuple[WeightFile, ...]:
    """The training losses' backbone files (awm.models.losses owns that list; all in torch hub/checkpoints)."""
    try:
        from awm.models.losses import BACKBONE_WEIGHTS
    except ImportError:
        return TRAINING_WEIGHTS
    found = tuple(WeightFile(b.filename, "torchvision", b.url, sha256_prefix=b.sha256_prefix,
                             used_by=(f"{b.name} ({b.used_by})",)) for b in BACKBONE_WEIGHTS.values())
    names = {w.filename for w in found}
    return found + tuple(w for w in TRAINING_WEIGHTS if w.filename not in names)


def registry() -> tuple[WeightFile, ...]:
    return METRIC_WEIGHTS + _backbone_weights()


def torch_hub_dir() -> Path:
    import torch

    return Path(torch.hub.get_dir())


def hf_cache_dir() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


_HF_REVISION = "0" * 40  # staged snapshots are pinned to a placeholder commit named in refs/main


def location(w: WeightFile) -> Path:
    """Where the owning library looks for ``w`` (pyiqa: hub/pyiqa, torchvision: hub/checkpoints, ...)."""
    if w.cache == "pyiqa":
        return torch_hub_dir() / "pyiqa" / w.filename
    if w.cache == "clip":
        return torch_hub_dir() / "clip" / w.filename
    if w.cache == "torchvision":
        return torch_hub_dir() / "checkpoints" / w.filename
    if w.cache.startswith("hf:"):
        repo = w.cache[3:]
        base = hf_cache_dir() / ("models--" + repo.replace("/", "--"))
        ref = base / "refs" / "main"
        rev = ref.read_text().strip() if ref.is_file() else _HF_REVISION
        return base / "snapshots" / rev / w.filename
    raise ValueError(f"unknown cache kind {w.cache!r}")


def for_metric(metric: str) -> list[WeightFile]:
    return [w for w in METRIC_WEIGHTS if metric in w.used_by]


def missing_for(metric: str) -> list[tuple[WeightFile, Path]]:
    """Registered files of ``metric`` that are not where their library will look (no network)."""
    return [(w, p) for w in for_metric(metric) if not (p := location(w)).is_file()]


def check_digest(w: WeightFile, path: Path) -> str | None:
    """None when the file matches what is known of its sha256, else the reason."""
    if w.sha256 is None and w.sha256_prefix is None:
        return None
    from awm.imageio import sha256_file  # cv2/numpy: only when a digest is checked (light `awm weights list`)

    digest = sha256_file(path)
    if w.sha256 and digest != w.sha256:
        return f"sha256 {digest[:16]}... != expected {w.sha256[:16]}..."
    if w.sha256_prefix and not digest.startswith(w.sha256_prefix):
        return f"sha256 {digest[:16]}... does not start with {w.sha256_prefix}"
    return None


def verify(entries: tuple[WeightFile, ...] | None = None) -> list[dict]:
    """One row per registered file: status present / missing / mismatch, path and reason."""
    rows = []
    for w in entries or registry():
        p = location(w)
        if not p.is_file():
            status, reason = "missing", ""
        else:
            reason = check_digest(w, p) or ""
            status = "mismatch" if reason else "present"
        rows.append({"file": w.filename, "cache": w.cache, "status": status, "path": str(p),
                     "used_by": ",".join(w.used_by), "checksum": "sha256" if w.sha256 else
                     ("sha256-prefix" if w.sha256_prefix else "none"), "reason": reason})
    return rows


def _install(src: Path, w: WeightFile) -> Path:
    dest = location(w)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp{os.getpid()}")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)
    if w.cache.startswith("hf:"):
        ref = dest.parents[2] / "refs" / "main"
        if not ref.is_file():
            ref.parent.mkdir(parents=True, exist_ok=True)
            ref.write_text(dest.parent.name)
    return dest


def stage(source: str | Path, entries: tuple[WeightFile, ...] | None = None) -> list[dict]:
    """Copy every registered file found (by name, anywhere) under ``source`` to its cache location.

    A file whose checksum does not match is refused, never installed. Files without a known digest
    (pyiqa's own, which pyiqa itself downloads unchecked, the timm ViT, the Danbooru ResNet50) are
    copied with a reason saying so: only their names were checked.
    """
    src_dir = Path(source)
    if not src_dir.is_dir():
        raise FileNotFoundError(f"--from {source}: not a folder")
    by_name: dict[str, list[Path]] = {}
    for p in sorted(src_dir.rglob("*")):
        if p.is_file():
            by_name.setdefault(p.name, []).append(p)
    rows = []
    for w in entries or registry():
        cands = by_name.get(w.filename, [])
        if w.cache.startswith("hf:"):
            repo_dir = w.cache[3:].split("/")[-1]
            cands = [c for c in cands if any(repo_dir in part for part in c.parts)]
        if not cands:
            continue
        src = cands[0]
        reason = check_digest(w, src)
        if reason:
            rows.append({"file": w.filename, "status": "refused", "path": str(src), "reason": reason})
            continue
        unchecked = "" if w.sha256 or w.sha256_prefix else "no published sha256: copied unchecked"
        rows.append({"file": w.filename, "status": "staged", "path": str(_install(src, w)), "reason": unchecked})
    return rows


def _print_rows(rows: list[dict], cols: tuple[str, ...]) -> None:
    print("  ".join(c.upper() for c in cols))
    for r in rows:
        print("  ".join(str(r[c]) for c in cols))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    sub.add_parser("list", help="every known file, who uses it and where it belongs")
    st = sub.add_parser("stage", help="copy files from a folder into the caches (sha256-checked where a "
                                      "digest is known: torchvision backbones, CLIP RN50)")
    st.add_argument("--from", dest="source", required=True, metavar="DIR",
                    help="folder holding downloaded files under their original names")
    sub.add_parser("verify", help="present / missing / mismatch for every known file")


def run(args: argparse.Namespace) -> int:
    if args.action == "list":
        _print_rows(verify(), ("file", "used_by", "checksum", "path"))
        return 0
    if args.action == "stage":
        rows = stage(args.source)
        _print_rows(rows, ("status", "file", "path", "reason"))
        if not rows:
            print(f"no known weight file found under {args.source} (see 'awm weights list')", file=sys.stderr)
        return 1 if any(r["status"] == "refused" for r in rows) else 0
    rows = verify()
    _print_rows(rows, ("status", "file", "path", "reason"))
    return 1 if any(r["status"] == "mismatch" for r in rows) else 0
