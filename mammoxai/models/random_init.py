"""Random weights with every residual branch live, for tests and benchmarks on untrained timm models.

A freshly built timm model is a poor stand-in for a trained one: its BatchNorm layers have running
statistics ``(0, 1)`` and timm zero-initialises the last BatchNorm scale of each residual branch (and
ConvNeXt's layer scales start at 1e-6), so every branch contributes ~nothing and the network is close to
its skip connections. :func:`live_branches` gives those layers random, non-trivial values from its own
seeded generator, so explainers' agreement tests and speed benchmarks see a network whose every block
matters. The same seed gives the same values.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["live_branches"]


def live_branches(model: nn.Module, seed: int = 1) -> nn.Module:
    """Give ``model``'s BatchNorm2d layers random statistics and affine parameters and its 1-D layer scales
    (``gamma``, ConvNeXt) random values in [0.5, 1), in place; returns ``model``.

    BatchNorm: running mean in [-0.2, 0.2), running variance in [0.5, 2), weight in [0.5, 1.5), bias in
    [-0.1, 0.1), drawn in module order from a generator seeded with ``seed``.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                c = module.num_features
                module.running_mean.copy_(torch.rand(c, generator=gen) * 0.4 - 0.2)
                module.running_var.copy_(torch.rand(c, generator=gen) * 1.5 + 0.5)
                module.weight.copy_(torch.rand(c, generator=gen) + 0.5)
                module.bias.copy_(torch.rand(c, generator=gen) * 0.2 - 0.1)
            gamma = getattr(module, "gamma", None)
            if isinstance(gamma, torch.Tensor) and gamma.ndim == 1:
                gamma.copy_(torch.rand(gamma.numel(), generator=gen) * 0.5 + 0.5)
    return model
