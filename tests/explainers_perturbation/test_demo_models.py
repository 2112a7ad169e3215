"""The perturbation, attention and robustness explainers on the shipped demo models and phantoms.

Prints the pointing-game figure (is the map's maximum on the lesion?) on a few
malignant phantoms; the demo weights are provisional, so the figure is reported,
not asserted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mammoxai.explainers import ExplainerNotApplicable, create
from mammoxai.explainers.attention import capture_attention, vit_rollout
from mammoxai.models import load_classifier
from mammoxai.models.phantoms import generate_phantom

CNN_METHODS = {
    "occlusion": {"patch": 64, "stride": 64, "batch_size": 32},
    "rise": {"n_masks": 32, "cells": 6, "batch_size": 32},
    "lime": {"samples": 32, "n_segments": 16, "batch_size": 32},
    "kernel_shap": {"samples": 32, "n_segments": 16, "batch_size": 32},
}


@pytest.fixture(scope="module")
def demo_cnn():
    return load_classifier("demo-cnn", device="cpu")


@pytest.fixture(scope="module")
def demo_vit():
    return load_classifier("demo-vit", device="cpu")


@pytest.fixture(scope="module")
def phantoms(demo_cnn):
    out = []
    for seed in (11, 12, 13):
        ph = generate_phantom(seed, finding="malignant_mass", shape=(512, 416))
        x, geometry = demo_cnn.preprocess(ph.image, ph.laterality)
        out.append((x, geometry.to_model(ph.mask.astype(np.float32)) > 0.5))
    return out


def _pointing_hit(heatmap: torch.Tensor, lesion: np.ndarray, tolerance: int = 8) -> bool:
    """Pointing game (Zhang et al. 2018): the map's maximum within ``tolerance`` pixels of the lesion."""
    flat = int(heatmap.flatten().argmax())
    y, x = divmod(flat, heatmap.shape[-1])
    ys, xs = np.nonzero(lesion)
    return bool(np.min(np.hypot(ys - y, xs - x)) <= tolerance)


def test_cnn_methods_on_demo_cnn_with_pointing_game(demo_cnn, phantoms):
    model = demo_cnn.module
    target = demo_cnn.positive_index
    h, w = demo_cnn.metadata.input_size
    hits = {name: 0 for name in CNN_METHODS}
    for x, lesion in phantoms:
        assert lesion.shape == (h, w) and lesion.any()
        for name, params in CNN_METHODS.items():
            result = create(name, **params).explain(model, x, target)
            assert result.heatmap.shape == (1, h, w)
            assert torch.isfinite(result.heatmap).all()
            assert float(result.heatmap.abs().max()) > 0, name
            hits[name] += _pointing_hit(result.heatmap[0], lesion)
    print("pointing game on", len(phantoms), "malignant phantoms (demo CNN, malignant class):",
          {k: f"{v}/{len(phantoms)}" for k, v in hits.items()})


def test_robustness_methods_on_demo_cnn(demo_cnn, phantoms):
    mean, std = float(demo_cnn.metadata.mean[0]), float(demo_cnn.metadata.std[0])
    x = phantoms[0][0]
    settings = {
        "fgsm": {"eps_max": 0.04, "n_eps": 4},
        "pgd_linf": {"eps_max": 0.02, "n_eps": 2, "steps": 2},
        "pgd_l2": {"eps_max": 2.0, "n_eps": 2, "steps": 2},
        "wasserstein": {"eps_max": 0.05, "n_eps": 1, "steps": 2, "sinkhorn_iters": 10, "step": 0.02},
    }
    for name, params in settings.items():
        result = create(name, mean=mean, std=std, batch_size=8, **params).explain(demo_cnn.module, x)
        r = result.extras["robustness"][0]
        print(f"{name} on demo CNN: flipped={r['flipped']} epsilon={r['epsilon']} linf={r['linf']:.4f}")
        assert result.heatmap.shape == (1, *demo_cnn.metadata.input_size)
        assert r["max_epsilon"] == pytest.approx(params["eps_max"])
        if name == "pgd_linf" or name == "fgsm":
            assert r["linf"] <= params["eps_max"] * (1 + 1e-4)
        if name == "pgd_l2":
            assert r["l2"] <= params["eps_max"] * (1 + 1e-4)


def test_attention_is_not_applicable_to_demo_cnn(demo_cnn, phantoms):
    for name in ("attention_rollout", "attention_last"):
        with pytest.raises(ExplainerNotApplicable, match="no attention blocks"):
            create(name).explain(demo_cnn.module, phantoms[0][0])


def test_attention_on_demo_vit_matches_manual_rollout(demo_vit):
    ph = generate_phantom(21, finding="malignant_mass", shape=(512, 416))
    x, _ = demo_vit.preprocess(ph.image, ph.laterality)
    h, w = demo_vit.metadata.input_size
    model = demo_vit.module
    assert (h // 16, w // 16) == (14, 12)  # non-square grid, from the input size
    inputs = []
    handles = [blk.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for blk in model.blocks]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    manual = []
    for blk, tokens in zip(model.blocks, inputs):  # q·kᵀ softmax recomputed outside the model
        attn = blk.attn
        b, n, _ = tokens.shape
        qkv = attn.qkv(blk.norm1(tokens)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        manual.append(((attn.q_norm(qkv[0]) * attn.scale) @ attn.k_norm(qkv[1]).transpose(-2, -1)).softmax(-1))
    result = torch.eye(manual[0].shape[-1])
    for a in manual:  # dense rollout
        a = (a.mean(1) + torch.eye(a.shape[-1])) / 2
        result = (a / a.sum(-1, keepdim=True)) @ result
    if model.global_pool == "token":  # the class token's row of the rollout
        ref = result[0, 0, 1:].reshape(1, 14, 12)
    else:  # average-pooled head: the mean of the patch tokens' rows
        ref = result[0, 1:, 1:].mean(0).reshape(1, 14, 12)
    heat = create("attention_rollout").explain(model, x).heatmap
    expected = F.interpolate(ref[None], size=(h, w), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(heat, expected, rtol=1e-4, atol=1e-7)
    with torch.no_grad(), capture_attention(model) as record:
        model(x)
    use_cls = model.global_pool == "token"
    assert torch.allclose(vit_rollout(record.attentions, 1, (14, 12), use_cls), ref, rtol=1e-4, atol=1e-7)
    last = create("attention_last").explain(model, x).heatmap
    assert last.shape == (1, h, w) and torch.isfinite(last).all()


def test_demo_vit_randomisation_record_holds_for_the_attention_maps(demo_vit):
    """The demo ViT's shipped record (``mammoxai sanity --write``: blocks 2-3, fc_norm and head re-initialised,
    4 evaluation phantoms x 2 seeds), recomputed: last-block attention and Grad-CAM on the token grid depend on
    the model; attention rollout does not (it is dominated by the lower blocks and the residual identity)."""
    from mammoxai.evaluate import phantom_samples
    from mammoxai.explainers.sanity import model_randomisation_check, sanity_verdicts

    verdicts = sanity_verdicts(demo_vit.metadata.sanity)
    samples = phantom_samples(demo_vit, 4)
    batch = torch.cat([s.tensor for s in samples])
    target = demo_vit.predict_proba(batch).argmax(dim=1)
    names = ["attention_rollout", "attention_last", "gradcam"]
    results = model_randomisation_check(demo_vit.module, [create(n) for n in names], batch, target, seeds=(0, 1))
    for name in names:
        print(f"{name}: Spearman {results[name].spearman:+.3f} (record {verdicts[name][0]:+.3f})")
        assert results[name].spearman == pytest.approx(verdicts[name][0], abs=0.02)
        assert results[name].passed == verdicts[name][1]
    assert not results["attention_rollout"].passed
    assert results["attention_last"].passed and results["gradcam"].passed
