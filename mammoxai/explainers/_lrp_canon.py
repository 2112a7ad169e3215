"""Canonisation for LRP, always on a deep copy of the user's model (the original is never modified).

* BatchNorm directly after a convolution/linear layer is merged into it (the
  pairs are found by tracing one forward pass: the BN's input is that layer's
  output tensor); the BN then computes the identity, and its ``forward`` is
  replaced by the identity (timm's ``BatchNormAct2d``: its activation only).
* ConvNeXt layer scale (``gamma``) is merged into the last MLP layer of the block.
* Residual additions become an explicit :class:`Sum` module (on which the ``norm``
  rule splits relevance in proportion to each summand's contribution), by
  replacing the ``forward`` of the copy's blocks: timm ``BasicBlock`` /
  ``Bottleneck`` (ResNet), ``ConvBnAct`` / ``DepthwiseSeparableConv`` /
  ``InvertedResidual`` (EfficientNet/MobileNet), ``ConvNeXtBlock``, and torchvision's
  ``BasicBlock`` / ``Bottleneck``.
* Squeeze-excitation gates (``x · gate(x)``) are treated as constants: the gate is
  computed on a detached input and relevance passes through ``x`` unchanged.
* ``inplace`` is turned off everywhere.
"""

from __future__ import annotations

import copy
import types

import torch
from torch import nn


class Sum(nn.Module):
    """Adds the summands stacked on the last dimension (the explicit residual addition)."""

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.sum(dim=-1)


class _PassFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, out):  # type: ignore[override]
        return out.clone()

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        return grad, None


def _add(block: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return block.lrp_sum(torch.stack([a, b], dim=-1))


def _timm_basic(self, x):
    shortcut = x
    x = self.aa(self.act1(self.drop_block(self.bn1(self.conv1(x)))))
    x = self.bn2(self.conv2(x))
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    return self.act2(_add(self, x, shortcut))


def _timm_bottleneck(self, x):
    shortcut = x
    x = self.act1(self.bn1(self.conv1(x)))
    x = self.aa(self.act2(self.drop_block(self.bn2(self.conv2(x)))))
    x = self.bn3(self.conv3(x))
    if self.se is not None:
        x = self.se(x)
    if self.drop_path is not None:
        x = self.drop_path(x)
    if self.downsample is not None:
        shortcut = self.downsample(shortcut)
    return self.act3(_add(self, x, shortcut))


def _tv_basic(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    return self.relu(_add(self, out, identity))


def _tv_bottleneck(self, x):
    identity = x
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.downsample is not None:
        identity = self.downsample(x)
    return self.relu(_add(self, out, identity))


def _conv_bn_act(self, x):
    shortcut = x
    x = self.aa(self.bn1(self.conv(x)))
    return _add(self, self.drop_path(x), shortcut) if self.has_skip else x


def _ds_conv(self, x):
    shortcut = x
    if getattr(self, "conv_s2d", None) is not None:
        x = self.bn_s2d(self.conv_s2d(x))
    x = self.se(self.aa(self.bn1(self.conv_dw(x))))
    x = self.bn2(self.conv_pw(x))
    return _add(self, self.drop_path(x), shortcut) if self.has_skip else x


def _inverted_residual(self, x):
    shortcut = x
    if getattr(self, "conv_s2d", None) is not None:
        x = self.bn_s2d(self.conv_s2d(x))
    x = self.bn1(self.conv_pw(x))
    x = self.se(self.aa(self.bn2(self.conv_dw(x))))
    x = self.bn3(self.conv_pwl(x))
    return _add(self, self.drop_path(x), shortcut) if self.has_skip else x


def _convnext_block(self, x):
    shortcut = x
    x = self.conv_dw(x)
    if self.use_conv_mlp:
        x = self.mlp(self.norm(x))
    else:
        x = self.mlp(self.norm(x.permute(0, 2, 3, 1))).permute(0, 3, 1, 2)
    if self.gamma is not None:  # merged by canonisation; kept for safety
        x = x.mul(self.gamma.reshape(1, -1, 1, 1))
    return _add(self, self.drop_path(x), self.shortcut(shortcut))


def _gate_forward(original):
    def forward(self, x):
        return _PassFn.apply(x, original(x.detach()))
    return forward


_TIMM_BLOCKS = {
    ("timm.models.resnet", "BasicBlock"): _timm_basic,
    ("timm.models.resnet", "Bottleneck"): _timm_bottleneck,
    ("torchvision.models.resnet", "BasicBlock"): _tv_basic,
    ("torchvision.models.resnet", "Bottleneck"): _tv_bottleneck,
    ("timm.models._efficientnet_blocks", "ConvBnAct"): _conv_bn_act,
    ("timm.models._efficientnet_blocks", "DepthwiseSeparableConv"): _ds_conv,
    ("timm.models._efficientnet_blocks", "InvertedResidual"): _inverted_residual,
    ("timm.models.convnext", "ConvNeXtBlock"): _convnext_block,
}
GATE_TYPES = frozenset({"SqueezeExcite", "SEModule", "EffectiveSEModule"})


def _merge_into(layer: nn.Module, scale: torch.Tensor, shift: torch.Tensor) -> None:
    """``layer``'s output becomes ``layer(x)·scale + shift`` (per output channel)."""
    weight = layer.weight.detach()
    shape = (-1,) + (1,) * (weight.ndim - 1)
    bias = layer.bias.detach() if layer.bias is not None else torch.zeros_like(scale)
    layer.weight = nn.Parameter(weight * scale.reshape(shape), requires_grad=False)
    layer.bias = nn.Parameter(bias * scale + shift, requires_grad=False)


def _merge_batchnorms(model: nn.Module, sample: torch.Tensor) -> int:
    outputs: dict[int, nn.Module] = {}
    keep: list[torch.Tensor] = []
    pairs: list[tuple[nn.Module, nn.modules.batchnorm._BatchNorm]] = []
    handles = []

    def layer_hook(mod, _inputs, output):
        keep.append(output)
        outputs[id(output)] = mod

    def bn_hook(mod, inputs):
        layer = outputs.get(id(inputs[0]))
        if layer is not None and all(p is not mod for _, p in pairs):
            pairs.append((layer, mod))

    try:
        for module in model.modules():
            if isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)):
                handles.append(module.register_forward_hook(layer_hook))
            elif isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats:
                handles.append(module.register_forward_pre_hook(bn_hook))
        with torch.no_grad():
            model(sample)
    finally:
        for handle in handles:
            handle.remove()
    merged = 0
    with torch.no_grad():
        for layer, bn in pairs:
            if list(bn.children()) and not type(bn).__name__ == "BatchNormAct2d":
                continue
            std = torch.sqrt(bn.running_var + bn.eps)
            gamma = bn.weight.detach() if bn.weight is not None else torch.ones_like(std)
            beta = bn.bias.detach() if bn.bias is not None else torch.zeros_like(std)
            scale = gamma / std
            _merge_into(layer, scale, beta - bn.running_mean * scale)
            bn.running_mean.zero_()
            bn.running_var.fill_(1.0 - bn.eps)
            if bn.weight is not None:
                bn.weight.fill_(1.0)
            if bn.bias is not None:
                bn.bias.zero_()
            bn.lrp_merged = True
            # it now computes the identity (and BatchNormAct2d its activation): skip the arithmetic, forward and
            # backward (its backward would otherwise run under every merged layer's relevance)
            bn.forward = types.MethodType(_act_only if type(bn).__name__ == "BatchNormAct2d" else _identity, bn)
            merged += 1
    return merged


def _identity(self, x):
    return x


def _act_only(self, x):
    return self.act(self.drop(x))


def canonize(model: nn.Module, sample: torch.Tensor) -> nn.Module:
    """A canonised deep copy of ``model`` (eval, no parameter gradients) for LRP; ``sample`` is traced once."""
    model_copy = copy.deepcopy(model).eval()
    for param in model_copy.parameters():
        param.requires_grad_(False)
    for module in model_copy.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    for module in list(model_copy.modules()):
        key = (type(module).__module__, type(module).__name__)
        if key in _TIMM_BLOCKS:
            if key[1] == "ConvNeXtBlock" and module.gamma is not None:
                fc2 = module.mlp.fc2
                with torch.no_grad():
                    gamma = module.gamma.detach()
                    _merge_into(fc2, gamma, torch.zeros_like(gamma))
                module.gamma = None
            module.lrp_sum = Sum()
            module.forward = types.MethodType(_TIMM_BLOCKS[key], module)
        elif type(module).__name__ in GATE_TYPES:
            module.forward = types.MethodType(_gate_forward(module.forward), module)
    _merge_batchnorms(model_copy, sample)
    return model_copy
