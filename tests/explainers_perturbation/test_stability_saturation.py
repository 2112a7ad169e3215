"""Perturbation methods: split-half stability and adaptive sampling (RISE, LIME, Kernel SHAP), and what a
saturated classifier does to maps scored in probability space."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mammoxai.explainers import create
from mammoxai.explainers._stability import pearson
from mammoxai.explainers.quality import explanation_not_informative

from .conftest import make_cnn, smooth_image

SMALL = {
    "rise": {"n_masks": 64, "cells": 4, "batch_size": 64},
    "lime": {"samples": 64, "n_segments": 16, "batch_size": 64},
    "kernel_shap": {"samples": 160, "n_segments": 24, "batch_size": 80},
}


class Saturated(nn.Module):
    """A confident classifier: logits far apart (about 3 vs −25 as in the issue), so softmax is exactly 1.0."""

    def __init__(self) -> None:
        super().__init__()
        self.body = make_cnn(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.body(x)
        return torch.stack([logits[:, 0] - logits[:, 1] - 30.0, logits[:, 1] - logits[:, 0] + 3.0], dim=1)


@pytest.mark.parametrize("method", ["rise", "lime", "kernel_shap"])
def test_perturbation_maps_report_stability_and_adapt(method, cnn):
    x = smooth_image(64)
    fixed = create(method, **SMALL[method]).explain(cnn, x, 1)
    (stability,) = fixed.extras["stability"]
    assert -1 <= stability <= 1 and fixed.extras["sampling_stopped"] == ["off"]
    rerun = create(method, seed=5, **SMALL[method]).explain(cnn, x, 1)
    assert stability == pytest.approx(float(pearson(fixed.heatmap, rerun.heatmap)[0]), abs=0.25)
    assert stability < 0.999
    adaptive = create(method, stability_target=0.999, max_samples=512, **SMALL[method]).explain(cnn, x, 1)
    assert adaptive.extras["samples_used"][0] > SMALL[method].get("samples", 64)
    assert adaptive.extras["stability"][0] >= 0.999 or adaptive.extras["sampling_stopped"] == ["cap"]
    assert adaptive.extras["stability"][0] > stability


def test_sampling_off_keeps_the_reference_estimator(cnn):
    """stability_target 0 changes nothing: the map is the one the configured sample count gives."""
    x = smooth_image(64)
    a = create("lime", **SMALL["lime"]).explain(cnn, x, 1).heatmap
    b = create("lime", stability_target=0.0, max_samples=100_000, **SMALL["lime"]).explain(cnn, x, 1).heatmap
    assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["lime", "kernel_shap"])
def test_a_saturated_classifier_gives_informative_maps_by_default(method):
    model = Saturated().eval()
    x = smooth_image(64)
    with torch.no_grad():
        assert float(model(x).softmax(1)[0, 1]) == 1.0          # saturated in float32
    default = create(method, **SMALL[method]).explain(model, x, 1)
    assert default.parameters["score"] == "log_odds"
    assert float(default.heatmap.std()) > 0 and explanation_not_informative(default, 0) == ""
    in_probability = create(method, score="probability", **SMALL[method]).explain(model, x, 1)
    assert explanation_not_informative(in_probability, 0) != ""   # recognised, never drawn as informative


def test_log_odds_score_is_the_logit_difference_for_two_classes():
    from mammoxai.explainers._pert_common import target_scores

    logits = torch.tensor([[3.0, -25.0], [0.5, 1.5]])
    assert torch.allclose(target_scores(logits, 0, "log_odds"), torch.tensor([28.0, -1.0]))
    three = torch.tensor([[1.0, 2.0, 3.0]])
    p = three.softmax(1)[0, 2]
    assert float(target_scores(three, 2, "log_odds")[0]) == pytest.approx(float(torch.log(p / (1 - p))), rel=1e-5)
    assert torch.allclose(target_scores(logits, torch.tensor([1, 0]), "log_odds"), torch.tensor([-28.0, -1.0]))
