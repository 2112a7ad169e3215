"""Gradient-based explainers: saliency, gradient × input, Integrated Gradients, SmoothGrad (and ², VarGrad),
Guided Backprop, DeconvNet, DeepLIFT (rescale).

All maps are at input resolution. Multi-channel inputs are reduced to one map:
signed maps (``signed = True``) are **summed over channels** (attributions are
additive); unsigned maps take the channel **maximum of |gradient|** (Simonyan
et al. 2014) for saliency, and the channel sum for the non-negative SmoothGrad²
and VarGrad. Maps are not normalised. The score explained is the raw logit of
the target class (before softmax), as captum does with ``target=``.

Sampled methods (Integrated Gradients steps, SmoothGrad noise) run in chunks of
``batch_size`` inputs per forward/backward; noise is drawn on the model's device
with the explainer's own generator (``seed``). Gradients are taken with
``torch.autograd.grad`` with respect to the input only, so parameter ``.grad``
fields are never touched and graphs are freed after each chunk.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import nn

from ._blur import gaussian_blur
from ._grad_hooks import deeplift_rules, has_activation, modified_backward
from ._stability import AdaptiveRun, run_adaptive
from .base import Explainer, ExplainerNotApplicable, check_budget, register

__all__ = [
    "Saliency", "GradientXInput", "IntegratedGradients", "SmoothGrad", "SmoothGradSquared", "VarGrad",
    "GuidedBackprop", "DeconvNet", "DeepLift", "input_gradient", "make_baseline", "integration_rule",
    "BASELINES", "IG_METHODS",
]

BASELINES = ("black", "blur", "mean", "zero")
IG_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")


def input_gradient(model: nn.Module, inputs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Gradient of ``sum_i model(inputs)[i, target[i]]`` with respect to ``inputs`` (same shape)."""
    x = inputs.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x)
        score = logits.gather(1, target.reshape(-1, 1).to(logits.device)).sum()
        (grad,) = torch.autograd.grad(score, x)
    return grad


def make_baseline(batch: torch.Tensor, kind: str, blur_sigma: float = 8.0) -> torch.Tensor:
    """Reference input for path/difference methods, same shape as ``batch``.

    ``"black"``: a constant image at each image's minimum (the darkest value, i.e.
    black after the model's normalisation); ``"mean"``: constant at each image
    and channel's mean; ``"blur"``: Gaussian blur with ``blur_sigma`` pixels;
    ``"zero"``: all zeros (captum's default).
    """
    if kind == "black":
        return batch.amin(dim=(1, 2, 3), keepdim=True).expand_as(batch).clone()
    if kind == "mean":
        return batch.mean(dim=(2, 3), keepdim=True).expand_as(batch).clone()
    if kind == "blur":
        return gaussian_blur(batch, blur_sigma)
    if kind == "zero":
        return torch.zeros_like(batch)
    raise ValueError(f"unknown baseline {kind!r} (allowed: {', '.join(BASELINES)})")


def integration_rule(method: str, steps: int) -> tuple[list[float], list[float]]:
    """``(alphas, weights)`` of the path integral over [0, 1]: captum's nodes; weights sum to 1.

    (captum's ``riemann_trapezoid`` uses weights ``1/n`` — they sum to ``(n−1)/n`` —
    where this uses the exact trapezoid weights ``1/(n−1)``, halved at both ends.)
    """
    if method == "gausslegendre":
        nodes, w = np.polynomial.legendre.leggauss(steps)
        return [float(0.5 * (n + 1)) for n in nodes], [float(0.5 * v) for v in w]
    if method == "riemann_trapezoid":
        if steps < 2:
            raise ValueError("riemann_trapezoid needs at least 2 steps")
        alphas = [i / (steps - 1) for i in range(steps)]
        weights = [1 / (steps - 1)] * steps
        weights[0] = weights[-1] = 1 / (2 * (steps - 1))
        return alphas, weights
    offsets = {"riemann_left": 0.0, "riemann_right": 1.0, "riemann_middle": 0.5}
    if method not in offsets:
        raise ValueError(f"unknown integration method {method!r} (allowed: {', '.join(IG_METHODS)})")
    return [(i + offsets[method]) / steps for i in range(steps)], [1 / steps] * steps


def completeness_error(attributions: torch.Tensor, difference: torch.Tensor) -> list[float]:
    """Per image ``|Σ attribution − (f(x) − f(x'))| / |f(x) − f(x')|`` (0 = the map adds up exactly).

    ``attributions`` is ``(N, …)``, ``difference`` the ``(N,)`` score differences; NaN where the
    difference is 0 (nothing to add up to).
    """
    total = attributions.reshape(attributions.shape[0], -1).double().sum(dim=1)
    diff = difference.detach().double().reshape(-1).to(total.device)
    err = (total - diff).abs() / diff.abs()
    return [float(v) if float(d) != 0 else float("nan") for v, d in zip(err, diff)]


def _check_sampling(method: str, params: dict[str, Any]) -> None:
    if not 0 <= params["stability_target"] < 1:
        raise ValueError(f"explainer {method!r}: stability_target must be in [0, 1) (0: no adaptive sampling)")
    if params["max_samples"] < 2:
        raise ValueError(f"explainer {method!r}: max_samples must be >= 2")


def sampling_extras(runs: list[AdaptiveRun]) -> dict[str, Any]:
    """``extras`` entries of a sampled method: per image ``stability``, ``samples_used``, ``sampling_stopped``."""
    if not runs:
        return {}
    return {"stability": [r.stability for r in runs], "samples_used": [r.samples for r in runs],
            "sampling_stopped": [r.stopped for r in runs]}


def _signed_map(attr: torch.Tensor) -> torch.Tensor:
    return attr.sum(dim=1)


class _GradientExplainer(Explainer):
    family: ClassVar[str] = "gradients"


@register
class Saliency(_GradientExplainer):
    """Vanilla gradient (Simonyan et al. 2014): ``max_c |∂y_t/∂x_c|``."""

    name = "saliency"
    display_name = "Saliency (vanilla gradient)"
    code = "SAL"
    series_slot = 0
    signed = False

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return input_gradient(model, batch, target).abs().amax(dim=1)


@register
class GradientXInput(_GradientExplainer):
    """Gradient × input (Shrikumar et al. 2016), summed over channels."""

    name = "gradient_x_input"
    display_name = "Gradient x Input"
    code = "GXI"
    series_slot = 1
    signed = True

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _signed_map(input_gradient(model, batch, target) * batch)


class _BaselineMixin:
    params: dict[str, Any]
    name: ClassVar[str]

    def _check_baseline(self) -> None:
        if self.params["baseline"] not in BASELINES:
            raise ValueError(f"explainer {self.name!r}: baseline must be one of {', '.join(BASELINES)}, "
                             f"got {self.params['baseline']!r}")
        if self.params["blur_sigma"] <= 0:
            raise ValueError(f"explainer {self.name!r}: blur_sigma must be > 0")


@register
class IntegratedGradients(_BaselineMixin, _GradientExplainer):
    """Integrated Gradients (Sundararajan et al. 2017): ``(x - x') · ∫ ∂y_t/∂x(x' + α(x - x')) dα``.

    ``method`` picks the quadrature (captum's default ``"gausslegendre"``, or a
    Riemann rule); ``steps`` points per image, evaluated ``batch_size`` at a
    time. ``extras["convergence_delta"]`` holds, per image (a list of floats),
    ``Σ attribution − (f(x) − f(x'))`` (completeness gap), and ``extras["completeness_error"]`` the
    gap relative to ``|f(x) − f(x')|`` (:func:`completeness_error`).
    """

    name = "integrated_gradients"
    single_pass = False   # `steps` forward + backward passes per image
    display_name = "Integrated Gradients"
    code = "IG"
    series_slot = 2
    signed = True
    defaults: ClassVar[Mapping[str, Any]] = {"steps": 32, "baseline": "black", "method": "gausslegendre",
                                             "blur_sigma": 8.0, "completeness_target": 0.0, "max_steps": 512}

    def _validate(self) -> None:
        self._check_baseline()
        if self.params["steps"] < 2:
            raise ValueError(f"explainer {self.name!r}: steps must be >= 2")
        if not 0 <= self.params["completeness_target"] < 1:
            raise ValueError(f"explainer {self.name!r}: completeness_target must be in [0, 1) (0: fixed steps)")
        if self.params["max_steps"] < self.params["steps"]:
            raise ValueError(f"explainer {self.name!r}: max_steps must be >= steps")
        self._steps_used: list[int] = []
        if self.params["method"] not in IG_METHODS:
            raise ValueError(f"explainer {self.name!r}: method must be one of {', '.join(IG_METHODS)}")
        if self.params["batch_size"] < 1:
            raise ValueError(f"explainer {self.name!r}: batch_size must be >= 1")
        self._delta: list[float] | None = None

    def _integrate(self, model: nn.Module, x: torch.Tensor, x0: torch.Tensor, target: torch.Tensor,
                   steps: int) -> torch.Tensor:
        alphas_l, weights_l = integration_rule(self.params["method"], steps)
        alphas = torch.tensor(alphas_l, device=x.device, dtype=x.dtype)
        weights = torch.tensor(weights_l, device=x.device, dtype=x.dtype)
        chunk = self.params["batch_size"]
        diff = x - x0
        total = torch.zeros_like(x)
        for start in range(0, alphas.numel(), chunk):
            check_budget(self.name)
            a = alphas[start:start + chunk].reshape(-1, 1, 1, 1)
            points = x0 + a * diff
            grads = input_gradient(model, points, target.expand(points.shape[0]))
            total += (grads * weights[start:start + chunk].reshape(-1, 1, 1, 1)).sum(dim=0, keepdim=True)
        return total * diff

    def attributions(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-channel attributions ``(N, C, H, W)`` (the map is their channel sum).

        With ``completeness_target`` > 0, an image whose completeness error is above it is integrated
        again with twice the steps, up to ``max_steps`` (``extras["steps_used"]``).
        """
        baseline = make_baseline(batch, self.params["baseline"], self.params["blur_sigma"])
        with torch.no_grad():
            both = model(torch.cat([batch, baseline]))
            scores = both.gather(1, torch.cat([target, target]).reshape(-1, 1)).reshape(2, -1)
        out = torch.empty_like(batch)
        self._steps_used = []
        goal = float(self.params["completeness_target"])
        for n in range(batch.shape[0]):
            x, x0 = batch[n:n + 1], baseline[n:n + 1]
            steps = self.params["steps"]
            attr = self._integrate(model, x, x0, target[n:n + 1], steps)
            while goal > 0 and 2 * steps <= self.params["max_steps"]:
                (err,) = completeness_error(attr, (scores[0] - scores[1])[n:n + 1])
                if not err > goal:   # reached (or NaN: nothing to add up to)
                    break
                steps *= 2
                attr = self._integrate(model, x, x0, target[n:n + 1], steps)
            out[n:n + 1] = attr
            self._steps_used.append(steps)
        self._delta = (out.sum(dim=(1, 2, 3)) - (scores[0] - scores[1])).detach().float().cpu().tolist()
        self._completeness = completeness_error(out, scores[0] - scores[1])
        return out

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _signed_map(self.attributions(model, batch, target))

    def _extras(self) -> dict[str, Any]:
        if self._delta is None:
            return {}
        return {"convergence_delta": self._delta, "completeness_error": list(self._completeness),
                "steps_used": list(self._steps_used)}


class _NoiseExplainer(_GradientExplainer):
    """Common part of SmoothGrad, SmoothGrad² and VarGrad: noisy copies, split-half stability, adaptive count.

    ``samples`` noisy copies are always drawn; with ``stability_target`` > 0 more are drawn in batches
    until the map's split-half stability (:mod:`._stability`) reaches it, ``max_samples`` is reached,
    or the time budget would run out. ``extras``: ``stability``, ``samples_used`` and
    ``sampling_stopped`` per image.
    """

    single_pass = False   # `samples` noisy copies (or more) per image
    defaults: ClassVar[Mapping[str, Any]] = {"samples": 16, "noise_level": 0.15, "stability_target": 0.0,
                                             "max_samples": 1024}

    def _validate(self) -> None:
        if self.params["samples"] < 2:
            raise ValueError(f"explainer {self.name!r}: samples must be >= 2")
        if not 0 < self.params["noise_level"] <= 1:
            raise ValueError(f"explainer {self.name!r}: noise_level must be in (0, 1]")
        if self.params["batch_size"] < 1:
            raise ValueError(f"explainer {self.name!r}: batch_size must be >= 1")
        _check_sampling(self.name, self.params)
        self._runs: list[AdaptiveRun] = []

    def noise_samples(self, batch: torch.Tensor) -> torch.Tensor:
        """The ``(N, S, C, H, W)`` Gaussian noise added to ``batch`` (deterministic for a given ``seed``).

        Standard deviation ``noise_level × (max − min)`` of each image
        (Smilkov et al. 2017); drawn on ``batch``'s device with :meth:`generator`,
        image by image, ``samples`` at a time. (Without adaptive sampling these are
        exactly the copies the map uses.)
        """
        gen = self.generator(batch.device)
        samples = self.params["samples"]
        sigma = self.params["noise_level"] * (batch.amax(dim=(1, 2, 3)) - batch.amin(dim=(1, 2, 3)))
        noise = torch.empty((batch.shape[0], samples, *batch.shape[1:]), device=batch.device, dtype=batch.dtype)
        for n in range(batch.shape[0]):
            noise[n] = torch.randn((samples, *batch.shape[1:]), generator=gen, device=batch.device,
                                   dtype=batch.dtype) * sigma[n]
        return noise

    @staticmethod
    def _combine(g: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        """The ``(H, W)`` map from the mean gradient and mean squared gradient ``(C, H, W)``."""
        raise NotImplementedError

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        gen = self.generator(batch.device)
        chunk = self.params["batch_size"]
        sigma = self.params["noise_level"] * (batch.amax(dim=(1, 2, 3)) - batch.amin(dim=(1, 2, 3)))
        maps, self._runs = [], []
        for n in range(batch.shape[0]):
            x = batch[n:n + 1]
            sums = torch.zeros((2, 2, *x.shape[1:]), device=x.device, dtype=torch.float64)  # half, moment
            counts = [0, 0]

            def draw(start: int, stop: int) -> None:
                noise = torch.randn((stop - start, *x.shape[1:]), generator=gen, device=x.device,
                                    dtype=x.dtype) * sigma[n]
                for lo in range(0, stop - start, chunk):
                    check_budget(self.name)
                    points = x + noise[lo:lo + chunk]
                    grads = input_gradient(model, points, target[n:n + 1].expand(points.shape[0])).double()
                    parity = (torch.arange(start + lo, start + lo + grads.shape[0], device=x.device) % 2)
                    for h in (0, 1):
                        sel = grads[parity == h]
                        sums[h, 0] += sel.sum(dim=0)
                        sums[h, 1] += (sel * sel).sum(dim=0)
                        counts[h] += sel.shape[0]

            def halves() -> tuple[torch.Tensor, torch.Tensor]:
                return tuple(self._combine(sums[h, 0] / counts[h], sums[h, 1] / counts[h])  # type: ignore
                             for h in (0, 1))

            self._runs.append(run_adaptive(draw, halves, self.params["samples"],
                                           float(self.params["stability_target"]), self.params["max_samples"],
                                           count=lambda: counts[0] + counts[1]))
            total = counts[0] + counts[1]
            maps.append(self._combine(sums[:, 0].sum(0) / total, sums[:, 1].sum(0) / total).to(batch.dtype))
        return torch.stack(maps)

    def _extras(self) -> dict[str, Any]:
        return sampling_extras(self._runs)


@register
class SmoothGrad(_NoiseExplainer):
    """SmoothGrad (Smilkov et al. 2017): mean input gradient over noisy copies, summed over channels."""

    name = "smoothgrad"
    display_name = "SmoothGrad"
    code = "SG"
    series_slot = 3
    signed = True

    @staticmethod
    def _combine(g: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        return g.sum(dim=0)


@register
class SmoothGradSquared(_NoiseExplainer):
    """SmoothGrad²: mean of the squared input gradient over noisy copies (channel sum; non-negative)."""

    name = "smoothgrad_sq"
    display_name = "SmoothGrad squared"
    code = "SGSQ"
    series_slot = 22
    signed = False

    @staticmethod
    def _combine(g: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        return sq.sum(dim=0)


@register
class VarGrad(_NoiseExplainer):
    """VarGrad (Adebayo et al. 2018): variance of the input gradient over noisy copies (population variance)."""

    name = "vargrad"
    display_name = "VarGrad"
    code = "VARG"
    series_slot = 23
    signed = False

    @staticmethod
    def _combine(g: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
        return (sq - g * g).clamp(min=0).sum(dim=0)


class _ModifiedReluExplainer(_GradientExplainer):
    rule: ClassVar[str]
    signed = True

    def check_applicable(self, model: nn.Module) -> None:
        if not has_activation(model):
            raise ExplainerNotApplicable(self.name, "model has no activation module whose backward can be modified")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        with modified_backward(model, self.rule):
            grad = input_gradient(model, batch, target)
        return _signed_map(grad)


@register
class GuidedBackprop(_ModifiedReluExplainer):
    """Guided Backpropagation (Springenberg et al. 2015); gradient summed over channels."""

    name = "guided_backprop"
    display_name = "Guided Backpropagation"
    code = "GBP"
    series_slot = 4
    rule = "guided"


@register
class DeconvNet(_ModifiedReluExplainer):
    """DeconvNet (Zeiler & Fergus 2014): ReLU backward replaced by ``max(g, 0)``; summed over channels."""

    name = "deconvnet"
    display_name = "DeconvNet"
    code = "DECONV"
    series_slot = 21
    rule = "deconv"


@register
class DeepLift(_BaselineMixin, _GradientExplainer):
    """DeepLIFT with the rescale rule (Shrikumar et al. 2017), as captum's ``DeepLift``.

    The baseline runs first, once, under ``torch.no_grad()``, and every rule module records its reference
    input and output (:func:`~._grad_hooks.deeplift_rules`); then the input runs forward and backward alone,
    each rule computing its multipliers from the recorded reference. Attribution ``(x − x') · m`` with the
    multipliers ``m``, summed over channels: what captum computes on a ``cat([x, x'])`` batch, with half
    the backward work (captum back-propagates the baseline half too).
    """

    name = "deeplift"
    display_name = "DeepLIFT (rescale)"
    code = "DLIFT"
    series_slot = 5
    signed = True
    defaults: ClassVar[Mapping[str, Any]] = {"baseline": "black", "blur_sigma": 8.0}

    def _validate(self) -> None:
        self._check_baseline()
        self._completeness: list[float] = []

    def attributions(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Per-channel attributions ``(N, C, H, W)``; sets the completeness error of each image."""
        baseline = make_baseline(batch, self.params["baseline"], self.params["blur_sigma"]).detach()
        x = batch.detach().requires_grad_(True)
        index = target.reshape(-1, 1)
        with deeplift_rules(model) as rules:
            rules.recording = True
            with torch.no_grad():
                reference = model(baseline).gather(1, index)
            rules.recording = False
            with torch.enable_grad():
                picked = model(x).gather(1, index)
                (grad,) = torch.autograd.grad(picked.sum(), x)
            if rules.unused():
                raise RuntimeError("DeepLIFT: the model ran fewer layers on the input than on the baseline "
                                   "(its control flow depends on its input)")
        attr = (batch - baseline) * grad
        self._completeness = completeness_error(attr, (picked.detach() - reference).reshape(-1))
        return attr

    def _extras(self) -> dict[str, Any]:
        return {"completeness_error": list(self._completeness)} if self._completeness else {}

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return _signed_map(self.attributions(model, batch, target))
