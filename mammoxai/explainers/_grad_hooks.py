"""Modified backward passes through activation (and max-pool) modules.

Used by Guided Backprop, DeconvNet, DeepLIFT (rescale) and Guided Grad-CAM.
:func:`modified_backward` and :func:`deeplift_rules` temporarily turn off ``inplace`` on every module that
has it (timm builds ``nn.ReLU(inplace=True)``). For the ``guided``, ``deconv`` and
``switch`` rules, :func:`modified_backward` replaces each activation module's ``forward`` by one that
computes the activation inside an autograd function whose backward applies the
rule (:class:`_ReLUFn`: one saved tensor, one or two kernels). :func:`deeplift_rules`
registers forward hooks that, while the baseline runs (under ``no_grad``), record each rule module's
reference input and output, and, while the input runs, compute the rescale multipliers
once, in the forward pass, from the recorded reference and re-route the output (as a view, no copy)
through :class:`_RescaleFn`, whose backward is one product. Everything is restored on exit,
also on error. Activations applied as functions (``F.relu`` inside a ``forward``)
are not seen; timm models build activations as modules.

Rules (``g`` = gradient arriving at the activation output, ``x`` = its input):

* ``"guided"`` (Springenberg et al. 2015): ``act'(x) · max(g, 0)``; for ReLU this is
  guided backprop; for smooth activations (SiLU, GELU, ...) the same
  generalisation: negative gradients are zeroed at every activation.
* ``"deconv"`` (Zeiler & Fergus 2014): ``max(g, 0)`` (the activation's own mask is skipped).
* DeepLIFT (:func:`deeplift_rules`; Shrikumar et al. 2017, rescale rule, as captum): the baseline
  runs once without gradients and each rule module records its reference; the input then runs
  forward and backward alone (captum runs ``cat([input, baseline])`` forward and backward: twice the
  backward work for the same multipliers). Multiplier ``Δy / Δx`` where ``|Δx| ≥ 1e-10``, else
  the gradient at the input (:func:`_rescale_multiplier`). In float32 the input and the baseline now
  run in separate batches, whose convolution kernels may round differently: the completeness error
  on efficientnet_b0 is then 0.1–0.9 % at batch size 1 (it was 0.01–0.7 % in one batch).
  Beyond the activations, DeepLIFT gives three more module kinds exact rules, so that
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


def _rescale_multiplier(module: nn.Module, x: torch.Tensor, y: torch.Tensor, x_ref: torch.Tensor,
                        y_ref: torch.Tensor) -> torch.Tensor:
    """DeepLIFT rescale multiplier ``Δy / Δx`` of an elementwise module; where ``Δx`` vanishes, its gradient at
    ``x`` (as captum). ReLU needs no threshold: where both sides agree in sign ``Δy`` is ``Δx`` or 0 to the
    bit, across zero the ratio lies in [0, 1]; only ``Δx = 0`` (0/0) takes the gradient. Other activations:
    ``|Δx| < 1e-10``."""
    dx = x - x_ref
    ratio = (y - y_ref).div_(dx)
    if type(module) is nn.ReLU:
        # float-only (masks and ``where`` cost 3× more on CPU): 0/0 → 2, then ``min(·, sign(y + y'))`` is 1 where
        # both are positive, 0 where neither is, and leaves the ratio (≤ 1) alone across zero
        ratio.nan_to_num_(nan=2.0)
        return torch.minimum(ratio, (y + y_ref).sign_(), out=ratio)
    small = dx.abs_() < _EPS
    return torch.where(small, _local_grad(module, x, torch.ones_like(x)), ratio)


class _RescaleFn(torch.autograd.Function):
    """Re-routes an activation's output ``y`` (a view, no copy) so that its backward is ``grad · multiplier``
    (computed once, in the forward pass)."""

    @staticmethod
    def forward(ctx, x, y, multiplier):  # type: ignore[override]
        ctx.save_for_backward(multiplier)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        (multiplier,) = ctx.saved_tensors
        return grad * multiplier, None, None


def _norm_dims(module: nn.Module, x: torch.Tensor) -> tuple[int, ...]:
    """The dimensions a LayerNorm module normalises over (timm's ``LayerNorm2d``: channels of NCHW)."""
    if "2d" in type(module).__name__:
        return (1,)
    k = len(getattr(module, "normalized_shape", (x.shape[-1],)))
    return tuple(range(x.ndim - k, x.ndim))


class _LayerNormFn(torch.autograd.Function):
    """Exact DeepLIFT multipliers of a LayerNorm between input ``x`` and its reference ``x_ref`` (module doc)."""

    @staticmethod
    def forward(ctx, x, y, x_ref, module):  # type: ignore[override]
        ctx.module = module
        ctx.save_for_backward(x, x_ref)
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, x_ref = ctx.saved_tensors
        module = ctx.module
        dims = _norm_dims(module, x)
        eps = float(getattr(module, "eps", 1e-5))
        xd, xr, g = x.double(), x_ref.double(), grad.double()
        c = xd - xd.mean(dim=dims, keepdim=True)
        c_ref = xr - xr.mean(dim=dims, keepdim=True)
        v = (c * c).mean(dim=dims, keepdim=True) + eps
        v_ref = (c_ref * c_ref).mean(dim=dims, keepdim=True) + eps
        s, s_ref = v.rsqrt(), v_ref.rsqrt()
        dv = v - v_ref
        slope = torch.where(dv.abs() > 1e-12 * v.abs().clamp(min=1e-30), (s - s_ref) / torch.where(
            dv == 0, torch.ones_like(dv), dv), -0.5 * ((v + v_ref) / 2) ** -1.5)
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
        c_bar = (c + c_ref) / 2
        m_c = u * ((s + s_ref) / 2) + (u * c_bar).sum(dim=dims, keepdim=True) * slope * (2 * c_bar) / n
        m_x = m_c - m_c.mean(dim=dims, keepdim=True)
        return m_x.to(grad.dtype), None, None, None


class _MaxPoolFn(torch.autograd.Function):
    """DeepLIFT multipliers of a max-pool between ``x`` and its reference (captum's cross-maximum rule, summed).

    Window ``j`` gives ``g·(max(y, y') − y')`` to the input's maximum and ``g·(y − max(y, y'))`` to
    the reference's maximum; an element's multiplier is the sum of what it receives over ``Δx``
    (captum assigns instead of summing where windows overlap, which loses completeness). Each share
    is at most ``|g·Δx|`` of its element, so the multipliers stay bounded.
    """

    @staticmethod
    def forward(ctx, x, x_ref, y_ref, idx_ref, module):  # type: ignore[override]
        y, idx = _max_pool(module, x)
        ctx.save_for_backward(x, x_ref, y, y_ref, idx, idx_ref)
        return y

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        x, x_ref, y, y_ref, idx, idx_ref = ctx.saved_tensors
        n, ch = x.shape[:2]
        flat_x, flat_ref = x.reshape(n, ch, -1), x_ref.reshape(n, ch, -1)
        g = grad.reshape(n, ch, -1)
        # the window's share g·(y − y') goes to the input's maximum if y ≥ y', else to the reference's (one of
        # captum's two terms is always 0), divided by that element's Δx; all of it at the output's size
        winner = torch.where(y >= y_ref, idx, idx_ref).reshape(n, ch, -1)
        share = (g * (y - y_ref).reshape(n, ch, -1)).div_(flat_x.gather(2, winner) - flat_ref.gather(2, winner))
        out = torch.zeros_like(flat_x).scatter_add_(2, winner, share.nan_to_num_(nan=0.0))
        # an element with Δx = 0 receives no share (its window's Δy is 0 too: 0/0 above): it takes the
        # ordinary gradient
        idx = idx.reshape(n, ch, -1)
        tied = flat_x.gather(2, idx) == flat_ref.gather(2, idx)
        out.scatter_add_(2, idx, g * tied)
        return out.reshape(x.shape), None, None, None, None


def _max_pool(module: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = module
    return F.max_pool2d(x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, return_indices=True)


class _ProductFn(torch.autograd.Function):
    """``x · b`` against its reference ``x' · b'``: ``Δ(x·b) = Δx·b̄ + x̄·Δb`` (exact product rule)."""

    @staticmethod
    def forward(ctx, x, b, y, x_ref, b_ref):  # type: ignore[override]
        ctx.save_for_backward((b + b_ref) / 2, (x + x_ref) / 2)
        ctx.b_shape = b.shape
        return y.clone()  # a copy: residual blocks may add to an SE output in place (x += shortcut)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        b_bar, x_bar = ctx.saved_tensors
        return grad * b_bar, (grad * x_bar).sum_to_size(ctx.b_shape), None, None, None


class DeepLiftRules:
    """DeepLIFT's rules on ``model``, against a reference recorded in a separate pass.

    Use as a context manager (:func:`deeplift_rules`): while :attr:`recording` is true (run the baseline
    through the model under ``torch.no_grad()``), every rule module stores its reference input and output,
    one entry per call, in call order; afterwards each call on the input takes the next reference of its
    module and re-routes its output so the backward follows the rule (see module doc). Only the input is
    back-propagated: half the work of running ``cat([input, baseline])`` through one backward.
    """

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.recording = False
        self._refs: dict[int, list[tuple[torch.Tensor, ...]]] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._replaced: list[tuple[nn.Module, object]] = []

    def _push(self, module: nn.Module, *tensors: torch.Tensor) -> None:
        self._refs.setdefault(id(module), []).append(tuple(t.detach() for t in tensors))

    def _pop(self, module: nn.Module) -> tuple[torch.Tensor, ...]:
        queue = self._refs.get(id(module))
        if not queue:
            raise RuntimeError(f"DeepLIFT: {type(module).__name__} ran more often on the input than on the "
                               "baseline (the model's control flow depends on its input)")
        return queue.pop(0)

    def unused(self) -> int:
        """Reference entries not consumed by the input pass (0 after a matching pass)."""
        return sum(len(q) for q in self._refs.values())

    def install(self) -> int:
        """Register the hooks; returns the number of rescale-rule modules."""
        count = 0
        for module in self.model.modules():
            if is_activation(module) or type(module).__name__ in DEEPLIFT_EXTRA_ACTIVATIONS:
                self._handles.append(module.register_forward_hook(self._rescale))
                count += 1
        # registered after the activation hooks: a gate's output is captured as rerouted
        for module in self.model.modules():
            kind = type(module).__name__
            if isinstance(module, nn.LayerNorm) or kind in ("LayerNorm", "LayerNorm2d"):
                self._handles.append(module.register_forward_hook(self._layer_norm))
            elif isinstance(module, nn.MaxPool2d) and not module.return_indices:
                # its forward is replaced (one pooling with indices serves the output and the rule)
                self._replaced.append((module, module.__dict__.get("forward", _NO_FORWARD)))
                module.forward = self._max_pool_forward(module)  # type: ignore[method-assign]
            elif kind in GATE_TYPES and isinstance(getattr(module, "gate", None), nn.Module):
                slot: dict[str, torch.Tensor] = {}

                def capture(_mod, _inputs, output, _slot=slot):
                    _slot["gate"] = output

                def product(mod, inputs, output, _slot=slot):
                    gate = _slot.pop("gate", None)
                    if gate is None or gate.shape[0] != output.shape[0]:
                        return None
                    if self.recording:
                        self._push(mod, inputs[0], gate)
                        return None
                    x_ref, gate_ref = self._pop(mod)
                    return _ProductFn.apply(inputs[0], gate, output, x_ref, gate_ref)

                self._handles.append(module.gate.register_forward_hook(capture))
                self._handles.append(module.register_forward_hook(product))
        return count

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module, previous in self._replaced:
            if previous is _NO_FORWARD:
                del module.forward
            else:
                module.forward = previous  # type: ignore[method-assign]
        self._replaced.clear()
        self._refs.clear()

    def _rescale(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self.recording:
            self._push(module, inputs[0], output)
            return None
        x_ref, y_ref = self._pop(module)
        x = inputs[0]
        with torch.no_grad():
            multiplier = _rescale_multiplier(module, x.detach(), output.detach(), x_ref, y_ref)
        return _RescaleFn.apply(x, output, multiplier)

    def _layer_norm(self, module: nn.Module, inputs: tuple, output: torch.Tensor):
        if self.recording:
            self._push(module, inputs[0])
            return None
        (x_ref,) = self._pop(module)
        return _LayerNormFn.apply(inputs[0], output, x_ref, module)

    def _max_pool_forward(self, module: nn.Module):
        def forward(x: torch.Tensor) -> torch.Tensor:
            if self.recording:
                y_ref, idx_ref = _max_pool(module, x)
                self._push(module, x, y_ref, idx_ref)
                return y_ref
            x_ref, y_ref, idx_ref = self._pop(module)
            return _MaxPoolFn.apply(x, x_ref, y_ref, idx_ref, module)
        return forward


@contextlib.contextmanager
def deeplift_rules(model: nn.Module) -> Iterator[DeepLiftRules]:
    """Within the context, ``model`` follows DeepLIFT's rules (:class:`DeepLiftRules`); ``inplace`` is off
    (an in-place activation would overwrite the input the rule needs). Everything is restored on exit."""
    inplace_modules = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    rules = DeepLiftRules(model)
    try:
        for module in inplace_modules:
            module.inplace = False
        rules.install()
        yield rules
    finally:
        rules.remove()
        for module in inplace_modules:
            module.inplace = True


@contextlib.contextmanager
def modified_backward(model: nn.Module, rule: str, state: SwitchState | None = None) -> Iterator[int]:
    """Within the context, backward through ``model``'s activations follows ``rule`` (see module doc).

    Yields the number of activation modules hooked. ``rule`` is one of
    ``"guided"``, ``"deconv"``, ``"switch"`` (DeepLIFT: :func:`deeplift_rules`).
    """
    if rule not in ("guided", "deconv", "switch"):
        raise ValueError(f"unknown backward rule {rule!r}")
    state = state or SwitchState()
    inplace_modules = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    replaced: list[tuple[nn.Module, object]] = []
    try:
        for module in inplace_modules:
            module.inplace = False
        count = 0
        for module in model.modules():
            if is_activation(module):
                replaced.append((module, module.__dict__.get("forward", _NO_FORWARD)))
                module.forward = _rule_forward(module, rule, state)  # type: ignore[method-assign]
                count += 1
        yield count
    finally:
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
