"""Image-quality metrics by name, through pyiqa, with an offline-safe start-up.

Names are pyiqa's (``psnry`` works on BT.601 Y, 16..235 as in MATLAB's rgb2ycbcr, the SR convention,
with ``border`` = scale pixels cropped: it is training validation's own function,
:class:`awm.eval.psnr_ssim.PsnrY`, as ``ssimy`` is validation's SSIM-Y; pyiqa's default, YIQ's full-range Y, reads 20 log10(255/219) = 1.32 dB
lower; ``ssim`` is pyiqa's, on YIQ's Y rounded to 8 bits, as in its published calibration), ``ms_ssim``, ``lpips``,
``dists``; no-reference ``niqe``, ``maniqa``, ``clipiqa``, ``musiq``, ``piqe``, ...) plus
``niqe_anime``: pyiqa's NIQE with our pristine model fitted on anime images (awm.eval.niqe).
Whether higher or lower is better comes from pyiqa's own metric (``lower_better``).

On the CPU the default metrics (``psnry``, ``ssim``, ``niqe_anime``, and ``niqe``) run through
:mod:`awm.eval.fast_metrics`: pyiqa's definitions step by step at a fraction of its cost (same
values within 1e-4); ``create(..., pyiqa_only=True)`` keeps pyiqa's own code, as the tests and
``tests/benchmarks/bench_eval.py`` do to compare the two.

pyiqa takes ~7 s to import and retries downloads for ~40 s when offline, so :func:`check`
validates names and weight files first, without importing pyiqa, and fails in well under a
second naming the missing file and the command that stages it.
"""

from __future__ import annotations

import importlib.util
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from awm.errors import ConfigError
from awm.eval import weights
from awm.eval.niqe import default_model_path
from awm.imageio import to_rgb8, to_tensor
from awm.log import get_logger

# Work with no weight file at all (niqe_anime's model ships with the package).
WEIGHT_FREE = ("psnr", "psnry", "ssimy", "ssim", "ssimc", "ms_ssim", "cw_ssim", "fsim", "vif", "gmsd", "nlpd",
               "mad", "vsi", "piqe", "entropy", "niqe_anime")
DEFAULT_FULL_REFERENCE = ("psnry", "ssim", "niqe_anime")
DEFAULT_NO_REFERENCE = ("niqe_anime", "piqe")


# Smallest image side each metric can score (pyiqa 0.1.16, measured on generated images; NIQE
# works on 96 px blocks, MS-SSIM downsamples 4 times under an 11 px window). A smaller image is
# counted as failed for that metric: the one expected failure. Any other error stops the run.
MIN_SIDE = {"ssim": 11, "ssimc": 11, "ms_ssim": 161, "cw_ssim": 64, "vif": 33, "gmsd": 2, "mad": 16,
            "piqe": 8, "niqe": 96, "niqe_matlab": 96, "niqe_anime": 96}


class MissingWeightsError(RuntimeError):
    """A metric's weight file is not in the cache and downloads are off (offline nodes)."""


class MetricError(RuntimeError):
    """A metric failed on an image for a reason other than its size (shape mismatch, out of memory,
    a bug): a table with that image silently missing would mislead, so the run stops."""


@dataclass
class Metric:
    """A created metric: call with an RGB uint8 image (and its reference for full-reference ones)."""

    name: str
    full_reference: bool
    lower_better: bool
    net: Any
    fast: Callable[..., float] | None = None  # the same metric on uint8 RGB arrays (fast_metrics)

    def __call__(self, img: np.ndarray, ref: np.ndarray | None = None, image: str = "an image") -> float:
        """The score; NaN (counted as failed) only when ``img`` is below the metric's MIN_SIDE.

        ``image`` names the image in a MetricError, raised for any other failure.
        """
        import torch


        if self.full_reference and ref is None:
            raise ValueError(f"metric {self.name} needs a reference image")
        h, w = img.shape[:2]
        if min(h, w) < MIN_SIDE.get(self.name, 1):
            get_logger("awm.metrics").warning("%s cannot score %s of %dx%d (needs >= %d px per side): counted "
                                              "as failed", self.name, image, w, h, MIN_SIDE[self.name])
            return float("nan")
        try:
            if self.fast is not None:
                value = self.fast(to_rgb8(img), to_rgb8(ref)) if self.full_reference else self.fast(to_rgb8(img))
                return value if math.isfinite(value) else float("nan")
            device = next(iter(self.net.buffers()), torch.empty(0)).device
            x = to_tensor(to_rgb8(img)).to(device)
            with torch.inference_mode():
                out = self.net(x, to_tensor(to_rgb8(ref)).to(device)) if self.full_reference else self.net(x)
        except Exception as e:  # noqa: BLE001 - re-raised with the image and metric named
            raise MetricError(f"metric {self.name} failed on {image} ({w}x{h}"
                              + (f", reference {ref.shape[1]}x{ref.shape[0]}" if ref is not None else "")
                              + f"): {type(e).__name__}: {str(e).splitlines()[0][:300]}") from e
        value = float(out.detach().double().reshape(-1)[0].cpu())
        return value if math.isfinite(value) else float("nan")


def _known_names() -> set[str]:
    """pyiqa's metric names, read from its config file's source without importing pyiqa."""
    spec = importlib.util.find_spec("pyiqa")
    if spec is None or not spec.submodule_search_locations:
        raise MissingWeightsError("pyiqa is not installed (pip install pyiqa)")
    src = (Path(next(iter(spec.submodule_search_locations))) / "default_model_configs.py").read_text()
    return set(re.findall(r"^ {8}'([\w+\-.]+)': \{", src, flags=re.M)) | {"niqe_anime", "ssimy"}


def check(names: list[str], allow_download: bool = False) -> None:
    """Fail fast on unknown names and (unless downloads are allowed) on missing weight files."""
    known = _known_names()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise ConfigError("metrics", ",".join(unknown), f"weight-free ones: {', '.join(WEIGHT_FREE)}; "
                          "all: pyiqa.list_models()")
    if allow_download:
        return
    problems = []
    for name in names:
        if name == "niqe_anime":
            if not default_model_path().is_file():
                problems.append(f"{name}: {default_model_path()} is missing from the installed package")
            continue
        if name not in WEIGHT_FREE and not weights.for_metric(name):
            problems.append(f"{name}: its weight files are not in awm's registry, so they cannot be staged")
            continue
        problems += [f"{name}: needs {w.filename} at {p}" for w, p in weights.missing_for(name)]
    if problems:
        raise MissingWeightsError(
            "metric weights missing (downloads are off): " + "; ".join(problems)
            + f". Put the files in a folder on this machine and run '{weights.STAGE_HINT}'"
            " (see 'awm weights list'), or re-run with --download where there is internet.")


def _fast(name: str, pyiqa_name: str, kwargs: dict[str, Any]) -> Metric | None:
    """The fast_metrics twin of pyiqa's metric with these options, or None where there is none."""
    from awm.eval import fast_metrics

    opts = {"color_space": kwargs.get("color_space", "yiq"), "crop_border": int(kwargs.get("crop_border", 0))}
    if set(kwargs) - {"color_space", "crop_border", "pretrained_model_path"}:
        return None
    if pyiqa_name == "ssim":
        return Metric(name, True, False, None, partial(fast_metrics.ssim_y, **opts))
    if pyiqa_name == "niqe" and "pretrained_model_path" in kwargs:
        return Metric(name, False, True, None,
                      partial(fast_metrics.niqe, model_path=kwargs["pretrained_model_path"], **opts))
    return None


def create(name: str, device: str = "cpu", allow_download: bool = False,
           niqe_model: str | Path | None = None, border: int = 0, pyiqa_only: bool = False) -> Metric:
    """Build one metric after :func:`check`; ``niqe_model`` replaces niqe_anime's pristine model;
    ``border`` pixels are cropped by ``psnry`` (``awm eval`` passes the scale, as validation does).

    On the CPU, metrics that :mod:`awm.eval.fast_metrics` implements run there (same values,
    a fraction of the time) unless ``pyiqa_only``; on an accelerator pyiqa's torch code is fast.
    """
    check([name], allow_download)
    if name == "niqe_anime" and niqe_model is not None and not Path(niqe_model).is_file():
        raise FileNotFoundError(f"niqe_anime model {niqe_model}: no such file (fit one with awm niqe-fit)")
    if name == "psnry":  # training validation's own function: BT.601 Y as MATLAB/BasicSR (pyiqa's is YIQ)
        from awm.eval.psnr_ssim import PsnrY

        return Metric(name, True, False, PsnrY(border, device))
    if name == "ssimy":  # training validation's SSIM-Y (BT.601 Y, 16..235, border); ``ssim`` is pyiqa's on YIQ
        from awm.eval.psnr_ssim import SsimY

        return Metric(name, True, False, SsimY(border, device))
    kwargs: dict[str, Any] = {}
    pyiqa_name = name
    if name == "niqe_anime":
        pyiqa_name, kwargs["pretrained_model_path"] = "niqe", str(niqe_model or default_model_path())
    elif name in ("niqe", "niqe_matlab") and not weights.missing_for(name):
        kwargs["pretrained_model_path"] = str(weights.location(weights.for_metric(name)[0]))
    if not pyiqa_only and str(device).startswith("cpu"):
        fast = _fast(name, pyiqa_name, kwargs)
        if fast is not None:
            return fast
    import pyiqa

    net = pyiqa.create_metric(pyiqa_name, device=device, **kwargs)
    return Metric(name, net.metric_mode == "FR", bool(net.lower_better), net)


def create_all(names: list[str], device: str = "cpu", allow_download: bool = False,
               niqe_model: str | Path | None = None, border: int = 0) -> list[Metric]:
    """All metrics, checked together first so one missing file is reported before any import."""
    check(names, allow_download)
    return [create(n, device, allow_download, niqe_model, border) for n in names]
