"""Class-activation-map explainers: CAM, Grad-CAM, Grad-CAM++, HiResCAM, XGrad-CAM, Layer-CAM, Score-CAM,
Eigen-CAM and Guided Grad-CAM.

The formulas follow pytorch-grad-cam 1.5.7 (the reference the tests compare
against). Every map is computed on the target layer's grid, passed through a
ReLU, upsampled bilinearly (``align_corners=False``) to the input size and
**normalised per image to [0, 1]** (``(m − min) / (max − min + 1e-7)``), as
pytorch-grad-cam's ``scale_cam_image``. Guided Grad-CAM is the exception: the
signed guided-backprop gradient (channel sum) times the normalised Grad-CAM map.

Target layer: parameter ``target_layer`` (``"auto"`` or a module name), resolved
by :mod:`mammoxai.explainers._targets` — the last stage of a CNN, or the token
grid of a ViT/Swin (grid size from the input and patch sizes).

Sharing: inside :func:`~mammoxai.explainers.base.shared_passes` (e.g.
:func:`~mammoxai.explainers.base.run_explainers`), Grad-CAM, Grad-CAM++,
HiResCAM, XGrad-CAM, Layer-CAM and Guided Grad-CAM use **one** forward pass (with
an ordinary and a guided backward); Eigen-CAM and Score-CAM reuse its
activations when present. The score is the raw target logit.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from ._grad_hooks import SwitchState, has_activation, modified_backward
from ._targets import FeatureRecorder, is_token_model
from .base import Explainer, ExplainerNotApplicable, register, shared_cache

__all__ = [
    "CamPass", "cam_pass", "finish_cam", "CAM", "GradCAM", "GradCAMPlusPlus", "HiResCAM", "XGradCAM", "LayerCAM",
    "ScoreCAM", "EigenCAM", "GuidedGradCAM",
]


@dataclass
class CamPass:
    """Result of one forward/backward: target-layer activations and gradients as ``(N, C, h, w)`` float32.

    ``guided`` is the guided-backprop input gradient ``(N, C, H, W)`` when computed.
    """

    layer: str
    activations: torch.Tensor
    gradients: torch.Tensor | None
    guided: torch.Tensor | None


def _autocast_on() -> bool:
    return torch.is_autocast_enabled("cuda") if torch.cuda.is_available() else False


def _lookup(kind: str, model: nn.Module, batch: torch.Tensor, target: torch.Tensor | None, spec: str
            ) -> tuple[list[Any] | None, CamPass | None, bool]:
    cache = shared_cache()
    if cache is None:
        return None, None, False
    entries = cache.setdefault(("cam_pass", id(model), spec, _autocast_on()), [])
    for stored_batch, stored_target, result in entries:
        if stored_batch.shape == batch.shape and torch.equal(stored_batch, batch) and (
                target is None or (stored_target is not None and torch.equal(stored_target, target))):
            if kind == "activations" or result.gradients is not None:
                return entries, result, True
    return entries, None, True


def cam_pass(model: nn.Module, batch: torch.Tensor, target: torch.Tensor | None, spec: str = "auto",
             need_guided: bool = False) -> CamPass:
    """Forward ``batch`` once and return the target layer's activations (and gradients of the target logit).

    ``target=None`` skips the backward (activations only, under ``no_grad``).
    Inside :func:`shared_passes` results are memoised per (model, layer, batch,
    target), and the guided backward is always added so Guided Grad-CAM can
    share the pass. Raises ``ValueError``/``KeyError`` for a bad target layer.
    """
    kind = "activations" if target is None else "gradients"
    entries, found, shared = _lookup(kind, model, batch, target, spec)
    if found is not None and (not need_guided or found.guided is not None or not has_activation(model)):
        return found
    hw = (batch.shape[2], batch.shape[3])
    if target is None:
        with FeatureRecorder(model, spec, hw) as recorder, torch.no_grad():
            model(batch)
        layer, out = recorder.result()
        result = CamPass(layer.name, layer.to_grid(out).float(), None, None)
    else:
        use_guided = (need_guided or shared) and has_activation(model)
        state = SwitchState(guided=False)
        x = batch.detach().requires_grad_(use_guided)
        backward_ctx = modified_backward(model, "switch", state) if use_guided else contextlib.nullcontext()
        with backward_ctx, FeatureRecorder(model, spec, hw) as recorder, torch.enable_grad():
            logits = model(x)
            layer, out = recorder.result()
            score = logits.gather(1, target.reshape(-1, 1)).sum()
            (grad_out,) = torch.autograd.grad(score, out, retain_graph=use_guided)
            guided = None
            if use_guided:
                state.guided = True
                (guided,) = torch.autograd.grad(score, x)
                guided = guided.detach().float()
        result = CamPass(layer.name, layer.to_grid(out.detach()).float(), layer.to_grid(grad_out).float(), guided)
        del logits, score, out, grad_out
    if entries is not None:
        entries.append((batch.detach(), None if target is None else target.detach(), result))
    return result


def finish_cam(cam: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, h, w)`` -> ReLU, bilinear upsampling to ``size``, per-image min-max normalisation to [0, 1]."""
    cam = F.relu(cam.float())
    cam = F.interpolate(cam[:, None], size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = cam.reshape(cam.shape[0], -1)
    flat = flat - flat.amin(dim=1, keepdim=True)
    flat = flat / (flat.amax(dim=1, keepdim=True) + 1e-7)
    return flat.reshape(cam.shape)


class _CamExplainer(Explainer):
    family: ClassVar[str] = "cam"
    signed = False
    tolerates_autocast = True
    defaults: ClassVar[Mapping[str, Any]] = {"target_layer": "auto"}

    def check_applicable(self, model: nn.Module) -> None:
        if self.params["target_layer"] != "auto":
            return
        if is_token_model(model):
            return
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            raise ExplainerNotApplicable(self.name, "model has no convolutional layer or token grid")

    def _pass(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor | None,
              need_guided: bool = False) -> CamPass:
        try:
            return cam_pass(model, batch, target, self.params["target_layer"], need_guided)
        except (KeyError, ValueError) as exc:
            raise ExplainerNotApplicable(self.name, str(exc).strip("'\"")) from exc


class _GradCamFamily(_CamExplainer):
    def _weighted(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        """``(N, h, w)`` map before ReLU/upsampling."""
        raise NotImplementedError

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        passed = self._pass(model, batch, target)
        assert passed.gradients is not None
        return finish_cam(self._weighted(passed.activations, passed.gradients), (batch.shape[2], batch.shape[3]))


@register
class GradCAM(_GradCamFamily):
    """Grad-CAM (Selvaraju et al. 2017): channel weights = spatial mean of the gradient."""

    name = "gradcam"
    display_name = "Grad-CAM"
    code = "GCAM"
    series_slot = 6

    def _weighted(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(dim=1)


@register
class GradCAMPlusPlus(_GradCamFamily):
    """Grad-CAM++ (Chattopadhay et al. 2018), with pytorch-grad-cam's closed form (exponential-free)."""

    name = "gradcam_pp"
    display_name = "Grad-CAM++"
    code = "GCAMPP"
    series_slot = 7

    def _weighted(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        g2 = gradients ** 2
        g3 = g2 * gradients
        sum_act = activations.sum(dim=(2, 3), keepdim=True)
        aij = g2 / (2 * g2 + sum_act * g3 + 1e-6)
        aij = torch.where(gradients != 0, aij, torch.zeros_like(aij))
        weights = (gradients.clamp(min=0) * aij).sum(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(dim=1)


@register
class HiResCAM(_GradCamFamily):
    """HiResCAM (Draelos & Carin 2020): elementwise gradient × activation, summed over channels."""

    name = "hirescam"
    display_name = "HiResCAM"
    code = "HRCAM"
    series_slot = 8

    def _weighted(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (gradients * activations).sum(dim=1)


@register
class XGradCAM(_GradCamFamily):
    """XGrad-CAM (Fu et al. 2020): weights = Σ (g·A) / Σ A per channel."""

    name = "xgradcam"
    display_name = "XGrad-CAM"
    code = "XGCAM"
    series_slot = 9

    def _weighted(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        sum_act = activations.sum(dim=(2, 3), keepdim=True)
        weights = (gradients * activations / (sum_act + 1e-7)).sum(dim=(2, 3), keepdim=True)
        return (weights * activations).sum(dim=1)


@register
class LayerCAM(_GradCamFamily):
    """Layer-CAM (Jiang et al. 2021): Σ_c ReLU(g) · A."""

    name = "layercam"
    display_name = "Layer-CAM"
    code = "LCAM"
    series_slot = 10

    def _weighted(self, activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
        return (gradients.clamp(min=0) * activations).sum(dim=1)


@register
class GuidedGradCAM(_GradCamFamily):
    """Guided Grad-CAM (Selvaraju et al. 2017): guided-backprop gradient (channel sum) × Grad-CAM in [0, 1]."""

    name = "guided_gradcam"
    display_name = "Guided Grad-CAM"
    code = "GGCAM"
    series_slot = 13
    signed = True

    def check_applicable(self, model: nn.Module) -> None:
        super().check_applicable(model)
        if not has_activation(model):
            raise ExplainerNotApplicable(self.name, "model has no activation module for guided backpropagation")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        passed = self._pass(model, batch, target, need_guided=True)
        assert passed.gradients is not None and passed.guided is not None
        cam = finish_cam(GradCAM._weighted(self, passed.activations, passed.gradients),  # type: ignore[arg-type]
                         (batch.shape[2], batch.shape[3]))
        return passed.guided.sum(dim=1) * cam


@register
class EigenCAM(_CamExplainer):
    """Eigen-CAM (Muhammad & Yeasin 2020): projection of the centred activations on their first principal component.

    The SVD sign is fixed as in pytorch-grad-cam's sign-corrected projection
    (flip when ``|min| > |max|``). Class-agnostic: ``target`` is not used.
    """

    name = "eigencam"
    display_name = "Eigen-CAM"
    code = "ECAM"
    series_slot = 12

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        acts = self._pass(model, batch, None).activations
        n, c, h, w = acts.shape
        flat = acts.reshape(n, c, h * w).transpose(1, 2)  # N × hw × C
        flat = torch.nan_to_num(flat) - torch.nan_to_num(flat).mean(dim=1, keepdim=True)
        _, _, vh = torch.linalg.svd(flat, full_matrices=False)
        proj = (flat @ vh[:, 0, :, None])[..., 0]  # N × hw
        flip = proj.amin(dim=1).abs() > proj.amax(dim=1).abs()
        proj = torch.where(flip[:, None], -proj, proj)
        return finish_cam(proj.reshape(n, h, w), (batch.shape[2], batch.shape[3]))


@register
class ScoreCAM(_CamExplainer):
    """Score-CAM (Wang et al. 2020): channel weights = softmax over channels of the target logit of the input
    masked by each (upsampled, min-max normalised) activation map; ``batch_size`` masked inputs per forward.

    Masks are upsampled with ``align_corners=True`` as pytorch-grad-cam does.
    """

    name = "scorecam"
    single_pass = False   # one forward per activation channel
    display_name = "Score-CAM"
    code = "SCAM"
    series_slot = 11

    def _validate(self) -> None:
        if self.params["batch_size"] < 1:
            raise ValueError(f"explainer {self.name!r}: batch_size must be >= 1")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        acts = self._pass(model, batch, None).activations
        size = (batch.shape[2], batch.shape[3])
        chunk = self.params["batch_size"]
        maps = []
        with torch.no_grad():
            for n in range(batch.shape[0]):
                up = F.interpolate(acts[n:n + 1], size=size, mode="bilinear", align_corners=True)[0]
                flat = up.reshape(up.shape[0], -1)
                low = flat.amin(dim=1)[:, None, None]
                high = flat.amax(dim=1)[:, None, None]
                masks = (up - low) / (high - low + 1e-8)
                scores = []
                for start in range(0, masks.shape[0], chunk):
                    masked = batch[n:n + 1] * masks[start:start + chunk, None].to(batch.dtype)
                    scores.append(model(masked)[:, target[n]].float())
                weights = torch.softmax(torch.cat(scores), dim=0)
                maps.append((weights[:, None, None] * acts[n]).sum(dim=0))
        return finish_cam(torch.stack(maps), size)


@register
class CAM(_CamExplainer):
    """Class Activation Mapping (Zhou et al. 2016) for heads that are global average pooling + one linear layer.

    ``Σ_c W[target, c] · F_c`` with ``F`` the feature map entering the pool (timm
    ResNet / EfficientNet ``global_pool`` + ``fc``/``classifier``; torchvision
    ``avgpool`` + ``fc``). Other heads raise :class:`ExplainerNotApplicable`.
    ``target_layer`` is ignored (the pool's input is the layer).
    """

    name = "cam"
    display_name = "CAM"
    code = "CAM"
    series_slot = 20
    defaults: ClassVar[Mapping[str, Any]] = {}

    @staticmethod
    def _head(model: nn.Module) -> tuple[nn.Module, nn.Linear] | None:
        pool = getattr(model, "global_pool", None)
        if not isinstance(pool, nn.Module):
            pool = getattr(model, "avgpool", None)
        if isinstance(pool, nn.AdaptiveAvgPool2d):
            avg = tuple(pool.output_size) in ((1, 1),) if isinstance(pool.output_size, tuple) else pool.output_size == 1
        elif type(pool).__name__ == "SelectAdaptivePool2d":
            avg = getattr(pool, "pool_type", "") == "avg"
        else:
            return None
        if not avg:
            return None
        getter = getattr(model, "get_classifier", None)
        fc = getter() if callable(getter) else getattr(model, "fc", None)
        if not isinstance(fc, nn.Linear) or getattr(model, "head", None) is not None:
            return None
        return pool, fc

    def check_applicable(self, model: nn.Module) -> None:
        if self._head(model) is None:
            raise ExplainerNotApplicable(self.name, "model head is not global average pooling followed by one linear "
                                                    "layer (use gradcam)")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        head = self._head(model)
        assert head is not None
        pool, fc = head
        captured: list[torch.Tensor] = []
        handle = pool.register_forward_pre_hook(lambda _m, inputs: captured.append(inputs[0]))
        try:
            with torch.no_grad():
                model(batch)
        finally:
            handle.remove()
        features = captured[0].float()
        weights = fc.weight.detach().float()[target]  # N × C
        cam = torch.einsum("nc,nchw->nhw", weights, features)
        return finish_cam(cam, (batch.shape[2], batch.shape[3]))
