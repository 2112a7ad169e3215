"""How much a sampled map would change if it were drawn again: split-half stability, and adaptive sampling.

Every sampled method (SmoothGrad, SmoothGrad², VarGrad, RISE, LIME, Kernel SHAP)
assigns its samples alternately to two halves (sample ``i`` to half ``i mod 2``;
Kernel SHAP: each random coalition with its complement) and builds the map of each
half exactly as it builds the full map. The Pearson correlation ``r`` of the two
half maps, Spearman–Brown corrected to the full sample count, ``2r / (1 + r)``,
estimates the correlation between the map and the map of an independent run with
the same number of samples (another seed): the map's **stability** (1 = the same
picture every time; about 0.3 is what 16 SmoothGrad samples give on resnet50).

Adaptive sampling (``stability_target`` > 0): after the configured ``samples``, the
Spearman–Brown prophecy ``N = target·(1 − ρ₁) / (ρ₁·(1 − target))`` (``ρ₁`` the
one-sample reliability implied by the current estimate) predicts how many samples
reach the target; samples are drawn in batches towards it (at most 4× the count so
far per round) until the target, the cap ``max_samples``, or the explainer's time
budget (what is left of it, at the measured cost per sample) stops it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Callable

import torch

from .base import _DEADLINE, ExplainerTimeout

__all__ = ["pearson", "spearman_brown", "split_half_stability", "samples_for", "AdaptiveRun", "run_adaptive"]


def pearson(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of two ``(N, …)`` maps, per image (``(N,)`` float64; NaN where one is constant)."""
    x = a.reshape(a.shape[0], -1).double()
    y = b.reshape(b.shape[0], -1).double()
    x = x - x.mean(dim=1, keepdim=True)
    y = y - y.mean(dim=1, keepdim=True)
    denom = x.norm(dim=1) * y.norm(dim=1)
    r = (x * y).sum(dim=1) / denom
    return torch.where(denom > 0, r, torch.full_like(r, float("nan")))


def spearman_brown(r: torch.Tensor | float, factor: float = 2.0) -> torch.Tensor:
    """Reliability of a test ``factor`` times as long as one with reliability ``r``: ``k·r / (1 + (k − 1)·r)``."""
    r = torch.as_tensor(r, dtype=torch.float64).clamp(min=-0.999999, max=1.0)
    return (factor * r / (1 + (factor - 1) * r)).clamp(min=-1.0, max=1.0)


def split_half_stability(half_a: torch.Tensor, half_b: torch.Tensor) -> torch.Tensor:
    """Stability of the map made from both halves: Spearman–Brown corrected correlation of the half maps.

    ``(N,)`` float64. Two identical half maps (a deterministic method, or a constant map) give 1.0
    where they are constant too, since nothing changes between runs.
    """
    r = pearson(half_a, half_b)
    same = (half_a.reshape(half_a.shape[0], -1) == half_b.reshape(half_b.shape[0], -1)).all(dim=1)
    r = torch.where(same, torch.ones_like(r), r)
    return spearman_brown(r)


def samples_for(stability: float, n: int, target: float) -> float:
    """Samples needed for ``target`` by the Spearman–Brown prophecy, from ``stability`` measured with ``n``.

    ``inf`` when the estimate is not positive (nothing to extrapolate from).
    """
    if not math.isfinite(stability) or stability <= 0:
        return math.inf
    if stability >= 1:
        return float(n)
    rho1 = stability / (n - (n - 1) * stability)
    return target * (1 - rho1) / (rho1 * (1 - target))


def budget_left() -> float | None:
    """Seconds left of the current explainer's time budget (``None``: no budget)."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - time.monotonic()


@dataclass
class AdaptiveRun:
    """What adaptive sampling did for one image: final stability, samples used, and why it stopped.

    ``stopped``: ``"target"`` (reached), ``"cap"`` (``max_samples``), ``"time"`` (the time budget would
    have run out), ``"off"`` (``stability_target`` = 0: the configured count only).
    """

    stability: float
    samples: int
    stopped: str


def run_adaptive(draw: Callable[[int, int], None], halves: Callable[[], tuple[torch.Tensor, torch.Tensor]],
                 initial: int, target: float, cap: int, *, step: int = 2,
                 check: Callable[[], None] | None = None, count: Callable[[], int] | None = None) -> AdaptiveRun:
    """Draw samples ``0..initial-1``, then more in batches until ``target`` stability, ``cap`` or the time budget.

    ``draw(start, stop)`` adds samples ``start..stop-1`` (sample ``i`` belongs to half ``i mod 2``);
    ``halves()`` returns the two ``(H, W)`` half maps of what was drawn so far. Batch sizes are
    multiples of ``step``. ``check`` (e.g. the explainer's budget check) runs between batches.
    If the time budget runs out inside an extra batch after all (the machine slowed down), what was
    drawn by then stands: ``count()`` tells how many samples that is, and the run stops with ``"time"``.
    """
    start = time.perf_counter()
    draw(0, initial)
    n = initial
    per_sample = (time.perf_counter() - start) / max(initial, 1)
    a, b = halves()
    stability = float(split_half_stability(a[None], b[None])[0])
    if target <= 0:
        return AdaptiveRun(stability, n, "off")
    while True:
        if stability >= target:
            return AdaptiveRun(stability, n, "target")
        if n >= cap:
            return AdaptiveRun(stability, n, "cap")
        wanted = samples_for(stability, n, target)
        total = min(cap, 4 * n, max(n + step, math.ceil(1.15 * wanted) if math.isfinite(wanted) else 4 * n))
        left = budget_left()
        if left is not None:
            affordable = int(0.6 * left / max(per_sample, 1e-9))
            total = min(total, n + affordable)
        total = n + ((total - n) // step) * step
        if total <= n:
            return AdaptiveRun(stability, n, "time")
        if check is not None:
            check()
        t0 = time.perf_counter()
        try:
            draw(n, total)
        except ExplainerTimeout:
            n = count() if count is not None else n
            a, b = halves()
            return AdaptiveRun(float(split_half_stability(a[None], b[None])[0]), n, "time")
        per_sample = max(per_sample, (time.perf_counter() - t0) / (total - n))
        n = total
        a, b = halves()
        stability = float(split_half_stability(a[None], b[None])[0])
