"""Gradient explainers against captum, plus completeness and parameter validation."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from mammoxai.explainers import create
from mammoxai.explainers.gradients import input_gradient, integration_rule, make_baseline

captum_attr = pytest.importorskip("captum.attr")
warnings.filterwarnings("ignore", module="captum")

TARGET = 1


def test_saliency_matches_captum(resnet, image, util):
    ours = create("saliency").explain(resnet, image, TARGET).heatmap
    ref = captum_attr.Saliency(resnet).attribute(image, target=TARGET, abs=True).amax(dim=1)
    assert util.pearson(ours, ref) >= 0.99
    assert (ours >= 0).all()


def test_gradient_x_input_is_gradient_times_input(resnet, image, util):
    ours = create("gradient_x_input").explain(resnet, image, TARGET).heatmap
    ref = captum_attr.InputXGradient(resnet).attribute(image, target=TARGET).sum(dim=1)
    assert torch.allclose(ours, ref, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("method", ["gausslegendre", "riemann_trapezoid"])
def test_integrated_gradients_matches_captum(resnet, image, util, method):
    explainer = create("integrated_gradients", steps=12, baseline="zero", method=method, batch_size=5)
    ours = explainer.explain(resnet, image, TARGET).heatmap
    ref = captum_attr.IntegratedGradients(resnet).attribute(
        image, baselines=torch.zeros_like(image), target=TARGET, n_steps=12, method=method).sum(dim=1)
    assert util.pearson(ours, ref) >= 0.99
    # captum's trapezoid weights are 1/n (they sum to (n-1)/n); ours are the exact trapezoid weights 1/(n-1)
    scale = 11 / 12 if method == "riemann_trapezoid" else 1.0
    # Tolerance 1e-3 of the largest attribution: captum's float32 linspace nodes and ours differ by an ulp, which
    # can switch a ReLU near its kink at one node (seen: 3.6e-4 of the maximum on one CPU, 0 on another); a wrong
    # weight scheme (the end weights) is off by several per cent of the maximum.
    assert torch.allclose(ours * scale, ref, atol=1e-3 * float(ref.abs().max()), rtol=1e-3)


def test_integrated_gradients_completeness(resnet, image):
    explanation = create("integrated_gradients", steps=48, baseline="black").explain(resnet, image, TARGET)
    with torch.no_grad():
        baseline = make_baseline(image, "black")
        gap = float(resnet(image)[0, TARGET] - resnet(baseline)[0, TARGET])
    total = float(explanation.heatmap.sum())
    assert abs(total - gap) <= 0.05 * abs(gap)
    assert abs(float(explanation.extras["convergence_delta"][0])) <= 0.05 * abs(gap)


def test_smoothgrad_matches_captum_with_same_noise(resnet, image, util):
    explainer = create("smoothgrad", samples=6, noise_level=0.1, batch_size=4, seed=7)
    ours = explainer.explain(resnet, image, TARGET).heatmap
    noise = explainer.noise_samples(image)
    saliency = captum_attr.Saliency(resnet)
    grads = torch.stack([saliency.attribute(image + noise[0, i:i + 1], target=TARGET, abs=False)
                         for i in range(6)])
    assert util.pearson(ours, grads.mean(0).sum(dim=1)) >= 0.99
    square = create("smoothgrad_sq", samples=6, noise_level=0.1, seed=7).explain(resnet, image, TARGET).heatmap
    assert util.pearson(square, (grads ** 2).mean(0).sum(dim=1)) >= 0.99
    var = create("vargrad", samples=6, noise_level=0.1, seed=7).explain(resnet, image, TARGET).heatmap
    assert util.pearson(var, grads.var(0, unbiased=False).sum(dim=1)) >= 0.99


def test_noise_is_seeded_and_scaled(image):
    a = create("smoothgrad", samples=4, noise_level=0.2, seed=3).noise_samples(image)
    b = create("smoothgrad", samples=4, noise_level=0.2, seed=3).noise_samples(image)
    c = create("smoothgrad", samples=4, noise_level=0.2, seed=4).noise_samples(image)
    assert a.shape == (1, 4, *image.shape[1:])
    assert torch.equal(a, b) and not torch.equal(a, c)
    expected = 0.2 * float(image.max() - image.min())
    assert abs(float(a.std()) - expected) < 0.1 * expected


@pytest.mark.parametrize("name,reference", [("guided_backprop", "GuidedBackprop"), ("deconvnet", "Deconvolution")])
def test_modified_relu_methods_match_captum(resnet, image, util, name, reference):
    ours = create(name).explain(resnet, image, TARGET).heatmap
    ref = getattr(captum_attr, reference)(resnet).attribute(image, target=TARGET).sum(dim=1)
    assert util.pearson(ours, ref) >= 0.99


def test_guided_backprop_works_on_inplace_relus_and_restores_them(resnet_inplace, resnet, image, util):
    ours = create("guided_backprop").explain(resnet_inplace, image, TARGET).heatmap
    ref = create("guided_backprop").explain(resnet, image, TARGET).heatmap  # same weights (same seed)
    assert util.pearson(ours, ref) >= 0.999
    assert all(m.inplace for m in resnet_inplace.modules() if type(m).__name__ == "ReLU")
    assert util.hook_count(resnet_inplace) == 0


def test_deeplift_matches_captum_and_is_complete(resnet, image, util):
    explanation = create("deeplift", baseline="zero").explain(resnet, image, TARGET)
    ours = explanation.heatmap
    shipped = captum_attr.DeepLift(resnet).attribute(image, baselines=torch.zeros_like(image), target=TARGET)
    # captum's max-pool multipliers do not add up (its map misses completeness by ~1 % here; ours is exact),
    # so the maps agree only roughly on a max-pool stem (r 0.94; docs/explainers.md)
    assert util.pearson(ours, shipped.sum(dim=1)) >= 0.9
    with torch.no_grad():
        gap = float(resnet(image)[0, TARGET] - resnet(torch.zeros_like(image))[0, TARGET])
    assert abs(float(ours.sum()) - gap) <= 1e-4 * abs(gap)
    assert explanation.extras["completeness_error"][0] <= 1e-4


def test_input_gradient_leaves_parameter_grads_alone(resnet, image):
    grad = input_gradient(resnet, image, torch.tensor([TARGET]))
    assert grad.shape == image.shape and grad.abs().sum() > 0
    assert all(p.grad is None for p in resnet.parameters())


def test_integration_rule_weights_sum_to_one():
    for method in ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle"):
        alphas, weights = integration_rule(method, 7)
        assert len(alphas) == 7 and abs(sum(weights) - 1) < 1e-9
        assert all(0 <= a <= 1 for a in alphas)
    with pytest.raises(ValueError, match="unknown integration method"):
        integration_rule("simpson", 5)


def test_baselines(image):
    black = make_baseline(image, "black")
    assert torch.all(black == image.min())
    mean = make_baseline(image, "mean")
    assert torch.allclose(mean, torch.full_like(image, float(image.mean())), atol=1e-5)
    blur = make_baseline(image, "blur", blur_sigma=3.0)
    assert blur.shape == image.shape and blur.std() < image.std()
    assert abs(float(blur.mean() - image.mean())) < 0.05
    assert torch.equal(make_baseline(image, "zero"), torch.zeros_like(image))
    with pytest.raises(ValueError, match="unknown baseline"):
        make_baseline(image, "white")


def test_parameter_validation():
    with pytest.raises(ValueError, match="baseline"):
        create("integrated_gradients", baseline="white")
    with pytest.raises(ValueError, match="steps"):
        create("integrated_gradients", steps=1)
    with pytest.raises(ValueError, match="method"):
        create("integrated_gradients", method="simpson")
    with pytest.raises(ValueError, match="noise_level"):
        create("smoothgrad", noise_level=0.0)
    with pytest.raises(ValueError, match="samples"):
        create("vargrad", samples=1)
    with pytest.raises(ValueError, match="unknown parameter"):
        create("saliency", steps=3)


def test_guided_backprop_not_applicable_without_activations(image):
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()
    from mammoxai.explainers import ExplainerNotApplicable
    for name in ("guided_backprop", "deconvnet"):
        with pytest.raises(ExplainerNotApplicable, match="no activation"):
            create(name).explain(model, image, 0)


def test_deeplift_runs_the_baseline_without_gradients_and_backpropagates_the_input_only(resnet_inplace, image,
                                                                                         util):
    """The baseline runs once under no_grad (its references recorded), the input forward and backward alone:
    half the backward work of one ``cat([input, baseline])`` pass, and the user's model is left as it was."""
    calls: list[tuple[int, bool]] = []
    backward: list[int] = []

    def hook(_module, inputs, output):
        calls.append((inputs[0].shape[0], torch.is_grad_enabled()))
        if output.requires_grad:
            output.register_hook(lambda grad: backward.append(grad.shape[0]))

    handle = resnet_inplace.register_forward_hook(hook)
    try:
        explanation = create("deeplift", baseline="zero").explain(resnet_inplace, image, TARGET)
    finally:
        handle.remove()
    assert calls == [(1, False), (1, True)] and backward == [1]
    assert explanation.extras["completeness_error"][0] <= 1e-4
    assert util.hook_count(resnet_inplace) == 0
    assert all(m.inplace for m in resnet_inplace.modules() if type(m).__name__ == "ReLU")
    assert all("forward" not in m.__dict__ for m in resnet_inplace.modules())      # max-pool forward restored


def test_deeplift_refuses_a_model_whose_layers_differ_between_input_and_baseline(image):
    """References are matched to layer calls in order: a model that runs other layers on the input is an error."""

    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.act(self.conv(x))
            if float(x.detach().mean()) > 0.5:  # the input goes through the activation a second time
                y = self.act(y - 0.1)
            return y.mean(dim=(2, 3))

    with pytest.raises(RuntimeError, match="DeepLIFT: ReLU ran more often on the input"):
        create("deeplift", baseline="zero").explain(Branchy().eval(), image + 5.0, 0)
