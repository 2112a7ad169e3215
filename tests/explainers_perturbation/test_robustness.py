"""Minimal-flip robustness probes (FGSM, PGD L∞/L2, Wasserstein) on a small random CNN."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mammoxai.explainers import ExplainerError, create
from mammoxai.explainers._robust_sinkhorn import (lambertw, plan_marginals, projected_sinkhorn,
                                                  transport_cost_kernel)
from mammoxai.explainers.robustness import epsilon_schedule


@pytest.fixture(scope="module")
def unit_images(tools):
    """Three 32×32 images in [0, 1]."""
    x = torch.cat([tools.smooth_image(32, s) for s in range(3)])
    lo = x.amin((1, 2, 3), keepdim=True)
    hi = x.amax((1, 2, 3), keepdim=True)
    return (x - lo) / (hi - lo)


def _flips(model, u, eps_sign, target):
    with torch.no_grad():
        return model(u + eps_sign).argmax(1) != target


def test_epsilon_schedule():
    assert epsilon_schedule(0.4, 4) == pytest.approx([0.1, 0.2, 0.3, 0.4])


def test_fgsm_reports_the_smallest_flipping_budget(cnn, unit_images):
    eps_max, n_eps = 0.12, 12
    result = create("fgsm", eps_max=eps_max, n_eps=n_eps, batch_size=64).explain(cnn, unit_images)
    report = result.extras["robustness"]
    assert len(report) == 3 and result.heatmap.shape == (3, 32, 32)
    assert any(r["flipped"] for r in report), "FGSM should flip a random model on some input"
    u = unit_images.clone().requires_grad_(True)
    with torch.no_grad():
        target = cnn(unit_images).argmax(1)
    loss = F.cross_entropy(cnn(u), target, reduction="sum")
    (grad,) = torch.autograd.grad(loss, u)
    sign = grad.sign()
    schedule = epsilon_schedule(eps_max, n_eps)
    for i, r in enumerate(report):
        ui, si, ti = unit_images[i:i + 1], sign[i:i + 1], target[i:i + 1]
        flips = [bool(_flips(cnn, ui, e * si, ti)) for e in schedule]
        if r["flipped"]:
            k = schedule.index(r["epsilon"])
            assert flips[k] and not any(flips[:k])  # one step smaller (and all below) does not flip
            assert r["linf"] == pytest.approx(r["epsilon"], rel=1e-5)
            assert r["adversarial_class"] != int(ti)
            # the map is the signed perturbation: ε times the gradient sign (|δ| alone would be flat)
            assert torch.allclose(result.heatmap[i], r["epsilon"] * si[0].sum(dim=0), rtol=1e-5)
        else:
            assert not any(flips) and r["epsilon"] is None and r["max_epsilon"] == pytest.approx(eps_max)


def test_fgsm_units_follow_mean_and_std(cnn, unit_images):
    mean, std = 0.4, 0.2
    normalised = (unit_images - mean) / std

    class Wrapped(torch.nn.Module):  # the same decision function, on normalised inputs
        def __init__(self):
            super().__init__()
            self.inner = cnn

        def forward(self, x):
            return self.inner(x * std + mean)
    a = create("fgsm", eps_max=0.12, n_eps=12, mean=mean, std=std).explain(Wrapped().eval(), normalised)
    b = create("fgsm", eps_max=0.12, n_eps=12).explain(cnn, unit_images)
    assert [r["epsilon"] for r in a.extras["robustness"]] == pytest.approx(
        [r["epsilon"] for r in b.extras["robustness"]], nan_ok=True) or \
        [r["epsilon"] for r in a.extras["robustness"]] == [r["epsilon"] for r in b.extras["robustness"]]
    assert torch.allclose(a.heatmap, b.heatmap, atol=1e-5)


@pytest.mark.parametrize("name,eps_max,norm", [("pgd_linf", 0.04, "linf"), ("pgd_l2", 1.6, "l2")])
def test_pgd_minimal_budget_within_norm(cnn, unit_images, name, eps_max, norm):
    n_eps = 4
    params = {"eps_max": eps_max, "n_eps": n_eps, "steps": 5, "batch_size": 64}
    report = create(name, **params).explain(cnn, unit_images).extras["robustness"]
    flipped = [i for i, r in enumerate(report) if r["flipped"]]
    assert flipped, f"{name} should flip a random model on some input"
    step = eps_max / n_eps
    for i in flipped:
        r = report[i]
        assert r[norm] <= r["epsilon"] * (1 + 1e-5)
        k = round(r["epsilon"] / step)
        if k > 1:  # one step smaller does not flip: rerun with that budget alone
            smaller = create(name, **{**params, "eps_max": step * (k - 1), "n_eps": 1}).explain(
                cnn, unit_images[i:i + 1]).extras["robustness"][0]
            assert not smaller["flipped"]


def test_pgd_refinement_narrows_between_schedule_points(cnn, unit_images):
    coarse = create("pgd_linf", eps_max=0.04, n_eps=2, steps=4).explain(cnn, unit_images[:2]).extras["robustness"]
    fine = create("pgd_linf", eps_max=0.04, n_eps=2, steps=4, refine=2).explain(cnn, unit_images[:2]).extras[
        "robustness"]
    assert any(c["flipped"] for c in coarse)
    for c, f in zip(coarse, fine):
        assert c["flipped"] == f["flipped"]
        if c["flipped"]:
            lower = 0.0 if c["epsilon"] == pytest.approx(0.02) else 0.02
            assert lower < f["epsilon"] <= c["epsilon"] + 1e-12
            assert f["linf"] <= f["epsilon"] * (1 + 1e-5)


def test_no_flip_reports_max_budget(cnn, unit_images):
    result = create("pgd_l2", eps_max=1e-4, n_eps=2, steps=2).explain(cnn, unit_images)
    for i, r in enumerate(result.extras["robustness"]):
        assert not r["flipped"] and r["epsilon"] is None and r["adversarial_class"] is None
        assert r["max_epsilon"] == pytest.approx(1e-4)
        assert 0 < r["l2"] <= 1e-4 * (1 + 1e-4)
        assert float(result.heatmap[i].abs().sum()) > 0  # the perturbation at the maximum budget


def test_bad_parameters_are_rejected():
    with pytest.raises(ValueError, match="std"):
        create("fgsm", std=0.0)
    with pytest.raises(ValueError, match="eps_max"):
        create("pgd_linf", eps_max=-1.0)
    with pytest.raises(ValueError, match="kernel_size"):
        create("wasserstein", kernel_size=4)


# ------------------------------------------------------------------ Wasserstein

def test_lambertw_matches_scipy():
    from scipy.special import lambertw as scipy_w
    v = torch.tensor([0.0, 1e-12, 1e-3, 0.5, 1.0, 3.0, 100.0, 1e10], dtype=torch.float64)
    assert torch.allclose(lambertw(v), torch.from_numpy(scipy_w(v.numpy()).real), rtol=1e-12, atol=1e-15)
    big = lambertw(None, torch.tensor([800.0], dtype=torch.float64))  # W(e^800) without overflow
    assert abs(float(big + torch.log(big)) - 800.0) < 1e-9


def test_transport_cost_kernel():
    c = transport_cost_kernel(5, 2.0)
    assert c.shape == (5, 5) and float(c[2, 2]) == 0 and float(c[0, 0]) == 8 and float(c[2, 4]) == 4
    assert float(transport_cost_kernel(3, 1.0)[0, 0]) == pytest.approx(2 ** 0.5)
    with pytest.raises(ValueError):
        transport_cost_kernel(4, 2.0)


@pytest.mark.parametrize("eps", [0.002, 0.02])
def test_projected_sinkhorn_plan_marginals_and_budget(eps):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 20, 20, generator=g, dtype=torch.float64)
    x[0, :5] = 0.0  # empty regions are allowed
    x /= x.sum((1, 2), keepdim=True)
    y = x + 0.5 * torch.randn(2, 20, 20, generator=g, dtype=torch.float64) / 400
    res = projected_sinkhorn(x, y, torch.full((2,), eps), lam=1000.0, kernel_size=5, p=2.0, iterations=60)
    rows, cols, cost = plan_marginals(res)
    assert float((rows - x).abs().sum((1, 2)).max()) < 1e-4  # every pixel ships its mass (L1 of unit mass)
    assert torch.allclose(cols, res.z.double(), atol=1e-12)  # and the plan delivers exactly z
    assert torch.allclose(res.z.sum((1, 2)).double(), torch.ones(2, dtype=torch.float64), atol=1e-4)  # mass kept
    converged = projected_sinkhorn(x, y, torch.full((2,), eps), iterations=200)
    assert float((plan_marginals(converged)[0] - x).abs().sum((1, 2)).max()) < 1e-10
    assert torch.allclose(converged.z.sum((1, 2)), torch.ones(2, dtype=torch.float64), atol=1e-10)
    assert bool((cost <= eps * (1 + 1e-3)).all())  # within the Wasserstein budget
    assert bool((res.psi >= 0).all())
    # the projection moves y towards x
    assert bool(((res.z.double() - x).flatten(1).norm(dim=1) < (y - x).flatten(1).norm(dim=1)).all())


def test_wasserstein_attack_flips_within_budget(cnn, unit_images):
    x = unit_images[:2]
    params = {"eps_max": 0.2, "n_eps": 4, "steps": 8, "sinkhorn_iters": 20, "step": 0.1, "batch_size": 16}
    result = create("wasserstein", **params).explain(cnn, x)
    report = result.extras["robustness"]
    print("wasserstein:", [(r["flipped"], r["epsilon"], round(r["linf"], 3)) for r in report])
    assert any(r["flipped"] for r in report)
    assert result.heatmap.shape == (2, 32, 32)
    checked = 0
    for i, r in enumerate(report):
        if r["flipped"] and r["epsilon"] > 0.05 + 1e-9:  # one schedule step smaller does not flip
            smaller = create("wasserstein", **{**params, "eps_max": r["epsilon"] - 0.05, "n_eps": 1}).explain(
                cnn, x[i:i + 1]).extras["robustness"][0]
            assert not smaller["flipped"]
            checked += 1
    assert checked
    assert "Wasserstein" in report[0]["units"]


def test_wasserstein_needs_one_channel(cnn):
    rgb = torch.rand(1, 3, 32, 32)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 1, 1), torch.nn.Flatten(), torch.nn.Linear(1024, 2))
    with pytest.raises(ExplainerError, match="single-channel"):
        create("wasserstein", steps=1, n_eps=1).explain(model, rgb)
