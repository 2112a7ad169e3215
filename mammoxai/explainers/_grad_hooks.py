"""Modified backward passes through activation (and max-pool) modules.

Used by Guided Backprop, DeconvNet, DeepLIFT (rescale) and Guided Grad-CAM.
:func:`modified_backward` temporarily turns off ``inplace`` on every module that
has it (timm builds ``nn.ReLU(inplace=True)``). For the ``guided``, ``deconv`` and
``switch`` rules it replaces each activation module's ``forward`` by one that
computes the activation inside an autograd function whose backward applies the
rule (:class:`_ReLUFn`: one saved tensor, one or two kernels); for ``deeplift`` it
registers a forward hook on each activation that computes the rescale multipliers
once, in the forward pass, and re-routes the output (as a view, no copy) through
:class:`_ActFn`, whose backward is one product. Everything is restored on exit,
also on error. Activations applied as functions (``F.relu`` inside a ``forward``)
are not seen; timm models build activations as modules.

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
  Beyond the activations, ``"deeplift"`` gives three more module kinds exact rules, so that
  ``Σ attribution = f(x) − f(x')`` holds on the common timm CNNs (:func:`deeplift_rules`):
  sigmoid-type gates get the rescale rule; **LayerNorm** (ConvNeXt) is split exactly into its
  linear centring ``c = x − mean(x)``, the product ``c · s`` with ``s = (var + ε)^(−1/2)``
  (``Δ(c·s) = Δc·s̄ + c̄·Δs``, bars = mean of input and baseline), the rescale rule for the
  scalar ``s(v)`` and ``Δv = mean((c + c')·Δc)`` — every step exact, so completeness holds where
  treating the normalising factor as a constant (Ali et al. 2022) leaves an error of the size
  of ``Δs``; **max-pooling** follows captum's cross-maximum rule, with contributions of
  overlapping windows summed (captum keeps one of them, which loses completeness);
  **squeeze-excitation products** ``x · gate(x)`` use the product rule above. Other modules keep
  their gradient (linear layers, BatchNorm in eval, residual sums and average pools are exact).
* ``"switch"``: ordinary gradient while ``state.guided`` is false, guided otherwise —
  lets one forward pass serve an ordinary and a guided backward (Guided Grad-CAM).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

ACTIVATION_NAMES = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "CELU", "SELU", "SiLU", "Swish", "GELU", "GELUTanh", "QuickGELU",
    "Hardswish", "HardSwish", "Mish", "Softplus", "PReLU",
})
_EPS = 1e-10
#: Extra modules that get the DeepLIFT rescale rule (sigmoid-type gates of squeeze-excitation blocks).
DEEPLIFT_EXTRA_ACTIVATIONS = frozenset({"Sigmoid", "Tanh", "Hardsigmoid", "HardSigmoid"})
GATE_TYPES = frozenset({"SqueezeExcite", "SEModule", "EffectiveSEModule"})


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


def _rule_now(rule: str, state: SwitchState) -> str:
    if rule == "switch":
        return "guided" if state.guided else "plain"
    return rule


def _silu_grad(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """``silu'(x) · grad`` in closed form: ``σ(x)·(1 + x·(1 − σ(x)))``."""
    s = torch.sigmoid(x)
    return grad * (s * (1 + x * (1 - s)))


class _ReLUFn(torch.autograd.Function):
    """ReLU computed here (the module's own forward is bypassed), with the rule's backward in one or two
    kernels; saves only the output (its sign is the mask)."""

    @staticmethod
    def forward(ctx, x, rule, state):  # type: ignore[override]
        y = torch.relu(x)
        ctx.rule, ctx.state = rule, state
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (y,) = ctx.saved_tensors
        rule = _rule_now(ctx.rule, ctx.state)
        if rule == "deconv":
            return grad.clamp(min=0), None, None
        if rule == "guided":
            grad = grad.clamp(min=0)
        return torch.ops.aten.threshold_backward(grad, y, 0), None, None


class _SmoothActFn(torch.autograd.Function):
    """Any other activation, computed by its module's class ``forward`` (the module's own call is bypassed),
    with the rule's backward; its local derivative by autograd on a recomputation (SiLU: closed form)."""

    @staticmethod
    def forward(ctx, x, module, rule, state):  # type: ignore[override]
        ctx.module, ctx.rule, ctx.state = module, rule, state
        ctx.save_for_backward(x)
        return type(module).forward(module, x)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        rule = _rule_now(ctx.rule, ctx.state)
        if rule == "deconv":
            return grad.clamp(min=0), None, None, None
        if rule == "guided":
            grad = grad.clamp(min=0)
        if type(ctx.module).__name__ in ("SiLU", "Swish"):
            return _silu_grad(x, grad), None, None, None
        return _local_grad(ctx.module, x, grad), None, None, None


class _ActFn(torch.autograd.Function):
    """DeepLIFT rescale rule on ``cat([input, baseline])``: the multipliers are computed once, in the forward
    pass (from the module's input ``x`` and output ``y``), so the backward is one product."""

    @staticmethod
    def forward(ctx, x, y, module):  # type: ignore[override]
        xa, xb = x.chunk(2)
        ya, yb = y.chunk(2)
        delta_in = xa - xb
        delta_out = ya - yb
        small = delta_in.abs() < _EPS
        ratio = delta_out / torch.where(small, torch.ones_like(delta_in), delta_in)
        ones = torch.ones_like(x)
        plain = _local_grad(module, x, ones)
        pa, pb = plain.chunk(2)
        multiplier = torch.cat([torch.where(small, pa, ratio), torch.where(small, pb, ratio)])
        ctx.save_for_backward(multiplier)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (multiplier,) = ctx.saved_tensors
        return grad * multiplier, None, None


def _halves_mean(t: torch.Tensor) -> torch.Tensor:
    a, b = t.chunk(2)
    return torch.cat([(a + b) / 2] * 2)


def _norm_dims(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The dimensions a LayerNorm module normalises over (timm's ``LayerNorm2d``: channels of NCHW)."""
    if "2d" in type(module).__name__:
        return (1,)
    k = len(getattr(module, "normalized_shape", (x.shape[-1],)))
    return tuple(range(x.ndim - k, x.ndim))


class _RuleFn(torch.autograd.Function):
    """Passes the layer's output ``y`` through and keeps its input ``x`` and ``module`` for a DeepLIFT
    rule's ``backward`` (each subclass is one rule)."""

    @staticmethod
    def forward(ctx, x, y, module):  # type: ignore[override]
        ctx.module = module
        ctx.save_for_backward(x)
        return y.view_as(y)


class _LayerNormFn(_RuleFn):
    """Exact DeepLIFT multipliers of a LayerNorm on a ``cat([input, baseline])`` batch (see module doc)."""

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        module = ctx.module
        dims = _norm_dims(module, x)
        xd, g = x.double(), grad.double()
        c = xd - xd.mean(dim=dims, keepdim=True)
        v = (c * c).mean(dim=dims, keepdim=True) + float(getattr(module, "eps", 1e-5))
        s = v.rsqrt()
        va, vb = v.chunk(2)
        sa, sb = s.chunk(2)
        dv = va - vb
        slope = torch.where(dv.abs() > 1e-12 * va.abs().clamp(min=1e-30), (sa - sb) / torch.where(
            dv == 0, torch.ones_like(dv), dv), -0.5 * ((va + vb) / 2) ** -1.5)
        slope = torch.cat([slope] * 2)
        weight = getattr(module, "weight", None)
        u = g
        if weight is not None:
            shape = [1] * x.ndim
            for d, size in zip(dims, weight.shape):
                shape[d] = size
            u = g * weight.detach().double().reshape(shape)
        n = 1
        for d in dims:
            n *= x.shape[d]
        c_bar = _halves_mean(c)
        m_c = u * _halves_mean(s) + (u * c_bar).sum(dim=dims, keepdim=True) * slope * (2 * c_bar) / n
        m_x = m_c - m_c.mean(dim=dims, keepdim=True)
        return m_x.to(grad.dtype), None, None


class _MaxPoolFn(_RuleFn):
    """DeepLIFT multipliers of a max-pool on ``cat([input, baseline])`` (captum's cross-maximum rule, summed).

    Window ``j`` gives ``g·(max(y, y') − y')`` to the input's maximum and ``g·(y − max(y, y'))`` to
    the baseline's; an element's multiplier is the sum of what it receives over ``Δx`` (captum
    assigns instead of summing where windows overlap, which loses completeness). Each share is
    at most ``|g·Δx|`` of its element, so the multipliers stay bounded.
    """

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (x,) = ctx.saved_tensors
        m = ctx.module
        y, idx = F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)
        n2, ch = x.shape[:2]
        flat_x = x.reshape(n2, ch, -1)
        xa, xb = flat_x.chunk(2)
        dx = torch.cat([xa - xb] * 2)
        ya, yb = y.chunk(2)
        top = torch.maximum(ya, yb)
        ia, ib = idx.chunk(2)
        g = grad.chunk(2)
        contrib = torch.zeros_like(flat_x)
        for h in (0, 1):  # same multipliers for both halves, each with its own incoming gradient
            part = contrib[h * (n2 // 2):(h + 1) * (n2 // 2)]
            part.scatter_add_(2, ia.reshape(n2 // 2, ch, -1), (g[h] * (top - yb)).reshape(n2 // 2, ch, -1))
            part.scatter_add_(2, ib.reshape(n2 // 2, ch, -1), (g[h] * (ya - top)).reshape(n2 // 2, ch, -1))
        plain = torch.zeros_like(flat_x).scatter_add_(2, idx.reshape(n2, ch, -1), grad.reshape(n2, ch, -1))
        ok = dx.abs() >= _EPS
        out = torch.where(ok, contrib / torch.where(ok, dx, torch.ones_like(dx)), plain)
        return out.reshape(x.shape), None, None


class _ProductFn(torch.autograd.Function):
    """``x · b`` on ``cat([input, baseline])``: ``Δ(x·b) = Δx·b̄ + x̄·Δb`` (exact product rule)."""

    @staticmethod
    def forward(ctx, x, b, y):  # type: ignore[override]
        ctx.save_for_backward(x, b)
        return y.clone()  # a copy: residual blocks may add to an SE output in place (x += shortcut)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, b = ctx.saved_tensors
        grad_x = grad * _halves_mean(b)
        grad_b = (grad * _halves_mean(x)).sum_to_size(b.shape)
        return grad_x, grad_b, None


def _deeplift_hooks(model: nn.Module) -> list[torch.utils.hooks.RemovableHandle]:
    """Forward hooks giving LayerNorm, max-pool and squeeze-excitation products their DeepLIFT rules."""
    handles = []
    for module in model.modules():
        kind = type(module).__name__
        if isinstance(module, nn.LayerNorm) or kind in ("LayerNorm", "LayerNorm2d"):
            handles.append(module.register_forward_hook(
                lambda mod, inputs, output: _LayerNormFn.apply(inputs[0], output, mod)))
        elif isinstance(module, nn.MaxPool2d):
            handles.append(module.register_forward_hook(
                lambda mod, inputs, output: _MaxPoolFn.apply(inputs[0], output, mod)))
        elif kind in GATE_TYPES and isinstance(getattr(module, "gate", None), nn.Module):
            slot: dict[str, torch.Tensor] = {}

            def capture(_mod, _inputs, output, _slot=slot):
                _slot["gate"] = output

            def product(mod, inputs, output, _slot=slot):
                gate = _slot.pop("gate", None)
                if gate is None or gate.shape[0] != output.shape[0]:
                    return None
                return _ProductFn.apply(inputs[0], gate, output)

            handles.append(module.gate.register_forward_hook(capture))
            handles.append(module.register_forward_hook(product))
    return handles


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
    replaced: list[tuple[nn.Module, object]] = []
    try:
        for module in inplace_modules:
            module.inplace = False
        count = 0
        extra = DEEPLIFT_EXTRA_ACTIVATIONS if rule == "deeplift" else frozenset()
        for module in model.modules():
            if rule == "deeplift" and (is_activation(module) or type(module).__name__ in extra):
                def act_hook(mod, inputs, output):
                    return _ActFn.apply(inputs[0], output, mod)
                handles.append(module.register_forward_hook(act_hook))
                count += 1
            elif rule != "deeplift" and is_activation(module):
                replaced.append((module, module.__dict__.get("forward", _NO_FORWARD)))
                module.forward = _rule_forward(module, rule, state)  # type: ignore[method-assign]
                count += 1
        if rule == "deeplift":  # registered after the activation hooks: a gate's output is captured as rerouted
            handles.extend(_deeplift_hooks(model))
        yield count
    finally:
        for handle in handles:
            handle.remove()
        for module, previous in replaced:
            if previous is _NO_FORWARD:
                del module.forward
            else:
                module.forward = previous  # type: ignore[method-assign]
        for module in inplace_modules:
            module.inplace = True


_NO_FORWARD = object()


def _rule_forward(module: nn.Module, rule: str, state: SwitchState):
    """A replacement ``forward`` for activation ``module`` whose backward follows ``rule``.

    Replacing the forward (rather than re-routing the output of the module's own forward through a hook)
    computes the activation once and keeps one tensor for the backward; the module's hooks still run.
    """
    if type(module) is nn.ReLU:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return _ReLUFn.apply(x, rule, state)
    else:
        def forward(x: torch.Tensor) -> torch.Tensor:
            return _SmoothActFn.apply(x, module, rule, state)
    return forward
