"""Quality metrics: semantics on models whose true relevance is known, shapes, edge cases, sanity check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.stats
import torch

from mammoxai.explainers import quality

from .conftest import SIZE, InputGradient, InputIntensity


def _true_map(model, x):
    target = model(x).argmax(dim=1)
    sign = torch.where(target == 1, 1.0, -1.0).view(-1, 1, 1)
    return (sign * (model.weight * x)[:, 0]).detach(), target


def test_faithfulness_orders_true_random_and_inverted_maps(linear_model, images):
    heatmap, target = _true_map(linear_model, images)
    noise = torch.rand(heatmap.shape, generator=torch.Generator().manual_seed(5))
    scores = {}
    for name, hm in {"true": heatmap, "random": noise, "inverted": -heatmap}.items():
        deletion, insertion = quality.deletion_insertion(linear_model, images, hm, target, steps=10, batch_size=8)
        assert deletion.shape == insertion.shape == (3,)
        assert bool(((deletion >= 0) & (deletion <= 1) & (insertion >= 0) & (insertion <= 1)).all())
        scores[name] = (insertion - deletion).mean().item()
    assert scores["true"] > scores["random"] + 0.2 > scores["inverted"] + 0.4


def test_curves_share_endpoints_and_do_not_depend_on_batch_size(linear_model, images):
    heatmap, target = _true_map(linear_model, images)
    d1, i1 = quality.perturbation_curves(linear_model, images, heatmap, target, steps=8, batch_size=1)
    d2, i2 = quality.perturbation_curves(linear_model, images, heatmap, target, steps=8, batch_size=64)
    torch.testing.assert_close(d1, d2)
    torch.testing.assert_close(i1, i2)
    p = linear_model(images).softmax(dim=1).gather(1, target[:, None])[:, 0].detach()
    base = quality.make_baseline(images, "blur")
    p_base = linear_model(base).softmax(dim=1).gather(1, target[:, None])[:, 0].detach()
    torch.testing.assert_close(d1[:, 0], p)
    torch.testing.assert_close(i1[:, -1], p)
    torch.testing.assert_close(d1[:, -1], p_base)
    torch.testing.assert_close(i1[:, 0], p_base)


def test_more_steps_than_pixels(linear_model):
    model = type(linear_model)(size=4).eval()
    x = torch.randn(2, 1, 4, 4, generator=torch.Generator().manual_seed(2))
    hm = torch.rand(2, 4, 4, generator=torch.Generator().manual_seed(3))
    deletion, insertion = quality.perturbation_curves(model, x, hm, 1, steps=20, baseline="zero")
    assert deletion.shape == (2, 21)
    assert torch.isfinite(deletion).all() and torch.isfinite(insertion).all()
    auc = quality.curve_auc(deletion, n_pixels=16)
    assert bool(((auc >= 0) & (auc <= 1)).all())


def test_curve_auc_is_the_area_over_the_unit_interval():
    curve = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.5, 0.0]])
    torch.testing.assert_close(quality.curve_auc(curve), torch.tensor([1.0, 0.5]))
    with pytest.raises(ValueError, match="two points"):
        quality.curve_auc(torch.ones(1, 1))


def test_perturbation_validates_its_inputs(linear_model, images):
    with pytest.raises(ValueError, match="heatmap must be N×H×W"):
        quality.deletion_insertion(linear_model, images, torch.zeros(3, 8, 8), 0)
    with pytest.raises(ValueError, match="steps"):
        quality.deletion_insertion(linear_model, images, torch.zeros(3, SIZE, SIZE), 0, steps=0)
    with pytest.raises(ValueError, match="baseline must be one of"):
        quality.deletion_insertion(linear_model, images, torch.zeros(3, SIZE, SIZE), 0, baseline="grey")
    with pytest.raises(ValueError, match="target"):
        quality.deletion_insertion(linear_model, images, torch.zeros(3, SIZE, SIZE), torch.tensor([0, 1]))


def test_gaussian_blur_keeps_constants_and_smooths():
    flat = torch.full((1, 2, 16, 16), 0.3)
    torch.testing.assert_close(quality.gaussian_blur(flat, 2.0), flat)
    x = torch.randn(1, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    blurred = quality.gaussian_blur(x, 2.0)
    assert blurred.shape == x.shape and blurred.std() < 0.5 * x.std()
    torch.testing.assert_close(quality.gaussian_blur(x, 0.0), x)
    torch.testing.assert_close(quality.make_baseline(x, "mean"), x.mean().expand_as(x))
    assert quality.make_baseline(x, "zero").abs().sum() == 0


def test_sparseness_extremes():
    maps = torch.ones(2, 16, 16)
    maps[1] = 0
    maps[1, 3, 3] = -4.0                       # sign does not matter: |map|
    gini = quality.sparseness(maps)
    assert gini[0] < 1e-5 and gini[1] > 0.99


def test_localisation_edge_cases(masks):
    maps = torch.zeros(3, SIZE, SIZE)
    maps[:, 5, 5] = 1.0
    maps[:, 25, 15] = -3.0                     # negative evidence inside mask 1 does not count
    empty = masks.clone()
    empty[2] = False
    pg = quality.pointing_game(maps, empty)
    assert pg[0] == 1.0 and pg[1] == 0.0 and math.isnan(pg[2])
    rm = quality.relevance_mass(maps, empty)
    assert rm[0] == 1.0 and rm[1] == 0.0 and math.isnan(rm[2])
    assert math.isnan(quality.relevance_mass(-maps.abs(), masks)[0])   # no positive relevance
    with pytest.raises(ValueError, match="mask shape"):
        quality.pointing_game(maps, masks[:, :8])


def test_max_sensitivity(linear_model, images):
    target = torch.ones(3, dtype=torch.long)        # class 0's logit is constant: its gradient is all zero
    assert torch.isnan(quality.max_sensitivity(InputGradient(), linear_model, images, 0, samples=1)).all()
    # The gradient of a linear model does not depend on the input: no sensitivity at all.
    gradient = InputGradient()
    assert quality.max_sensitivity(gradient, linear_model, images, target, samples=2).abs().max() < 1e-6
    # Gradient × input moves by w·δ with |δ| <= r: relative change bounded by r·‖w‖/‖w·x‖.
    times_input = InputGradient(times_input=True)
    radius = 0.02
    sens = quality.max_sensitivity(times_input, linear_model, images, target, samples=3, radius=radius, seed=7)
    span = images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))
    w = linear_model.weight.detach()[0, 0]
    bound = radius * span * w.norm() / (w * images[:, 0]).flatten(1).norm(dim=1)
    assert bool((sens > 0).all()) and bool((sens <= bound + 1e-6).all())
    again = quality.max_sensitivity(times_input, linear_model, images, target, samples=3, radius=radius, seed=7)
    torch.testing.assert_close(sens, again)
    with pytest.raises(ValueError, match="samples"):
        quality.max_sensitivity(gradient, linear_model, images, target, samples=0)


def test_score_explanation_on_a_timm_model(timm_model, images, masks):
    explainer = InputGradient(times_input=True)
    explanation = explainer.explain(timm_model, images)
    with_all = quality.score_explanation(timm_model, images, explanation, mask=masks, explainer=explainer,
                                         steps=5, sensitivity_samples=1)
    assert len(with_all) == 3
    assert set(with_all[0]) == set(quality.SCORE_KEYS)
    for scores in with_all:
        assert -1 <= scores["faithfulness"] <= 1
        assert scores["faithfulness"] == pytest.approx(scores["insertion_auc"] - scores["deletion_auc"])
        assert 0 <= scores["sparseness"] <= 1 and scores["max_sensitivity"] >= 0
    plain = quality.compute_quality(timm_model, images, explanation, steps=5)
    assert all(s.pointing_game is None and s.max_sensitivity is None for s in plain)
    assert set(plain[0].as_dict()) == {"faithfulness", "deletion_auc", "insertion_auc", "sparseness"}
    assert plain[0].deletion_auc == pytest.approx(with_all[0]["deletion_auc"])


def test_ranks_and_spearman_match_scipy():
    x = torch.tensor([3.0, 1.0, 3.0, 2.0, 1.0, 5.0])
    np.testing.assert_allclose(quality.average_ranks(x).numpy(), scipy.stats.rankdata(x.numpy()))
    gen = torch.Generator().manual_seed(0)
    a = torch.rand(2, 8, 8, generator=gen).round(decimals=1)
    b = a + 0.3 * torch.rand(2, 8, 8, generator=gen)
    rho = quality.spearman(a, b)
    for i in range(2):
        assert rho[i].item() == pytest.approx(scipy.stats.spearmanr(a[i].flatten(), b[i].flatten())[0], abs=1e-5)
    assert math.isnan(quality.spearman(torch.ones(1, 4, 4), b[:1, :4, :4])[0])


def test_summarise():
    assert quality.summarise([1.0, 3.0, float("nan")]) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert quality.summarise([4.0]) == (4.0, 0.0, 1)
    mean, sd, n = quality.summarise([])
    assert n == 0 and math.isnan(mean) and math.isnan(sd)


def test_a_failing_rerun_leaves_out_only_max_sensitivity(linear_model, images):
    class FailsWhenRerun(InputGradient):
        name = "test_fails_when_rerun"
        calls = 0

        def _attribute(self, model, batch, target):
            type(self).calls += 1
            if type(self).calls > 1:
                raise RuntimeError("time budget exceeded")
            return super()._attribute(model, batch, target)

    explainer = FailsWhenRerun()
    explanation = explainer.explain(linear_model, images, 1)
    scores = quality.compute_quality(linear_model, images, explanation, explainer=explainer, steps=4)
    assert all(s.max_sensitivity is None and math.isfinite(s.faithfulness) for s in scores)
    assert FailsWhenRerun.calls == 2
