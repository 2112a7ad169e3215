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

Cost: each rule is one forward of the layer with modified parameters and one backward kernel to its
input per term (:func:`_relay`; convolutions and linear layers call their kernels directly, without an
autograd graph). z⁺ and α-β skip the ``a⁻`` terms where the layer's input has no negative entry (after a
ReLU): half of zennit's convolutions, with the same sums. Modified parameters are cached per layer.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

_GUARD = threading.local()
_MODIFIED_CACHE: "weakref.WeakKeyDictionary[nn.Module, dict]" = weakref.WeakKeyDictionary()


def stabilize(z: torch.Tensor, epsilon: float) -> torch.Tensor:
    """``z + ε·sign(z)`` with ``sign(0) = 1``."""
    return torch.where(z >= 0, z + epsilon, z - epsilon)


def layer_forward(module: nn.Module, params: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    """``module(a)`` with substituted parameters and without any hook: convolutions and linear layers call
    their kernel directly, parameter-free leaf modules their ``forward`` (``functional_call``, the general
    path, costs about as much Python time as a small convolution)."""
    if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return module._conv_forward(a, params["weight"], params.get("bias"))
    if isinstance(module, nn.Linear):
        return F.linear(a, params["weight"], params.get("bias"))
    if not params and next(module.children(), None) is None:
        return module.forward(a)
    return functional_call(module, params, (a,))


def _call(module: nn.Module, params: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
    """``module(a)`` with substituted parameters, bypassing our own hooks (:func:`layer_forward`)."""
    _GUARD.active = True
    try:
        return layer_forward(module, params, a)
    finally:
        _GUARD.active = False


#: Parameter modifications of the rules, by name: weight and bias maps.
_MODIFIED: dict[str, tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]] = {
    "upper": (lambda w: w.clamp(min=0), lambda b: b.clamp(min=0)),
    "lower": (lambda w: w.clamp(max=0), lambda b: b.clamp(max=0)),
    "upper_nobias": (lambda w: w.clamp(min=0), torch.zeros_like),
    "lower_nobias": (lambda w: w.clamp(max=0), torch.zeros_like),
    "flat": (torch.ones_like, torch.zeros_like),
}


def _params(module: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """``module``'s parameters modified as ``name`` (:data:`_MODIFIED`; ``"plain"``: unmodified).

    Modified parameters are kept per module, weakly (LRP's canonised copy lives as long as its model is
    unchanged), and rebuilt when a parameter is replaced or modified in place (tensor version counters).
    """
    weight, bias = module.weight, getattr(module, "bias", None)
    if name == "plain":
        return {"weight": weight.detach()} | ({"bias": bias.detach()} if bias is not None else {})
    key = (name, id(weight), weight._version, id(bias), bias._version if bias is not None else 0)
    cache = _MODIFIED_CACHE.setdefault(module, {})
    hit = cache.get(name)
    if hit is not None and hit[0] == key:
        return hit[1]
    weight_fn, bias_fn = _MODIFIED[name]
    out = {"weight": weight_fn(weight.detach())}
    if bias is not None:
        out["bias"] = bias_fn(bias.detach())
    cache[name] = (key, out)
    return out


def _direct(module: nn.Module) -> bool:
    """True where :func:`_input_grad` computes the input gradient with the layer's own backward kernel."""
    if isinstance(module, nn.Linear):
        return True
    return (isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _input_grad(module: nn.Module, params: dict[str, torch.Tensor], a: torch.Tensor,
                s: torch.Tensor) -> torch.Tensor:
    """``∂(z · s)/∂a`` of a linear layer ``z = module(a)`` with ``params`` (``s`` constant): one backward
    kernel of the layer, without building an autograd graph for ``z``."""
    weight = params["weight"]
    if isinstance(module, nn.Linear):
        return s.matmul(weight)
    grad, _, _ = torch.ops.aten.convolution_backward(
        s, a, weight, None, module.stride, module.padding, module.dilation, False, [0] * (weight.ndim - 2),
        module.groups, [True, False, False])
    return grad


def _relay(module: nn.Module, params: dict[str, torch.Tensor], a: torch.Tensor,
           scale) -> tuple[torch.Tensor, torch.Tensor]:
    """``z = module(a)`` with ``params`` and ``∂(z · scale(z))/∂a`` (``scale(z)`` held constant), the core of
    every rule: one forward and one backward of the layer (``_call`` records the forward)."""
    if _direct(module):
        with torch.no_grad():
            z = _call(module, params, a)
            return z, _input_grad(module, params, a, scale(z))
    with torch.enable_grad():
        x = a.detach().requires_grad_(True)
        z = _call(module, params, x)
        (g,) = torch.autograd.grad(z, x, scale(z.detach().clone()))   # scale may work in place
    return z.detach(), g


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
        a = a.detach()
        if self.kind in ("epsilon", "norm"):
            params = {} if self.kind == "norm" else _params(module, "plain")
            _, g = _relay(module, params, a, lambda z: r_out / stabilize(z, eps))
            return a * g
        if self.kind == "flat":
            # z ≥ 0 (ones through ones): stabilize(z) is z + ε
            _, g = _relay(module, _params(module, "flat"), torch.ones_like(a),
                          lambda z: torch.div(r_out, z.add_(eps), out=z))
            return g
        if self.kind in ("zplus", "alpha_beta"):
            # a⁻ = 0 after a ReLU (every conv but the first, as a rule): its terms are exactly 0, so they are
            # skipped (half the convolutions; the sums are bit-identical)
            signed = bool(a.min() < 0)
            xp = a.clamp(min=0) if signed else a

            def relevance(positive: bool) -> torch.Tensor:
                # positive: a+ W+ (+ b+) and a- W- ; negative: a+ W- (+ b-) and a- W+
                first = _params(module, "upper" if positive else "lower")
                if not signed:   # z is a sum of products of one sign (+0 included): stabilize(z) is z ± ε
                    _, g = _relay(module, first, xp, lambda z: torch.div(r_out, z.add_(eps if positive else -eps),
                                                                          out=z))
                    return g.mul_(xp)
                xn = a.clamp(max=0)
                second = _params(module, "lower_nobias" if positive else "upper_nobias")
                with torch.no_grad():
                    z = _call(module, first, xp) + _call(module, second, xn)
                sc = r_out / stabilize(z, eps)
                if _direct(module):
                    return xp * _input_grad(module, first, xp, sc) + xn * _input_grad(module, second, xn, sc)
                return xp * _relay(module, first, xp, lambda _z: sc)[1] + xn * _relay(module, second, xn,
                                                                                       lambda _z: sc)[1]

            pos = relevance(True)
            if self.kind == "zplus":
                return pos
            return self.alpha * pos - self.beta * relevance(False)
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
