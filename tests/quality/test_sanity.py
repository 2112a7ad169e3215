"""The model-randomisation sanity check (mammoxai.explainers.sanity): semantics, the record, Quantus agreement."""

from __future__ import annotations

import math

import numpy as np
import pytest
import quantus
import torch

from mammoxai.explainers import sanity

from .conftest import InputGradient, InputIntensity, NotForThisModel


def test_top_modules_is_the_upper_half_of_the_network(timm_model):
    assert sanity.top_modules(timm_model) == ["layer3", "layer4", "fc"]


def test_top_modules_expands_transformer_blocks():
    from mammoxai.models._torchvision_compat import import_timm

    vit = import_timm().create_model("vit_tiny_patch16_224", pretrained=False, depth=4, img_size=64,
                                     in_chans=1, num_classes=2)
    assert sanity.top_modules(vit) == ["blocks.2", "blocks.3", "norm", "head"]


def test_randomise_modules_leaves_the_rest_and_the_caller_untouched(timm_model):
    before = {k: v.clone() for k, v in timm_model.state_dict().items()}
    rng = torch.get_rng_state()
    randomised = sanity.randomise_modules(timm_model, ["layer4", "fc"], seed=3)
    assert torch.equal(torch.get_rng_state(), rng)                   # the global RNG is restored
    for key, value in timm_model.state_dict().items():                # the caller's model is untouched
        torch.testing.assert_close(value, before[key])
    after = randomised.state_dict()
    assert not torch.equal(after["fc.weight"], before["fc.weight"])
    assert not torch.equal(after["layer4.0.conv1.weight"], before["layer4.0.conv1.weight"])
    assert torch.equal(after["layer3.0.conv1.weight"], before["layer3.0.conv1.weight"])
    again = sanity.randomise_modules(timm_model, ["layer4", "fc"], seed=3)   # deterministic for a seed
    torch.testing.assert_close(again.state_dict()["fc.weight"], after["fc.weight"])
    with pytest.raises(KeyError, match="layer9"):
        sanity.randomise_modules(timm_model, ["layer9"])


def test_check_separates_model_dependent_maps_and_reports_failures(timm_model, images):
    results = sanity.model_randomisation_check(
        timm_model, [InputGradient(), InputIntensity(), NotForThisModel()], images, seeds=(0, 1))
    gradient, intensity, broken = (results[n] for n in ("test_input_gradient", "test_input_intensity",
                                                         "test_not_applicable"))
    assert gradient.passed and gradient.spearman < 0.5 and len(gradient.per_image) == 2 * len(images)
    assert gradient.signed and len(gradient.per_image_abs) == 2 * len(images) and gradient.spearman_abs < 0.5
    assert not intensity.passed and intensity.spearman == pytest.approx(1.0)
    assert not intensity.signed and intensity.spearman_abs == pytest.approx(1.0)
    assert not broken.passed and "never applies" in broken.error and math.isnan(broken.spearman)
    with pytest.raises(ValueError, match="seeds"):
        sanity.model_randomisation_check(timm_model, [InputGradient()], images, seeds=())


def test_record_round_trip(timm_model, images):
    explainers = [InputGradient(), InputIntensity(), NotForThisModel()]
    results = sanity.model_randomisation_check(timm_model, explainers, images, seeds=(0,))
    record = sanity.sanity_record(results, explainers, modules=["layer3", "layer4", "fc"], seeds=[0], images="3")
    assert record["randomised"] == ["layer3", "layer4", "fc"] and record["threshold"] == 0.5
    assert record["methods"]["test_input_gradient"]["seeds"] == [0] and record["methods"]["test_input_gradient"]["images"] == "3"
    assert record["methods"]["test_input_gradient"]["parameters"] == {"seed": 0, "times_input": False}
    verdicts = sanity.sanity_verdicts(record)
    assert set(verdicts) == {"test_input_gradient", "test_input_intensity"}   # errors carry no verdict
    assert verdicts["test_input_intensity"] == (pytest.approx(1.0), False)
    assert verdicts["test_input_gradient"][1] is True
    assert sanity.sanity_verdicts({}) == {} and sanity.sanity_verdicts(None) == {}


def test_measurements_with_other_parameters_are_kept_and_picked():
    first = {"spearman": 0.1, "passed": True, "parameters": {"steps": 16}}
    other = {"spearman": 0.7, "passed": False, "parameters": {"steps": 64}}
    entry = sanity.merge_measurement(None, first)
    assert entry == first
    entry = sanity.merge_measurement(entry, other)
    assert entry["parameters"] == {"steps": 16} and entry["variants"] == [other]
    remeasured = {**other, "spearman": 0.6}
    entry = sanity.merge_measurement(entry, remeasured)                       # same parameters: replaced
    assert entry["variants"] == [remeasured] and entry["spearman"] == 0.1
    record = {"methods": {"ig": entry, "broken": {"error": "no"}}}
    assert sanity.measurement_for(record, "ig", {"steps": 64}) == (remeasured, True)
    assert sanity.measurement_for(record, "ig", {"steps": 32})[1] is False   # unmeasured: the first, flagged
    assert sanity.measurement_for(record, "ig", {"steps": 32})[0]["spearman"] == 0.1
    assert sanity.measurement_for(record, "missing", {}) == (None, False)
    assert sanity.sanity_verdicts(record) == {"ig": (0.1, True)}
    assert sanity.sanity_verdicts(record, {"ig": {"steps": 64}}) == {"ig": (0.6, False)}
    assert sanity.entry_verdict(remeasured) == (0.6, False) and sanity.entry_verdict({"error": "no"}) is None
    assert sanity.entry_verdict(None) is None


def test_check_agrees_with_quantus_mprt(timm_model, images):
    """Quantus 0.6 MPRT (cascading, top down, abs, Spearman) at the step where layer3 is fully re-initialised
    equals our check with layer3, layer4 and fc re-initialised: same weights (same seeding), same score."""
    explainer = InputGradient(times_input=True)
    target = timm_model(images).argmax(dim=1)

    def explain_func(model, inputs, targets, **_):
        return explainer.explain(model, torch.as_tensor(inputs), torch.as_tensor(targets)).heatmap[:, None].numpy()

    metric = quantus.MPRT(layer_order="top_down", seed=42, abs=True, normalise=True, disable_warnings=True,
                          display_progressbar=False, return_average_correlation=False)
    scores = metric(model=timm_model, x_batch=images.numpy(), y_batch=target.numpy(), a_batch=None,
                    explain_func=explain_func, channel_first=True, device="cpu", batch_size=len(images))
    layer3_done = "layer3.0.conv1"   # the last module of layer3 that Quantus resets, going top down
    theirs = np.asarray(scores[layer3_done])
    ours = sanity.model_randomisation_check(timm_model, [explainer], images, target,
                                            modules=["layer3", "layer4", "fc"], seeds=(42,))
    np.testing.assert_allclose(ours[explainer.name].per_image_abs, theirs, atol=1e-4)
    assert ours[explainer.name].spearman_abs == pytest.approx(theirs.mean(), abs=1e-4)


def test_finite_or_null_and_recorded_parameters():
    assert sanity.finite_or_null({"a": [1.0, math.nan], "b": {"c": math.inf, "d": "x"}, "e": 2}) == \
        {"a": [1.0, None], "b": {"c": None, "d": "x"}, "e": 2}
    explainer = InputGradient(times_input=True, batch_size=4)
    assert sanity.recorded_parameters(explainer) == {"seed": 0, "times_input": True}   # batch size changes no map
    constant = sanity.SanityResult("m", math.nan, False, [math.nan, 0.123456])
    assert constant.as_dict()["spearman"] is None and constant.as_dict()["per_image"] == [None, 0.1235]
