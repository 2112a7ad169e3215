"""Layer-wise Relevance Propagation (Bach et al. 2015) with per-layer-type rule composites, zennit-style.

LRP runs as a modified gradient: on a canonised deep copy of the model
(:mod:`._lrp_canon`: BatchNorm merged into the preceding conv, residual sums
made explicit, SE gates constant — the user's model is never modified), each
module gets a forward hook whose backward applies its rule (:mod:`._lrp_rules`);
the input "gradient" of ``one_hot(target) · logits`` is then the relevance.
The map is the channel sum; it is signed and, with zero biases, sums to the
target logit (conservation).

Composites (``composite`` parameter), as zennit's of the same names:

* ``epsilon_plus_flat`` (default): flat rule for the first conv/linear layer, z⁺ for
  the other convolutions, ε for linear layers;
* ``epsilon_plus``: z⁺ for convolutions, ε for linear layers;
* ``epsilon_alpha2_beta1`` / ``epsilon_alpha2_beta1_flat``: α=2, β=1 for
  convolutions (flat first layer for the latter), ε for linear layers;
* ``epsilon``: ε everywhere.

Every composite: residual sums and average pooling use the ``norm`` rule
(proportional split), activations pass relevance unchanged, and so do BatchNorm
layers that could not be merged and LayerNorm (ConvNeXt) — the usual identity
rule, i.e. LayerNorm treated as a linear map with detached statistics whose
relevance stays in place. Max-pooling routes relevance to the maximum.
Supported: timm ResNet, EfficientNet/MobileNet (IR/DS blocks), ConvNeXt and
torchvision ResNet; any other layer type raises
:class:`~mammoxai.explainers.base.ExplainerNotApplicable` naming it.
"""

from __future__ import annotations

import weakref
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from ._lrp_canon import GATE_TYPES, Sum, canonize
from ._lrp_rules import Rule, attach
from .base import Explainer, ExplainerNotApplicable, register

__all__ = ["LRP", "COMPOSITES", "unsupported_layers"]

COMPOSITES = ("epsilon_plus_flat", "epsilon_plus", "epsilon_alpha2_beta1", "epsilon_alpha2_beta1_flat", "epsilon")

_LINEAR = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_AVG = (nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d)
_PASS_NAMES = frozenset({
    "ReLU", "ReLU6", "LeakyReLU", "ELU", "CELU", "SELU", "SiLU", "Swish", "GELU", "GELUTanh", "QuickGELU",
    "Hardswish", "HardSwish", "Mish", "Softplus", "LayerNorm", "LayerNorm2d", "BatchNorm1d", "BatchNorm2d",
    "BatchNormAct2d",
})
_GRADIENT_NAMES = frozenset({"MaxPool1d", "MaxPool2d", "MaxPool3d", "Flatten", "Identity", "Dropout", "Dropout2d",
                             "DropPath", "DropBlock2d"})
_CONTAINER_NAMES = frozenset({
    "Sequential", "ModuleList", "ModuleDict", "ResNet", "BasicBlock", "Bottleneck", "EfficientNet", "MobileNetV3",
    "ConvBnAct", "DepthwiseSeparableConv", "InvertedResidual", "ConvNeXt", "ConvNeXtStage", "ConvNeXtBlock", "Mlp",
    "SelectAdaptivePool2d", "NormMlpClassifierHead", "ClassifierHead", "BatchNormAct2d", "Sum",
})


def unsupported_layers(model: nn.Module) -> list[str]:
    """``"name (Type)"`` of every module of ``model`` LRP has no rule or known structure for."""
    bad = []
    gate_inner: set[int] = set()
    for module in model.modules():
        if type(module).__name__ in GATE_TYPES:
            gate_inner.update(id(m) for m in module.modules() if m is not module)
    for name, module in model.named_modules():
        if not name or id(module) in gate_inner:
            continue
        kind = type(module).__name__
        if isinstance(module, _LINEAR + _AVG) or kind in _PASS_NAMES | _GRADIENT_NAMES | _CONTAINER_NAMES | GATE_TYPES:
            continue
        bad.append(f"{name} ({kind})")
    top = type(model).__name__
    if top not in _CONTAINER_NAMES and not isinstance(model, nn.Sequential):
        bad.insert(0, f"<model> ({top})")
    return bad


def _rules(composite: str, epsilon: float) -> tuple[Rule, Rule, Rule | None]:
    """(conv rule, linear rule, first-layer rule or None)."""
    eps = Rule("epsilon", epsilon=epsilon)
    zplus = Rule("zplus")
    ab = Rule("alpha_beta", alpha=2.0, beta=1.0)
    flat = Rule("flat")
    return {
        "epsilon_plus_flat": (zplus, eps, flat),
        "epsilon_plus": (zplus, eps, None),
        "epsilon_alpha2_beta1": (ab, eps, None),
        "epsilon_alpha2_beta1_flat": (ab, eps, flat),
        "epsilon": (eps, eps, None),
    }[composite]


@register
class LRP(Explainer):
    """LRP with a rule composite (see module doc); parameters ``composite`` and ``epsilon`` (ε of the ε rule)."""

    name = "lrp"
    display_name = "Layer-wise Relevance Propagation"
    code = "LRP"
    series_slot = 14
    signed = True
    family: ClassVar[str] = "relevance"
    defaults: ClassVar[Mapping[str, Any]] = {"composite": "epsilon_plus_flat", "epsilon": 1e-6}

    def _validate(self) -> None:
        if self.params["composite"] not in COMPOSITES:
            raise ValueError(f"explainer {self.name!r}: composite must be one of {', '.join(COMPOSITES)}, "
                             f"got {self.params['composite']!r}")
        if self.params["epsilon"] < 0:
            raise ValueError(f"explainer {self.name!r}: epsilon must be >= 0")

    def check_applicable(self, model: nn.Module) -> None:
        bad = unsupported_layers(model)
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise ExplainerNotApplicable(self.name, f"unsupported layer type {', '.join(bad[:3])}{more}")

    def _canonised(self, model: nn.Module, batch: torch.Tensor) -> tuple[nn.Module, nn.Module | None]:
        """The canonised copy of ``model`` and its first conv/linear layer, cached while ``model`` is unchanged.

        Canonising deep-copies the model and merges its BatchNorms (several times
        the cost of the LRP pass itself on a small CNN), so the copy is kept per
        model, keyed weakly, and rebuilt when any parameter or buffer is replaced
        or modified in place (tensor version counters), or the device, dtype or
        input shape changes.
        """
        cache = self.__dict__.setdefault("_canon_cache", weakref.WeakKeyDictionary())
        fingerprint = (tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers())),
                       batch.device, batch.dtype, tuple(batch.shape[1:]))
        hit = cache.get(model)
        if hit is not None and hit[0] == fingerprint:
            return hit[1], hit[2]
        canon = canonize(model, batch[:1].detach())
        order: list[nn.Module] = []
        probe = [m.register_forward_hook(lambda mod, _i, _o: order.append(mod))
                 for m in canon.modules() if isinstance(m, _LINEAR)]
        try:
            with torch.no_grad():
                canon(batch[:1])
        finally:
            for handle in probe:
                handle.remove()
        first = order[0] if order else None
        cache[model] = (fingerprint, canon, first)
        return canon, first

    def _plan(self, canon: nn.Module, first: nn.Module | None) -> list[tuple[nn.Module, Rule]]:
        """The ``(module, rule)`` pairs of the canonised copy under this composite, kept with the copy."""
        composite, epsilon = self.params["composite"], float(self.params["epsilon"])
        plans = self.__dict__.setdefault("_plans", weakref.WeakKeyDictionary()).setdefault(canon, {})
        plan = plans.get((composite, epsilon))
        if plan is not None:
            return plan
        conv_rule, linear_rule, first_rule = _rules(composite, epsilon)
        plan = []
        for module in canon.modules():
            kind = type(module).__name__
            if first_rule is not None and module is first:
                rule: Rule | None = first_rule
            elif isinstance(module, _CONV):
                rule = conv_rule
            elif isinstance(module, nn.Linear):
                rule = linear_rule
            elif isinstance(module, _AVG + (Sum,)):
                rule = Rule("norm")
            elif kind in _PASS_NAMES and not (kind == "BatchNormAct2d" and getattr(module, "lrp_merged", False)):
                rule = Rule("pass")
            else:
                rule = None
            if rule is not None:
                plan.append((module, rule))
        plans[(composite, epsilon)] = plan
        return plan

    def relevance(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-channel relevance ``(N, C, H, W)`` of ``batch`` for ``target`` (sums to the target logit)."""
        canon, first = self._canonised(model, batch)
        handles = []
        try:
            for module, rule in self._plan(canon, first):
                handles.append(attach(module, rule))
            x = batch.detach().requires_grad_(True)
            with torch.enable_grad():
                logits = canon(x)
                seed = torch.zeros_like(logits)
                seed.scatter_(1, target.reshape(-1, 1), logits.gather(1, target.reshape(-1, 1)).detach())
                (relevance,) = torch.autograd.grad(logits, x, seed)
        finally:
            for handle in handles:
                handle.remove()
        return relevance.detach()

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return self.relevance(model, batch, target).sum(dim=1)
