"""Stability of the SmoothGrad family (split-half, adaptive sampling) and completeness of DeepLIFT / IG
on standard timm CNNs with random weights whose every branch is live."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mammoxai.explainers import create
from mammoxai.explainers._stability import pearson
from mammoxai.models._torchvision_compat import import_timm

from .conftest import randomize_bn

TARGET = 1


def live_timm(name: str, seed: int = 0, in_chans: int = 3) -> nn.Module:
    """A timm model with random weights (fixed seed) whose every branch is live: BatchNorm statistics and
    affine parameters and ConvNeXt layer scales randomised (timm zero-initialises the last BN of a residual
    branch and starts layer scales at 1e-6, which would leave the branches dead)."""
    timm = import_timm()
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=2, in_chans=in_chans).eval()
    return randomize_bn(model, seed + 1)


def phantom(size: int, channels: int = 3, seed: int = 0) -> torch.Tensor:
    """A normalised blob image with noise, ``1×C×size×size``."""
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    img = (torch.exp(-((xx - 0.2) ** 2 + (yy + 0.1) ** 2) / 0.05)
           + 0.3 * torch.exp(-((xx + 0.4) ** 2 + (yy - 0.3) ** 2) / 0.02))
    img = img + 0.1 * torch.randn(size, size, generator=gen)
    return ((img - img.mean()) / img.std()).expand(1, channels, size, size).clone()


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0", "convnext_tiny"])
def test_deeplift_adds_up_on_timm_cnns(name):
    """DeepLIFT's defining property: Σ map = f(x) − f(x'), within 1 %, with LayerNorm, max-pool and SE gates."""
    model = live_timm(name)
    x = phantom(64)
    explanation = create("deeplift").explain(model, x, TARGET)
    (error,) = explanation.extras["completeness_error"]
    assert error <= 0.01, (name, error)
    with torch.no_grad():
        from mammoxai.explainers.gradients import make_baseline
        gap = float(model(x)[0, TARGET] - model(make_baseline(x, "black"))[0, TARGET])
    assert float(explanation.heatmap.sum()) == pytest.approx(gap, rel=0.01, abs=1e-9)


def test_layernorm_rule_adds_up_exactly():
    """A LayerNorm whose variance differs between input and baseline: the exact split adds up."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.LayerNorm(16), nn.GELU(), nn.Linear(16, 2))

    class Wrap(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = model

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x.flatten(1)[:, :8])

    wrapped = Wrap().eval()
    x = torch.randn(1, 1, 4, 2) * 3
    explanation = create("deeplift", baseline="zero").explain(wrapped, x, TARGET)
    assert explanation.extras["completeness_error"][0] <= 1e-4   # float32 rounding


def test_integrated_gradients_reports_completeness_error(resnet, image):
    coarse = create("integrated_gradients", steps=4).explain(resnet, image, TARGET).extras["completeness_error"][0]
    fine = create("integrated_gradients", steps=64).explain(resnet, image, TARGET).extras["completeness_error"][0]
    assert 0 <= fine < coarse


@pytest.mark.parametrize("method", ["smoothgrad", "smoothgrad_sq", "vargrad"])
def test_smoothgrad_family_reports_stability_that_predicts_a_rerun(method, resnet, image):
    first = create(method, samples=16).explain(resnet, image, TARGET)
    second = create(method, samples=16, seed=7).explain(resnet, image, TARGET)
    (stability,) = first.extras["stability"]
    assert first.extras["samples_used"] == [16] and first.extras["sampling_stopped"] == ["off"]
    rerun = float(pearson(first.heatmap, second.heatmap)[0])
    assert stability == pytest.approx(rerun, abs=0.15), (method, stability, rerun)


def test_smoothgrad_samples_until_the_stability_target(resnet, image):
    base = create("smoothgrad", samples=8).explain(resnet, image, TARGET)
    adaptive = create("smoothgrad", samples=8, stability_target=0.9).explain(resnet, image, TARGET)
    assert base.extras["stability"][0] < 0.9
    assert adaptive.extras["stability"][0] >= 0.9 and adaptive.extras["sampling_stopped"] == ["target"]
    assert adaptive.extras["samples_used"][0] > 8
    capped = create("smoothgrad", samples=8, stability_target=0.9, max_samples=12).explain(resnet, image, TARGET)
    assert capped.extras["samples_used"] == [12] and capped.extras["sampling_stopped"] == ["cap"]


def test_sampling_parameters_are_validated():
    with pytest.raises(ValueError, match="stability_target"):
        create("smoothgrad", stability_target=1.0)
    with pytest.raises(ValueError, match="max_samples"):
        create("lime", max_samples=1)


@pytest.mark.slow
def test_default_settings_make_smoothgrad_stable_on_resnet50_at_224px():
    """The node's default stability target (0.95) on resnet50, 224 px (several minutes on 2 CPU cores)."""
    from mammoxai.config.settings import ExplainerSettings

    target = ExplainerSettings().stability_target
    explainer = create("smoothgrad", stability_target=target)
    explanation = explainer.explain(live_timm("resnet50"), phantom(224), TARGET)
    assert explanation.extras["stability"][0] >= 0.95, explanation.extras


def test_integrated_gradients_adds_steps_until_the_completeness_target(resnet, image):
    fixed = create("integrated_gradients", steps=4).explain(resnet, image, TARGET)
    assert fixed.extras["steps_used"] == [4]
    assert fixed.extras["completeness_error"][0] > 0.001          # 4 steps are not enough on this model
    adaptive = create("integrated_gradients", steps=4, completeness_target=0.001,
                      max_steps=256).explain(resnet, image, TARGET)
    (steps,) = adaptive.extras["steps_used"]
    assert steps > 4
    assert adaptive.extras["completeness_error"][0] <= 0.001 or steps == 256
    assert adaptive.extras["completeness_error"][0] < fixed.extras["completeness_error"][0]
    with pytest.raises(ValueError, match="max_steps"):
        create("integrated_gradients", steps=64, max_steps=32)
