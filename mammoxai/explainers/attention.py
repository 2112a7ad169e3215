"""Attention maps of vision transformers: attention rollout and last-block attention (ViT and Swin).

timm computes attention with ``F.scaled_dot_product_attention`` when an
attention module's ``fused_attn`` flag is set, and then the attention matrix
never exists. :func:`capture_attention` switches every attention module to its
explicit path for one forward pass (``fused_attn = False``), records the
softmaxed matrix at the input of ``attn_drop`` (identity in eval mode), and
restores the flags afterwards, whatever happens.

Supported: timm ViT-style models (``patch_embed`` + ``Attention`` blocks over
``num_prefix_tokens`` + grid tokens, e.g. ViT, DeiT) and timm Swin (v1,
``SwinTransformerBlock`` windows with shifts, ``PatchMerging``). The token grid
is derived from the input size and the patch size of each forward pass.
CNNs raise :class:`ExplainerNotApplicable`.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .base import Explainer, ExplainerError, ExplainerNotApplicable, register

__all__ = ["AttentionRollout", "AttentionLast", "AttentionRecord", "capture_attention", "attention_modules",
           "architecture", "fuse_heads", "vit_rollout", "swin_rollout"]

HEAD_FUSIONS = ("mean", "max", "min")


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """timm attention modules: those with a ``fused_attn`` flag, a ``qkv`` projection and ``attn_drop``."""
    return [m for m in model.modules()
            if hasattr(m, "fused_attn") and hasattr(m, "attn_drop") and hasattr(m, "qkv")]


def _swin_classes() -> tuple[type, type] | None:
    try:
        from timm.models.swin_transformer import PatchMerging, SwinTransformerBlock
    except Exception:  # noqa: BLE001 - timm missing or changed: Swin simply is not recognised
        return None
    return SwinTransformerBlock, PatchMerging


def architecture(model: nn.Module) -> str:
    """``"swin"``, ``"vit"``, or ``"none"`` (no attention blocks); ``"unsupported"`` for other attention models."""
    mods = attention_modules(model)
    if not mods:
        return "none"
    classes = _swin_classes()
    if classes is not None and any(isinstance(m, classes[0]) for m in model.modules()):
        return "swin"
    embed = getattr(model, "patch_embed", None)
    if embed is not None and hasattr(embed, "patch_size") and hasattr(model, "blocks"):
        return "vit"
    return "unsupported"


@dataclass
class AttentionRecord:
    """What one forward pass left: attention matrices in call order, and Swin layout events.

    ``events`` holds, in forward order, ``("attn", info)`` with ``info["attn"]`` the
    ``(B·windows, heads, T, T)`` softmax matrix (and for Swin ``hw``, ``shift``, ``window``),
    and for Swin ``("merge", {"hw": (H, W)})`` for each patch merging of an ``H×W`` grid.
    """

    events: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    @property
    def attentions(self) -> list[torch.Tensor]:
        return [info["attn"] for kind, info in self.events if kind == "attn"]


@contextlib.contextmanager
def capture_attention(model: nn.Module) -> Iterator[AttentionRecord]:
    """Within this context, forwards of ``model`` record every attention matrix (non-fused path).

    Sets ``fused_attn = False`` on all :func:`attention_modules` and hooks their
    ``attn_drop``; on exit the hooks are removed and every flag is restored.
    """
    record = AttentionRecord()
    mods = attention_modules(model)
    saved = [m.fused_attn for m in mods]
    handles = []
    pending: dict[int, dict[str, Any]] = {}

    def on_attn(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        info = pending.pop(id(module), None)
        if info is None:
            info = {}
            record.events.append(("attn", info))
        info["attn"] = args[0].detach()

    classes = _swin_classes()
    try:
        for m in mods:
            m.fused_attn = False
            handles.append(m.attn_drop.register_forward_hook(
                lambda mod, args, out, owner=m: on_attn(owner, args, out)))
        if classes is not None:
            block_cls, merge_cls = classes
            for blk in model.modules():
                if isinstance(blk, block_cls):
                    def pre_block(mod: nn.Module, args: tuple) -> None:
                        x = args[0]
                        info = {"hw": (int(x.shape[1]), int(x.shape[2])), "shift": tuple(mod.shift_size),
                                "window": tuple(mod.window_size)}
                        pending[id(mod.attn)] = info
                        record.events.append(("attn", info))
                    handles.append(blk.register_forward_pre_hook(pre_block))
                elif isinstance(blk, merge_cls):
                    def pre_merge(mod: nn.Module, args: tuple) -> None:
                        x = args[0]
                        record.events.append(("merge", {"hw": (int(x.shape[1]), int(x.shape[2]))}))
                    handles.append(blk.register_forward_pre_hook(pre_merge))
        yield record
    finally:
        for h in handles:
            h.remove()
        for m, flag in zip(mods, saved):
            m.fused_attn = flag


def fuse_heads(attn: torch.Tensor, head_fusion: str) -> torch.Tensor:
    """Fuse ``(..., heads, T, T)`` attention over heads by ``mean``, ``max`` or ``min``."""
    if head_fusion == "mean":
        return attn.mean(dim=-3)
    if head_fusion == "max":
        return attn.amax(dim=-3)
    if head_fusion == "min":
        return attn.amin(dim=-3)
    raise ValueError(f"head_fusion must be one of {HEAD_FUSIONS}, got {head_fusion!r}")


def _rollout_matrix(attn: torch.Tensor, head_fusion: str, discard_ratio: float, keep_first: bool) -> torch.Tensor:
    """``(B, heads, T, T)`` → the rollout step ``(Â + I)/2`` row-normalised, with the lowest
    ``discard_ratio`` of each matrix's entries zeroed (entry (0,0) kept when ``keep_first``,
    the diagonal kept otherwise), as in Abnar & Zuidema 2020 / jacobgil's implementation."""
    fused = fuse_heads(attn.float(), head_fusion)
    b, t, _ = fused.shape
    eye = torch.eye(t, device=fused.device, dtype=fused.dtype)
    if discard_ratio > 0:
        flat = fused.reshape(b, -1).clone()
        k = int(flat.shape[1] * discard_ratio)
        if k > 0:
            _, idx = flat.topk(k, dim=1, largest=False)
            drop = torch.zeros_like(flat, dtype=torch.bool).scatter_(1, idx, True)
            if keep_first:
                drop[:, 0] = False
            else:
                drop &= ~eye.bool().reshape(1, -1)
            flat = flat.masked_fill(drop, 0.0)
        fused = flat.reshape(b, t, t)
    a = (fused + eye) / 2
    return a / a.sum(dim=-1, keepdim=True)


def vit_rollout(attentions: list[torch.Tensor], num_prefix: int, grid: tuple[int, int], use_cls: bool,
                head_fusion: str = "mean", discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout of a ViT: ``(B, gh, gw)`` relevance of the patch tokens.

    ``R = Â_L ⋯ Â_1`` with ``Â`` from :func:`_rollout_matrix`; the map is the CLS row of ``R``
    (``use_cls``) or the mean of the patch-token rows (average-pooled models), restricted
    to the patch columns. Computed as vector–matrix products from the top, which equals
    the matrix product's row without forming ``R``.
    """
    b, _, n, _ = attentions[-1].shape
    device = attentions[-1].device
    v = torch.zeros(b, n, device=device)
    if use_cls:
        v[:, 0] = 1.0
    else:
        v[:, num_prefix:] = 1.0 / (n - num_prefix)
    for attn in reversed(attentions):
        a = _rollout_matrix(attn, head_fusion, discard_ratio, keep_first=True)
        v = torch.einsum("bi,bij->bj", v, a)
    return v[:, num_prefix:].reshape(b, grid[0], grid[1])


def _to_windows(v: torch.Tensor, hw: tuple[int, int], shift: tuple[int, int],
                window: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
    """``(B, H, W)`` grid values → ``(B·nW, T)`` in the shifted, padded window layout of a Swin block."""
    from timm.models.swin_transformer import window_partition
    h, w = hw
    if any(shift):
        v = torch.roll(v, shifts=(-shift[0], -shift[1]), dims=(1, 2))
    ph = (window[0] - h % window[0]) % window[0]
    pw = (window[1] - w % window[1]) % window[1]
    v = F.pad(v, (0, pw, 0, ph))
    return window_partition(v.unsqueeze(-1), window).reshape(-1, window[0] * window[1]), (h + ph, w + pw)


def _from_windows(vw: torch.Tensor, hw: tuple[int, int], padded: tuple[int, int], shift: tuple[int, int],
                  window: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`_to_windows`: padded tokens are dropped."""
    from timm.models.swin_transformer import window_reverse
    v = window_reverse(vw.reshape(-1, window[0], window[1], 1), window, padded[0], padded[1])[..., 0]
    v = v[:, :hw[0], :hw[1]]
    if any(shift):
        v = torch.roll(v, shifts=(shift[0], shift[1]), dims=(1, 2))
    return v


def swin_rollout(record: AttentionRecord, batch: int, head_fusion: str = "mean",
                 discard_ratio: float = 0.0) -> torch.Tensor:
    """Attention rollout through a Swin transformer: ``(B, gh, gw)`` on the first stage's token grid.

    Starts from the average pooling of the last stage (uniform over its tokens) and
    propagates backwards: through each block by ``Â = (A + I)/2`` row-normalised within
    each (shifted, padded) window — relevance reaching padding tokens is dropped — and
    through each patch merging by sharing a merged token's relevance equally among its
    2×2 source tokens. Equals the row of the dense product of the full-grid matrices.
    """
    events = record.events
    last_hw = None
    for kind, info in reversed(events):
        if kind == "attn":
            last_hw = info["hw"]
            break
    if last_hw is None:
        raise ExplainerError("attention_rollout", "no Swin block ran")
    device = record.attentions[-1].device
    v = torch.full((batch, *last_hw), 1.0 / (last_hw[0] * last_hw[1]), device=device)
    for kind, info in reversed(events):
        if kind == "attn":
            a = _rollout_matrix(info["attn"], head_fusion, discard_ratio, keep_first=False)
            vw, padded = _to_windows(v, info["hw"], info["shift"], info["window"])
            vw = torch.einsum("wi,wij->wj", vw, a)
            v = _from_windows(vw, info["hw"], padded, info["shift"], info["window"])
        else:
            h, w = info["hw"]
            v = v.repeat_interleave(2, dim=1).repeat_interleave(2, dim=2)[:, :h, :w] / 4.0
    return v


def _upsample(grid_map: torch.Tensor, patch: tuple[int, int], size: tuple[int, int]) -> torch.Tensor:
    """``(B, gh, gw)`` → ``(B, H, W)``: bilinear over the patches' extent, zero outside it, cropped to ``size``."""
    b, gh, gw = grid_map.shape
    up = F.interpolate(grid_map.unsqueeze(1).float(), size=(gh * patch[0], gw * patch[1]), mode="bilinear",
                       align_corners=False)[:, 0]
    h, w = size
    up = up[:, :h, :w]
    return F.pad(up, (0, w - up.shape[2], 0, h - up.shape[1]))


def _vit_layout(model: nn.Module, batch: torch.Tensor, tokens: int, method: str) -> tuple[int, tuple[int, int],
                                                                                             tuple[int, int], bool]:
    patch = tuple(int(p) for p in model.patch_embed.patch_size)  # type: ignore[union-attr]
    prefix = int(getattr(model, "num_prefix_tokens", 1 if getattr(model, "cls_token", None) is not None else 0))
    h, w = batch.shape[2], batch.shape[3]
    for grid in ((h // patch[0], w // patch[1]), (math.ceil(h / patch[0]), math.ceil(w / patch[1]))):
        if prefix + grid[0] * grid[1] == tokens:
            break
    else:
        raise ExplainerError(method, f"{tokens} tokens do not match a {h}×{w} input with patch {patch} "
                                     f"and {prefix} prefix token(s)")
    use_cls = getattr(model, "global_pool", "token") == "token" and getattr(model, "cls_token", None) is not None
    return prefix, grid, patch, use_cls  # type: ignore[return-value]


class _AttentionExplainer(Explainer):
    family = "attention"

    def _validate(self) -> None:
        if self.params["head_fusion"] not in HEAD_FUSIONS:
            raise ValueError(f"explainer {self.name!r}: head_fusion must be one of {HEAD_FUSIONS}")

    def check_applicable(self, model: nn.Module) -> None:
        kind = architecture(model)
        if kind == "none":
            raise ExplainerNotApplicable(self.name, "model has no attention blocks")
        if kind == "unsupported":
            raise ExplainerNotApplicable(self.name, "attention model is neither a timm ViT nor a timm Swin")

    def _capture(self, model: nn.Module, batch: torch.Tensor) -> AttentionRecord:
        with torch.no_grad(), capture_attention(model) as record:
            model(batch)
        if not record.attentions:
            raise ExplainerError(self.name, "no attention matrix was recorded")
        return record


@register
class AttentionRollout(_AttentionExplainer):
    """Attention rollout (Abnar & Zuidema 2020) for ViT and Swin; see :func:`vit_rollout`, :func:`swin_rollout`.

    ``head_fusion``: mean/max/min over heads; ``discard_ratio``: fraction of the lowest
    attention entries of each block zeroed before rollout. Class-agnostic (the target
    does not change the map). Unsigned.
    """

    name = "attention_rollout"
    display_name = "Attention rollout"
    code = "ATTRO"
    series_slot = 19
    defaults = {"head_fusion": "mean", "discard_ratio": 0.0}

    def _validate(self) -> None:
        super()._validate()
        if not 0.0 <= self.params["discard_ratio"] < 1.0:
            raise ValueError(f"explainer {self.name!r}: discard_ratio must be in [0, 1)")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        record = self._capture(model, batch)
        size = (batch.shape[2], batch.shape[3])
        fusion, discard = self.params["head_fusion"], self.params["discard_ratio"]
        if architecture(model) == "swin":
            grid_map = swin_rollout(record, batch.shape[0], fusion, discard)
            patch = tuple(int(p) for p in model.patch_embed.patch_size)  # type: ignore[union-attr]
        else:
            prefix, grid, patch, use_cls = _vit_layout(model, batch, record.attentions[-1].shape[-1], self.name)
            grid_map = vit_rollout(record.attentions, prefix, grid, use_cls, fusion, discard)
        return _upsample(grid_map, patch, size)  # type: ignore[arg-type]


@register
class AttentionLast(_AttentionExplainer):
    """Attention of the last block, heads fused by ``head_fusion``.

    ViT: the CLS token's attention to each patch token (models pooled by averaging,
    without a CLS readout: the mean attention each patch token receives from the patch
    tokens). Swin has no CLS token: the map is the mean attention each token receives
    from the other tokens of its window in the last block (of the last stage), placed
    back on that stage's grid (undoing the window shift and padding) and upsampled.
    Class-agnostic; unsigned.
    """

    name = "attention_last"
    display_name = "Last-block attention"
    code = "ATTLAST"
    series_slot = 24
    defaults = {"head_fusion": "mean"}

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        record = self._capture(model, batch)
        size = (batch.shape[2], batch.shape[3])
        fusion = self.params["head_fusion"]
        if architecture(model) == "swin":
            info = [i for k, i in record.events if k == "attn"][-1]
            fused = fuse_heads(info["attn"].float(), fusion)  # (B·nW, T, T)
            ones = torch.ones(batch.shape[0], *info["hw"], device=fused.device)
            valid, _ = _to_windows(ones, info["hw"], info["shift"], info["window"])  # padding tokens: 0
            received = (fused * valid[:, :, None]).sum(dim=1) / valid.sum(dim=1, keepdim=True).clamp(min=1.0)
            window = info["window"]
            ph = (window[0] - info["hw"][0] % window[0]) % window[0]
            pw = (window[1] - info["hw"][1] % window[1]) % window[1]
            padded = (info["hw"][0] + ph, info["hw"][1] + pw)
            grid_map = _from_windows(received, info["hw"], padded, info["shift"], window)
            embed_patch = tuple(int(p) for p in model.patch_embed.patch_size)  # type: ignore[union-attr]
            scale = 2 ** sum(1 for k, _ in record.events if k == "merge")
            return _upsample(grid_map, (embed_patch[0] * scale, embed_patch[1] * scale), size)
        attn = record.attentions[-1]
        prefix, grid, patch, use_cls = _vit_layout(model, batch, attn.shape[-1], self.name)
        fused = fuse_heads(attn.float(), fusion)
        if use_cls:
            row = fused[:, 0, prefix:]
        else:
            row = fused[:, prefix:, prefix:].mean(dim=1)
        return _upsample(row.reshape(-1, grid[0], grid[1]), patch, size)
