"""Through the pipeline: a map that says nothing is recorded as not informative (with the reason), and the
sampled / complete methods' figures reach ``MethodMap.quality``."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from mammoxai.config import load_settings
from mammoxai.models import load_classifier
from mammoxai.models.phantoms import generate_phantom
from mammoxai.pipeline import Pipeline


@pytest.fixture(scope="module")
def demo():
    return load_classifier("demo-cnn", device="cpu")


@pytest.fixture(scope="module")
def image():
    return generate_phantom(11, finding="malignant_mass", shape=(512, 416)).image


def _settings(monkeypatch, enabled, params):
    for key in [k for k in __import__("os").environ if k.startswith("MAMMOXAI_")]:
        monkeypatch.delenv(key)
    settings = load_settings()
    settings.model.device = "cpu"
    settings.explainers.enabled = enabled
    settings.explainers.params = params
    settings.explainers.quality = False
    settings.explainers.sanity = "off"
    return settings


def _saturated(classifier):
    """The demo CNN with its positive-class bias raised by 1000: the softmax is exactly 1.0 for every input
    (float32) while the logits still depend on the image."""
    module = copy.deepcopy(classifier.module)
    head = module.get_classifier()
    with torch.no_grad():
        head.bias[classifier.positive_index] += 1000.0
    return dataclasses.replace(classifier, module=module)


def test_a_constant_map_is_recorded_as_not_informative(monkeypatch, demo, image):
    lime = {"samples": 24, "n_segments": 12, "batch_size": 24}
    settings = _settings(monkeypatch, ["lime"], {"lime": {**lime, "score": "probability"}})
    classifier = _saturated(demo)
    item = Pipeline(settings, classifier=classifier).analyse_array(image)
    (lime_map,) = item.result.maps
    assert lime_map.not_informative != ""               # constant (or rounding noise): never drawn
    settings = _settings(monkeypatch, ["lime"], {"lime": lime})   # the default score: the logit
    item = Pipeline(settings, classifier=classifier).analyse_array(image)
    (lime_map,) = item.result.maps
    assert lime_map.not_informative == "" and float(lime_map.heatmap.std()) > 0


def test_stability_and_completeness_reach_the_map_quality(monkeypatch, demo, image):
    settings = _settings(monkeypatch, ["smoothgrad", "deeplift", "gradcam"],
                         {"smoothgrad": {"samples": 4, "max_samples": 8}})
    item = Pipeline(settings, classifier=demo).analyse_array(image)
    maps = {m.method: m for m in item.result.maps}
    sg = maps["smoothgrad"]
    assert sg.parameters["stability_target"] == settings.explainers.stability_target == 0.95
    assert -1 <= sg.quality["stability"] <= 1
    if sg.quality["stability"] < 0.95:                    # 8 samples at most: below target -> caution
        assert sg.caution.startswith("map unstable: stability")
    assert 0 <= maps["deeplift"].quality["completeness_error"] <= 0.01
    assert "stability" not in maps["gradcam"].quality and all(m.not_informative == "" for m in maps.values())
