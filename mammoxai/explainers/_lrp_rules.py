"""LRP rules as modified backward passes (the zennit formulation), and the hook that installs them.

A rule maps the relevance ``R_out`` of a module's output to the relevance of its
input, from the module input ``a``:

* ``epsilon``: ``z = f(a)``; ``R_in = a · ∂/∂a[z · (R_out / stab_ε(z))]`` (LRP-ε; ε → 0 is LRP-0)
* ``zplus``: positive contributions only (``a⁺·W⁺ (+ b⁺)`` and ``a⁻·W⁻``), as zennit's ``ZPlus``
* ``alpha_beta``: ``α·(positive part) − β·(negative part)``, as zennit's ``AlphaBeta``
* ``flat``: ``a = 1``, ``W = 1``, ``b = 0`` (relevance spread uniformly over the receptive field)
* ``norm``: ``epsilon`` for parameter-free modules (sums, average pooling)
* ``pass``: ``R_in = R_out`` (elementwise modules: activations, LayerNorm, unmerged BatchNorm)

``stab(z) = z + ε·sign(z)`` with ``sign(0) = 1`` (zennit's stabiliser).
Modules without a rule (max-pool, flatten, dropout, identity) keep their ordinary
gradient, which moves relevance unchanged (winner-takes-all for max-pool).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from torch.func import functional_call

_GUARD = threading.local()


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = 1``."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)


def _call(module: nn.Module, params: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    """``module(a)`` with substituted parameters, bypassing our own hooks."""
    _GUARD.active = True
    try:
        return functional_call(module, params, (a,))
    finally:
        _GUARD.active = False


def _params(module: nn.Module, weight: Callable[[torch.Tensor], torch.Tensor],
            bias: Callable[[torch.Tensor], torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {"weight": weight(module.weight.detach())}
    if getattr(module, "bias", None) is not None:
        out["bias"] = bias(module.bias.detach())
    return out


def _grad(z: torch.Tensor, a: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    (g,) = torch.autograd.grad(z, a, s)
    return g


@dataclass(frozen=True)
class Rule:
    """One LRP rule: ``kind`` in ``epsilon | zplus | alpha_beta | flat | norm | pass``."""

    kind: str
    epsilon: float = 1e-6
    alpha: float = 2.0
    beta: float = 1.0

    def relevance(self, module: nn.Module, a: torch.Tensor, r_out: torch.Tensor) -> torch.Tensor:
        """Relevance of ``module``'s input ``a`` given its output relevance ``r_out``."""
        if self.kind == "pass":
            return r_out
        eps = self.epsilon
        with torch.enable_grad():
            if self.kind in ("epsilon", "norm"):
                x = a.detach().requires_grad_(True)
                params = {} if self.kind == "norm" else _params(module, lambda w: w, lambda b: b)
                z = _call(module, params, x)
                return x * _grad(z, x, r_out / stabilize(z, eps))
            if self.kind == "flat":
                x = torch.ones_like(a).requires_grad_(True)
                params = _params(module, torch.ones_like, torch.zeros_like)
                z = _call(module, params, x)
                return _grad(z, x, r_out / stabilize(z, eps))
            if self.kind in ("zplus", "alpha_beta"):
                xp = a.detach().clamp(min=0).requires_grad_(True)
                xn = a.detach().clamp(max=0).requires_grad_(True)

                def part(positive: bool) -> torch.Tensor:
                    # positive: a+ W+ (+ b+) and a- W- ; negative: a+ W- (+ b-) and a- W+
                    first = _call(module, _params(
                        module, (lambda w: w.clamp(min=0)) if positive else (lambda w: w.clamp(max=0)),
                        (lambda b: b.clamp(min=0)) if positive else (lambda b: b.clamp(max=0))), xp)
                    second = _call(module, _params(
                        module, (lambda w: w.clamp(max=0)) if positive else (lambda w: w.clamp(min=0)),
                        torch.zeros_like), xn)
                    return first, second  # type: ignore[return-value]

                zp1, zp2 = part(True)
                sp = r_out / stabilize(zp1 + zp2, eps)
                pos = xp * _grad(zp1, xp, sp) + xn * _grad(zp2, xn, sp)
                if self.kind == "zplus":
                    return pos
                zn1, zn2 = part(False)
                sn = r_out / stabilize(zn1 + zn2, eps)
                neg = xp * _grad(zn1, xp, sn) + xn * _grad(zn2, xn, sn)
                return self.alpha * pos - self.beta * neg
        raise ValueError(f"unknown LRP rule {self.kind!r}")


class _RelevanceFn(torch.autograd.Function):
    """Re-routes a module's output so that its backward is the rule's relevance (the output is returned as a
    view: no copy; the ``pass`` rule keeps no tensor)."""

    @staticmethod
    def forward(ctx, a, output, module, rule):  # type: ignore[override]
        ctx.module, ctx.rule = module, rule
        if rule.kind != "pass":
            ctx.save_for_backward(a)
        return output.view_as(output)

    @staticmethod
    def backward(ctx, r_out):  # type: ignore[override]
        if ctx.rule.kind == "pass":
            return r_out, None, None, None
        (a,) = ctx.saved_tensors
        return ctx.rule.relevance(ctx.module, a, r_out), None, None, None


def attach(module: nn.Module, rule: Rule) -> torch.utils.hooks.RemovableHandle:
    """Register a forward hook making ``module``'s backward follow ``rule``; returns the handle."""

    def hook(mod: nn.Module, inputs: tuple, output: torch.Tensor):
        if getattr(_GUARD, "active", False) or not isinstance(output, torch.Tensor):
            return None
        if not torch.is_grad_enabled():
            return None
        return _RelevanceFn.apply(inputs[0], output, mod, rule)

    return module.register_forward_hook(hook)
