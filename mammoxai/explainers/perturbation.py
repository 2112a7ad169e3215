"""Perturbation explainers: Occlusion, RISE, LIME and Kernel SHAP.

All four treat the model as a black box and estimate how the target score
changes when parts of the image are hidden. They share one design:

* the samples (occlusion windows, RISE masks, superpixel coalitions) are
  generated on the model's device with the explainer's seeded generator;
* perturbed inputs are built and forwarded ``batch_size`` at a time
  (``batch_size`` is the forward-pass budget and bounds memory);
* everything after the one SLIC segmentation per image (LIME, SHAP) is torch:
  no per-sample Python loop, no numpy round trip, no CPU↔GPU copy in the loop.

``score`` selects what is explained: ``"logit"`` (raw output), ``"probability"`` (softmax) or
``"log_odds"`` (``log p/(1 − p)`` from the logits). LIME and Kernel SHAP explain the log-odds by
default: a confident model's softmax saturates (logits 3 vs −25 give exactly 1.0 in float32),
every perturbation then scores the same and the map is constant; the raw logit of one class
does not saturate but also carries what all classes share (on the test CNN its LIME / Kernel
SHAP maps survived re-initialising the head: Spearman 0.62 / 0.53), the log-odds neither.
Faithfulness on the demo models is the same in probability and logit space (BENCHMARKS.md).
RISE keeps the paper's probability. LIME, Kernel SHAP and RISE record ``extras["score_range"]``
so a map from scores that never moved is recognised as not informative. Baselines are in the
model's normalised input space (0.0 = the
normalisation mean).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ._pert_common import (SCORES, baseline_image, check_baseline, compose_from_presence, evaluate_chunked,
                           hidden_image, superpixels)
from ._stability import AdaptiveRun, run_adaptive, split_half_stability
from .base import Explainer, ExplainerError, check_budget, register
from .gradients import _check_sampling, sampling_extras

__all__ = ["Occlusion", "Rise", "Lime", "KernelShap", "occlusion_windows", "rise_masks", "lime_kernel",
           "lime_surrogate", "shapley_coalitions", "kernel_shap_solve"]


def _check_common(method: str, params: dict[str, Any]) -> None:
    if params["score"] not in SCORES:
        raise ValueError(f"explainer {method!r}: score must be one of {SCORES}, got {params['score']!r}")
    if params["batch_size"] < 1:
        raise ValueError(f"explainer {method!r}: batch_size must be >= 1")


# --------------------------------------------------------------------------------------------- occlusion

def occlusion_windows(height: int, width: int, patch: int, stride: int,
                      device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-left corners ``(ys, xs)`` of the occlusion windows, captum's ``Occlusion`` layout.

    Along each axis there are ``ceil((size - patch) / stride) + 1`` positions ``k * stride``;
    the last window is clipped at the border, so every pixel is covered at least once.
    Returns two ``(K,)`` long tensors (row-major over the window grid).
    """
    if patch > height or patch > width:
        raise ValueError(f"occlusion: patch {patch} larger than the input {height}×{width}")
    ny = math.ceil((height - patch) / stride) + 1
    nx = math.ceil((width - patch) / stride) + 1
    ys = torch.arange(ny, device=device) * stride
    xs = torch.arange(nx, device=device) * stride
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return grid_y.reshape(-1), grid_x.reshape(-1)


def _window_masks(ys: torch.Tensor, xs: torch.Tensor, patch: int, height: int, width: int,
                  dtype: torch.dtype) -> torch.Tensor:
    rows = torch.arange(height, device=ys.device)
    cols = torch.arange(width, device=ys.device)
    in_rows = (rows[None, :] >= ys[:, None]) & (rows[None, :] < ys[:, None] + patch)
    in_cols = (cols[None, :] >= xs[:, None]) & (cols[None, :] < xs[:, None] + patch)
    return (in_rows[:, :, None] & in_cols[:, None, :]).to(dtype)  # K,H,W


@register
class Occlusion(Explainer):
    """Sliding-window occlusion (Zeiler & Fergus 2014), with captum ``Occlusion`` semantics.

    A ``patch``×``patch`` window (all channels) slides with ``stride``; each window is
    replaced by the baseline and the drop ``score(x) - score(x_occluded)`` is added to
    every pixel of the window; each pixel's sum is divided by the number of windows
    covering it. ``baseline``: ``None`` (0.0), a number, or ``"blur"`` (Gaussian blur of
    the image with ``blur_sigma`` pixels). Signed: positive = the region supports ``target``.
    """

    name = "occlusion"
    display_name = "Occlusion"
    code = "OCCL"
    series_slot = 15
    signed = True
    family = "perturbation"
    single_pass = False
    tolerates_autocast = True
    defaults = {"patch": 32, "stride": 16, "baseline": None, "blur_sigma": 8.0, "score": "logit"}

    def _validate(self) -> None:
        _check_common(self.name, self.params)
        check_baseline(self.name, self.params["baseline"])
        if self.params["patch"] < 1 or self.params["stride"] < 1:
            raise ValueError(f"explainer {self.name!r}: patch and stride must be >= 1")
        if self.params["stride"] > self.params["patch"]:
            raise ValueError(f"explainer {self.name!r}: stride must not exceed patch")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        patch, stride, bs = self.params["patch"], self.params["stride"], self.params["batch_size"]
        _, _, height, width = batch.shape
        if patch > height or patch > width:
            raise ExplainerError(self.name, f"patch {patch} is larger than the {height}×{width} input")
        ys, xs = occlusion_windows(height, width, patch, stride, batch.device)
        maps = []
        for i in range(batch.shape[0]):
            x = batch[i:i + 1]
            base = baseline_image(x, self.params["baseline"], self.params["blur_sigma"])
            t = int(target[i])
            with torch.no_grad():
                full = evaluate_chunked(model, lambda a, b: x, 1, 1, t, self.params["score"])[0]
            total = torch.zeros(height, width, device=batch.device, dtype=torch.float32)
            count = torch.zeros(height, width, device=batch.device, dtype=torch.float32)
            with torch.no_grad():
                for start in range(0, ys.numel(), bs):
                    m = _window_masks(ys[start:start + bs], xs[start:start + bs], patch, height, width, x.dtype)
                    inputs = x + m.unsqueeze(1) * (base - x)
                    drop = full - evaluate_chunked(model, lambda a, b: inputs, m.shape[0], m.shape[0], t,
                                                   self.params["score"])
                    mf = m.float()
                    total += torch.einsum("k,khw->hw", drop, mf)
                    count += mf.sum(0)
            maps.append(torch.where(count > 0, total / count.clamp(min=1), torch.zeros_like(total)))
        return torch.stack(maps)


# --------------------------------------------------------------------------------------------- RISE

def rise_masks(count: int, cells: int, p: float, height: int, width: int, generator: torch.Generator,
               device: torch.device, start: int = 0, stop: int | None = None,
               _grid: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """RISE masks (Petsiuk et al. 2018) ``start..stop-1`` of ``count``: ``(K, H, W)`` float in ``[0, 1]``.

    A ``cells``×``cells`` binary grid (each cell on with probability ``p``) is upsampled
    bilinearly to ``(cells+1)·⌈H/cells⌉ × (cells+1)·⌈W/cells⌉`` and cropped at a random
    shift in ``[0, ⌈H/cells⌉) × [0, ⌈W/cells⌉)``. The grids and shifts of all ``count``
    masks are drawn first (so the masks do not depend on how they are chunked); call
    with a fresh generator for the same masks.
    """
    grid, sy, sx = _grid if _grid is not None else _rise_draw(count, cells, p, height, width, generator, device)
    stop = count if stop is None else stop
    ch, cw = math.ceil(height / cells), math.ceil(width / cells)
    up = torch.nn.functional.interpolate(grid[start:stop], size=((cells + 1) * ch, (cells + 1) * cw),
                                         mode="bilinear", align_corners=False).squeeze(1)
    rows = sy[start:stop, None] + torch.arange(height, device=device)[None, :]
    cols = sx[start:stop, None] + torch.arange(width, device=device)[None, :]
    k = torch.arange(stop - start, device=device)[:, None, None]
    return up[k, rows[:, :, None], cols[:, None, :]]


def _rise_draw(count: int, cells: int, p: float, height: int, width: int, generator: torch.Generator,
               device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    grid = (torch.rand(count, 1, cells, cells, generator=generator, device=device) < p).float()
    ch, cw = math.ceil(height / cells), math.ceil(width / cells)
    sy = torch.randint(0, ch, (count,), generator=generator, device=device)
    sx = torch.randint(0, cw, (count,), generator=generator, device=device)
    return grid, sy, sx


@register
class Rise(Explainer):
    """RISE: Randomized Input Sampling for Explanation (Petsiuk, Das, Saenko 2018).

    ``saliency = Σ_i score(x ⊙ M_i + b ⊙ (1 - M_i)) · M_i / (n_masks · p)`` with the masks of
    :func:`rise_masks` (``cells`` grid, keep probability ``p``); ``b`` is the baseline
    (``None`` = 0.0, a number, or ``"blur"``). Unsigned (an expected score).

    ``center=True`` (default) uses the control-variate form
    ``s̄ + Σ_i (s_i - s̄) · M_i / (n_masks · p)`` (``s̄`` the mean score): the same expectation
    (``E[M] = p``) without the mask-sampling pattern ``Σ M_i`` that otherwise dominates the
    map when scores vary little. ``center=False`` is the paper's estimator exactly.
    """

    name = "rise"
    display_name = "RISE"
    code = "RISE"
    series_slot = 16
    signed = False
    family = "perturbation"
    single_pass = False
    tolerates_autocast = True
    defaults = {"n_masks": 1000, "cells": 8, "p": 0.5, "baseline": None, "blur_sigma": 8.0,
                "score": "probability", "center": True, "stability_target": 0.0, "max_samples": 16000}

    def _validate(self) -> None:
        _check_common(self.name, self.params)
        _check_sampling(self.name, self.params)
        self._runs: list[AdaptiveRun] = []
        self._ranges: list[tuple[float, float]] = []
        check_baseline(self.name, self.params["baseline"])
        if self.params["n_masks"] < 1 or self.params["cells"] < 1:
            raise ValueError(f"explainer {self.name!r}: n_masks and cells must be >= 1")
        if not 0.0 < self.params["p"] <= 1.0:
            raise ValueError(f"explainer {self.name!r}: p must be in (0, 1]")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        n, cells, p, bs = self.params["n_masks"], self.params["cells"], self.params["p"], self.params["batch_size"]
        _, _, height, width = batch.shape
        device = batch.device
        gen = self.generator(device)
        first = _rise_draw(n, cells, p, height, width, gen, device)
        maps, self._runs, self._ranges = [], [], []
        for i in range(batch.shape[0]):
            x = batch[i:i + 1]
            base = baseline_image(x, self.params["baseline"], self.params["blur_sigma"])
            # per half: Σ s·M, Σ M, Σ s, count
            sal = torch.zeros(2, height, width, device=device, dtype=torch.float64)
            cover = torch.zeros(2, height, width, device=device, dtype=torch.float64)
            total = torch.zeros(2, device=device, dtype=torch.float64)
            count = [0, 0]
            spread = [math.inf, -math.inf]

            def draw(start: int, stop: int) -> None:
                drawn = first if stop <= n else _rise_draw(stop - start, cells, p, height, width, gen, device)
                offset = 0 if stop <= n else start
                with torch.no_grad():
                    for lo in range(start, stop, bs):
                        hi = min(stop, lo + bs)
                        check_budget(self.name)
                        m = rise_masks(drawn[0].shape[0], cells, p, height, width,
                                       None, device,  # type: ignore[arg-type]
                                       lo - offset, hi - offset, _grid=drawn)
                        inputs = base + m.unsqueeze(1).to(x.dtype) * (x - base)
                        s = evaluate_chunked(model, lambda a, b: inputs, hi - lo, hi - lo, int(target[i]),
                                             self.params["score"]).double()
                        parity = torch.arange(lo, hi, device=device) % 2
                        spread[0] = min(spread[0], float(s.min()))
                        spread[1] = max(spread[1], float(s.max()))
                        for h in (0, 1):
                            sel = parity == h
                            sal[h] += torch.einsum("k,khw->hw", s[sel], m[sel].double())
                            cover[h] += m[sel].double().sum(0)
                            total[h] += s[sel].sum()
                            count[h] += int(sel.sum())

            def finish(sal_: torch.Tensor, cover_: torch.Tensor, total_: torch.Tensor, k: int) -> torch.Tensor:
                if k == 0:
                    return torch.zeros_like(sal_)
                if self.params["center"]:
                    mean = total_ / k
                    return mean + (sal_ - mean * cover_) / (k * p)
                return sal_ / (k * p)

            def halves() -> tuple[torch.Tensor, torch.Tensor]:
                return finish(sal[0], cover[0], total[0], count[0]), finish(sal[1], cover[1], total[1], count[1])

            self._runs.append(run_adaptive(draw, halves, n, float(self.params["stability_target"]),
                                           self.params["max_samples"], count=lambda: count[0] + count[1]))
            maps.append(finish(sal.sum(0), cover.sum(0), total.sum(), count[0] + count[1]).float())
            self._ranges.append((spread[0], spread[1]))
        return torch.stack(maps)

    def _extras(self) -> dict[str, Any]:
        return {**sampling_extras(self._runs), "score_range": list(self._ranges)} if self._runs else {}


# --------------------------------------------------------------------------------------------- LIME

def lime_kernel(presence: torch.Tensor, kernel_width: float) -> torch.Tensor:
    """LIME's image sample weights: ``sqrt(exp(-d² / kernel_width²))`` with ``d`` the cosine distance
    between each ``(K, M)`` presence row and the all-ones row (``d = 1`` for the empty row, as sklearn)."""
    z = presence.to(torch.float64)
    m = z.shape[1]
    k = z.sum(dim=1)
    cos = torch.where(k > 0, k / (k.clamp(min=1).sqrt() * math.sqrt(m)), torch.zeros_like(k))
    d = 1.0 - cos
    return torch.sqrt(torch.exp(-(d ** 2) / kernel_width ** 2))


def lime_surrogate(presence: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor, solver: str = "ridge",
                   alpha: float = 1.0, l1_alpha: float = 1e-3, iterations: int = 2000) -> dict[str, Any]:
    """Fit LIME's weighted linear surrogate in torch: ``score ≈ intercept + presence @ coef``.

    ``solver="ridge"``: minimises ``Σ w_i (y_i - b - z_i·β)² + alpha·‖β‖²`` with an unpenalised
    intercept (sklearn ``Ridge(alpha, fit_intercept=True)`` with ``sample_weight``, LIME's default).
    ``solver="lasso"``: ``(1/(2Σw)) Σ w_i (y_i - b - z_i·β)² + l1_alpha·‖β‖₁`` (sklearn ``Lasso``)
    solved by FISTA for ``iterations`` steps. Returns ``coef`` (M,), ``intercept`` and ``score``
    (weighted R², as LIME's ``score``), all float64 tensors on the input device.
    """
    z = presence.to(torch.float64)
    y = scores.to(torch.float64)
    w = weights.to(torch.float64)
    wsum = w.sum()
    z_mean = (w[:, None] * z).sum(0) / wsum
    y_mean = (w * y).sum() / wsum
    zc, yc = z - z_mean, y - y_mean
    if solver == "ridge":
        gram = zc.T @ (w[:, None] * zc) + alpha * torch.eye(z.shape[1], dtype=z.dtype, device=z.device)
        coef = torch.linalg.solve(gram, zc.T @ (w * yc))
    elif solver == "lasso":
        wn = w / wsum
        gram = zc.T @ (wn[:, None] * zc)
        rhs = zc.T @ (wn * yc)
        lipschitz = torch.linalg.eigvalsh(gram).max().clamp(min=1e-12)
        coef = torch.zeros(z.shape[1], dtype=z.dtype, device=z.device)
        momentum, t = coef.clone(), 1.0
        for _ in range(iterations):  # iterations of the solver, not a loop over samples
            step = momentum - (gram @ momentum - rhs) / lipschitz
            new = torch.sign(step) * (step.abs() - l1_alpha / lipschitz).clamp(min=0)
            t_new = (1 + math.sqrt(1 + 4 * t * t)) / 2
            momentum = new + ((t - 1) / t_new) * (new - coef)
            coef, t = new, t_new
    else:
        raise ValueError(f"lime: solver must be 'ridge' or 'lasso', got {solver!r}")
    intercept = y_mean - z_mean @ coef
    pred = intercept + z @ coef
    ss_res = (w * (y - pred) ** 2).sum()
    ss_tot = (w * (y - y_mean) ** 2).sum()
    r2 = 1 - ss_res / ss_tot if float(ss_tot) > 0 else torch.ones((), dtype=z.dtype, device=z.device)
    return {"coef": coef, "intercept": intercept, "score": r2}


class _SuperpixelExplainer(Explainer):
    """Common parameters and validation of LIME and Kernel SHAP (SLIC superpixels as features)."""

    seg_defaults = {"n_segments": 50, "compactness": 0.1, "slic_sigma": 1.0, "hide_color": None,
                    "score": "log_odds", "stability_target": 0.0, "max_samples": 8000}

    def __init__(self, **params: Any) -> None:
        self._last: dict[str, Any] = {}
        super().__init__(**params)

    def _validate(self) -> None:
        _check_common(self.name, self.params)
        hide = self.params["hide_color"]
        if hide is not None and (isinstance(hide, bool) or not isinstance(hide, (int, float))):
            raise ValueError(f"explainer {self.name!r}: hide_color must be None or a number, got {hide!r}")
        if self.params["n_segments"] < 2:
            raise ValueError(f"explainer {self.name!r}: n_segments must be >= 2")
        if self.params["samples"] < 2:
            raise ValueError(f"explainer {self.name!r}: samples must be >= 2")
        _check_sampling(self.name, self.params)
        self._runs: list[AdaptiveRun] = []

    def _segments(self, x: torch.Tensor) -> torch.Tensor:
        return superpixels(x[0], self.params["n_segments"], self.params["compactness"], self.params["slic_sigma"])

    def _evaluate(self, model: nn.Module, x: torch.Tensor, segments: torch.Tensor, presence: torch.Tensor,
                  target: int) -> torch.Tensor:
        hidden = hidden_image(x[0], segments, self.params["hide_color"])
        bs = self.params["batch_size"]
        return evaluate_chunked(model, lambda a, b: compose_from_presence(x[0], hidden, segments, presence[a:b]),
                                presence.shape[0], bs, target, self.params["score"])

    def _extras(self) -> dict[str, Any]:
        return dict(self._last)


@register
class Lime(_SuperpixelExplainer):
    """LIME for images (Ribeiro et al. 2016), as ``lime.lime_image`` with the surrogate solved in torch.

    Features are SLIC superpixels (:func:`~mammoxai.explainers._pert_common.superpixels`);
    ``samples`` random presence vectors (each superpixel on with probability 1/2, the
    first sample all on), absent superpixels show their mean (``hide_color=None``) or a
    constant. Samples are weighted by :func:`lime_kernel` (``kernel_width``) and fitted
    by :func:`lime_surrogate` (``solver`` ridge with ``alpha`` or lasso with ``l1_alpha``).
    The heatmap paints each superpixel with its coefficient (signed). ``extras``:
    ``segments`` (N,H,W), ``coef``, ``intercept``, ``score`` (R²) per image.
    """

    name = "lime"
    display_name = "LIME"
    code = "LIME"
    series_slot = 17
    signed = True
    family = "perturbation"
    single_pass = False
    tolerates_autocast = True
    defaults = {**_SuperpixelExplainer.seg_defaults, "samples": 500, "kernel_width": 0.25, "solver": "ridge",
                "alpha": 1.0, "l1_alpha": 1e-3}

    def _validate(self) -> None:
        super()._validate()
        if self.params["solver"] not in ("ridge", "lasso"):
            raise ValueError(f"explainer {self.name!r}: solver must be 'ridge' or 'lasso'")
        if self.params["kernel_width"] <= 0:
            raise ValueError(f"explainer {self.name!r}: kernel_width must be > 0")

    def _fit(self, presence: torch.Tensor, scores: torch.Tensor) -> dict[str, Any]:
        return lime_surrogate(presence, scores, lime_kernel(presence, self.params["kernel_width"]),
                              self.params["solver"], self.params["alpha"], self.params["l1_alpha"])

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        gen = self.generator(batch.device)
        maps, segs, coefs, intercepts, r2s = [], [], [], [], []
        ranges: list[tuple[float, float]] = []
        self._runs = []
        for i in range(batch.shape[0]):
            x = batch[i:i + 1]
            segments = self._segments(x)
            m = int(segments.max()) + 1
            rows: list[torch.Tensor] = []
            values: list[torch.Tensor] = []

            def draw(start: int, stop: int) -> None:
                presence = torch.randint(0, 2, (stop - start, m), generator=gen, device=batch.device)
                if start == 0:
                    presence[0] = 1
                check_budget(self.name)
                with torch.no_grad():
                    values.append(self._evaluate(model, x, segments, presence, int(target[i])))
                rows.append(presence)

            def halves() -> tuple[torch.Tensor, torch.Tensor]:
                z, y = torch.cat(rows), torch.cat(values)
                return tuple(self._fit(z[h::2], y[h::2])["coef"][segments] for h in (0, 1))  # type: ignore

            self._runs.append(run_adaptive(draw, halves, self.params["samples"],
                                           float(self.params["stability_target"]), self.params["max_samples"],
                                           count=lambda: sum(r.shape[0] for r in rows)))
            all_scores = torch.cat(values)
            ranges.append((float(all_scores.min()), float(all_scores.max())))
            fit = self._fit(torch.cat(rows), all_scores)
            coef = fit["coef"].float()
            maps.append(coef[segments])
            segs.append(segments.cpu())
            coefs.append(coef.cpu())
            intercepts.append(float(fit["intercept"]))
            r2s.append(float(fit["score"]))
        self._last = {"segments": torch.stack(segs), "coef": coefs, "intercept": intercepts, "score": r2s,
                      "score_range": ranges, **sampling_extras(self._runs)}
        return torch.stack(maps)


# --------------------------------------------------------------------------------------------- Kernel SHAP

def shapley_coalitions(m: int, nsamples: int, generator: torch.Generator,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Coalitions and kernel weights for Kernel SHAP over ``m`` features, as ``shap.KernelExplainer``.

    Subset sizes ``k`` and ``m-k`` share the Shapley kernel mass ``∝ (m-1)/(k(m-k))``. Sizes
    are fully enumerated, smallest first (with complements), while the budget allows
    every subset of that size its share; the rest of the budget is drawn at random
    (size by the remaining kernel mass, subset uniformly, paired with its complement),
    each draw weighing 1 and the random part rescaled to the remaining kernel mass. Unlike
    shap, a repeated random draw is kept as a second row rather than merged (same
    estimator). Returns ``(K, m)`` float presence rows and ``(K,)`` float64 weights.
    """
    plan = _shapley_plan(m, nsamples, device)
    if plan is None:
        return torch.zeros(0, m, device=device), torch.zeros(0, dtype=torch.float64, device=device)
    rows, wts, n_full, left, weight = plan
    if n_full < weight.numel() and left > 0:
        rand_rows, _ = _random_coalitions(m, n_full, weight, left, generator, device)
        rows.append(rand_rows)
        wts.append(_random_weights(weight, n_full, rand_rows.shape[0], device))
    return torch.cat(rows), torch.cat(wts)


def _shapley_plan(m: int, nsamples: int, device: torch.device
                  ) -> tuple[list[torch.Tensor], list[torch.Tensor], int, int, torch.Tensor] | None:
    """The fully enumerated sizes: rows, weights, how many sizes, budget left, and the size weights."""
    if m < 2:
        return None
    nsamples = min(nsamples, 2 ** m - 2) if m < 31 else nsamples
    n_sizes = math.ceil((m - 1) / 2)
    n_paired = (m - 1) // 2
    weight = torch.tensor([(m - 1) / (k * (m - k)) for k in range(1, n_sizes + 1)], dtype=torch.float64)
    weight[:n_paired] *= 2
    weight /= weight.sum()
    rows: list[torch.Tensor] = []
    wts: list[torch.Tensor] = []
    left = nsamples
    remaining = weight.clone()
    n_full = 0
    for size in range(1, n_sizes + 1):  # loop over subset sizes (at most m/2), not over samples
        nsub = math.comb(m, size) * (2 if size <= n_paired else 1)
        if left * float(remaining[size - 1]) / nsub >= 1.0 - 1e-8:
            n_full += 1
            left -= nsub
            if float(remaining[size - 1]) < 1.0:
                remaining /= (1 - float(remaining[size - 1]))
            w = float(weight[size - 1]) / math.comb(m, size)
            if size <= n_paired:
                w /= 2
            idx = torch.combinations(torch.arange(m, device=device), r=size)
            z = torch.zeros(idx.shape[0], m, device=device).scatter_(1, idx, 1.0)
            rows.append(z)
            if size <= n_paired:
                rows.append(1.0 - z)
            wts.append(torch.full((idx.shape[0] * (2 if size <= n_paired else 1),), w,
                                  dtype=torch.float64, device=device))
        else:
            break
    return rows, wts, n_full, left, weight


def _random_weights(weight: torch.Tensor, n_full: int, count: int, device: torch.device) -> torch.Tensor:
    """Equal weights of ``count`` random rows, summing to the kernel mass of the sizes not enumerated."""
    return torch.full((count,), float(weight[n_full:].sum()) / max(count, 1), dtype=torch.float64, device=device)


def _random_coalitions(m: int, n_full: int, weight: torch.Tensor, left: int, generator: torch.Generator,
                       device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``left`` random rows (draws paired with their complements) and each row's draw index."""
    n_paired = (m - 1) // 2
    rem = weight.clone()
    rem[:n_paired] /= 2
    rem = rem[n_full:]
    rem /= rem.sum()
    draws = torch.multinomial(rem.to(device), 4 * left, replacement=True, generator=generator) + n_full + 1
    per_draw = torch.where(draws <= n_paired, 2, 1)
    before = torch.cumsum(per_draw, 0) - per_draw
    keep = before < left
    draws, before = draws[keep], before[keep]
    ranks = torch.rand(draws.numel(), m, generator=generator, device=device).argsort(1).argsort(1)
    z = (ranks < draws[:, None]).float()
    with_comp = (draws <= n_paired) & (before + 1 < left)
    ids = torch.arange(draws.numel(), device=device)
    return torch.cat([z, 1.0 - z[with_comp]]), torch.cat([ids, ids[with_comp]])


def kernel_shap_solve(presence: torch.Tensor, scores: torch.Tensor, weights: torch.Tensor, fx: float | torch.Tensor,
                      fnull: float | torch.Tensor) -> torch.Tensor:
    """Shapley values from coalition scores, by shap's constrained weighted least squares.

    The efficiency constraint ``Σφ = fx - fnull`` eliminates the last feature:
    ``y' = (y - fnull) - z_last (fx - fnull)``, ``X = z[:, :-1] - z_last``, solve
    ``(Xᵀ W X) w = Xᵀ W y'`` (pseudo-inverse if singular), ``φ_last = (fx - fnull) - Σw``.
    Returns ``(M,)`` float64 on the input device.
    """
    z = presence.to(torch.float64)
    y = scores.to(torch.float64)
    w = weights.to(torch.float64)
    total = torch.as_tensor(fx, dtype=torch.float64, device=z.device) - torch.as_tensor(
        fnull, dtype=torch.float64, device=z.device)
    m = z.shape[1]
    if m == 1:
        return total.reshape(1)
    y_adj = (y - torch.as_tensor(fnull, dtype=torch.float64, device=z.device)) - z[:, -1] * total
    xm = z[:, :-1] - z[:, -1:]
    wx = w[:, None] * xm
    gram = xm.T @ wx
    rhs = wx.T @ y_adj
    sol, info = torch.linalg.solve_ex(gram, rhs)
    if int(info) != 0 or not torch.isfinite(sol).all():
        sol = torch.linalg.pinv(gram) @ rhs
    return torch.cat([sol, (total - sol.sum()).reshape(1)])


@register
class KernelShap(_SuperpixelExplainer):
    """Kernel SHAP (Lundberg & Lee 2017) over SLIC superpixels, as ``shap.KernelExplainer``.

    The value of a coalition ``z`` is the score of the image with the absent superpixels
    hidden (their mean, or ``hide_color``); the reference is the all-hidden image.
    Coalitions and weights from :func:`shapley_coalitions` (``samples`` budget), solved by
    :func:`kernel_shap_solve` (no L1 feature selection, i.e. shap's ``l1_reg=False``).
    Heatmap: each superpixel painted with its Shapley value (signed; they sum to
    ``f(x) - f(all hidden)``). ``extras``: ``segments``, ``phi``, ``fx``, ``fnull`` per image.
    """

    name = "kernel_shap"
    display_name = "Kernel SHAP"
    code = "KSHAP"
    series_slot = 18
    signed = True
    family = "perturbation"
    single_pass = False
    tolerates_autocast = True
    defaults = {**_SuperpixelExplainer.seg_defaults, "samples": 500}

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        gen = self.generator(batch.device)
        maps, segs, phis, fxs, fnulls = [], [], [], [], []
        ranges: list[tuple[float, float]] = []
        self._runs = []
        device = batch.device
        for i in range(batch.shape[0]):
            x = batch[i:i + 1]
            segments = self._segments(x)
            m = int(segments.max()) + 1
            plan = _shapley_plan(m, self.params["samples"], device)
            ends = torch.stack([torch.ones(m, device=device), torch.zeros(m, device=device)])
            if plan is None:
                enum_rows, enum_w, n_full, left, weight = [], [], 0, 0, torch.ones(0, dtype=torch.float64)
            else:
                enum_rows, enum_w, n_full, left, weight = plan
            enum_z = torch.cat(enum_rows) if enum_rows else torch.zeros(0, m, device=device)
            enum_wt = torch.cat(enum_w) if enum_w else torch.zeros(0, dtype=torch.float64, device=device)
            with torch.no_grad():
                fixed = self._evaluate(model, x, segments, torch.cat([ends, enum_z]), int(target[i]))
            fx, fnull = fixed[0], fixed[1]
            rand_z: list[torch.Tensor] = []
            rand_ids: list[torch.Tensor] = []
            rand_y: list[torch.Tensor] = []
            drawn = [0]  # random draws so far (ids continue across batches)
            can_draw = plan is not None and n_full < weight.numel()

            def solve(parity: int | None) -> torch.Tensor:
                z, w, y = enum_z, enum_wt, fixed[2:]
                if rand_z:
                    rz, ri, ry = torch.cat(rand_z), torch.cat(rand_ids), torch.cat(rand_y)
                    if parity is not None:
                        sel = ri % 2 == parity
                        rz, ry = rz[sel], ry[sel]
                    z = torch.cat([z, rz])
                    y = torch.cat([y, ry])
                    w = torch.cat([w, _random_weights(weight, n_full, rz.shape[0], device)])
                if z.shape[0] == 0:
                    return torch.full((m,), float(fx - fnull) / max(m, 1), dtype=torch.float64, device=device)
                return kernel_shap_solve(z, y, w, fx, fnull)

            def draw(start: int, stop: int) -> None:
                if not can_draw:
                    return
                budget = left if start == 0 else stop - start
                if budget <= 0:
                    return
                check_budget(self.name)
                z, ids = _random_coalitions(m, n_full, weight, budget, gen, device)
                with torch.no_grad():
                    rand_y.append(self._evaluate(model, x, segments, z, int(target[i])))
                rand_z.append(z)
                rand_ids.append(ids + drawn[0])
                drawn[0] += int(ids.max()) + 1 if ids.numel() else 0

            def halves() -> tuple[torch.Tensor, torch.Tensor]:
                return solve(0).float()[segments], solve(1).float()[segments]

            initial = self.params["samples"] if can_draw else 0
            target_s = float(self.params["stability_target"]) if can_draw else 0.0
            run = run_adaptive(draw, halves, initial, target_s, self.params["max_samples"],
                               count=lambda: initial + sum(z.shape[0] for z in rand_z[1:]))
            if not can_draw:  # every coalition enumerated: the values are exact, a rerun gives the same map
                run.stability, run.stopped = 1.0, "exact"
            self._runs.append(run)
            phi = solve(None).float()
            all_scores = torch.cat([fixed, *rand_y])
            ranges.append((float(all_scores.min()), float(all_scores.max())))
            maps.append(phi[segments])
            segs.append(segments.cpu())
            phis.append(phi.cpu())
            fxs.append(float(fx))
            fnulls.append(float(fnull))
        self._last = {"segments": torch.stack(segs), "phi": phis, "fx": fxs, "fnull": fnulls,
                      "score_range": ranges, **sampling_extras(self._runs)}
        return torch.stack(maps)
