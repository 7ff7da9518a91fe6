"""Batches as images on the device: loader uint8 NHWC to float NCHW, the bicubic baseline, and the
LR | bicubic | SR | HR grids logged to TensorBoard."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def to_float(batch: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    """uint8 NHWC from the loader -> float NCHW in [0, 1] on the device (converted there, not in workers)."""
    x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)


def bicubic(lr: torch.Tensor, scale: int) -> torch.Tensor:
    return F.interpolate(lr, scale_factor=scale, mode="bicubic", align_corners=False).clamp(0, 1)


def image_grid(lr: torch.Tensor, sr: torch.Tensor, hr: torch.Tensor, scale: int) -> torch.Tensor:
    """Rows of LR (nearest) | bicubic | SR | HR crops, CHW in [0, 1], for TensorBoard."""
    from torchvision.utils import make_grid

    near = F.interpolate(lr, scale_factor=scale, mode="nearest")
    tiles = torch.stack([near, bicubic(lr, scale), sr.clamp(0, 1), hr], 1).flatten(0, 1)
    return make_grid(tiles.float().cpu(), nrow=4, padding=2, pad_value=1.0)
