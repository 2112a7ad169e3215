"""Projected Sinkhorn (Wong, Schmidt, Kolter 2019): entropic projection onto a Wasserstein ball.

Images are single-channel mass distributions ``(B, H, W)`` (non-negative, each
summing to 1). Transport is local: mass moves at most ``kernel_size // 2``
pixels per axis, at cost ``C(o) = ‖o‖₂^p`` for offset ``o``. For a point ``y`` the
projection approximately solves

    minimise_z,Π  ½‖y − z‖² + (1/λ)·Σ Π log Π   s.t.  Π1 = x,  Πᵀ1 = z,  ⟨Π, C⟩ ≤ ε

through its dual (variables α, β, ψ ≥ 0) with the block updates of the paper
(Algorithm 1): ``α`` closes the row marginal, ``β`` uses the Lambert W function,
``ψ`` takes a safeguarded Newton step. The plan is ``Π_ij = e^{-α_i} K_ψ(j−i) e^{-β_j}``
with ``K_ψ = exp(−ψC − 1)`` and the projection ``z = β/λ + y``. Everything is torch
(local sums by ``F.unfold``), a fixed number of iterations (no host synchronisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["transport_cost_kernel", "lambertw", "SinkhornResult", "projected_sinkhorn", "plan_marginals"]


def transport_cost_kernel(kernel_size: int, p: float, device: torch.device | None = None,
                          dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(k, k)`` cost of moving mass by each offset: ``(dy² + dx²)^(p/2)``; ``k`` must be odd."""
    if kernel_size % 2 != 1 or kernel_size < 3:
        raise ValueError(f"wasserstein: kernel_size must be odd and >= 3, got {kernel_size}")
    c = kernel_size // 2
    off = torch.arange(kernel_size, device=device, dtype=dtype) - c
    return (off[:, None] ** 2 + off[None, :] ** 2) ** (p / 2)


def lambertw(x: torch.Tensor | None, log_x: torch.Tensor | None = None, iterations: int = 30,
             init: torch.Tensor | None = None) -> torch.Tensor:
    """Principal branch ``W(x)`` for ``x ≥ 0`` (``w·e^w = x``), by Newton on ``w + log w = log x``.

    ``log_x`` may be given instead of ``x`` to avoid overflow for huge arguments;
    ``init`` (a previous solution) warm-starts the iteration.
    """
    if log_x is None:
        assert x is not None
        log_x = torch.log(x)
    if init is None:
        big = log_x > 1.0
        small_x = torch.exp(log_x.clamp(max=1.0))
        w = torch.where(big, log_x - torch.log(log_x.clamp(min=1.0)), small_x / (1.0 + small_x))
    else:
        w = init
    w = w.clamp(min=1e-30)
    for _ in range(iterations):
        w = (w - (w + torch.log(w) - log_x) * w / (w + 1.0)).clamp(min=1e-30)
    return torch.where(torch.isneginf(log_x), torch.zeros_like(w), w)


def _local(kernel: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``out_i = Σ_o kernel[b, o] · values[b, i + o]`` (zero outside the image): ``(B, H, W)``.

    A sum of ``k²`` shifted copies (a loop over kernel offsets, not over pixels or images).
    """
    b, h, w = values.shape
    k = int(round(kernel.shape[-1] ** 0.5))
    r = k // 2
    padded = F.pad(values, (r, r, r, r))
    out = torch.zeros_like(values)
    for dy in range(k):
        for dx in range(k):
            out += kernel[:, dy * k + dx].view(b, 1, 1) * padded[:, dy:dy + h, dx:dx + w]
    return out


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a * b).flatten(1).sum(1)


@dataclass
class SinkhornResult:
    """The projection ``z`` and the dual variables that define the transport plan."""

    z: torch.Tensor
    exp_alpha: torch.Tensor
    exp_beta: torch.Tensor
    psi: torch.Tensor
    cost: torch.Tensor  # the (k, k) cost kernel


def projected_sinkhorn(x: torch.Tensor, y: torch.Tensor, epsilon: torch.Tensor, lam: float = 1000.0,
                       kernel_size: int = 5, p: float = 2.0, iterations: int = 50) -> SinkhornResult:
    """Project ``y`` onto the Wasserstein ball of radius ``epsilon`` (``(B,)``) around ``x``.

    ``x``: ``(B, H, W)`` non-negative, each summing to 1; ``y`` the same shape (any sign).
    Returns :class:`SinkhornResult` with ``z = β/λ + y``. ``lam`` is the entropy
    regularisation λ (larger = closer to the exact projection, numerically harder).
    """
    dtype = torch.float64
    x64, y64 = x.to(dtype), y.to(dtype)
    eps = epsilon.to(dtype).reshape(-1)
    b, h, w = x64.shape
    m = h * w
    cost = transport_cost_kernel(kernel_size, p, x.device, dtype).reshape(1, -1)  # 1, k²
    exp_alpha = torch.full_like(x64, float(m))
    exp_beta = torch.full_like(x64, float(m))
    psi = torch.ones(b, device=x.device, dtype=dtype)
    lam_y = lam * y64
    log_lam = torch.log(torch.tensor(lam, dtype=dtype, device=x.device))
    wv = None
    for _ in range(iterations):  # fixed iteration count: no data-dependent host sync
        kernel = torch.exp(-psi[:, None] * cost - 1.0)
        exp_alpha = x64 / _local(kernel, exp_beta).clamp(min=1e-300)
        kx = _local(kernel, exp_alpha)
        wv = lambertw(None, log_lam + lam_y + torch.log(kx), iterations=4 if wv is not None else 30, init=wv)
        exp_beta = torch.exp(lam_y - wv)
        d1 = -eps + _dot(exp_alpha, _local(kernel * cost, exp_beta))
        d2 = -_dot(exp_alpha, _local(kernel * cost * cost, exp_beta))
        delta = d1 / d2.clamp(max=-1e-300)
        t = torch.ones_like(psi)
        for _ in range(7):  # backtrack (halve) while the step would make ψ negative, as the paper's code
            t = torch.where(psi - t * delta < 0, t / 2, t)
        psi = (psi - t * delta).clamp(min=0.0)
    kernel = torch.exp(-psi[:, None] * cost - 1.0)
    exp_alpha = x64 / _local(kernel, exp_beta).clamp(min=1e-300)
    kx = _local(kernel, exp_alpha)
    wv = lambertw(None, log_lam + lam_y + torch.log(kx), iterations=30 if wv is None else 6, init=wv)
    exp_beta = torch.exp(lam_y - wv)
    z = wv / lam  # = β/λ + y
    return SinkhornResult(z=z.to(y.dtype), exp_alpha=exp_alpha, exp_beta=exp_beta, psi=psi,
                          cost=cost.reshape(kernel_size, kernel_size))


def plan_marginals(result: SinkhornResult) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Row sums, column sums (``(B, H, W)``) and transport cost ``⟨Π, C⟩`` (``(B,)``) of the implied plan."""
    cost = result.cost.reshape(1, -1)
    kernel = torch.exp(-result.psi[:, None] * cost - 1.0)
    rows = result.exp_alpha * _local(kernel, result.exp_beta)
    cols = result.exp_beta * _local(kernel, result.exp_alpha)
    total = _dot(result.exp_alpha, _local(kernel * cost, result.exp_beta))
    return rows, cols, total
