"""Modified backward passes through activation (and max-pool) modules, installed by forward hooks.

Used by Guided Backprop, DeconvNet, DeepLIFT (rescale) and Guided Grad-CAM.
:func:`modified_backward` temporarily turns off ``inplace`` on every module that
has it (timm builds ``nn.ReLU(inplace=True)``), and registers a forward hook on
each activation module that re-routes its output through :class:`_ActFn`, whose
backward applies the rule. Everything is restored on exit, also on error.
Activations applied as functions (``F.relu`` inside a ``forward``) are not seen;
timm models build activations as modules.

Rules (``g`` = gradient arriving at the activation output, ``x`` = its input):

* ``"guided"`` (Springenberg et al. 2015): ``act'(x) · max(g, 0)``; for ReLU this is
  guided backprop; for smooth activations (SiLU, GELU, ...) the same
  generalisation: negative gradients are zeroed at every activation.
* ``"deconv"`` (Zeiler & Fergus 2014): ``max(g, 0)`` (the activation's own mask is skipped).
* ``"deeplift"`` (Shrikumar et al. 2017, rescale rule, as captum): the forward runs on
  ``cat([input, baseline])``; multiplier ``Δy / Δx`` where ``|Δx| ≥ 1e-10``, else
  the gradient. Max-pools keep their ordinary gradient: on timm's ReLU → max-pool
  stems this equals what captum computes, and it keeps completeness
  (Σ attribution = f(x) − f(x')) where captum's max-pool rule loses it on
  overlapping windows.
* ``"switch"``: ordinary gradient while ``state.guided`` is false, guided otherwise —
  lets one forward pass serve an ordinary and a guided backward (Guided Grad-CAM).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

ACTIVATION_NAMES = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "CELU", "SELU", "SiLU", "Swish", "GELU", "GELUTanh", "QuickGELU",
    "Hardswish", "HardSwish", "Mish", "Softplus", "PReLU",
})
_EPS = 1e-10


def is_activation(module: nn.Module) -> bool:
    """True for elementwise activation modules (by class name; covers torch's and timm's)."""
    return type(module).__name__ in ACTIVATION_NAMES


def has_activation(model: nn.Module) -> bool:
    """True if ``model`` holds at least one activation module."""
    return any(is_activation(m) for m in model.modules())


@dataclass
class SwitchState:
    """Mutable flag read by the ``"switch"`` rule during backward."""

    guided: bool = False


def _local_grad(module: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``act'(x) · grad`` without calling hooks."""
    if isinstance(module, nn.ReLU):
        return grad * (x > 0).to(grad.dtype)
    with torch.enable_grad():
        xx = x.detach().requires_grad_(True)
        yy = type(module).forward(module, xx)
        (out,) = torch.autograd.grad(yy, xx, grad)
    return out


class _ActFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, y, module, rule, state):  # type: ignore[override]
        ctx.module, ctx.rule, ctx.state = module, rule, state
        ctx.save_for_backward(x, y)
        return y.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, y = ctx.saved_tensors
        rule = ctx.rule
        if rule == "switch":
            rule = "guided" if ctx.state.guided else "plain"
        if rule == "plain":
            out = _local_grad(ctx.module, x, grad)
        elif rule == "guided":
            out = _local_grad(ctx.module, x, grad.clamp(min=0))
        elif rule == "deconv":
            out = grad.clamp(min=0)
        else:  # deeplift rescale
            xa, xb = x.chunk(2)
            ya, yb = y.chunk(2)
            delta_in = torch.cat([xa - xb] * 2)
            delta_out = torch.cat([ya - yb] * 2)
            plain = _local_grad(ctx.module, x, grad)
            out = torch.where(delta_in.abs() < _EPS, plain, grad * delta_out / delta_in)
        return out, None, None, None, None


@contextlib.contextmanager
def modified_backward(model: nn.Module, rule: str, state: SwitchState | None = None) -> Iterator[int]:
    """Within the context, backward through ``model``'s activations follows ``rule`` (see module doc).

    Yields the number of activation modules hooked. ``rule`` is one of
    ``"guided"``, ``"deconv"``, ``"deeplift"``, ``"switch"``.
    """
    if rule not in ("guided", "deconv", "deeplift", "switch"):
        raise ValueError(f"unknown backward rule {rule!r}")
    state = state or SwitchState()
    inplace_modules = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    handles = []
    try:
        for module in inplace_modules:
            module.inplace = False
        count = 0
        for module in model.modules():
            if is_activation(module):
                def act_hook(mod, inputs, output, _rule=rule):
                    return _ActFn.apply(inputs[0], output, mod, _rule, state)
                handles.append(module.register_forward_hook(act_hook))
                count += 1
        yield count
    finally:
        for handle in handles:
            handle.remove()
        for module in inplace_modules:
            module.inplace = True
