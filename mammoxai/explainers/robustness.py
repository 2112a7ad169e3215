"""Robustness probes: the smallest adversarial perturbation that flips the decision.

Each explainer runs an untargeted attack (raise the cross-entropy of ``target``)
at every budget of a schedule ``eps_max·k/n_eps`` (``k = 1..n_eps``), batched over
images × budgets (``batch_size`` copies per forward), smallest budgets first;
an image stops being attacked once a budget flips it. With ``refine > 0`` the
flip budget is then narrowed by that many bisection steps between the last
budget that did not flip and the first that did.

Units. The model sees normalised images ``x = (u − mean) / std``. Attacks work
on the intensity ``u = x·std + mean`` and budgets are stated in units of the
``[0, 1]`` intensity range: pass the model's ``mean``/``std`` (scalars; defaults
0/1 mean "the input is already in intensity units"). ``clamp=True`` keeps ``u``
in ``[0, 1]``.

Decision. The attacked decision is the model's prediction on the clean image;
a budget "flips" it when the prediction on the perturbed image differs. The
``target`` passed to ``explain`` does not steer the attack (it is recorded).

Results. ``Explanation.extras["robustness"]`` is a list (one per image) of
dicts: ``flipped`` (bool), ``epsilon`` (smallest flipping budget found, ``None``
when none did), ``max_epsilon``, ``adversarial_class`` (``None`` if not flipped),
``linf`` / ``l2`` (norms of the returned perturbation δ, intensity units),
``schedule`` (the budgets tried), ``clean_class``, ``units``. The heatmap is the signed perturbation
``Σ_channels δ`` (positive: the attack brightens the pixel) at the reported budget, or at ``max_epsilon``
when nothing flipped. Signed, because its magnitude alone says little: an L∞ attack such as FGSM moves
every pixel by ±ε, so ``|δ|`` is flat and identical for any model, while the sign pattern is the
model's own adversarial direction.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ._robust_sinkhorn import projected_sinkhorn
from .base import Explainer, ExplainerError, register

__all__ = ["Fgsm", "PgdLinf", "PgdL2", "WassersteinAttack", "epsilon_schedule"]


def epsilon_schedule(eps_max: float, n_eps: int) -> list[float]:
    """The budgets tried: ``eps_max·k/n_eps`` for ``k = 1..n_eps`` (ascending)."""
    return [eps_max * k / n_eps for k in range(1, n_eps + 1)]


class _Attack(Explainer):
    """Common search over budgets; subclasses implement :meth:`_perturb` in intensity space."""

    family = "robustness"
    single_pass = False   # attack steps per budget
    signed = True
    attack_defaults: dict[str, Any] = {"mean": 0.0, "std": 1.0, "n_eps": 8, "refine": 0, "clamp": False}

    def __init__(self, **params: Any) -> None:
        self._last: dict[str, Any] = {}
        super().__init__(**params)

    def _validate(self) -> None:
        p = self.params
        if p["std"] <= 0:
            raise ValueError(f"explainer {self.name!r}: std must be > 0")
        if p["eps_max"] <= 0 or p["n_eps"] < 1 or p["refine"] < 0:
            raise ValueError(f"explainer {self.name!r}: eps_max must be > 0, n_eps >= 1, refine >= 0")
        if p["batch_size"] < 1:
            raise ValueError(f"explainer {self.name!r}: batch_size must be >= 1")

    # -- to implement ----------------------------------------------------------------------------

    def _perturb(self, model: nn.Module, u: torch.Tensor, target: torch.Tensor, eps: torch.Tensor,
                 index: torch.Tensor) -> torch.Tensor:
        """Perturbations δ (intensity units) for copies ``u`` (``(K, C, H, W)``), each with its own budget ``eps``."""
        raise NotImplementedError

    def _prepare(self, model: nn.Module, u: torch.Tensor, target: torch.Tensor) -> None:
        """Per-call work shared by all budgets (FGSM's gradient)."""

    # -- common machinery ------------------------------------------------------------------------

    def _logits(self, model: nn.Module, u: torch.Tensor) -> torch.Tensor:
        return model((u - self.params["mean"]) / self.params["std"])

    def _loss_grad(self, model: nn.Module, u: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Gradient of the summed cross-entropy w.r.t. ``u``, and the logits at ``u``."""
        with torch.enable_grad():
            u = u.detach().requires_grad_(True)
            logits = self._logits(model, u)
            loss = F.cross_entropy(logits.float(), target, reduction="sum")
            (grad,) = torch.autograd.grad(loss, u)
        return grad, logits.detach()

    def _clip(self, u: torch.Tensor) -> torch.Tensor:
        return u.clamp(0.0, 1.0) if self.params["clamp"] else u

    def _run(self, model: nn.Module, u: torch.Tensor, target: torch.Tensor, eps: torch.Tensor,
             index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Attack copies in chunks of ``batch_size``: perturbations δ, flipped flags, predicted classes."""
        advs, flips, preds = [], [], []
        bs = self.params["batch_size"]
        for start in range(0, u.shape[0], bs):
            sl = slice(start, start + bs)
            delta = self._perturb(model, u[sl], target[sl], eps[sl], index[sl]).detach()
            with torch.no_grad():
                pred = self._logits(model, u[sl] + delta).argmax(dim=1)
            advs.append(delta)
            flips.append(pred != target[sl])
            preds.append(pred)
        return torch.cat(advs), torch.cat(flips), torch.cat(preds)

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mean, std = self.params["mean"], self.params["std"]
        u0 = batch * std + mean
        n = batch.shape[0]
        device = batch.device
        schedule = epsilon_schedule(self.params["eps_max"], self.params["n_eps"])
        with torch.no_grad():
            target = torch.cat([self._logits(model, u0[s:s + self.params["batch_size"]]).argmax(dim=1)
                                for s in range(0, n, self.params["batch_size"])])
        self._prepare(model, u0, target)
        found_k: list[int | None] = [None] * n
        found_eps: list[float | None] = [None] * n
        adv_class: list[int | None] = [None] * n
        best = torch.zeros_like(u0)
        last = torch.zeros_like(u0)
        pairs = [(k, i) for k in range(len(schedule)) for i in range(n)]  # budget-major: smallest first
        bs = self.params["batch_size"]
        pos = 0
        while pos < len(pairs):
            chunk: list[tuple[int, int]] = []
            while pos < len(pairs) and len(chunk) < bs:
                k, i = pairs[pos]
                pos += 1
                if found_k[i] is None:
                    chunk.append((k, i))
            if not chunk:
                continue
            idx = torch.tensor([i for _, i in chunk], device=device)
            eps = torch.tensor([schedule[k] for k, _ in chunk], device=device, dtype=batch.dtype)
            adv, flipped, pred = self._run(model, u0[idx], target[idx], eps, idx)
            flipped_l = flipped.tolist()
            for j, (k, i) in enumerate(chunk):  # bookkeeping over the chunk's copies (results already computed)
                if k == len(schedule) - 1 and found_k[i] is None:
                    last[i] = adv[j]
                if flipped_l[j] and (found_k[i] is None or k < found_k[i]):
                    found_k[i] = k
                    found_eps[i] = schedule[k]
                    adv_class[i] = int(pred[j])
                    best[i] = adv[j]
        # optional bisection between the last budget that did not flip and the first that did
        lo = [schedule[k - 1] if k else 0.0 for k in (fk if fk is not None else 0 for fk in found_k)]
        for _ in range(self.params["refine"]):
            todo = [i for i in range(n) if found_k[i] is not None]
            if not todo:
                break
            mids = [(lo[i] + found_eps[i]) / 2 for i in todo]  # type: ignore[operator]
            idx = torch.tensor(todo, device=device)
            adv, flipped, pred = self._run(model, u0[idx], target[idx],
                                           torch.tensor(mids, device=device, dtype=batch.dtype), idx)
            flipped_l = flipped.tolist()
            for j, i in enumerate(todo):
                if flipped_l[j]:
                    found_eps[i] = mids[j]
                    adv_class[i] = int(pred[j])
                    best[i] = adv[j]
                else:
                    lo[i] = mids[j]
        report = []
        maps = []
        for i in range(n):
            delta = (best[i] if found_k[i] is not None else last[i]).float()
            maps.append(delta.sum(dim=0))
            report.append({"flipped": found_k[i] is not None, "epsilon": found_eps[i],
                           "max_epsilon": schedule[-1], "adversarial_class": adv_class[i],
                           "linf": float(delta.abs().max()), "l2": float(delta.flatten().norm()),
                           "schedule": list(schedule), "units": self.units, "clean_class": int(target[i])})
        self._last = {"robustness": report}
        return torch.stack(maps)

    units: str = "intensity [0, 1]"

    def _extras(self) -> dict[str, Any]:
        return dict(self._last)


@register
class Fgsm(_Attack):
    """Fast Gradient Sign Method (Goodfellow et al. 2015): ``u + ε·sign(∇_u CE)``.

    One gradient per image at the clean input; every budget of the schedule reuses it.
    ``eps_max`` is an L∞ budget in intensity units.
    """

    name = "fgsm"
    display_name = "FGSM minimal flip"
    code = "FGSM"
    series_slot = 25
    defaults = {**_Attack.attack_defaults, "eps_max": 0.05}

    def _prepare(self, model: nn.Module, u: torch.Tensor, target: torch.Tensor) -> None:
        grads = []
        for start in range(0, u.shape[0], self.params["batch_size"]):
            sl = slice(start, start + self.params["batch_size"])
            grads.append(self._loss_grad(model, u[sl], target[sl])[0].sign())
        self._sign = torch.cat(grads)

    def _perturb(self, model: nn.Module, u: torch.Tensor, target: torch.Tensor, eps: torch.Tensor,
                 index: torch.Tensor) -> torch.Tensor:
        delta = eps.view(-1, 1, 1, 1) * self._sign[index]
        return self._clip(u + delta) - u if self.params["clamp"] else delta


class _Pgd(_Attack):
    """Projected gradient descent (Madry et al. 2018): ``steps`` steps of size ``step_factor·ε/steps``."""

    pgd_defaults = {"steps": 10, "step_factor": 2.5, "random_start": False}

    def _validate(self) -> None:
        super()._validate()
        if self.params["steps"] < 1 or self.params["step_factor"] <= 0:
            raise ValueError(f"explainer {self.name!r}: steps must be >= 1 and step_factor > 0")

    def _step(self, grad: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def _start(self, u: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        raise NotImplementedError

    def _perturb(self, model: nn.Module, u: torch.Tensor, target: torch.Tensor, eps: torch.Tensor,
                 index: torch.Tensor) -> torch.Tensor:
        steps = self.params["steps"]
        size = (self.params["step_factor"] * eps / steps).view(-1, 1, 1, 1)
        if self.params["random_start"]:
            delta = self._project(self._start(u, eps, self.generator(u.device)), eps)
        else:
            delta = torch.zeros_like(u)
        if self.params["clamp"]:
            delta = self._clip(u + delta) - u
        best = delta.clone()
        done = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
        for _ in range(steps):
            grad, logits = self._loss_grad(model, u + delta, target)
            flipped = (logits.argmax(dim=1) != target) & ~done  # the current iterate already flips: keep it
            best = torch.where(flipped.view(-1, 1, 1, 1), delta, best)
            done |= flipped
            if bool(done.all()):  # one check per step (not per copy): every copy already flipped
                break
            delta = self._project(delta + self._step(grad, size), eps)
            if self.params["clamp"]:
                delta = self._clip(u + delta) - u
        return torch.where(done.view(-1, 1, 1, 1), best, delta)


@register
class PgdLinf(_Pgd):
    """PGD in an L∞ ball (``|δ| ≤ ε`` per pixel, intensity units): sign steps, clipping projection."""

    name = "pgd_linf"
    display_name = "PGD Linf minimal flip"
    code = "PGDLINF"
    series_slot = 26
    defaults = {**_Attack.attack_defaults, **_Pgd.pgd_defaults, "eps_max": 0.03}

    def _step(self, grad: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        return size * grad.sign()

    def _project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        e = eps.view(-1, 1, 1, 1)
        return torch.maximum(torch.minimum(delta, e), -e)

    def _start(self, u: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.rand(u.shape, generator=gen, device=u.device, dtype=u.dtype) * 2 - 1
        return noise * eps.view(-1, 1, 1, 1)


@register
class PgdL2(_Pgd):
    """PGD in an L2 ball (``‖δ‖₂ ≤ ε`` over the whole image, intensity units): normalised steps,
    radial projection."""

    name = "pgd_l2"
    display_name = "PGD L2 minimal flip"
    code = "PGDL2"
    series_slot = 27
    defaults = {**_Attack.attack_defaults, **_Pgd.pgd_defaults, "eps_max": 2.0}

    def _step(self, grad: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
        norm = grad.flatten(1).norm(dim=1).clamp(min=1e-12).view(-1, 1, 1, 1)
        return size * grad / norm

    def _project(self, delta: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        norm = delta.flatten(1).norm(dim=1).clamp(min=1e-12)
        factor = torch.clamp(eps / norm, max=1.0).view(-1, 1, 1, 1)
        return delta * factor

    def _start(self, u: torch.Tensor, eps: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
        noise = torch.randn(u.shape, generator=gen, device=u.device, dtype=u.dtype)
        return noise / noise.flatten(1).norm(dim=1).view(-1, 1, 1, 1) * eps.view(-1, 1, 1, 1) * 0.5


@register
class WassersteinAttack(_Attack):
    """Wasserstein adversarial examples (Wong, Schmidt, Kolter 2019), single-channel images.

    The image's mass distribution is ``u − min(0, min u)`` normalised to sum 1 (for images
    in ``[0, 1]``: the intensities themselves). Each of ``steps`` iterations takes an L∞
    sign step of ``step`` (intensity units) on the cross-entropy and projects the result
    onto the Wasserstein ball around the clean image by :func:`projected_sinkhorn`
    (``sinkhorn_iters`` iterations, entropy ``lam``, local transport within
    ``kernel_size``×``kernel_size`` pixels at cost ``‖offset‖^p``). Budgets ``ε`` are
    transport costs of the normalised mass: moving a fraction ``f`` of the mass by
    ``d`` pixels costs ``f·d^p``. Simplifications versus the paper's code: a fixed
    number of Sinkhorn iterations (no tolerance test) and a fixed schedule of radii
    instead of the paper's growing radius. ``l2``/``linf`` in the report are intensity units.
    """

    name = "wasserstein"
    display_name = "Wasserstein minimal flip"
    code = "WASS"
    series_slot = 28
    units = "Wasserstein transport cost of the unit-mass image (pixels^p × mass fraction)"
    defaults = {**_Attack.attack_defaults, "n_eps": 4, "eps_max": 0.05, "steps": 10, "step": 0.05, "lam": 1000.0,
                "sinkhorn_iters": 30, "kernel_size": 5, "p": 2.0}

    def _validate(self) -> None:
        super()._validate()
        if self.params["kernel_size"] % 2 != 1 or self.params["kernel_size"] < 3:
            raise ValueError(f"explainer {self.name!r}: kernel_size must be odd and >= 3")
        if self.params["steps"] < 1 or self.params["sinkhorn_iters"] < 1 or self.params["lam"] <= 0:
            raise ValueError(f"explainer {self.name!r}: steps, sinkhorn_iters >= 1 and lam > 0 required")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if batch.shape[1] != 1:
            raise ExplainerError(self.name, f"needs single-channel images, got {batch.shape[1]} channels")
        return super()._attribute(model, batch, target)

    def _perturb(self, model: nn.Module, u: torch.Tensor, target: torch.Tensor, eps: torch.Tensor,
                 index: torch.Tensor) -> torch.Tensor:
        offset = torch.clamp(u.flatten(1).min(dim=1).values, max=0.0).view(-1, 1, 1, 1)
        mass0 = (u - offset)[:, 0]
        total = mass0.flatten(1).sum(dim=1).clamp(min=1e-12).view(-1, 1, 1)
        x = mass0 / total
        adv = u.clone()
        best = u.clone()
        done = torch.zeros(u.shape[0], dtype=torch.bool, device=u.device)
        for _ in range(self.params["steps"]):
            grad, logits = self._loss_grad(model, adv, target)
            flipped = (logits.argmax(dim=1) != target) & ~done
            best = torch.where(flipped.view(-1, 1, 1, 1), adv, best)
            done |= flipped
            if bool(done.all()):
                break
            stepped = adv + self.params["step"] * grad.sign()
            y = (stepped - offset)[:, 0] / total
            proj = projected_sinkhorn(x, y, eps, self.params["lam"], self.params["kernel_size"], self.params["p"],
                                      self.params["sinkhorn_iters"])
            adv = self._clip(proj.z.unsqueeze(1) * total.unsqueeze(1) + offset)
        return torch.where(done.view(-1, 1, 1, 1), best, adv) - u
