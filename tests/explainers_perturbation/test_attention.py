"""Attention rollout / last-block attention on small random timm ViT and Swin, against manual computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mammoxai.explainers import ExplainerNotApplicable, create
from mammoxai.explainers.attention import (architecture, attention_modules, capture_attention, fuse_heads,
                                           swin_rollout, vit_rollout)
from mammoxai.models._torchvision_compat import import_timm

timm = import_timm()


def make_vit(seed=0, img=64, global_pool="token"):
    torch.manual_seed(seed)
    return timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=img, in_chans=1, num_classes=2,
                             global_pool=global_pool).eval()


def make_swin(seed=0, img=112):
    torch.manual_seed(seed)
    return timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=img, in_chans=1,
                             num_classes=2, embed_dim=24, depths=(2, 2), num_heads=(1, 2), window_size=7).eval()


@pytest.fixture(scope="module")
def vit():
    return make_vit()


@pytest.fixture(scope="module")
def swin():
    return make_swin()


def _manual_vit_attentions(model, x):
    """Attention matrices recomputed from each block's input with q·kᵀ softmax (model left fused)."""
    inputs = []
    handles = [blk.register_forward_pre_hook(lambda m, a: inputs.append(a[0])) for blk in model.blocks]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    out = []
    for blk, h in zip(model.blocks, inputs):
        attn = blk.attn
        b, n, _ = h.shape
        qkv = attn.qkv(blk.norm1(h)).reshape(b, n, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
        q, k = attn.q_norm(qkv[0]), attn.k_norm(qkv[1])
        out.append(((q * attn.scale) @ k.transpose(-2, -1)).softmax(-1))
    return out


def _jacobgil_rollout(attentions, discard_ratio, head_fusion="mean"):
    """Reference rollout (jacobgil/vit-explain), dense matrix products, batch of one."""
    result = torch.eye(attentions[0].size(-1))
    for attention in attentions:
        fused = {"mean": attention.mean(1), "max": attention.max(1)[0], "min": attention.min(1)[0]}[head_fusion]
        flat = fused.view(fused.size(0), -1).clone()
        _, indices = flat.topk(int(flat.size(-1) * discard_ratio), -1, False)
        indices = indices[indices != 0]
        flat[0, indices] = 0
        fused = flat.view_as(fused)
        eye = torch.eye(fused.size(-1))
        a = (fused + 1.0 * eye) / 2
        a = a / a.sum(dim=-1, keepdim=True)
        result = torch.matmul(a, result)
    return result[0, 0, 1:]


def test_capture_records_true_attention_and_restores_flags(vit):
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(0))
    flags = [m.fused_attn for m in attention_modules(vit)]
    assert any(flags), "timm's ViT should use fused attention by default"
    with torch.no_grad():
        fused_out = vit(x)
        with capture_attention(vit) as record:
            explicit_out = vit(x)
    assert [m.fused_attn for m in attention_modules(vit)] == flags
    assert torch.allclose(fused_out, explicit_out, atol=1e-5)
    manual = _manual_vit_attentions(vit, x)
    assert len(record.attentions) == len(manual) == len(vit.blocks)
    for got, ref in zip(record.attentions, manual):
        assert got.shape == (2, 3, 17, 17)
        assert torch.allclose(got, ref, atol=1e-5)


@pytest.mark.parametrize("head_fusion,discard", [("mean", 0.0), ("max", 0.9), ("min", 0.5)])
def test_vit_rollout_equals_dense_reference(vit, head_fusion, discard):
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    ref = _jacobgil_rollout(_manual_vit_attentions(vit, x), discard, head_fusion).reshape(1, 4, 4)
    heat = create("attention_rollout", head_fusion=head_fusion, discard_ratio=discard).explain(vit, x).heatmap
    expected = F.interpolate(ref[None], size=(64, 64), mode="bilinear", align_corners=False)[0]
    assert heat.shape == (1, 64, 64)
    assert torch.allclose(heat, expected, rtol=1e-4, atol=1e-7)


def test_vit_grid_follows_input_size():
    model = make_vit(img=96)  # 6×6 patches: nothing hard-coded
    x = torch.randn(1, 1, 96, 96)
    with torch.no_grad(), capture_attention(model) as record:
        model(x)
    grid = vit_rollout(record.attentions, 1, (6, 6), True)
    assert grid.shape == (1, 6, 6)
    assert abs(float(grid.sum()) - 1.0) < 1.0  # a share of the CLS row's unit mass lands on the patches
    assert create("attention_last").explain(model, x).heatmap.shape == (1, 96, 96)


def test_vit_last_block_attention_is_cls_row(vit):
    x = torch.randn(1, 1, 64, 64, generator=torch.Generator().manual_seed(2))
    last = _manual_vit_attentions(vit, x)[-1]
    ref = last.amax(1)[0, 0, 1:].reshape(1, 4, 4)
    heat = create("attention_last", head_fusion="max").explain(vit, x).heatmap
    assert torch.allclose(heat, F.interpolate(ref[None], size=(64, 64), mode="bilinear", align_corners=False)[0],
                          atol=1e-6)


def test_vit_without_cls_readout_uses_token_mean():
    model = make_vit(global_pool="avg")
    x = torch.randn(1, 1, 64, 64)
    last = _manual_vit_attentions(model, x)[-1]
    ref = last.mean(1)[0, 1:, 1:].mean(0).reshape(1, 4, 4)
    heat = create("attention_last").explain(model, x).heatmap
    assert torch.allclose(heat, F.interpolate(ref[None], size=(64, 64), mode="bilinear", align_corners=False)[0],
                          atol=1e-6)


def _dense_swin_reference(record, head_fusion="mean"):
    """Dense full-grid rollout of a Swin record (explicit matrices, explicit merging matrices)."""
    from timm.models.swin_transformer import window_partition
    mats = []
    for kind, info in record.events:
        if kind == "attn":
            h, w = info["hw"]
            sh, sw = info["shift"]
            wh, ww = info["window"]
            idx = torch.arange(h * w, dtype=torch.float32).reshape(1, h, w)
            idx = torch.roll(idx, shifts=(-sh, -sw), dims=(1, 2))
            ph, pw = (wh - h % wh) % wh, (ww - w % ww) % ww
            idx = F.pad(idx, (0, pw, 0, ph), value=-1)
            win = window_partition(idx.unsqueeze(-1), (wh, ww)).reshape(-1, wh * ww).long()  # nW, T
            fused = fuse_heads(info["attn"], head_fusion)  # nW, T, T (batch of one)
            full = torch.zeros(h * w, h * w)
            for wi in range(win.shape[0]):
                for i in range(win.shape[1]):
                    if win[wi, i] < 0:
                        continue
                    for j in range(win.shape[1]):
                        if win[wi, j] >= 0:
                            full[win[wi, i], win[wi, j]] = fused[wi, i, j]
                    # padded keys take some of the row's mass: keep it out, as the model's output does
            a = (full + torch.eye(h * w)) / 2
            # the row normalisation of the window (including padded keys) is what the explainer uses
            rows = (fused.sum(-1) + 1) / 2  # nW, T: window row sums incl. padded keys
            norm = torch.ones(h * w)
            for wi in range(win.shape[0]):
                for i in range(win.shape[1]):
                    if win[wi, i] >= 0:
                        norm[win[wi, i]] = rows[wi, i]
            mats.append(a / norm[:, None])
        else:
            h, w = info["hw"]
            merge = torch.zeros((h // 2) * (w // 2), h * w)
            for y in range(h):
                for x in range(w):
                    merge[(y // 2) * (w // 2) + x // 2, y * w + x] = 0.25
            mats.append(merge)
    last = [info for kind, info in record.events if kind == "attn"][-1]["hw"]
    v = torch.full((1, last[0] * last[1]), 1.0 / (last[0] * last[1]))
    for m in reversed(mats):
        v = v @ m
    return v


@pytest.mark.parametrize("img", [56, 80])
def test_swin_rollout_equals_dense_reference(img):
    model = make_swin(img=img)  # 80: 20×20 tokens, windows of 7 need padding; both have shifted blocks
    x = torch.randn(1, 1, img, img, generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), capture_attention(model) as record:
        model(x)
    kinds = [k for k, _ in record.events]
    assert kinds == ["attn", "attn", "merge", "attn", "attn"]
    assert any(any(info["shift"]) for k, info in record.events if k == "attn") or img == 56
    grid = swin_rollout(record, 1)
    ref = _dense_swin_reference(record)
    g = img // 4
    assert torch.allclose(grid.reshape(1, -1), ref, rtol=1e-4, atol=1e-8)
    heat = create("attention_rollout").explain(model, x).heatmap
    assert heat.shape == (1, img, img)
    assert torch.allclose(heat, F.interpolate(grid[None], size=(g * 4, g * 4), mode="bilinear",
                                              align_corners=False)[0], atol=1e-7)


def test_swin_window_attention_capture_matches_manual(swin):
    x = torch.randn(1, 1, 112, 112)
    seen = []

    def hook(mod, args, kwargs, out):
        xw = args[0]
        mask = args[1] if len(args) > 1 else kwargs.get("mask")
        b_, n, _ = xw.shape
        qkv = mod.qkv(xw).reshape(b_, n, 3, mod.num_heads, -1).permute(2, 0, 3, 1, 4)
        attn = (qkv[0] * mod.scale) @ qkv[1].transpose(-2, -1) + mod._get_rel_pos_bias()
        if mask is not None:
            nw = mask.shape[0]
            attn = attn.view(-1, nw, mod.num_heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            attn = attn.view(-1, mod.num_heads, n, n)
        seen.append(attn.softmax(-1))
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in attention_modules(swin)]
    try:
        with torch.no_grad(), capture_attention(swin) as record:
            swin(x)
    finally:
        for h in handles:
            h.remove()
    assert len(seen) == len(record.attentions) == 4
    assert [any(i["shift"]) for k, i in record.events if k == "attn"] == [False, True, False, True]
    for got, ref in zip(record.attentions, seen):
        assert torch.allclose(got, ref, atol=1e-6)


def test_swin_last_attention_is_mean_received(swin):
    x = torch.randn(1, 1, 112, 112)
    heat = create("attention_last").explain(swin, x).heatmap
    assert heat.shape == (1, 112, 112)
    with torch.no_grad(), capture_attention(swin) as record:
        swin(x)
    info = [i for k, i in record.events if k == "attn"][-1]
    received = info["attn"].mean(1).mean(1)  # nW, T  (last stage: 14×14 tokens, windows of 7, shift 3)
    assert info["hw"] == (14, 14) and info["shift"] == (3, 3)
    from timm.models.swin_transformer import window_reverse
    grid = torch.roll(window_reverse(received.reshape(-1, 7, 7, 1), (7, 7), 14, 14)[..., 0], (3, 3), (1, 2))
    expected = F.interpolate(grid[None], size=(112, 112), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(heat, expected, atol=1e-7)


def test_architecture_and_not_applicable():
    cnn = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=2).eval()
    assert architecture(cnn) == "none"
    for name in ("attention_rollout", "attention_last"):
        with pytest.raises(ExplainerNotApplicable, match="model has no attention blocks"):
            create(name).explain(cnn, torch.randn(1, 1, 32, 32))
    assert architecture(make_vit()) == "vit" and architecture(make_swin(img=56)) == "swin"
    with pytest.raises(ValueError, match="head_fusion"):
        create("attention_rollout", head_fusion="median")
    with pytest.raises(ValueError, match="discard_ratio"):
        create("attention_rollout", discard_ratio=1.0)


@pytest.mark.parametrize("name,arch,params,first", [
    ("attention_last", "vit", {}, 0.5),
    ("attention_last", "swin", {}, 0.5),
    ("attention_rollout", "swin", {}, 0.5),
    # ViT rollout is dominated by the lowest blocks: re-initialising the top half leaves the map almost unchanged
    # (Spearman 0.998 with mean fusion on this model); only the full cascade changes it.
    ("attention_rollout", "vit", {"head_fusion": "max", "discard_ratio": 0.9}, 0.0),
])
def test_model_randomisation_changes_attention_maps(name, arch, params, first, tools):
    model = make_vit(0) if arch == "vit" else make_swin(0, img=56)
    with torch.no_grad():  # sharpen the random attention (a random init attends almost uniformly)
        for module in attention_modules(model):
            module.qkv.weight.mul_(4.0)
    x = tools.smooth_image(64 if arch == "vit" else 56, 4)
    patch = 16 if arch == "vit" else 4
    before = create(name, **params).explain(model, x).heatmap
    blocks = list(model.blocks) if arch == "vit" else [b for stage in model.layers for b in stage.blocks]
    torch.manual_seed(99)
    with torch.no_grad():  # cascading randomisation from the top (Adebayo et al. 2018)
        for block in blocks[int(len(blocks) * first):]:
            for module in block.modules():
                if isinstance(module, torch.nn.Linear):
                    module.reset_parameters()
            block.attn.qkv.weight.mul_(4.0)
    after = create(name, **params).explain(model, x).heatmap
    # compare at the token grid, the maps' native resolution
    rho = tools.spearman(F.avg_pool2d(before, patch), F.avg_pool2d(after, patch))
    print(f"{name} on {arch}: Spearman(original, randomised blocks {int(len(blocks) * first)}..) = {rho:.3f}")
    assert rho < 0.5


def test_swin_last_attention_with_padded_windows():
    model = make_swin(img=80)  # last stage 10×10 tokens, windows of 7: padded to 14×14, shifted by 3
    x = torch.randn(1, 1, 80, 80, generator=torch.Generator().manual_seed(5))
    heat = create("attention_last").explain(model, x).heatmap
    with torch.no_grad(), capture_attention(model) as record:
        model(x)
    info = [i for k, i in record.events if k == "attn"][-1]
    h, w = info["hw"]
    (sh, sw), (wh, ww) = info["shift"], info["window"]
    assert (h, w) == (10, 10) and (sh, sw) == (3, 3)
    from timm.models.swin_transformer import window_partition
    idx = torch.roll(torch.arange(h * w, dtype=torch.float32).reshape(1, h, w), (-sh, -sw), (1, 2))
    idx = F.pad(idx, (0, (ww - w % ww) % ww, 0, (wh - h % wh) % wh), value=-1)
    win = window_partition(idx.unsqueeze(-1), (wh, ww)).reshape(-1, wh * ww).long()
    fused = info["attn"].mean(1)
    received = torch.zeros(h * w)
    for wi in range(win.shape[0]):  # explicit loops: mean over the real (non-padding) queries of the window
        queries = [i for i in range(win.shape[1]) if win[wi, i] >= 0]
        for j in range(win.shape[1]):
            if win[wi, j] >= 0:
                received[win[wi, j]] = fused[wi, queries, j].mean()
    expected = F.interpolate(received.reshape(1, 1, h, w), size=(80, 80), mode="bilinear", align_corners=False)[0]
    assert torch.allclose(heat, expected, atol=1e-7)
