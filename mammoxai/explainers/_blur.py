"""The one Gaussian blur used by blurred baselines (IG/DeepLIFT, occlusion/RISE/LIME, deletion/insertion)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_blur(batch: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur ``N×C×H×W`` with a separable Gaussian of ``sigma`` pixels (reflect padding, radius ⌈3σ⌉).

    The radius is capped below the image size (reflect padding needs that); the
    kernel is built in float32 and cast, so half-precision inputs stay accurate.
    """
    if sigma <= 0:
        return batch.clone()
    h, w = batch.shape[-2:]
    radius = max(1, min(int(math.ceil(3 * sigma)), h - 1, w - 1))
    coords = torch.arange(-radius, radius + 1, device=batch.device, dtype=torch.float32)
    kernel = torch.exp(-0.5 * (coords / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(batch.dtype)
    c = batch.shape[1]
    x = F.pad(batch, (radius, radius, radius, radius), mode="reflect")
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
