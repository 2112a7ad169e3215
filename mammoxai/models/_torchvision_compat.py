"""Make ``import torchvision`` (and so ``import timm``) work with the CPU torch wheel.

The only torchvision that matches torch 2.13 on the registry is a CUDA build. With
the CPU torch, importing it fails with ``operator torchvision::nms does not
exist`` because its compiled extension cannot register the ops. Classification
needs none of torchvision's compiled ops, so when (and only when) the ops are
really missing we declare their schemas, which is all ``torchvision``'s import
needs. On a machine with a working torchvision (e.g. CUDA) this is a no-op.
"""

from __future__ import annotations

import torch

_LIBRARY: "torch.library.Library | None" = None


def ensure_torchvision_importable() -> None:
    """Declare ``torchvision::nms`` / ``qnms`` op schemas if the extension did not."""
    global _LIBRARY
    if _LIBRARY is not None:
        return
    try:
        torch.ops.torchvision.nms  # noqa: B018 - attribute access is the probe
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY = lib


def import_timm():
    """Return the ``timm`` module, importable on CPU-only torch."""
    ensure_torchvision_importable()
    import timm

    return timm
