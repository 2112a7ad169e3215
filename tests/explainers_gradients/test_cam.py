"""CAM family against pytorch-grad-cam, shared passes, hooks and memory, transformers, target layers."""

from __future__ import annotations

import gc
import warnings

import pytest
import torch

from mammoxai.explainers import ExplainerNotApplicable, create, run_explainers
from mammoxai.explainers.cam import cam_pass, finish_cam

pg = pytest.importorskip("pytorch_grad_cam")
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402
from pytorch_grad_cam.utils.image import scale_cam_image  # noqa: E402
from pytorch_grad_cam.utils.svd_on_activations import get_2d_projection_with_sign_correction  # noqa: E402

warnings.filterwarnings("ignore", module="pytorch_grad_cam")
TARGETS = [1, 0]
GRADIENT_FAMILY = ["gradcam", "gradcam_pp", "hirescam", "xgradcam", "layercam", "guided_gradcam"]


@pytest.fixture(scope="module")
def pair(image):
    return torch.cat([image, image.flip(-1) * 0.8])


@pytest.mark.parametrize("name,cls", [("gradcam", "GradCAM"), ("gradcam_pp", "GradCAMPlusPlus"),
                                      ("hirescam", "HiResCAM"), ("xgradcam", "XGradCAM"), ("layercam", "LayerCAM")])
def test_gradient_cams_match_pytorch_grad_cam(resnet_inplace, pair, util, name, cls):
    ours = create(name).explain(resnet_inplace, pair, torch.tensor(TARGETS)).heatmap
    with getattr(pg, cls)(model=resnet_inplace, target_layers=[resnet_inplace.layer4]) as cam:
        ref = cam(input_tensor=pair, targets=[ClassifierOutputTarget(t) for t in TARGETS])
    for i in range(2):
        assert util.pearson(ours[i], torch.from_numpy(ref[i])) >= 0.99
    assert float(ours.min()) >= 0 and float(ours.max()) <= 1 + 1e-6


def test_scorecam_matches_pytorch_grad_cam(small_cnn, image, util):
    ours = create("scorecam", batch_size=5).explain(small_cnn, image, 1).heatmap
    with pg.ScoreCAM(model=small_cnn, target_layers=[small_cnn.features]) as cam:
        ref = cam(input_tensor=image, targets=[ClassifierOutputTarget(1)])
    assert util.pearson(ours[0], torch.from_numpy(ref[0])) >= 0.99


def test_eigencam_matches_pytorch_grad_cam_projection(resnet_inplace, pair, util):
    ours = create("eigencam").explain(resnet_inplace, pair, 0).heatmap
    with pg.EigenCAM(model=resnet_inplace, target_layers=[resnet_inplace.layer4]) as cam:
        cam(input_tensor=pair, targets=None)
        acts = cam.activations_and_grads.activations[0].numpy()
    # pytorch-grad-cam's own projection with its sign correction, its ReLU and scaling
    ref = scale_cam_image(get_2d_projection_with_sign_correction(acts).clip(min=0), (64, 64))
    for i in range(2):
        assert util.pearson(ours[i], torch.from_numpy(ref[i])) >= 0.99


def test_cam_equals_gradcam_for_gap_linear_head(resnet_inplace, pair, util):
    cam = create("cam").explain(resnet_inplace, pair, torch.tensor(TARGETS)).heatmap
    grad = create("gradcam").explain(resnet_inplace, pair, torch.tensor(TARGETS)).heatmap
    assert util.pearson(cam, grad) >= 0.999


def test_cam_not_applicable_on_convnext(util, image):
    model = util.timm_model("convnext_atto")
    with pytest.raises(ExplainerNotApplicable, match="cam: model head is not global average pooling"):
        create("cam").explain(model, image, 0)
    assert create("gradcam").explain(model, image, 0).heatmap.shape == (1, 64, 64)


def test_guided_gradcam_is_guided_backprop_times_gradcam(resnet_inplace, image, util):
    ggc = create("guided_gradcam").explain(resnet_inplace, image, 1).heatmap
    gbp = create("guided_backprop").explain(resnet_inplace, image, 1).heatmap
    gc_map = create("gradcam").explain(resnet_inplace, image, 1).heatmap
    assert torch.allclose(ggc, gbp * gc_map, atol=1e-6 * float(gbp.abs().max()) + 1e-9)


def test_gradient_family_shares_one_forward_pass(resnet_inplace, pair, util):
    calls = []
    handle = resnet_inplace.register_forward_hook(lambda *_: calls.append(1))
    try:
        result = run_explainers(resnet_inplace, pair, [create(n) for n in GRADIENT_FAMILY + ["eigencam"]],
                                target=torch.tensor(TARGETS))
    finally:
        handle.remove()
    assert not result.failures, result.failures
    assert len(calls) == 1
    for name in GRADIENT_FAMILY:  # and the shared results equal the solo ones
        solo = create(name).explain(resnet_inplace, pair, torch.tensor(TARGETS)).heatmap
        assert torch.allclose(result.explanations[name].heatmap, solo, atol=1e-5), name


def test_repeated_calls_leave_no_hooks_and_no_tensors(resnet_inplace, image, util):
    explainers = [create(n) for n in GRADIENT_FAMILY + ["cam", "eigencam", "guided_backprop", "deeplift"]]
    resnet_inplace.zero_grad(set_to_none=True)  # pytorch-grad-cam's own backward() fills .grad in other tests
    inplace_before = [m.inplace for m in resnet_inplace.modules() if hasattr(m, "inplace")]

    def live_tensors() -> int:
        gc.collect()
        return sum(1 for o in gc.get_objects() if torch.is_tensor(o))

    run_explainers(resnet_inplace, image, explainers, target=1)
    before = live_tensors()
    for _ in range(2):
        result = run_explainers(resnet_inplace, image, explainers, target=1)
        assert not result.failures
        del result
    assert live_tensors() <= before + 5
    assert util.hook_count(resnet_inplace) == 0
    assert [m.inplace for m in resnet_inplace.modules() if hasattr(m, "inplace")] == inplace_before
    assert all(p.grad is None for p in resnet_inplace.parameters())


def test_hooks_removed_when_target_layer_is_bad(resnet_inplace, image, util):
    with pytest.raises(ExplainerNotApplicable, match="no module 'layer9'"):
        create("gradcam", target_layer="layer9").explain(resnet_inplace, image, 0)
    with pytest.raises(ExplainerNotApplicable, match="not a feature map"):
        create("gradcam", target_layer="fc").explain(resnet_inplace, image, 0)
    assert util.hook_count(resnet_inplace) == 0


def test_explicit_target_layer(resnet_inplace, image, util):
    auto = create("gradcam").explain(resnet_inplace, image, 1).heatmap
    named = create("gradcam", target_layer="layer4").explain(resnet_inplace, image, 1).heatmap
    last_block = create("gradcam", target_layer="layer4[-1]").explain(resnet_inplace, image, 1).heatmap
    earlier = create("gradcam", target_layer="layer2").explain(resnet_inplace, image, 1).heatmap
    assert torch.equal(auto, named) and torch.allclose(auto, last_block)
    assert not torch.allclose(auto, earlier)


@pytest.mark.parametrize("model_name,size", [("vit_tiny_patch16_224", (64, 96)),
                                             ("swin_tiny_patch4_window7_224", (64, 128))])
def test_gradcam_on_transformers_uses_the_input_token_grid(util, model_name, size):
    model = util.timm_model(model_name, img_size=size)
    batch = torch.randn(1, 1, *size, generator=torch.Generator().manual_seed(0))
    passed = cam_pass(model, batch, torch.tensor([1]))
    expected = (size[0] // 16, size[1] // 16) if "vit" in model_name else (size[0] // 32, size[1] // 32)
    assert tuple(passed.activations.shape[2:]) == expected
    heatmap = create("gradcam").explain(model, batch, 1).heatmap
    assert heatmap.shape == (1, *size) and float(heatmap.std()) > 0
    with pytest.raises(ExplainerNotApplicable):
        create("cam").explain(model, batch, 1)


def test_efficientnet_and_convnext_auto_layers(util, image):
    for name, layer in (("efficientnet_b0", "bn2"), ("convnext_atto", "stages")):
        model = util.timm_model(name)
        assert cam_pass(model, image, torch.tensor([0])).layer == layer


def test_not_applicable_without_conv_or_tokens(image):
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64 * 64, 2)).eval()
    with pytest.raises(ExplainerNotApplicable, match="no convolutional layer or token grid"):
        create("gradcam").explain(model, image, 0)


def test_finish_cam_normalises_and_upsamples():
    low = torch.tensor([[[-1.0, 0.0], [1.0, 3.0]]])
    out = finish_cam(low, (8, 8))
    assert out.shape == (1, 8, 8)
    assert float(out.min()) == 0.0 and abs(float(out.max()) - 1.0) < 1e-6
    assert float(out[0, -1, -1]) > float(out[0, 0, 0])
