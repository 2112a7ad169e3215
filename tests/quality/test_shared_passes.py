"""Quality scores of several maps in shared forward passes: the same figures as one map at a time, fewer passes.

The node scores every method's map of an image together (:func:`quality.compute_quality_many`):
the unperturbed input and the baseline run once per image for all maps, and every map's
deletion / insertion steps fill the same batches. These tests hold the shared version to the
one-map-at-a-time algorithm (:func:`_curves_one_at_a_time`, the pre-sharing code kept here as the
reference) and count the forward passes; max-sensitivity batches its noisy copies only for
explainers whose maps do not depend on the rest of the batch.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mammoxai.explainers import create, quality

from .conftest import InputGradient


class CountingModel(nn.Module):
    """Wraps a model and counts the images it is run on (one per row of each batch)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.images = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        return self.inner(x)


def _curves_one_at_a_time(model, x, heatmap, target, steps, baseline="blur"):
    """The reference: each map's curves alone, one image at a time, step by step (no sharing, no batching)."""
    n, _, h, w = x.shape
    base = quality.make_baseline(x, baseline)
    per_step = math.ceil(h * w / steps)
    deletion = torch.empty(n, steps + 1)
    insertion = torch.empty(n, steps + 1)
    with torch.no_grad():
        for i in range(n):
            order = torch.argsort(heatmap[i].reshape(-1), descending=True, stable=True)
            for k in range(steps + 1):
                chosen = torch.zeros(h * w, dtype=torch.bool)
                chosen[order[:min(k * per_step, h * w)]] = True
                chosen = chosen.view(1, 1, h, w)
                deleted = torch.where(chosen, base[i:i + 1], x[i:i + 1])
                inserted = torch.where(chosen, x[i:i + 1], base[i:i + 1])
                deletion[i, k] = model(deleted).softmax(dim=1)[0, target[i]]
                insertion[i, k] = model(inserted).softmax(dim=1)[0, target[i]]
    return deletion, insertion


@pytest.fixture(scope="module")
def maps(timm_model, images):
    """Three different maps of the same images, for different targets."""
    gen = torch.Generator().manual_seed(3)
    gradient = InputGradient(times_input=True).explain(timm_model, images)
    return {
        "gradient_x_input": (gradient.heatmap, gradient.target),
        "random": (torch.rand(images.shape[0], *images.shape[2:], generator=gen), torch.tensor([0, 1, 0])),
        "inverted": (-gradient.heatmap, gradient.target),
    }


def test_shared_curves_equal_each_map_alone(timm_model, images, maps):
    steps = 6
    shared = quality.perturbation_curves_many(timm_model, images, [m for m, _ in maps.values()],
                                              [t for _, t in maps.values()], steps=steps, batch_size=5)
    for (heatmap, target), (deletion, insertion) in zip(maps.values(), shared):
        want_d, want_i = _curves_one_at_a_time(timm_model, images, heatmap, target, steps)
        torch.testing.assert_close(deletion, want_d, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(insertion, want_i, rtol=1e-4, atol=1e-5)
        alone = quality.perturbation_curves(timm_model, images, heatmap, target, steps=steps)
        torch.testing.assert_close(deletion, alone[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(insertion, alone[1], rtol=1e-4, atol=1e-5)


def test_shared_passes_run_the_input_and_baseline_once_per_image(timm_model, images, maps):
    steps = 5
    counting = CountingModel(timm_model)
    heatmaps, targets = [m for m, _ in maps.values()], [t for _, t in maps.values()]
    quality.perturbation_curves_many(counting, images, heatmaps, targets, steps=steps, batch_size=7)
    n, m = images.shape[0], len(heatmaps)
    assert counting.images == n * (2 + m * 2 * (steps - 1))
    counting.images = 0
    for heatmap, target in zip(heatmaps, targets):
        quality.perturbation_curves(counting, images, heatmap, target, steps=steps, batch_size=7)
    assert counting.images == m * n * (2 + 2 * (steps - 1))


def test_many_maps_score_as_each_alone(timm_model, images, masks):
    explainers = {"gradcam": create("gradcam"), "saliency": create("saliency"),
                  "integrated_gradients": create("integrated_gradients", steps=4)}
    explanations = {name: e.explain(timm_model, images) for name, e in explainers.items()}
    together = quality.compute_quality_many(timm_model, images, explanations, mask=masks, explainers=explainers,
                                            steps=5, sensitivity_samples=2)
    assert list(together) == list(explanations)
    for name, explanation in explanations.items():
        alone = quality.compute_quality(timm_model, images, explanation, mask=masks, explainer=explainers[name],
                                        steps=5, sensitivity_samples=2)
        for a, b in zip(together[name], alone):
            assert set(a.as_dict()) == set(b.as_dict()) == set(quality.SCORE_KEYS)
            for key, value in b.as_dict().items():
                assert a.as_dict()[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (name, key)
    as_dicts = quality.score_explanations(timm_model, images, explanations, steps=5, sensitivity_samples=0)
    assert as_dicts["gradcam"][0]["deletion_auc"] == pytest.approx(together["gradcam"][0].deletion_auc, abs=1e-5)
    assert "max_sensitivity" not in as_dicts["gradcam"][0]


def _sensitivity_one_copy_at_a_time(explainer, model, batch, target, samples, radius, seed):
    """The reference max-sensitivity: one explain call per noisy copy (the pre-batching algorithm)."""
    n = batch.shape[0]
    reference = explainer.explain(model, batch, target).heatmap.double().reshape(n, -1)
    span = batch.amax(dim=(1, 2, 3)) - batch.amin(dim=(1, 2, 3))
    gen = torch.Generator().manual_seed(seed)
    worst = torch.zeros(n, dtype=torch.float64)
    for _ in range(samples):
        noise = (torch.rand(batch.shape, generator=gen) * 2 - 1) * (radius * span).view(-1, 1, 1, 1)
        other = explainer.explain(model, batch + noise, target).heatmap.double().reshape(n, -1)
        worst = torch.maximum(worst, (other - reference).norm(dim=1) / reference.norm(dim=1))
    return worst.float()


@pytest.mark.parametrize("name, params, batched", [
    ("gradcam", {}, True), ("lrp", {}, True), ("integrated_gradients", {"steps": 4}, True),
    ("saliency", {}, True), ("smoothgrad", {"samples": 3}, False),
])
def test_max_sensitivity_batches_only_batch_independent_explainers(timm_model, images, name, params, batched):
    explainer = create(name, **params)
    assert quality.batch_independent(explainer) is batched
    target = timm_model(images).argmax(dim=1)
    calls = []
    original = explainer.explain

    def counted(model, batch, target=None):
        calls.append(batch.shape[0])
        return original(model, batch, target)

    explainer.explain = counted
    got = quality.max_sensitivity(explainer, timm_model, images, target, samples=2, radius=0.05, seed=4)
    n = images.shape[0]   # the reference map first, then the noisy copies
    assert calls == ([n, 2 * n] if batched else [n] * 3)
    explainer.explain = original
    want = _sensitivity_one_copy_at_a_time(explainer, timm_model, images, target, 2, 0.05, 4)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-5, equal_nan=True)


def test_sampled_and_perturbation_explainers_are_not_batched():
    for name in ("smoothgrad", "vargrad", "rise", "lime", "kernel_shap", "occlusion"):
        assert not quality.batch_independent(create(name)), name
    for name in ("gradcam", "scorecam", "eigencam", "lrp", "deeplift", "guided_backprop", "saliency"):
        assert quality.batch_independent(create(name)), name
