"""Perturbation explainers against captum, lime, shap and straightforward reference computations."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from mammoxai.explainers import create
from mammoxai.explainers._pert_common import (baseline_image, compose_from_presence, gaussian_blur, hidden_image,
                                              superpixels, target_scores)
from mammoxai.explainers.perturbation import (kernel_shap_solve, lime_kernel, lime_surrogate, occlusion_windows,
                                              rise_masks, shapley_coalitions)


# ------------------------------------------------------------------ occlusion

@pytest.mark.parametrize("baseline", [None, 0.5, "blur"])
def test_occlusion_matches_captum(cnn, image, baseline, tools):
    from captum.attr import Occlusion as CaptumOcclusion
    x = image
    target = 1
    ours = create("occlusion", patch=12, stride=6, baseline=baseline, blur_sigma=3.0, batch_size=64).explain(
        cnn, x, target)
    base = baseline_image(x, baseline, 3.0)
    ref = CaptumOcclusion(cnn).attribute(x, target=target, sliding_window_shapes=(1, 12, 12), strides=(1, 6, 6),
                                         baselines=base, perturbations_per_eval=64)
    assert ours.signed
    assert tools.pearson(ours.heatmap[0], ref[0, 0]) >= 0.99
    assert torch.allclose(ours.heatmap[0], ref[0, 0].float(), atol=1e-4 * float(ref.abs().max()) + 1e-6)


def test_occlusion_windows_cover_every_pixel():
    ys, xs = occlusion_windows(20, 17, 6, 4, torch.device("cpu"))
    assert ys.numel() == (math.ceil((20 - 6) / 4) + 1) * (math.ceil((17 - 6) / 4) + 1)
    covered = torch.zeros(20, 17, dtype=torch.bool)
    for y, x in zip(ys.tolist(), xs.tolist()):
        covered[y:y + 6, x:x + 6] = True
    assert covered.all()
    with pytest.raises(ValueError, match="larger than the input"):
        occlusion_windows(4, 4, 6, 2, torch.device("cpu"))


def test_occlusion_rejects_bad_parameters(cnn):
    from mammoxai.explainers import ExplainerError
    with pytest.raises(ExplainerError, match="larger than"):
        create("occlusion", patch=40, stride=8).explain(cnn, torch.zeros(1, 1, 32, 32))
    with pytest.raises(ValueError, match="stride"):
        create("occlusion", patch=4, stride=8)
    with pytest.raises(ValueError, match="baseline"):
        create("occlusion", baseline="noise")
    with pytest.raises(ValueError, match="score"):
        create("occlusion", score="energy")


# ------------------------------------------------------------------ RISE

@pytest.mark.parametrize("baseline", [None, "blur"])
def test_rise_matches_reference_loop(cnn, image, baseline, tools):
    n, cells, p = 40, 4, 0.5
    explainer = create("rise", n_masks=n, cells=cells, p=p, batch_size=16, seed=7, baseline=baseline, blur_sigma=3.0,
                       center=False)
    ours = explainer.explain(cnn, image, 0).heatmap[0]
    centred = create("rise", n_masks=n, cells=cells, p=p, batch_size=16, seed=7, baseline=baseline,
                     blur_sigma=3.0).explain(cnn, image, 0).heatmap[0]
    masks = rise_masks(n, cells, p, 64, 64, explainer.generator(torch.device("cpu")), torch.device("cpu"))
    base = baseline_image(image, baseline, 3.0)
    ref = torch.zeros(64, 64)
    scores = []
    with torch.no_grad():
        for k in range(n):  # the straightforward per-mask loop
            inp = image * masks[k] + base * (1 - masks[k])
            scores.append(cnn(inp).softmax(1)[0, 0])
            ref += scores[-1] * masks[k]
    ref /= n * p
    assert tools.pearson(ours, ref) >= 0.999
    assert torch.allclose(ours, ref, rtol=1e-4, atol=1e-5)
    mean = torch.stack(scores).mean()
    ref_centred = mean + sum((s - mean) * masks[k] for k, s in enumerate(scores)) / (n * p)
    assert torch.allclose(centred, ref_centred, rtol=1e-4, atol=1e-5)


def test_rise_masks_are_reproducible_and_chunk_independent():
    gen = lambda: torch.Generator().manual_seed(3)  # noqa: E731
    full = rise_masks(10, 5, 0.3, 33, 40, gen(), torch.device("cpu"))
    assert full.shape == (10, 33, 40)
    assert float(full.min()) >= 0 and float(full.max()) <= 1
    part = rise_masks(10, 5, 0.3, 33, 40, gen(), torch.device("cpu"), start=4, stop=7)
    assert torch.equal(part, full[4:7])
    assert 0.15 < float(full.mean()) < 0.45


# ------------------------------------------------------------------ superpixels / composition

def test_superpixels_are_contiguous_labels(image):
    seg = superpixels(image[0], 20, 0.1, 1.0)
    assert seg.shape == (64, 64) and seg.dtype == torch.long
    labels = torch.unique(seg)
    assert torch.equal(labels, torch.arange(labels.numel()))
    assert 5 <= labels.numel() <= 40


def test_compose_from_presence_and_hidden(image):
    seg = superpixels(image[0], 10, 0.1, 1.0)
    m = int(seg.max()) + 1
    hidden = hidden_image(image[0], seg, None)
    for j in range(m):  # the mean fills each superpixel
        assert torch.allclose(hidden[0][seg == j], image[0, 0][seg == j].mean().expand(int((seg == j).sum())),
                              atol=1e-5)
    pres = torch.zeros(2, m)
    pres[0] = 1
    pres[1, 0] = 1
    out = compose_from_presence(image[0], hidden, seg, pres)
    assert torch.allclose(out[0], image[0])
    assert torch.allclose(out[1][0][seg == 0], image[0, 0][seg == 0])
    assert torch.allclose(out[1][0][seg != 0], hidden[0][seg != 0])
    assert torch.all(hidden_image(image[0], seg, 0.25) == 0.25)


def test_target_scores_and_blur():
    logits = torch.tensor([[1.0, 3.0], [2.0, 0.0]])
    assert torch.allclose(target_scores(logits, 1, "logit"), torch.tensor([3.0, 0.0]))
    assert torch.allclose(target_scores(logits, torch.tensor([1, 0]), "probability"),
                          logits.softmax(1)[[0, 1], [1, 0]])
    with pytest.raises(ValueError):
        target_scores(logits, 0, "energy")
    const = torch.full((1, 1, 16, 16), 2.0)
    assert torch.allclose(gaussian_blur(const, 2.0), const)
    noisy = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    assert float(gaussian_blur(noisy, 2.0).std()) < 0.5 * float(noisy.std())


# ------------------------------------------------------------------ LIME

def _lime_setup(cnn, image, n_segments=30):
    from lime import lime_image
    seg = superpixels(image[0], n_segments, 0.1, 1.0)
    rgb = image[0, 0].numpy().astype(np.float64)[..., None].repeat(3, axis=2)

    def classifier_fn(images: np.ndarray) -> np.ndarray:
        batch = torch.from_numpy(np.ascontiguousarray(images[..., 0])).float().unsqueeze(1)
        with torch.no_grad():
            return cnn(batch).softmax(1).numpy()
    return lime_image, seg, rgb, classifier_fn


def test_lime_surrogate_matches_lime_on_lime_samples(cnn, image, tools):
    lime_image, seg, rgb, classifier_fn = _lime_setup(cnn, image)
    explainer = lime_image.LimeImageExplainer(random_state=0)
    segnp = seg.numpy()
    fudged = rgb.copy()
    for j in np.unique(segnp):
        fudged[segnp == j] = rgb[segnp == j].mean(axis=0)
    data, labels = explainer.data_labels(rgb, fudged, segnp, classifier_fn, 300, batch_size=50)
    import sklearn.metrics
    distances = sklearn.metrics.pairwise_distances(data, data[0].reshape(1, -1), metric="cosine").ravel()
    weights = lime_kernel(torch.from_numpy(data), 0.25)
    assert np.allclose(weights.numpy(), explainer.base.kernel_fn(distances), atol=1e-9)
    intercept, local_exp, score, _ = explainer.base.explain_instance_with_data(
        data, labels, distances, 1, num_features=data.shape[1])
    ref = np.zeros(data.shape[1])
    for j, c in local_exp:
        ref[j] = c
    fit = lime_surrogate(torch.from_numpy(data), torch.from_numpy(labels[:, 1]), weights)
    assert tools.pearson(fit["coef"], ref) >= 0.999
    assert np.allclose(fit["coef"].numpy(), ref, atol=1e-6)
    assert abs(float(fit["intercept"]) - intercept) < 1e-6
    assert abs(float(fit["score"]) - score) < 1e-6


def test_lime_lasso_matches_sklearn():
    from sklearn.linear_model import Lasso
    g = torch.Generator().manual_seed(1)
    z = torch.randint(0, 2, (200, 8), generator=g).double()
    y = z @ torch.tensor([1.0, -2.0, 0.0, 0.5, 0.0, 0.0, 3.0, 0.1], dtype=torch.float64) + 0.05 * torch.randn(
        200, generator=g, dtype=torch.float64)
    w = torch.rand(200, generator=g, dtype=torch.float64) + 0.1
    fit = lime_surrogate(z, y, w, solver="lasso", l1_alpha=0.05, iterations=5000)
    ref = Lasso(alpha=0.05, tol=1e-10, max_iter=100000).fit(z.numpy(), y.numpy(), sample_weight=w.numpy())
    assert np.allclose(fit["coef"].numpy(), ref.coef_, atol=1e-4)
    assert abs(float(fit["intercept"]) - ref.intercept_) < 1e-4
    with pytest.raises(ValueError, match="solver"):
        lime_surrogate(z, y, w, solver="elastic")


def test_lime_end_to_end_matches_lime_package(cnn, image, tools):
    lime_image, seg, rgb, classifier_fn = _lime_setup(cnn, image)
    samples = 300
    exp = lime_image.LimeImageExplainer(random_state=0).explain_instance(
        rgb, classifier_fn, labels=(1,), top_labels=None, hide_color=None, num_samples=samples, batch_size=100,
        segmentation_fn=lambda img: seg.numpy(), num_features=100000)
    ref = np.zeros(int(seg.max()) + 1)
    for j, c in exp.local_exp[1]:
        ref[j] = c
    ours = create("lime", samples=samples, n_segments=30, compactness=0.1, batch_size=100, seed=0,
                  score="probability")   # as the reference's classifier_fn (our default: the logit)
    result = ours.explain(cnn, image, 1)
    assert torch.equal(result.extras["segments"][0], seg)
    coef = result.extras["coef"][0]
    r = tools.pearson(coef, ref)
    print(f"LIME vs lime package (seeded, {samples} samples, {ref.size} superpixels): r = {r:.3f}")
    assert r >= 0.9
    assert torch.allclose(result.heatmap[0], coef[seg])
    assert result.signed


# ------------------------------------------------------------------ Kernel SHAP

def _exact_shapley(value, m):
    phi = np.zeros(m)
    for j in range(m):
        others = [k for k in range(m) if k != j]
        for r in range(m):
            for sub in itertools.combinations(others, r):
                w = math.factorial(r) * math.factorial(m - r - 1) / math.factorial(m)
                z = np.zeros(m)
                z[list(sub)] = 1
                z2 = z.copy()
                z2[j] = 1
                phi[j] += w * (value(z2) - value(z))
    return phi


def test_kernel_shap_solve_is_exact_with_full_enumeration():
    m = 6
    rng = np.random.default_rng(0)
    table = {}

    def value(z):
        key = tuple(int(v) for v in z)
        if key not in table:
            table[key] = float(rng.normal()) + float(z @ np.arange(m))
        return table[key]
    coal, w = shapley_coalitions(m, 10_000, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert coal.shape == (2 ** m - 2, m)  # every proper, non-empty coalition, once
    assert abs(float(w.sum()) - 1.0) < 1e-9
    scores = torch.tensor([value(z.numpy()) for z in coal], dtype=torch.float64)
    phi = kernel_shap_solve(coal, scores, w, value(np.ones(m)), value(np.zeros(m)))
    assert np.allclose(phi.numpy(), _exact_shapley(value, m), atol=1e-8)


def test_shapley_coalitions_respect_budget_and_pairing():
    coal, w = shapley_coalitions(30, 300, torch.Generator().manual_seed(0), torch.device("cpu"))
    assert coal.shape[0] <= 300 and coal.shape[0] >= 290
    sizes = coal.sum(1)
    assert bool(((sizes >= 1) & (sizes <= 29)).all())
    assert abs(float(w.sum()) - 1.0) < 1e-9
    assert torch.all(w > 0)


def _shap_reference(cnn, image, seg, nsamples):
    import shap
    hidden = hidden_image(image[0], seg, None)
    m = int(seg.max()) + 1

    def f(z: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            out = cnn(compose_from_presence(image[0], hidden, seg, torch.from_numpy(z).float())).softmax(1)
        return out[:, 1].numpy()
    np.random.seed(0)
    explainer = shap.KernelExplainer(f, np.zeros((1, m)))
    return np.asarray(explainer.shap_values(np.ones((1, m)), nsamples=nsamples, l1_reg=False, silent=True))[0], f


@pytest.mark.parametrize("n_segments,samples", [(8, 300), (30, 400)])
def test_kernel_shap_matches_shap(cnn, image, n_segments, samples, tools):
    ours = create("kernel_shap", samples=samples, n_segments=n_segments, batch_size=100, seed=0,
                  score="probability").explain(cnn, image, 1)   # as the reference's f (our default: the logit)
    seg = ours.extras["segments"][0]
    ref, f = _shap_reference(cnn, image, seg, samples)
    phi = ours.extras["phi"][0]
    r = tools.pearson(phi, ref)
    print(f"Kernel SHAP vs shap ({samples} samples, {ref.size} superpixels): r = {r:.4f}")
    assert r >= 0.9
    m = ref.size
    efficiency = float(f(np.ones((1, m)))[0] - f(np.zeros((1, m)))[0])
    assert abs(float(phi.double().sum()) - efficiency) < 1e-4
    assert torch.allclose(ours.heatmap[0], phi[seg])


def test_kernel_shap_matches_captum_kernelshap(cnn, image, tools):
    from captum.attr import KernelShap as CaptumKernelShap
    ours = create("kernel_shap", samples=300, n_segments=8, hide_color=0.0, score="logit", batch_size=100).explain(
        cnn, image, 1)
    seg = ours.extras["segments"][0]
    ref = CaptumKernelShap(cnn).attribute(image, target=1, baselines=0.0, feature_mask=seg[None, None],
                                          n_samples=800, perturbations_per_eval=100)
    m = int(seg.max()) + 1
    ref_phi = torch.stack([ref[0, 0][seg == j][0] for j in range(m)])
    r = tools.pearson(ours.extras["phi"][0], ref_phi)
    print(f"Kernel SHAP vs captum KernelShap (8 superpixels): r = {r:.4f}")
    assert r >= 0.9


# ------------------------------------------------------------------ model randomisation sanity check

@pytest.mark.parametrize("name,params", [
    ("occlusion", {"patch": 12, "stride": 6}),
    ("rise", {"n_masks": 150, "cells": 4}),
    ("lime", {"samples": 150, "n_segments": 25}),
    ("kernel_shap", {"samples": 150, "n_segments": 25}),
])
def test_model_randomisation_changes_the_map(cnn, image, name, params, tools):
    explainer = create(name, batch_size=100, **params)
    before = explainer.explain(cnn, image, 1).heatmap[0]
    after = explainer.explain(tools.randomise_head(cnn), image, 1).heatmap[0]
    rho = tools.spearman(before, after)
    print(f"{name}: Spearman(original, randomised head) = {rho:.3f}")
    assert rho < 0.5


def test_batches_of_images_and_determinism(cnn, tools):
    x = torch.cat([tools.smooth_image(32, 1), tools.smooth_image(32, 2)])
    for name, params in [("rise", {"n_masks": 24, "cells": 4}), ("lime", {"samples": 30, "n_segments": 8}),
                         ("kernel_shap", {"samples": 30, "n_segments": 8})]:
        a = create(name, batch_size=16, seed=5, **params).explain(cnn, x)
        b = create(name, batch_size=7, seed=5, **params).explain(cnn, x)
        assert a.heatmap.shape == (2, 32, 32)
        assert torch.allclose(a.heatmap, b.heatmap, atol=1e-5), name
        c = create(name, batch_size=16, seed=6, **params).explain(cnn, x)
        assert not torch.allclose(a.heatmap, c.heatmap), name
