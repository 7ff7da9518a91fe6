"""What every model loader returns and raises: :class:`LoadedModel` and :class:`CheckpointError`.

Both sit below the loaders (:mod:`awm.models.checkpoint` for our format and foreign weights,
:mod:`awm.models.onnx` for ONNX files), so ``load_model`` can dispatch to the ONNX loader and the
ONNX loader can build the same result without importing back.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from torch import nn


class CheckpointError(ValueError):
    """A checkpoint is missing, unsafe or unrecognised; the message names the file and the fix."""


@dataclass
class LoadedModel:
    """A model ready for inference: eval mode, RGB float [0,1] NCHW in and out."""

    module: nn.Module
    arch: str
    scale: int
    hparams: dict[str, Any]
    supports_bf16: bool
    supports_fp16: bool
    size_multiple: int
    size_min: int
    in_channels: int
    source: str
    meta: dict[str, Any] = field(default_factory=dict)
