"""Target-layer discovery for activation-based explainers (CAM family, and token-grid maps of transformers).

A :class:`TargetLayer` names a module of the model whose output is a spatial
feature map, and knows how to turn that output into an ``(N, C, h, w)`` grid:

* CNNs (timm ResNet, EfficientNet, ConvNeXt, ...): ``"auto"`` picks the last
  module, in execution order, whose output is a 4-D ``N×C×h×w`` map; among the
  modules that return that very tensor the outermost is named (``layer4`` for a
  ResNet, ``bn2`` — the activated ``conv_head`` output — for an EfficientNet,
  ``stages`` for a ConvNeXt).
* Transformers (anything with a ``patch_embed``): ViT-like models (token
  sequences ``N×T×C`` with ``num_prefix_tokens`` class/register tokens) use the
  input of the last block's attention (``blocks.-1.norm1``), because with
  class-token pooling the patch tokens of the last block's output receive no
  gradient; Swin-like models (``output_fmt == "NHWC"``) use the last stage
  (``layers.-1``, ``N×h×w×C``). The token grid size is derived from the input size
  and the patch size (``H // ph``, ``W // pw``), never hard-coded.

Explicit names are dotted module paths as in ``model.named_modules()``; a
negative integer component indexes from the end (``"blocks.-1"``,
``"stages[-1]"`` is accepted too).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

__all__ = [
    "FeatureRecorder", "TargetLayer", "find_module", "is_token_model", "token_grid_size", "tokens_to_grid",
    "resolve_target_layer", "auto_target_name",
]


@dataclass
class TargetLayer:
    """A module whose output is read as a feature grid.

    ``to_grid(output)`` maps the module's output to ``(N, C, h, w)``; it is
    linear (a reshape/permute/slice), so it maps the gradient of the output the
    same way.
    """

    name: str
    module: nn.Module
    to_grid: Callable[[torch.Tensor], torch.Tensor]


def find_module(model: nn.Module, name: str) -> nn.Module:
    """The sub-module of ``model`` at dotted path ``name`` (negative indices count from the end).

    Raises ``KeyError`` naming the first component that does not exist.
    """
    path = re.sub(r"\[(-?\d+)\]", r".\1", name).strip(".")
    module = model
    walked: list[str] = []
    for part in [p for p in path.split(".") if p]:
        children = dict(module.named_children())
        if part in children:
            module = children[part]
        elif re.fullmatch(r"-?\d+", part) and isinstance(module, (nn.Sequential, nn.ModuleList)):
            idx = int(part)
            if not -len(module) <= idx < len(module):
                raise KeyError(f"module {'.'.join(walked) or '<model>'} has no index {idx}")
            module = module[idx]
        else:
            raise KeyError(f"no module {part!r} under {'.'.join(walked) or '<model>'}")
        walked.append(part)
    return module


def is_token_model(model: nn.Module) -> bool:
    """True for patch-embedding transformers (timm ViT/DeiT/Swin/...): they have a ``patch_embed``."""
    return any(name.split(".")[-1] == "patch_embed" for name, _ in model.named_modules())


def _patch_embed(model: nn.Module) -> nn.Module | None:
    for name, module in model.named_modules():
        if name.split(".")[-1] == "patch_embed":
            return module
    return None


def token_grid_size(model: nn.Module, input_hw: tuple[int, int]) -> tuple[int, int]:
    """Token grid ``(h, w)`` of a patch transformer for an input of size ``input_hw``.

    ``h = H // ph`` and ``w = W // pw`` with the patch size of the model's
    ``patch_embed`` (rounded up when the embedding pads dynamically).
    """
    embed = _patch_embed(model)
    if embed is None:
        raise ValueError("model has no patch_embed: it has no token grid")
    patch = getattr(embed, "patch_size", None)
    if patch is None:
        raise ValueError("patch_embed has no patch_size")
    ph, pw = (patch, patch) if isinstance(patch, int) else (int(patch[0]), int(patch[1]))
    height, width = input_hw
    if getattr(embed, "dynamic_img_pad", False):
        return -(-height // ph), -(-width // pw)
    return height // ph, width // pw


def tokens_to_grid(tokens: torch.Tensor, grid_hw: tuple[int, int]) -> torch.Tensor:
    """``(N, T, C)`` tokens -> ``(N, C, h, w)``; the first ``T - h·w`` (prefix) tokens are dropped."""
    height, width = grid_hw
    count = tokens.shape[1] - height * width
    if count < 0:
        raise ValueError(f"{tokens.shape[1]} tokens cannot fill a {height}×{width} grid")
    grid = tokens[:, count:, :]
    return grid.reshape(tokens.shape[0], height, width, tokens.shape[2]).permute(0, 3, 1, 2)


def _grid_converter(model: nn.Module, sample: torch.Tensor, input_hw: tuple[int, int], name: str
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    nhwc = getattr(model, "output_fmt", "NCHW") == "NHWC"
    if sample.ndim == 4:
        if nhwc:
            return lambda out: out.permute(0, 3, 1, 2)
        return lambda out: out
    if sample.ndim == 3 and is_token_model(model):
        grid = token_grid_size(model, input_hw)
        if sample.shape[1] < grid[0] * grid[1]:
            raise ValueError(f"layer {name} has {sample.shape[1]} tokens, fewer than the "
                             f"{grid[0]}×{grid[1]} patch grid of a {input_hw[0]}×{input_hw[1]} input")
        return lambda out: tokens_to_grid(out, grid)
    raise ValueError(f"layer {name} outputs shape {tuple(sample.shape)}: not a feature map or token grid")


def auto_target_name(model: nn.Module, batch: torch.Tensor) -> str:
    """The module name ``"auto"`` resolves to for ``model`` on inputs shaped like ``batch`` (see module doc)."""
    if is_token_model(model):  # decided from the architecture: ``batch`` is not run
        if getattr(model, "output_fmt", "NCHW") == "NHWC" and hasattr(model, "layers"):
            return f"layers.{len(model.layers) - 1}"
        blocks = getattr(model, "blocks", None)
        if isinstance(blocks, (nn.Sequential, nn.ModuleList)) and len(blocks) and hasattr(blocks[-1], "norm1"):
            return f"blocks.{len(blocks) - 1}.norm1"
        raise ValueError("transformer without blocks[-1].norm1 or an NHWC layers[-1]: name target_layer")
    with FeatureRecorder(model, "auto", (batch.shape[2], batch.shape[3])) as recorder, torch.no_grad():
        model(batch[:1])
    return recorder.result()[0].name


class FeatureRecorder:
    """Context manager: during the forward passes run inside it, record the target layer's output.

    Resolving ``"auto"`` on a CNN needs no extra forward pass: every module's
    output is watched during the caller's own pass, and the choice (see the
    module doc) is made afterwards in :meth:`result`. Hooks are removed on exit,
    even on error.
    """

    def __init__(self, model: nn.Module, spec: str, input_hw: tuple[int, int]) -> None:
        self.model = model
        self.input_hw = input_hw
        self._watch_all = spec == "auto" and not is_token_model(model)
        self.name = "" if self._watch_all else (auto_target_name(model, torch.empty(0)) if spec == "auto" else spec)
        self._module = None if self._watch_all else find_module(model, self.name)
        self._last: torch.Tensor | None = None
        self._names: list[str] = []
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def __enter__(self) -> "FeatureRecorder":
        self._last, self._names = None, []
        try:
            if self._watch_all:
                for name, module in self.model.named_modules():
                    if name and not isinstance(module, nn.Identity):
                        self._handles.append(module.register_forward_hook(self._hook(name)))
            else:
                assert self._module is not None
                self._handles.append(self._module.register_forward_hook(self._hook(self.name)))
        except BaseException:
            self._remove()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self._remove()

    def _remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _hook(self, name: str):
        def hook(module: nn.Module, _inputs, output) -> None:
            if not isinstance(output, torch.Tensor):
                return
            if self._watch_all:
                # a CNN feature map: 4-D with more than one position (pooled N×C×1×1 maps are skipped)
                if output.ndim != 4 or output.shape[2] * output.shape[3] <= 1:
                    return
                if self._last is not None and output is self._last:
                    self._names.append(name)
                else:
                    self._last, self._names = output, [name]
            elif self._last is None:
                self._last, self._names = output, [name]
        return hook

    def result(self) -> tuple[TargetLayer, torch.Tensor]:
        """The resolved layer and its (raw) output from the last recorded pass; clears the record."""
        try:
            if self._last is None:
                raise ValueError("model has no convolutional layer or token grid" if self._watch_all
                                 else f"layer {self.name} produced no tensor in the forward pass")
            if self._watch_all:
                name = min(self._names, key=lambda n: (n.count("."), len(n)))
                module = find_module(self.model, name)
            else:
                name, module = self.name, self._module
            assert module is not None
            to_grid = _grid_converter(self.model, self._last, self.input_hw, name)
            return TargetLayer(name=name, module=module, to_grid=to_grid), self._last
        finally:
            self._last, self._names = None, []


def resolve_target_layer(model: nn.Module, spec: str, batch: torch.Tensor) -> TargetLayer:
    """Resolve ``spec`` (``"auto"`` or a module name) into a :class:`TargetLayer` for inputs like ``batch``.

    Runs one no-grad forward pass of ``batch[:1]`` (use :class:`FeatureRecorder`
    to resolve during a pass of your own). Raises ``ValueError`` (no spatial
    layer / bad output shape) or ``KeyError`` (unknown name).
    """
    with FeatureRecorder(model, spec, (batch.shape[2], batch.shape[3])) as recorder, torch.no_grad():
        model(batch[:1])
    layer, _output = recorder.result()
    return layer
