"""Quality scores of explanation maps: faithfulness, robustness, complexity, localisation, sanity.

Everything here is torch, batched and device-agnostic: the scores are computed
on the model's device, several perturbed inputs per forward pass. Heatmaps are
``(N, H, W)`` at model-input resolution (what :class:`~.base.Explanation`
holds); inputs are the ``N×C×H×W`` batches the model takes.

Definitions (each checked against Quantus 0.6.0 in ``tests/quality``):

* **Deletion AUC** (Petsiuk et al. 2018, "RISE"; Quantus ``PixelFlipping``):
  pixels are replaced, most relevant first (signed maps: most *positive*
  first), by a baseline, in ``steps`` equal chunks of ``ceil(H·W/steps)``
  pixels; all channels of a pixel go together. The curve is the softmax
  probability of the explained class at fractions ``0, 1/steps, …, 1`` of the
  pixels replaced, and the AUC is its trapezoidal area over ``[0, 1]`` (so it
  lies in ``[0, 1]``). Lower is better.
* **Insertion AUC**: the mirror image: start from the baseline and put the
  original pixels back, most relevant first. Higher is better.
* **Baseline**: ``"blur"`` (default; a Gaussian blur of the image with
  ``sigma = blur_sigma · min(H, W)``, reflect padding, which removes
  local evidence without creating out-of-distribution edges), ``"mean"``
  (per-image, per-channel mean) or ``"zero"``.
* **Faithfulness** (one number per map) := insertion AUC − deletion AUC, in
  ``[-1, 1]``; higher is better; about 0 for a map unrelated to the decision.
* **Max-sensitivity** (Yeh et al. 2019; Quantus ``MaxSensitivity`` with its
  default norms): ``max_k ‖e(x + δ_k) − e(x)‖_F / ‖e(x)‖_F`` over ``samples``
  noise draws ``δ_k ~ U(−r, r)``, ``r = radius · (max x − min x)`` per image,
  with the explained class held fixed. Lower is better.
* **Sparseness** (Chalasani et al. 2020; Quantus ``Sparseness``): the Gini
  index of ``|map|`` scaled to a maximum of 1; in ``[0, 1]``, higher = more
  concentrated.
* **Pointing game** (Zhang et al. 2018; Quantus ``PointingGame``): 1 when a
  pixel holding the map's maximum lies in the lesion mask, else 0.
* **Relevance mass** (Arras et al. 2022; Quantus ``RelevanceMassAccuracy``):
  the share of the map's positive relevance that falls inside the mask
  (negative relevance, in signed maps, is not counted).
* **Randomisation sanity** (Adebayo et al. 2018; Quantus ``MPRT``): the check
  itself lives in :mod:`mammoxai.explainers.sanity`; this module provides its
  rank correlation (:func:`spearman`).

This module never imports ``mammoxai.node`` or ``mammoxai.dicom_io``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any, Literal, Mapping, Sequence

import torch
from torch import nn

from ._blur import gaussian_blur  # noqa: F401 - part of this module's API
from .base import Explainer, Explanation

log = logging.getLogger(__name__)

Baseline = Literal["blur", "mean", "zero"]
BASELINES: tuple[str, ...] = ("blur", "mean", "zero")

#: Keys of the per-image score dictionaries, in display order.
SCORE_KEYS: tuple[str, ...] = (
    "faithfulness", "deletion_auc", "insertion_auc", "max_sensitivity", "sparseness",
    "pointing_game", "relevance_mass",
)

#: For each score, whether a higher value is better (for tables and rankings).
HIGHER_IS_BETTER: dict[str, bool] = {
    "faithfulness": True, "deletion_auc": False, "insertion_auc": True, "max_sensitivity": False,
    "sparseness": True, "pointing_game": True, "relevance_mass": True,
}


@dataclass(frozen=True)
class QualityScores:
    """The quality scores of one map (see the module docstring for definitions).

    ``max_sensitivity`` is ``None`` when no explainer was given to re-run;
    ``pointing_game`` / ``relevance_mass`` are ``None`` without a (non-empty) lesion mask.
    """

    deletion_auc: float
    insertion_auc: float
    faithfulness: float
    sparseness: float
    max_sensitivity: float | None = None
    pointing_game: float | None = None
    relevance_mass: float | None = None

    def as_dict(self) -> dict[str, float]:
        """The scores that exist (finite, not ``None``), keyed as in :data:`SCORE_KEYS`."""
        values = asdict(self)
        return {key: float(values[key]) for key in SCORE_KEYS
                if values[key] is not None and math.isfinite(values[key])}


# --- helpers ---------------------------------------------------------------------------------

def _model_ref(model: nn.Module) -> torch.Tensor:
    try:
        return next(model.parameters())
    except StopIteration:
        raise ValueError("model has no parameters: cannot tell its device and dtype") from None


def _check_heatmap(batch: torch.Tensor, heatmap: torch.Tensor) -> None:
    if batch.ndim != 4:
        raise ValueError(f"batch must be N×C×H×W, got shape {tuple(batch.shape)}")
    expected = (batch.shape[0], batch.shape[2], batch.shape[3])
    if tuple(heatmap.shape) != expected:
        raise ValueError(f"heatmap must be N×H×W = {expected}, got shape {tuple(heatmap.shape)}")


def _targets(target: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(target, device=device, dtype=torch.long).reshape(-1)
    if t.numel() == 1:
        t = t.expand(n)
    if t.numel() != n:
        raise ValueError(f"target must be one class or one per image ({n}), got {t.numel()}")
    return t


def _accumulate_dtype(device: torch.device) -> torch.dtype:
    return torch.float32 if device.type == "mps" else torch.float64


def make_baseline(batch: torch.Tensor, baseline: Baseline = "blur", *, blur_sigma: float = 0.04) -> torch.Tensor:
    """The input with all evidence removed: ``"blur"`` (σ = ``blur_sigma``·min(H, W)), ``"mean"`` or ``"zero"``."""
    if baseline == "blur":
        return gaussian_blur(batch, blur_sigma * min(batch.shape[-2:]))
    if baseline == "mean":
        return batch.mean(dim=(2, 3), keepdim=True).expand_as(batch).clone()
    if baseline == "zero":
        return torch.zeros_like(batch)
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {baseline!r}")


def _relevance_rank(heatmap: torch.Tensor) -> torch.Tensor:
    """Per image, each pixel's 0-based position in descending order of relevance (stable for ties)."""
    flat = heatmap.reshape(heatmap.shape[0], -1)
    order = torch.argsort(flat, dim=1, descending=True, stable=True)
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(flat.shape[1], device=flat.device).expand_as(order))
    return rank


# --- faithfulness ----------------------------------------------------------------------------

def perturbation_curves(model: nn.Module, batch: torch.Tensor, heatmap: torch.Tensor,
                        target: int | torch.Tensor, *, steps: int = 20, baseline: Baseline = "blur",
                        blur_sigma: float = 0.04, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion curves, each ``(N, steps + 1)``: P(target) after step ``k`` of ``steps``.

    Column ``k`` of the deletion curve is the probability with the
    ``min(k·ceil(H·W/steps), H·W)`` most relevant pixels replaced by the
    baseline; of the insertion curve, with those pixels restored onto the
    baseline. Perturbed inputs are built on the model's device and run
    ``batch_size`` at a time; the unperturbed input and the baseline are run
    once and shared by both curves (``2·(steps−1)+2`` forward passes per image).
    One map of :func:`perturbation_curves_many`.
    """
    return perturbation_curves_many(model, batch, [heatmap], [target], steps=steps, baseline=baseline,
                                    blur_sigma=blur_sigma, batch_size=batch_size)[0]


def perturbation_curves_many(model: nn.Module, batch: torch.Tensor, heatmaps: Sequence[torch.Tensor],
                             targets: Sequence[int | torch.Tensor], *, steps: int = 20,
                             baseline: Baseline = "blur", blur_sigma: float = 0.04, batch_size: int = 16
                             ) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`perturbation_curves` of several maps of the same ``batch`` (e.g. every method's), in shared passes.

    ``heatmaps[m]`` (``N×H×W``) is explained for ``targets[m]``; returns one ``(deletion, insertion)``
    pair per map, each as :func:`perturbation_curves` defines it. The unperturbed input and the
    baseline are the same for every map, so they run once per image for all of them; every map's
    perturbed inputs then go through the model together, ``batch_size`` at a time
    (``2 + M·2·(steps−1)`` forward passes per image for ``M`` maps instead of ``M·(2·(steps−1)+2)``).
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if len(heatmaps) != len(targets):
        raise ValueError(f"{len(heatmaps)} heatmaps but {len(targets)} targets")
    if not heatmaps:
        return []
    for heatmap in heatmaps:
        _check_heatmap(batch, heatmap)
    ref = _model_ref(model)
    x = batch.to(device=ref.device, dtype=ref.dtype)
    n, _, h, w = x.shape
    n_pixels = h * w
    target_t = torch.stack([_targets(t, n, ref.device) for t in targets])                  # (M, N)
    rank = torch.stack([_relevance_rank(hm.to(ref.device, torch.float32)) for hm in heatmaps])  # (M, N, H·W)
    base = make_baseline(x, baseline, blur_sigma=blur_sigma)
    per_step = math.ceil(n_pixels / steps)
    thresholds = [min(k * per_step, n_pixels) for k in range(steps + 1)]

    # jobs: (map, image, insert?, k). Deletion k=0 is the input and deletion k=steps the baseline: they are
    # insertion's k=steps and k=0 and the same for every map, so they run once per image (as map 0's).
    # Steps sharing a threshold (steps > H·W) run once.
    distinct = [k for k in range(1, steps) if thresholds.index(thresholds[k]) == k]
    jobs: list[tuple[int, int, bool, int]] = []
    for i in range(n):
        jobs += [(0, i, False, 0), (0, i, False, steps)]
    for m in range(len(heatmaps)):
        for i in range(n):
            for k in distinct:
                jobs += [(m, i, False, k), (m, i, True, k)]
    rows = []
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start:start + batch_size]
                mth = torch.tensor([j[0] for j in chunk], device=ref.device)
                img = torch.tensor([j[1] for j in chunk], device=ref.device)
                ins = torch.tensor([j[2] for j in chunk], device=ref.device)
                thr = torch.tensor([thresholds[j[3]] for j in chunk], device=ref.device)
                selected = rank[mth, img] < thr[:, None]                  # the most relevant pixels
                keep_input = (selected == ins[:, None]).view(-1, 1, h, w)
                xs = torch.where(keep_input, x[img], base[img])
                rows.append(model(xs).float().softmax(dim=1))
    finally:
        model.train(was_training)
    probs = torch.cat(rows)                                                 # (jobs, classes)

    curves = []
    for m in range(len(heatmaps)):
        deletion = torch.empty(n, steps + 1, device=ref.device)
        insertion = torch.empty(n, steps + 1, device=ref.device)
        curves.append((deletion, insertion))
    for idx, (m, i, inserted, k) in enumerate(jobs):
        if not inserted and k in (0, steps):                                # shared by every map
            for mm, (deletion, insertion) in enumerate(curves):
                deletion[i, k] = insertion[i, steps - k] = probs[idx, target_t[mm, i]]
        else:
            deletion, insertion = curves[m]
            (insertion if inserted else deletion)[i, k] = probs[idx, target_t[m, i]]
    for deletion, insertion in curves:
        for k in range(1, steps):
            k0 = thresholds.index(thresholds[k])
            if k0 != k:
                deletion[:, k] = deletion[:, k0]
                insertion[:, k] = insertion[:, k0]
    return curves


def curve_auc(curve: torch.Tensor, *, n_pixels: int | None = None) -> torch.Tensor:
    """Trapezoidal area of ``(N, steps + 1)`` curves over the fraction of pixels perturbed, ``[0, 1]``.

    With ``n_pixels``, the x positions are the exact fractions
    ``min(k·ceil(n_pixels/steps), n_pixels)/n_pixels``; without it, ``k/steps``.
    """
    steps = curve.shape[1] - 1
    if steps < 1:
        raise ValueError("a curve needs at least two points")
    if n_pixels is None:
        xs = torch.linspace(0, 1, steps + 1, device=curve.device, dtype=curve.dtype)
    else:
        per_step = math.ceil(n_pixels / steps)
        xs = torch.tensor([min(k * per_step, n_pixels) / n_pixels for k in range(steps + 1)],
                          device=curve.device, dtype=curve.dtype)
    return torch.trapezoid(curve, xs, dim=1)


def deletion_insertion(model: nn.Module, batch: torch.Tensor, heatmap: torch.Tensor,
                       target: int | torch.Tensor, *, steps: int = 20, baseline: Baseline = "blur",
                       blur_sigma: float = 0.04, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image deletion AUC and insertion AUC (each ``(N,)``, in ``[0, 1]``) of ``heatmap`` for ``target``."""
    deletion, insertion = perturbation_curves(model, batch, heatmap, target, steps=steps, baseline=baseline,
                                              blur_sigma=blur_sigma, batch_size=batch_size)
    n_pixels = batch.shape[2] * batch.shape[3]
    return curve_auc(deletion, n_pixels=n_pixels), curve_auc(insertion, n_pixels=n_pixels)


# --- complexity and localisation ---------------------------------------------------------------

def sparseness(heatmap: torch.Tensor) -> torch.Tensor:
    """Gini index of ``|heatmap|`` per image (``(N,)``, in ``[0, 1]``; 0 = uniform, →1 = one pixel).

    As Quantus ``Sparseness``: the absolute map scaled to a maximum of 1, plus
    1e-7, sorted ascending: ``Σ (2i − n − 1)·a_i / (n·Σ a_i)``. Accumulated in
    float64 (float32 on MPS).
    """
    if heatmap.ndim < 2:
        raise ValueError(f"heatmap must be N×…, got shape {tuple(heatmap.shape)}")
    a = heatmap.reshape(heatmap.shape[0], -1).to(_accumulate_dtype(heatmap.device)).abs()
    a = a / a.amax(dim=1, keepdim=True).clamp_min(torch.finfo(a.dtype).tiny)
    a = torch.sort(a + 1e-7, dim=1).values
    n = a.shape[1]
    i = torch.arange(1, n + 1, device=a.device, dtype=a.dtype)
    gini = ((2 * i - n - 1) * a).sum(dim=1) / (n * a.sum(dim=1))
    return gini.float()


def _check_mask(heatmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    mask = torch.as_tensor(mask, device=heatmap.device)
    if tuple(mask.shape) != tuple(heatmap.shape):
        raise ValueError(f"mask shape {tuple(mask.shape)} differs from heatmap shape {tuple(heatmap.shape)}")
    return mask.reshape(mask.shape[0], -1) > 0


def pointing_game(heatmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1.0 where a pixel holding the map's maximum lies inside ``mask``, else 0.0; NaN for an empty mask."""
    m = _check_mask(heatmap, mask)
    a = heatmap.reshape(heatmap.shape[0], -1)
    hit = ((a == a.amax(dim=1, keepdim=True)) & m).any(dim=1).float()
    return torch.where(m.any(dim=1), hit, torch.full_like(hit, float("nan")))


def relevance_mass(heatmap: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Share of the map's positive relevance inside ``mask`` (``(N,)`` in ``[0, 1]``).

    NaN for an empty mask or a map without positive relevance.
    """
    m = _check_mask(heatmap, mask)
    a = heatmap.reshape(heatmap.shape[0], -1).to(_accumulate_dtype(heatmap.device)).clamp_min(0)
    total = a.sum(dim=1)
    inside = (a * m).sum(dim=1)
    out = inside / total
    out = torch.where(m.any(dim=1) & (total > 0), out, torch.full_like(out, float("nan")))
    return out.float()


# --- robustness ------------------------------------------------------------------------------

#: Parameters of sampled explainers: their draws come from one seeded generator for the whole batch,
#: so an image's map depends on what else is in the batch (see :func:`batch_independent`).
_SAMPLED_PARAMETERS = frozenset({"samples", "n_masks", "n_samples", "stability_target"})


def batch_independent(explainer: Explainer) -> bool:
    """Whether ``explainer`` maps each image of a batch as it would alone (up to float rounding).

    True for the deterministic families (CAM, gradients without sampling, LRP, attention); False
    for sampled methods (seeded draws shared by the batch: SmoothGrad family, RISE, LIME, Kernel
    SHAP, occlusion's adaptive variants) and attacks, whose results depend on the batch's composition.
    """
    if explainer.family in ("perturbation", "robustness"):
        return False
    return not (_SAMPLED_PARAMETERS & set(explainer.params))


def max_sensitivity(explainer: Explainer, model: nn.Module, batch: torch.Tensor, target: int | torch.Tensor,
                    *, samples: int = 3, radius: float = 0.02, reference: torch.Tensor | None = None,
                    seed: int = 0) -> torch.Tensor:
    """Max relative change of the map under small uniform input noise (``(N,)``; lower is better).

    Re-runs ``explainer.explain`` on ``samples`` noisy copies of ``batch``
    (noise ``U(−r, r)``, ``r = radius·(max − min)`` of each image, drawn from a
    CPU generator seeded with ``seed`` so results do not depend on the device),
    with ``target`` held fixed. ``reference`` is the map of the clean input
    (computed when not given). NaN where the reference map is all zero.
    When the explainer is :func:`batch_independent`, the ``samples`` noisy copies
    go through it as one batch (one call, same noise, same maps up to rounding);
    otherwise one call per copy, each starting from the explainer's seed as the
    reference map did.
    """
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if radius <= 0:
        raise ValueError(f"radius must be > 0, got {radius}")
    if batch.ndim != 4:
        raise ValueError(f"batch must be N×C×H×W, got shape {tuple(batch.shape)}")
    n = batch.shape[0]
    target_t = _targets(target, n, torch.device("cpu"))
    if reference is None:
        reference = explainer.explain(model, batch, target_t).heatmap
    _check_heatmap(batch, reference)
    ref = reference.detach().to("cpu", torch.float64).reshape(n, -1)
    ref_norm = ref.norm(dim=1)
    span = (batch.amax(dim=(1, 2, 3)) - batch.amin(dim=(1, 2, 3))).to("cpu", torch.float32)
    gen = torch.Generator().manual_seed(seed)
    noisy = []
    for _ in range(samples):
        noise = (torch.rand(batch.shape, generator=gen) * 2 - 1) * (radius * span).view(-1, 1, 1, 1)
        noisy.append(batch + noise.to(batch.device, batch.dtype))
    if batch_independent(explainer):
        maps = explainer.explain(model, torch.cat(noisy), target_t.repeat(samples)).heatmap
        others = list(maps.reshape(samples, n, *maps.shape[1:]))
    else:
        others = [explainer.explain(model, copy, target_t).heatmap for copy in noisy]
    worst = torch.zeros(n, dtype=torch.float64)
    for other in others:
        other = other.to("cpu", torch.float64).reshape(n, -1)
        worst = torch.maximum(worst, (other - ref).norm(dim=1) / ref_norm)
    worst = torch.where(ref_norm > 0, worst, torch.full_like(worst, float("nan")))
    return worst.float()


# --- one call for the node -------------------------------------------------------------------

def compute_quality(model: nn.Module, batch: torch.Tensor, explanation: Explanation, *,
                    mask: torch.Tensor | None = None, explainer: Explainer | None = None,
                    steps: int = 20, baseline: Baseline = "blur", blur_sigma: float = 0.04,
                    batch_size: int = 16, sensitivity_samples: int = 3,
                    sensitivity_radius: float = 0.02) -> list[QualityScores]:
    """All quality scores of ``explanation`` (of ``batch``), one :class:`QualityScores` per image.

    ``mask`` (``N×H×W``, model-input resolution, nonzero = lesion) enables the
    localisation scores; an image whose mask is empty gets none. ``explainer``
    (the object that made ``explanation``) enables max-sensitivity, which
    re-runs it ``sensitivity_samples`` times (0 disables it); if a re-run
    fails, max-sensitivity is left out (logged) and the other scores stand.
    One map of :func:`compute_quality_many`.
    """
    name = explanation.method
    return compute_quality_many(model, batch, {name: explanation}, mask=mask,
                                explainers={name: explainer} if explainer is not None else None, steps=steps,
                                baseline=baseline, blur_sigma=blur_sigma, batch_size=batch_size,
                                sensitivity_samples=sensitivity_samples,
                                sensitivity_radius=sensitivity_radius)[name]


def compute_quality_many(model: nn.Module, batch: torch.Tensor, explanations: Mapping[str, Explanation], *,
                         mask: torch.Tensor | None = None, explainers: Mapping[str, Explainer] | None = None,
                         steps: int = 20, baseline: Baseline = "blur", blur_sigma: float = 0.04,
                         batch_size: int = 16, sensitivity_samples: int = 3,
                         sensitivity_radius: float = 0.02) -> dict[str, list[QualityScores]]:
    """:func:`compute_quality` of several explanations of the same ``batch`` (by name), in shared passes.

    The deletion / insertion curves of every map run through the model together
    (:func:`perturbation_curves_many`); the scores are those :func:`compute_quality` gives each
    map alone. ``explainers[name]``, where given, enables that map's max-sensitivity.
    """
    if not explanations:
        return {}
    for explanation in explanations.values():
        _check_heatmap(batch, explanation.heatmap)
    ref = _model_ref(model)
    names = list(explanations)
    curves = perturbation_curves_many(model, batch, [explanations[k].heatmap for k in names],
                                      [explanations[k].target.to(ref.device) for k in names], steps=steps,
                                      baseline=baseline, blur_sigma=blur_sigma, batch_size=batch_size)
    n_pixels = batch.shape[2] * batch.shape[3]
    n = batch.shape[0]
    mask_t = torch.as_tensor(mask).to(ref.device) if mask is not None else None
    out: dict[str, list[QualityScores]] = {}
    for name, (deletion_curve, insertion_curve) in zip(names, curves):
        explanation = explanations[name]
        deletion = curve_auc(deletion_curve, n_pixels=n_pixels).cpu()
        insertion = curve_auc(insertion_curve, n_pixels=n_pixels).cpu()
        hm = explanation.heatmap.to(ref.device, torch.float32)
        sparse = sparseness(hm).cpu()
        nan = torch.full((n,), float("nan"))
        pointing = relevance = nan
        if mask_t is not None:
            pointing = pointing_game(hm, mask_t).cpu()
            relevance = relevance_mass(hm, mask_t).cpu()
        sensitivity = nan
        explainer = (explainers or {}).get(name)
        if explainer is not None and sensitivity_samples > 0:
            try:
                sensitivity = max_sensitivity(explainer, model, batch, explanation.target,
                                              samples=sensitivity_samples, radius=sensitivity_radius,
                                              reference=explanation.heatmap,
                                              seed=int(explainer.params.get("seed", 0)))
            except Exception as exc:  # noqa: BLE001 - e.g. the time budget: the other scores stand
                log.warning("max-sensitivity of %s failed: %s: %s", explainer.name, type(exc).__name__, exc)
        out[name] = [QualityScores(deletion_auc=float(deletion[i]), insertion_auc=float(insertion[i]),
                                   faithfulness=float(insertion[i] - deletion[i]), sparseness=float(sparse[i]),
                                   max_sensitivity=_finite_or_none(sensitivity[i]),
                                   pointing_game=_finite_or_none(pointing[i]),
                                   relevance_mass=_finite_or_none(relevance[i]))
                     for i in range(n)]
    return out


def _finite_or_none(value: torch.Tensor) -> float | None:
    v = float(value)
    return v if math.isfinite(v) else None


def score_explanation(model: nn.Module, batch: torch.Tensor, explanation: Explanation, *,
                      mask: torch.Tensor | None = None, explainer: Explainer | None = None,
                      **options: Any) -> list[dict[str, float]]:
    """:func:`compute_quality` as one ``{score name: value}`` dict per image (for the SR / JSON).

    Scores that do not apply (no mask, no explainer, NaN) are left out;
    ``options`` are :func:`compute_quality`'s keyword arguments.
    """
    return [s.as_dict() for s in compute_quality(model, batch, explanation, mask=mask, explainer=explainer,
                                                 **options)]


def score_explanations(model: nn.Module, batch: torch.Tensor, explanations: Mapping[str, Explanation], *,
                       mask: torch.Tensor | None = None, explainers: Mapping[str, Explainer] | None = None,
                       **options: Any) -> dict[str, list[dict[str, float]]]:
    """:func:`compute_quality_many` as, per name, one ``{score name: value}`` dict per image (the node's call)."""
    return {name: [s.as_dict() for s in scores]
            for name, scores in compute_quality_many(model, batch, explanations, mask=mask, explainers=explainers,
                                                     **options).items()}


# --- sanity: model-parameter randomisation ---------------------------------------------------

def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of a 1-D tensor, ties sharing their average rank (as ``scipy.stats.rankdata``)."""
    flat = values.reshape(-1)
    sorted_vals, order = torch.sort(flat, stable=True)
    _, inverse, counts = torch.unique_consecutive(sorted_vals, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    averages = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty(flat.shape, dtype=torch.float64, device=flat.device)
    ranks[order] = averages[inverse]
    return ranks


def spearman(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spearman rank correlation per image of two ``(N, …)`` maps (``(N,)``; NaN for a constant map)."""
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    out = []
    for x, y in zip(a.reshape(a.shape[0], -1), b.reshape(b.shape[0], -1)):
        rx, ry = average_ranks(x.double()), average_ranks(y.double())
        rx, ry = rx - rx.mean(), ry - ry.mean()
        denom = rx.norm() * ry.norm()
        out.append((rx @ ry) / denom if denom > 0 else torch.tensor(float("nan"), dtype=torch.float64))
    return torch.stack(out).float()


def summarise(values: Sequence[float]) -> tuple[float, float, int]:
    """Mean, sample standard deviation (0 for one value) and count of the finite ``values``."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    if not finite:
        return float("nan"), float("nan"), 0
    mean = sum(finite) / len(finite)
    sd = math.sqrt(sum((v - mean) ** 2 for v in finite) / (len(finite) - 1)) if len(finite) > 1 else 0.0
    return mean, sd, len(finite)


# --- per-map checks: degenerate maps, stability and completeness -----------------------------

def not_informative_reason(heatmap: torch.Tensor, *, relative_range: float = 1e-6) -> str:
    """Why one ``(H, W)`` map says nothing, or ``""`` when it is informative.

    A map is not informative when any value is non-finite (NaN/inf), when it is constant, or when
    it is near-constant: its range ``max − min`` is at most ``relative_range`` × its largest
    magnitude (e.g. a probability-space LIME map of a saturated softmax: every value the same
    up to rounding). Such a map would still be scaled to the full colour range by a viewer.
    """
    h = torch.as_tensor(heatmap).detach().double()
    if h.numel() == 0:
        return "map is empty"
    finite = torch.isfinite(h)
    if not bool(finite.all()):
        bad = int((~finite).sum())
        return f"map has {bad} non-finite value(s) of {h.numel()}"
    low, high = float(h.min()), float(h.max())
    if high == low:
        return f"map is constant ({low:.3g})"
    scale = max(abs(low), abs(high))
    if high - low <= relative_range * scale:
        return f"map is near-constant (range {high - low:.3g} at magnitude {scale:.3g})"
    return ""


def explanation_not_informative(explanation: Explanation, index: int, *, relative_range: float = 1e-6) -> str:
    """Why image ``index``'s map of ``explanation`` says nothing, or ``""``.

    The map itself (:func:`not_informative_reason`), and, for perturbation methods that record the
    range of the scores they sampled (``extras["score_range"]``: ``(min, max)`` per image), whether
    those scores moved at all: if every perturbation scored the same up to rounding (a saturated
    softmax in probability space), the map is rounding noise however it looks.
    """
    reason = not_informative_reason(explanation.heatmap[index], relative_range=relative_range)
    if reason:
        return reason
    ranges = explanation.extras.get("score_range")
    if ranges is not None and index < len(ranges):
        low, high = (float(v) for v in ranges[index])
        scale = max(abs(low), abs(high))
        if high - low <= relative_range * scale:
            return (f"model output did not change under perturbation (scores {low:.8g} to {high:.8g}; "
                    f"saturated: explain the log-odds or the logit)")
    return ""


def map_figures(explanation: Explanation, index: int) -> tuple[dict[str, float], str]:
    """Image ``index``'s ``stability`` / ``completeness_error`` (for the map's quality) and a caution.

    ``stability`` (sampled methods: SmoothGrad family, RISE, LIME, Kernel SHAP) is the split-half
    estimate (:mod:`mammoxai.explainers._stability`); ``completeness_error`` (DeepLIFT, Integrated
    Gradients) is ``|Σ map − (f(x) − f(x'))| / |f(x) − f(x')|``. The caution (``""`` for none) says
    that the map fell short of its ``stability_target`` (a nonzero target only).
    """
    figures: dict[str, float] = {}
    for key in ("stability", "completeness_error"):
        values = explanation.extras.get(key)
        if values is not None and index < len(values) and math.isfinite(float(values[index])):
            figures[key] = float(values[index])
    caution = ""
    target = float(explanation.parameters.get("stability_target", 0.0) or 0.0)
    if "stability" in figures and target > 0 and figures["stability"] < target:
        used = explanation.extras.get("samples_used", [None] * (index + 1))[index]
        caution = (f"map unstable: stability {figures['stability']:.2f} < {target:.2f}"
                   + (f" after {used} samples" if used else ""))
    return figures, caution
