"""Target-layer discovery (_targets), activation hooks (_grad_hooks) and LRP rule primitives (_lrp_rules)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mammoxai.explainers import create
from mammoxai.explainers._grad_hooks import has_activation, is_activation, modified_backward
from mammoxai.explainers._lrp_canon import Sum
from mammoxai.explainers._lrp_rules import Rule, attach, stabilize
from mammoxai.explainers._targets import (FeatureRecorder, auto_target_name, find_module, is_token_model,
                                          resolve_target_layer, token_grid_size, tokens_to_grid)


def test_find_module_paths(resnet_inplace):
    assert find_module(resnet_inplace, "layer4") is resnet_inplace.layer4
    assert find_module(resnet_inplace, "layer4[-1]") is resnet_inplace.layer4[-1]
    assert find_module(resnet_inplace, "layer4.-1.conv2") is resnet_inplace.layer4[-1].conv2
    with pytest.raises(KeyError, match="no module 'layer9'"):
        find_module(resnet_inplace, "layer9")
    with pytest.raises(KeyError, match="no index 7"):
        find_module(resnet_inplace, "layer4.7")


def test_token_grid_is_derived_from_the_input_size(util):
    vit = util.timm_model("vit_tiny_patch16_224", img_size=(64, 96))
    assert is_token_model(vit) and not is_token_model(nn.Conv2d(1, 1, 1))
    assert token_grid_size(vit, (64, 96)) == (4, 6)
    assert token_grid_size(vit, (224, 192)) == (14, 12)
    tokens = torch.arange(2 * 25 * 3, dtype=torch.float32).reshape(2, 25, 3)  # 1 class token + 4×6 grid
    grid = tokens_to_grid(tokens, (4, 6))
    assert grid.shape == (2, 3, 4, 6)
    assert torch.equal(grid[1, :, 0, 1], tokens[1, 2])  # token 1+1 (after the class token) is row 0, column 1
    with pytest.raises(ValueError, match="cannot fill"):
        tokens_to_grid(tokens, (5, 6))
    with pytest.raises(ValueError, match="no patch_embed"):
        token_grid_size(nn.Conv2d(1, 1, 1), (8, 8))
    assert auto_target_name(vit, torch.zeros(1, 1, 64, 96)) == f"blocks.{len(vit.blocks) - 1}.norm1"


def test_auto_target_and_resolve(resnet_inplace, image, util):
    assert auto_target_name(resnet_inplace, image) == "layer4"
    layer = resolve_target_layer(resnet_inplace, "auto", image)
    assert layer.name == "layer4" and layer.module is resnet_inplace.layer4
    assert resolve_target_layer(resnet_inplace, "layer3", image).to_grid(torch.ones(1, 2, 3, 4)).shape == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="not a feature map"):
        resolve_target_layer(resnet_inplace, "fc", image)
    assert util.hook_count(resnet_inplace) == 0


def test_feature_recorder_records_without_an_extra_pass(resnet_inplace, image, util):
    calls = []
    handle = resnet_inplace.register_forward_hook(lambda *_: calls.append(1))
    try:
        with FeatureRecorder(resnet_inplace, "auto", (64, 64)) as recorder, torch.no_grad():
            logits = resnet_inplace(image)
        layer, output = recorder.result()
    finally:
        handle.remove()
    assert len(calls) == 1 and layer.name == "layer4" and output.shape == (1, 512, 2, 2)
    with torch.no_grad():
        pooled = resnet_inplace.fc(output.mean(dim=(2, 3)))
    assert torch.allclose(pooled, logits, atol=1e-5)
    assert util.hook_count(resnet_inplace) == 0


def test_demo_vit_gradcam_uses_its_token_grid():
    from mammoxai.models import load_classifier
    clf = load_classifier("demo-vit", device="cpu")
    height, width = clf.metadata.input_size
    batch = torch.randn(1, clf.metadata.in_chans, height, width, generator=torch.Generator().manual_seed(0))
    from mammoxai.explainers.cam import cam_pass
    assert tuple(cam_pass(clf.module, batch, torch.tensor([1])).activations.shape[2:]) == (height // 16, width // 16)
    heatmap = create("gradcam").explain(clf.module, batch, 1).heatmap
    assert heatmap.shape == (1, height, width) and float(heatmap.std()) > 0


def test_activation_detection_and_modified_backward_restores(resnet_inplace, image, util):
    assert is_activation(nn.ReLU()) and is_activation(nn.SiLU()) and not is_activation(nn.Conv2d(1, 1, 1))
    assert has_activation(resnet_inplace) and not has_activation(nn.Sequential(nn.Linear(2, 2)))
    with modified_backward(resnet_inplace, "guided") as count:
        assert count == sum(1 for m in resnet_inplace.modules() if isinstance(m, nn.ReLU))
        assert not any(m.inplace for m in resnet_inplace.modules() if isinstance(m, nn.ReLU))
    assert all(m.inplace for m in resnet_inplace.modules() if isinstance(m, nn.ReLU))
    assert util.hook_count(resnet_inplace) == 0
    assert not any("forward" in m.__dict__ for m in resnet_inplace.modules())  # replaced forwards restored
    with pytest.raises(ValueError, match="unknown backward rule"):
        with modified_backward(resnet_inplace, "sideways"):
            pass


def test_stabilize_and_rules_on_a_linear_layer():
    assert torch.equal(stabilize(torch.tensor([0.0, -2.0, 3.0]), 0.5), torch.tensor([0.5, -2.5, 3.5]))
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    a = torch.tensor([[2.0, 1.0, 4.0]])  # contributions 2, -2, 2 -> z = 2
    r_out = torch.tensor([[2.0]])
    eps = Rule("epsilon", epsilon=0.0).relevance(layer, a, r_out)
    assert torch.allclose(eps, torch.tensor([[2.0, -2.0, 2.0]]))  # LRP-0 = contributions × R/z
    zplus = Rule("zplus").relevance(layer, a, r_out)
    assert torch.allclose(zplus, torch.tensor([[1.0, 0.0, 1.0]]), atol=1e-5)  # only positive contributions
    ab = Rule("alpha_beta", alpha=2.0, beta=1.0).relevance(layer, a, r_out)
    assert torch.allclose(ab, torch.tensor([[2.0, -2.0, 2.0]]), atol=1e-5)  # 2·(1,0,1)·… − 1·(0,2,0)·…
    flat = Rule("flat").relevance(layer, a, r_out)
    assert torch.allclose(flat, torch.full((1, 3), 2.0 / 3), atol=1e-5)
    assert torch.equal(Rule("pass").relevance(layer, a, r_out), r_out)
    summed = Rule("norm").relevance(Sum(), torch.tensor([[[3.0, 1.0]]]), torch.tensor([[8.0]]))
    assert torch.allclose(summed, torch.tensor([[[6.0, 2.0]]]), atol=1e-5)
    with pytest.raises(ValueError, match="unknown LRP rule"):
        Rule("gamma").relevance(layer, a, r_out)


def test_attach_makes_backward_follow_the_rule():
    layer = nn.Linear(3, 1, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([[1.0, -2.0, 0.5]]))
    handle = attach(layer, Rule("zplus"))
    try:
        a = torch.tensor([[2.0, 1.0, 4.0]], requires_grad=True)
        out = layer(a)
        (relevance,) = torch.autograd.grad(out, a, out.detach())
    finally:
        handle.remove()
    assert torch.allclose(relevance, torch.tensor([[1.0, 0.0, 1.0]]), atol=1e-5)
    assert not layer._forward_hooks


def test_live_branches_is_seeded_and_makes_every_branch_live(util):
    from mammoxai.models.random_init import live_branches

    a, b = (live_branches(util.timm_model("resnet10t"), seed=5) for _ in range(2))
    c = live_branches(util.timm_model("resnet10t"), seed=6)
    bn_a, bn_b, bn_c = (next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d)) for model in (a, b, c))
    assert torch.equal(bn_a.running_var, bn_b.running_var) and not torch.equal(bn_a.running_var, bn_c.running_var)
    last_bn = a.layer1[0].bn2          # timm zero-initialises it: the branch would contribute nothing
    assert float(last_bn.weight.abs().min()) >= 0.5
    assert float(bn_a.running_var.min()) >= 0.5 and float(bn_a.running_mean.abs().max()) > 0
