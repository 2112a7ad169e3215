"""LRP against zennit, conservation, canonisation on copies, coverage of timm architectures."""

from __future__ import annotations

import pytest
import torch

from mammoxai.explainers import ExplainerNotApplicable, create
from mammoxai.explainers._lrp_canon import canonize
from mammoxai.explainers.lrp import COMPOSITES, unsupported_layers

zennit_composites = pytest.importorskip("zennit.composites")


@pytest.fixture(scope="module")
def tv_resnet(util):
    import torchvision
    torch.manual_seed(0)
    return util.randomize_bn(torchvision.models.resnet18(weights=None, num_classes=2)).eval()


@pytest.fixture(scope="module")
def rgb(image):
    return torch.cat([image, image.flip(-1), image.flip(-2)], dim=1)


def test_lrp_matches_zennit_epsilon_plus_flat(tv_resnet, rgb, util):
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer
    ours = create("lrp").explain(tv_resnet, rgb, 1).heatmap
    composite = zennit_composites.EpsilonPlusFlat(canonizers=[ResNetCanonizer()])
    with Gradient(model=tv_resnet, composite=composite) as attributor:
        # our output relevance is the target logit itself (so relevance sums to it); zennit's is what we seed
        out, relevance = attributor(rgb, lambda out: torch.eye(2)[[1]] * out)
    assert util.pearson(ours, relevance.sum(dim=1)) >= 0.99


def test_lrp_alpha_beta_matches_zennit(tv_resnet, rgb, util):
    from zennit.attribution import Gradient
    from zennit.torchvision import ResNetCanonizer
    ours = create("lrp", composite="epsilon_alpha2_beta1").explain(tv_resnet, rgb, 0).heatmap
    composite = zennit_composites.EpsilonAlpha2Beta1(canonizers=[ResNetCanonizer()])
    with Gradient(model=tv_resnet, composite=composite) as attributor:
        # our output relevance is the target logit itself (so relevance sums to it); zennit's is what we seed
        out, relevance = attributor(rgb, lambda out: torch.eye(2)[[0]] * out)
    assert util.pearson(ours, relevance.sum(dim=1)) >= 0.99


def _zero_biases(model):
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.zero_()
                module.bias.zero_()
            elif getattr(module, "bias", None) is not None:
                module.bias.zero_()
    return model


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon", "epsilon_plus"])
def test_relevance_is_conserved_with_zero_biases(util, image, composite):
    model = _zero_biases(util.randomize_bn(util.timm_model("resnet10t")))
    with torch.no_grad():
        logit = float(model(image)[0, 1])
    total = float(create("lrp", composite=composite, epsilon=1e-9).explain(model, image, 1).heatmap.sum())
    assert abs(total - logit) <= 0.05 * abs(logit)


def test_canonisation_works_on_a_copy(resnet_inplace, image, util):
    state = {k: v.clone() for k, v in resnet_inplace.state_dict().items()}
    with torch.no_grad():
        before = resnet_inplace(image)
    copy = canonize(resnet_inplace, image)
    with torch.no_grad():
        assert torch.allclose(copy(image), before, atol=1e-5)  # merged BN + explicit sums: same function
    create("lrp").explain(resnet_inplace, image, 1)
    assert all(torch.equal(v, resnet_inplace.state_dict()[k]) for k, v in state.items())
    assert "forward" not in vars(resnet_inplace.layer1[0])
    assert util.hook_count(resnet_inplace) == 0
    assert all(m.inplace for m in resnet_inplace.modules() if type(m).__name__ == "ReLU")


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_atto"])
def test_lrp_runs_on_efficientnet_and_convnext(util, image, name):
    model = util.timm_model(name)
    with torch.no_grad():
        reference = model(image)
        canon_out = canonize(model, image)(image)
    assert torch.allclose(canon_out, reference, atol=1e-4)
    heatmap = create("lrp", composite="epsilon").explain(model, image, 1).heatmap
    assert heatmap.shape == (1, 64, 64) and torch.isfinite(heatmap).all() and heatmap.abs().sum() > 0


def test_lrp_names_the_unsupported_layer(util):
    model = util.timm_model("vit_tiny_patch16_224", img_size=64)
    assert any("Attention" in entry for entry in unsupported_layers(model))
    with pytest.raises(ExplainerNotApplicable, match="lrp: unsupported layer type"):
        create("lrp").check_applicable(model)


def test_lrp_parameters():
    assert "epsilon_plus_flat" in COMPOSITES
    with pytest.raises(ValueError, match="composite"):
        create("lrp", composite="gamma")
    with pytest.raises(ValueError, match="epsilon"):
        create("lrp", epsilon=-1.0)


def test_lrp_batch_equals_single_images(resnet_inplace, image):
    pair = torch.cat([image, image.flip(-1)])
    both = create("lrp").explain(resnet_inplace, pair, torch.tensor([1, 0])).heatmap
    first = create("lrp").explain(resnet_inplace, pair[:1], 1).heatmap
    second = create("lrp").explain(resnet_inplace, pair[1:], 0).heatmap
    assert torch.allclose(both, torch.cat([first, second]), atol=1e-6 * float(both.abs().max()))


def test_lrp_reuses_its_canonised_copy_until_the_model_changes(resnet_inplace, image):
    import copy

    from mammoxai.explainers import lrp as lrp_module

    model = copy.deepcopy(resnet_inplace)
    explainer = create("lrp")
    calls = []
    original = lrp_module.canonize

    def counting(m, sample):
        calls.append(m)
        return original(m, sample)

    lrp_module.canonize = counting
    try:
        first = explainer.explain(model, image, 1).heatmap
        again = explainer.explain(model, image, 1).heatmap
        assert len(calls) == 1 and torch.equal(first, again)            # cached: canonised once
        explainer.explain(model, torch.cat([image, image]), 1)           # same shape per image: still cached
        assert len(calls) == 1
        with torch.no_grad():                                            # weights changed in place: rebuilt
            model.fc.weight.mul_(-1.0)
        flipped = explainer.explain(model, image, 1).heatmap
        assert len(calls) == 2
        fresh = create("lrp").explain(model, image, 1).heatmap
        assert torch.allclose(flipped, fresh) and not torch.allclose(flipped, first)
        state = copy.deepcopy(resnet_inplace.state_dict())
        model.load_state_dict(state)                                     # load_state_dict copies in place: rebuilt
        assert torch.allclose(explainer.explain(model, image, 1).heatmap, first, atol=1e-6)
        assert len(calls) == 4                                           # (fresh explainer: one more above)
    finally:
        lrp_module.canonize = original
