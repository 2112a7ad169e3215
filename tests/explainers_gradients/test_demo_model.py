"""Every method on the demo CNN (CPU): runs, model-randomisation sanity check, pointing game on phantoms."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mammoxai.explainers import create, run_explainers

ALL = ["saliency", "gradient_x_input", "integrated_gradients", "smoothgrad", "smoothgrad_sq", "vargrad",
       "guided_backprop", "deconvnet", "deeplift", "cam", "gradcam", "gradcam_pp", "hirescam", "xgradcam",
       "layercam", "scorecam", "eigencam", "guided_gradcam", "lrp"]
PARAMS = {"integrated_gradients": {"steps": 8}, "smoothgrad": {"samples": 4}, "smoothgrad_sq": {"samples": 4},
          "vargrad": {"samples": 4}, "scorecam": {"batch_size": 64}}
CHEAP = ["saliency", "gradient_x_input", "deeplift", "cam", "gradcam", "gradcam_pp", "hirescam", "xgradcam",
         "layercam", "eigencam", "guided_gradcam", "lrp"]
# Fail the randomisation check on the demo CNN (ρ of the map as displayed >= 0.5; the shipped record in
# mammoxai/models/demo/demo_cnn.json, recomputed below): Guided Backprop and DeconvNet (Adebayo et al. 2018;
# Nie et al. 2018: they largely reconstruct the image), Guided Grad-CAM (inherits Guided Backprop's
# structure), Eigen-CAM (class-agnostic principal component of activations, whose spatial structure
# survives random convolutions), SmoothGrad² and VarGrad (squared gradients averaged over noise follow the
# image). The node leaves them out by default (explainers.sanity = "exclude").
FAILS_ON_DEMO_CNN = {"guided_backprop", "deconvnet", "guided_gradcam", "eigencam", "smoothgrad_sq", "vargrad"}


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


def test_model_randomisation_check_reproduces_the_shipped_record():
    """Adebayo et al. 2018 on the demo CNN, exactly as ``mammoxai sanity --write`` measured it (layer3, layer4 and
    fc re-initialised, 4 evaluation phantoms x 2 seeds): every verdict and ρ in the checkpoint's record holds."""
    from mammoxai.config import load_settings
    from mammoxai.evaluate import phantom_samples
    from mammoxai.explainers.sanity import model_randomisation_check, recorded_parameters, sanity_verdicts, top_modules
    from mammoxai.models import load_classifier
    from mammoxai.pipeline import build_explainers

    clf = load_classifier("demo-cnn", device="cpu")
    record = clf.metadata.sanity
    assert record["randomised"] == top_modules(clf.module) == ["layer3", "layer4", "fc"]
    settings = load_settings(None)
    settings.explainers.sanity = "off"
    settings.explainers.stability_target = 0.0   # the record was measured with the configured sample counts
    settings.explainers.enabled = [n for n in ALL if n != "scorecam"]
    explainers = build_explainers(settings, clf)
    by_name = {e.name: e for e in explainers}
    samples = phantom_samples(clf, 4)
    batch = torch.cat([s.tensor for s in samples])
    target = clf.predict_proba(batch).argmax(dim=1)
    results = model_randomisation_check(clf.module, explainers, batch, target, seeds=(0, 1))
    verdicts = sanity_verdicts(record)
    print("\nSpearman ρ (as displayed / of |map|) after re-initialising layer3, layer4 and fc:")
    for name, result in results.items():
        print(f"  {name:22s} {result.spearman:+.3f} / {result.spearman_abs:+.3f}  "
              f"{'passes' if result.passed else 'FAILS'}")
        assert not result.error, (name, result.error)
        assert record["methods"][name]["parameters"] == recorded_parameters(by_name[name])
        assert result.spearman == pytest.approx(verdicts[name][0], abs=0.02), name
        assert result.passed == verdicts[name][1], name
    assert {n for n, r in results.items() if not r.passed} == FAILS_ON_DEMO_CNN
    # the perturbation methods and attacks were measured by the same command (too slow to repeat here):
    # Score-CAM and the Wasserstein attack fail too, the others pass
    slow = ("occlusion", "rise", "lime", "kernel_shap", "scorecam", "fgsm", "pgd_linf", "pgd_l2", "wasserstein")
    assert {n for n in slow if not verdicts[n][1]} == {"scorecam", "wasserstein"}
    assert {n for n, (_, ok) in verdicts.items() if not ok} == FAILS_ON_DEMO_CNN | {"scorecam", "wasserstein"}


def test_full_profile_measurements_in_the_shipped_record_hold():
    """The record keeps a second measurement per method for the ``full`` profile's sample counts, which the
    node picks when so configured; the gradient ones are recomputed here (the perturbation ones are too slow)."""
    from mammoxai.config import load_settings
    from mammoxai.evaluate import phantom_samples
    from mammoxai.explainers.sanity import measurement_for, model_randomisation_check, recorded_parameters
    from mammoxai.models import load_classifier
    from mammoxai.pipeline import build_explainers

    clf = load_classifier("demo-cnn", device="cpu")
    settings = load_settings(None)
    settings.explainers.profile = "full"
    settings.explainers.stability_target = 0.0   # the record was measured with the configured sample counts
    # ... and LIME / Kernel SHAP in probability space, their default until issue 17 (now: the log-odds; the
    # node warns that the verdict was measured with other parameters until the record is re-measured)
    settings.explainers.params = {"lime": {"score": "probability"}, "kernel_shap": {"score": "probability"}}
    for name in ("integrated_gradients", "smoothgrad", "occlusion", "rise", "lime", "kernel_shap"):
        settings.explainers.enabled = [name]
        (explainer,) = build_explainers(settings, clf)
        entry, exact = measurement_for(clf.metadata.sanity, name, recorded_parameters(explainer))
        assert exact and entry is not clf.metadata.sanity["methods"][name] and entry["passed"], name
    settings.explainers.enabled = ["integrated_gradients", "smoothgrad"]
    explainers = build_explainers(settings, clf)
    batch = torch.cat([s.tensor for s in phantom_samples(clf, 4)])
    target = clf.predict_proba(batch).argmax(dim=1)
    results = model_randomisation_check(clf.module, explainers, batch, target, seeds=(0, 1))
    for explainer in explainers:
        entry, _ = measurement_for(clf.metadata.sanity, explainer.name, recorded_parameters(explainer))
        assert results[explainer.name].spearman == pytest.approx(entry["spearman"], abs=0.02), explainer.name
        assert results[explainer.name].spearman_abs == pytest.approx(entry["spearman_abs"], abs=0.02), explainer.name


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
