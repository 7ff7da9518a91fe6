"""Checkpoints: our format, foreign weights through one safe loader, and export for other tools.

Our format is a directory with ``model.safetensors`` and ``meta.json`` (arch, hparams, scale,
colour order, step, config digest), so loading needs no flags and no pickle. Foreign files
(APISR, Real-ESRGAN/BasicSR, plain state dicts, safetensors) are read with
``torch.load(weights_only=True)`` or safetensors only: a pickle that carries code is refused
before anything in it runs. spandrel detects architecture and scale from the keys.

Colour order (decision): every tensor in AWM is RGB. APISR trained its weights on BGR tensors
(OpenCV images never converted), but APISR's own inference feeds RGB, and that is what its
published results and users' outputs come from. ``load_model`` therefore feeds APISR weights
RGB by default, like APISR's inference; ``color_order="bgr"`` wraps the model so it sees BGR as
in APISR training (input and output channels swapped, callers still pass and get RGB).
Training from such a file (``model.init``) uses :func:`fold_bgr` instead: the swap goes into the
first and last convs' weights, so the network stays a plain model of its class that computes in
RGB (:data:`TRAINED_COLOR_ORDER` says which origins trained on BGR).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import pickle
import re
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file, save_file
from spandrel import UnsupportedModelError
from spandrel.architectures.GRL import GRL
from torch import nn

from awm import __version__
from awm.config import digest
from awm.errors import ConfigError
from awm.imageio import atomic_write_text, usual_mode
from awm.log import get_logger
from awm.models.archs import ARCHS, build_model, describe, export_state_dict, model_info, resolve_hparams
from awm.models.loaded import CheckpointError, LoadedModel

log = get_logger(__name__)

FORMAT = "awm-checkpoint-v1"
MODEL_FILE, META_FILE = "model.safetensors", "meta.json"
# Wrapper keys of released checkpoints, in order of preference, and who writes them.
WRAPPERS: tuple[tuple[str, str], ...] = (
    ("params_ema", "realesrgan"), ("params", "realesrgan"), ("model_state_dict", "apisr"),
    ("state_dict", "plain"), ("model", "plain"), ("net", "plain"), ("netG", "plain"),
)
PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel and torch.compile
ColorOrder = Literal["rgb", "bgr"]
# The channel order each source's weights were trained on (APISR: OpenCV images, never converted).
TRAINED_COLOR_ORDER: dict[str, ColorOrder] = {"apisr": "bgr", "realesrgan": "rgb", "plain": "rgb", "awm": "rgb"}


class ChannelSwap(nn.Module):
    """Runs ``inner`` on BGR while callers keep RGB: for weights trained on BGR tensors (APISR)."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.inner(x.flip(1)).flip(1)


def unwrap_module(model: nn.Module) -> nn.Module:
    """The bare model inside DDP / DataParallel / torch.compile wrappers."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def _replace_dir(tmp: Path, directory: Path) -> None:
    """Put the finished ``tmp`` directory at ``directory``, replacing an older one."""
    if directory.exists():
        old = directory.with_name(f".{directory.name}.old-{os.getpid()}")
        os.replace(directory, old)
        os.replace(tmp, directory)
        shutil.rmtree(old)
    else:
        os.replace(tmp, directory)


def save_checkpoint(directory: str | Path, model: nn.Module, arch: str, hparams: dict[str, Any], scale: int,
                    step: int, config: dict[str, Any] | None = None) -> Path:
    """Write ``model.safetensors`` + ``meta.json`` into ``directory`` atomically (whole directory swap).

    The meta carries everything :func:`load_model` needs to rebuild the model with no flags.
    """
    directory = Path(directory)
    hp = resolve_hparams(arch, **hparams)
    info = model_info(arch, scale, **hp)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in unwrap_module(model).state_dict().items()}
    meta = {"format": FORMAT, "arch": arch, "hparams": hp, "scale": scale, "color_order": "RGB", "step": step,
            "config_digest": digest(config) if config is not None else None, "config": config,
            "awm_version": __version__, "info": asdict(info)}
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    try:
        save_file(state, str(tmp / MODEL_FILE), metadata={"format": FORMAT, "arch": arch})
        atomic_write_text(tmp / META_FILE, json.dumps(meta, indent=1, sort_keys=True, default=str))
        _replace_dir(usual_mode(tmp), directory)  # mkdtemp and safetensors make 0700/0600
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return directory


def _checkpoint_dir(path: Path) -> Path:
    """Our checkpoint directory for ``path``: itself, or a run's best (else last) checkpoint."""
    if (path / META_FILE).is_file():
        return path
    for name in ("best", "last"):
        if (path / "checkpoints" / name / META_FILE).is_file():
            return path / "checkpoints" / name
    raise CheckpointError(f"{path}: not a checkpoint (no {META_FILE}) and not a run directory "
                          f"(no checkpoints/best/{META_FILE} or checkpoints/last/{META_FILE})")


def _load_ours(ckpt: Path, device: str) -> LoadedModel:
    meta = json.loads((ckpt / META_FILE).read_text())
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{ckpt / META_FILE}: format {meta.get('format')!r}, expected {FORMAT!r}")
    arch, scale, hp = meta["arch"], int(meta["scale"]), meta["hparams"]
    module = build_model(arch, scale, **hp)
    module.load_state_dict(read_weights(ckpt / MODEL_FILE), strict=True)
    info = meta["info"]  # spandrel's descriptor facts, computed once at save time
    return LoadedModel(module.to(device).eval(), arch, scale, resolve_hparams(arch, **hp), info["supports_bf16"],
                       info["supports_fp16"], info["size_multiple"], info["size_min"], 3, "awm", meta)


def read_weights(path: str | Path) -> dict[str, Any]:
    """Raw contents of a .pth/.pt/.ckpt/.bin/.safetensors file, without ever running pickled code."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.suffix.lower() == ".safetensors":
        from safetensors import SafetensorError

        try:
            return load_file(str(path))
        except (SafetensorError, OSError) as e:  # a truncated or corrupt file: named, one line
            raise CheckpointError(f"{path}: not a readable .safetensors file ({e})") from None
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if re.search(r"GLOBAL|Unsupported", ln)]
        raise CheckpointError(
            f"{path}: refused: the pickle holds Python objects other than tensors, which could run code "
            f"on load ({(lines or ['unsupported pickle content'])[0][:200]}). Only weights-only pickles and .safetensors are accepted; "
            "re-save the state dict with torch.save(model.state_dict(), ...) in a trusted environment") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: holds a {type(data).__name__}, not a state dict")
    return data


def normalize_state_dict(data: dict[str, Any]) -> tuple[dict[str, torch.Tensor], str]:
    """(bare state dict, source) from any known layout: wrappers unwrapped, prefixes stripped."""
    source = "plain"
    for key, who in WRAPPERS:
        if isinstance(data.get(key), dict):
            data, source = data[key], who
            break
    state = {}
    for k, v in data.items():
        if not isinstance(v, torch.Tensor):
            continue
        while k.startswith(PREFIXES):
            k = k.split(".", 1)[1]
        state[k] = v
    if not state:
        raise CheckpointError("no tensors found (known wrappers: " + ", ".join(k for k, _ in WRAPPERS) + ")")
    return state, source


def _jsonable(v: Any) -> Any:
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, (int, float, str, bool)) or v is None:
        return v
    return str(v)


def _norm_hparams(hp: dict[str, Any]) -> dict[str, Any]:
    return {k: _jsonable(v) for k, v in hp.items()}


# Our hyperparameter names where spandrel's differ.
_SPANDREL_NAMES = {"num_feat@ESRGAN": "num_filters", "num_block@ESRGAN": "num_blocks",
                   "num_heads@GRL": "num_heads_window"}


def _match_arch(foreign: nn.Module, spandrel_id: str, scale: int, stripe_shift: bool | None
                ) -> tuple[str, dict[str, Any], nn.Module] | None:
    """Our (arch, hparams, model) that reproduces ``foreign`` exactly, or None if no entry can."""
    theirs = dict(foreign.hyperparameters)
    if stripe_shift is not None:
        theirs["stripe_shift"] = stripe_shift
    candidates = [s for s in ARCHS.values() if s.spandrel_id == spandrel_id and scale in s.scales]
    for spec in candidates:
        hp = {k: theirs.get(_SPANDREL_NAMES.get(f"{k}@{spandrel_id}", k), d) for k, d in spec.defaults.items()}
        hp = {k: list(v) if isinstance(v, tuple) else v for k, v in hp.items()}
        try:
            ours = build_model(spec.name, scale, **hp)
        except (ConfigError, TypeError, KeyError):
            continue
        if _norm_hparams(ours.hyperparameters) == _norm_hparams(theirs):
            exact = [s.name for s in candidates if s.defaults == hp]
            return (exact[0] if exact else spec.name), hp, ours
    return None


def _load_foreign(path: Path, device: str, color_order: ColorOrder | None) -> LoadedModel:
    data = read_weights(path)
    try:
        state, source = normalize_state_dict(data)
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        desc = describe(state)
    except UnsupportedModelError:
        raise CheckpointError(f"{path}: spandrel recognises no architecture in these keys "
                              f"(first keys: {', '.join(list(state)[:4])})") from None
    # APISR trained GRL with stripe_shift=False; spandrel assumes True, so rebuild to match APISR.
    stripe_shift = False if source == "apisr" and isinstance(desc.model, GRL) else None
    matched = _match_arch(desc.model, desc.architecture.id, int(desc.scale), stripe_shift)
    if matched is not None:
        arch, hp, module = matched
        module.load_state_dict(desc.model.state_dict(), strict=True)
    elif stripe_shift is not None:
        raise CheckpointError(f"{path}: APISR GRL with hyperparameters no AWM arch reproduces")
    else:
        arch, hp, module = desc.architecture.id, _norm_hparams(desc.model.hyperparameters), desc.model
    order = color_order or "rgb"
    if order == "bgr":
        module = ChannelSwap(module)
    req = desc.size_requirements
    info = model_info(arch, int(desc.scale), **hp) if matched else None
    meta = {"file": str(path), "spandrel_arch": desc.architecture.id, "tags": list(desc.tags),
            "color_order": order.upper()}
    return LoadedModel(module.to(device).eval(), arch, int(desc.scale), hp, bool(desc.supports_bfloat16),
                       bool(desc.supports_half), info.size_multiple if info else int(req.multiple_of),
                       info.size_min if info else int(req.minimum), int(desc.input_channels), source, meta)


def load_model(path: str | Path, device: str = "cpu", color_order: ColorOrder | None = None) -> LoadedModel:
    """Load one of our checkpoint dirs, a run dir (best, else last), a foreign weights file or an ONNX file.

    ``color_order`` applies to foreign files only: None/"rgb" feeds RGB (APISR's inference does
    this too), "bgr" feeds BGR as APISR's training did. Our checkpoints are RGB by construction.
    An ``.onnx`` file runs through onnxruntime (:mod:`awm.models.onnx`) behind the same interface.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        if color_order not in (None, "rgb"):
            raise CheckpointError(f"{path}: color_order={color_order!r} applies to foreign weight files only")
        from awm.models.onnx import load_onnx

        return load_onnx(path, device)
    if path.is_dir():
        if color_order not in (None, "rgb"):
            raise CheckpointError(f"{path}: AWM checkpoints are RGB; color_order={color_order!r} applies "
                                  "to foreign weight files only")
        return _load_ours(_checkpoint_dir(path), device)
    return _load_foreign(path, device, color_order)


def _esrgan_to_basicsr(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """spandrel's old ESRGAN keys (model.N...) -> BasicSR RRDBNet names (conv_first, body.i.rdbk...)."""
    out: dict[str, torch.Tensor] = {}
    indices = sorted({int(k.split(".")[1]) for k in state if k.startswith("model.")})
    last_up = max(i for i in indices if i >= 3 and i % 3 == 0 and i + 4 in indices)
    top = {0: "conv_first", last_up + 2: "conv_hr", last_up + 4: "conv_last"}
    top.update({i: f"conv_up{i // 3}" for i in range(3, last_up + 1, 3)})
    n_blocks = max(int(k.split(".")[3]) for k in state if k.startswith("model.1.sub.") and ".RDB" in k) + 1
    for k, v in state.items():
        parts = k.split(".")
        if parts[1] == "1":
            if parts[3] == str(n_blocks):
                out[f"conv_body.{parts[4]}"] = v
            else:
                rdb, conv = parts[4].lower(), parts[5]
                out[f"body.{parts[3]}.{rdb}.{conv}.{parts[7]}"] = v
        else:
            out[f"{top[int(parts[1])]}.{parts[2]}"] = v
    return out


def basicsr_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """State dict in the original/BasicSR key layout that spandrel, chaiNNer and APISR read."""
    from spandrel.architectures.ESRGAN import ESRGAN

    module = unwrap_module(module)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in export_state_dict(module).items()}
    return _esrgan_to_basicsr(state) if isinstance(module, ESRGAN) else state


def basicsr_names(module: nn.Module) -> dict[str, str]:
    """Our state-dict key -> the BasicSR name users know it by (identity except for ESRGAN/RRDBNet)."""
    from spandrel.architectures.ESRGAN import ESRGAN

    module = unwrap_module(module)
    keys = list(module.state_dict())
    if not isinstance(module, ESRGAN):
        return {k: k for k in keys}
    renamed = _esrgan_to_basicsr({k: torch.tensor(i) for i, k in enumerate(keys)})
    return {keys[int(i)]: name for name, i in renamed.items()}


def weights_metadata(loaded: LoadedModel) -> dict[str, str]:
    """What an exported weights file says about itself: arch, scale, colour order, AWM version, config digest."""
    return {"awm_arch": loaded.arch, "awm_scale": str(loaded.scale),
            "awm_color_order": str(loaded.meta.get("color_order", "RGB")).upper(), "awm_version": __version__,
            "awm_config_digest": str(loaded.meta.get("config_digest") or ""),
            "awm_step": str(loaded.meta.get("step", ""))}


def convert(src: str | Path, out: str | Path) -> dict[str, Any]:
    """Export any loadable checkpoint to a spandrel-loadable file and check spandrel reproduces it.

    ``.pth``/``.pt`` get the BasicSR ``{"params_ema": state}`` wrapper; ``.safetensors`` is flat
    with :func:`weights_metadata` in its header.
    """
    from spandrel import ModelLoader

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".pth", ".pt", ".safetensors"):
        raise ConfigError("--out", str(out), "a file name ending in .pth, .pt or .safetensors")
    loaded = load_model(src)
    if loaded.source == "onnx":
        raise ConfigError("checkpoint", str(src), "PyTorch weights or an AWM checkpoint (ONNX holds no state dict)")
    state = basicsr_state_dict(loaded.module)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    try:
        if suffix == ".safetensors":
            save_file(state, str(tmp), metadata=weights_metadata(loaded))
        else:
            torch.save({"params_ema": state}, tmp)
        os.replace(usual_mode(tmp), out)
    finally:
        tmp.unlink(missing_ok=True)
    back = ModelLoader().load_from_file(out)
    side = max(loaded.size_min, 2 * loaded.size_multiple, 16)
    x = torch.rand(1, loaded.in_channels, side, side, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = float((back.model.eval()(x) - unwrap_module(loaded.module)(x)).abs().max())
    if diff > 1e-5:
        log.warning("%s: spandrel rebuilds this model with different hyperparameters (max abs diff %.2e); "
                    "e.g. a GRL trained with stripe_shift=False", out, diff)
    return {"out": str(out), "arch": loaded.arch, "spandrel_arch": back.architecture.id, "scale": back.scale,
            "tensors": len(state), "max_abs_diff": diff}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``awm convert CKPT --out FILE``."""
    parser.add_argument("checkpoint", metavar="CKPT", help="AWM checkpoint dir, run dir or weights file")
    parser.add_argument("--out", required=True, metavar="FILE",
                        help="output .pth (BasicSR params_ema layout) or .safetensors")


def run(args: argparse.Namespace) -> int:
    """Convert and print a one-line JSON summary."""
    print(json.dumps(convert(args.checkpoint, args.out)))
    return 0


def _end_convs(module: nn.Module, x: torch.Tensor) -> tuple[str, str]:
    """Names of the first and the last Conv2d a forward pass runs (the ones touching colour)."""
    order: list[str] = []
    hooks = [m.register_forward_hook(lambda *_, n=name: order.append(n))
             for name, m in module.named_modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            module(x)
    finally:
        for h in hooks:
            h.remove()
    if not order:
        raise CheckpointError(f"{type(module).__name__} has no Conv2d to fold a channel swap into")
    return order[0], order[-1]


def fold_bgr(module: nn.Module, size_multiple: int = 1, size_min: int = 1) -> nn.Module:
    """A copy of ``module`` whose weights compute, on RGB, what ``module`` computes on BGR.

    Equal to ``ChannelSwap(module)`` but a plain network of the same class and keys, so it trains
    and saves like any other: the first conv's input channels and the last conv's output
    channels are reversed in colour groups (pixel-(un)shuffle keeps each colour's sub-pixels
    together: channel ``c * r^2 + k``). Checked on a random input; an architecture with colour
    handling outside those convs (a per-channel mean that is not in its state dict) raises.
    """
    side = max(size_min, 16)
    side += -side % size_multiple
    x = torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(0))
    module = module.eval()
    first, last = _end_convs(module, x)
    folded = copy.deepcopy(module)
    convs = dict(folded.named_modules())
    with torch.no_grad():
        w = convs[first].weight
        w.copy_(w.unflatten(1, (3, -1)).flip(1).flatten(1, 2))
        for t in (convs[last].weight, convs[last].bias):
            if t is not None:
                t.copy_(t.unflatten(0, (3, -1)).flip(0).flatten(0, 1))
        want, got = module(x.flip(1)).flip(1), folded(x)
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-5):
        raise CheckpointError(f"{type(module).__name__}: a BGR->RGB swap cannot be folded into its first/last "
                              f"convs ({first}, {last}); max abs diff {float((got - want).abs().max()):.2e}")
    return folded

