#!/usr/bin/env python
"""Speed and memory of mammoxai's explainers: against reference libraries, against the model's limit.

Three measurements, all in one process on one model and one input:

1. **References.** Each method against the library it re-implements, same
   model, same input, same target, same sample counts and forward batch size
   (Grad-CAM / Grad-CAM++ / Score-CAM vs pytorch-grad-cam; IG, SmoothGrad,
   Guided Backprop, DeepLIFT, Occlusion, LIME, Kernel SHAP vs captum; LRP vs
   zennit; LIME vs lime; Kernel SHAP vs shap). Ratio = ours / reference
   (below 1: we are faster). LIME and Kernel SHAP references get our SLIC
   superpixels and our hidden image, so only the sampling and fitting differ.
2. **Limit.** Every forward and backward pass through the model is counted by
   hooks (images, not calls). The limit is what those passes cost at the
   model's best batched speed: ``fwd_images × t_fwd + bwd_images × t_bwd``,
   with ``t_fwd`` / ``t_bwd`` the best per-image times over batch sizes 1…64,
   measured in the same run. Ratio = method time / limit (1.0 = no overhead
   beyond the model work the method does). *Model, same batches*: every model
   call the method made (batch size, back-propagated or not) replayed on the
   bare model in the same timing rounds (:func:`replay`); *time / model* is the
   method's own overhead. LRP runs on a canonised copy with modified weights,
   which the counter cannot see: its model work is one forward of that copy
   plus every layer pass its rules make (each a convolution with the rule's
   weights, forward and backward to its input), recorded by
   :class:`LayerPassRecorder` and replayed on the bare layers
   (:func:`replay_layers`).
3. **Memory.** Peak RSS above the pre-call RSS (CPU; sampled every 5 ms from
   /proc/self/statm) or peak allocated CUDA memory above the pre-call
   allocation (``torch.cuda.max_memory_allocated``), per method, at the model's
   input size and at 1024×1024 (sample counts capped by ``--memory-samples``;
   memory depends on the forward batch size, not on the number of batches).

Each timing is one run (``--repeats`` for the best of several) after one
warm-up forward/backward of the model. Usage::

    .venv/bin/python benchmarks/bench_explainers.py --device cpu --out benchmarks/results/cpu
    .venv/bin/python benchmarks/bench_explainers.py --device cuda --autocast bf16 --out benchmarks/results/h100

writes ``OUT.json`` and ``OUT.md``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import subprocess
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from mammoxai.models._torchvision_compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

from mammoxai import explainers as xai  # noqa: E402
from mammoxai.models.random_init import live_branches  # noqa: E402,F401  (bench_stability imports it from here)

#: Sample counts of ``--quick`` (a reduced run that fits 2 CPU cores).
QUICK_PARAMS: dict[str, dict[str, Any]] = {
    "integrated_gradients": {"steps": 16}, "smoothgrad": {"samples": 16}, "smoothgrad_sq": {"samples": 16},
    "vargrad": {"samples": 16}, "occlusion": {"patch": 32, "stride": 32}, "rise": {"n_masks": 128},
    "lime": {"samples": 128}, "kernel_shap": {"samples": 128},
}


#: Passes per image of methods that run on a copy of the model (so the hooks cannot see them), for the limit
#: column only: their model work is recorded by :class:`LayerPassRecorder` and replayed by :func:`replay_layers`.
ASSUMED_PASSES: dict[str, tuple[int, int]] = {"lrp": (1, 1)}

# ----------------------------------------------------------------------------------- measurement tools

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PassCounter:
    """Counts images through ``model.forward`` and gradients arriving at its output (backward passes), and
    records each call: ``calls`` holds ``[batch size, images backpropagated]`` per forward call, which
    :func:`replay` turns into the same model work without the method around it."""

    def __init__(self, model: nn.Module) -> None:
        self.forward_images = 0
        self.backward_images = 0
        self.calls: list[list[int]] = []
        self._handle = model.register_forward_hook(self._hook)

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        out = output if isinstance(output, torch.Tensor) else next(
            (o for o in (output if isinstance(output, (tuple, list)) else []) if isinstance(o, torch.Tensor)), None)
        if out is None or out.ndim == 0:
            return
        self.forward_images += out.shape[0]
        call = [int(out.shape[0]), 0]
        self.calls.append(call)
        if out.requires_grad:
            out.register_hook(lambda grad, _call=call: self._count_backward(grad, _call))

    def _count_backward(self, grad: torch.Tensor, call: list[int]) -> None:
        self.backward_images += grad.shape[0]
        call[1] += grad.shape[0]

    def close(self) -> None:
        self._handle.remove()


def replay(model: nn.Module, x: torch.Tensor, calls: list[list[int]], device: torch.device,
           autocast: str) -> Callable[[], None]:
    """The model work of a method and nothing else: for each recorded ``[batch, backpropagated]`` call, one
    forward of ``batch`` copies of the input (under ``no_grad`` when nothing was backpropagated), else a
    forward and a backward to the input, as :func:`~mammoxai.explainers.gradients.input_gradient` does.
    Its time is the method's limit at the batch sizes the method really uses."""
    inputs = {bs: x[:1].expand(bs, *x.shape[1:]).contiguous() for bs, _ in calls}

    def run() -> None:
        for bs, backward in calls:
            xb = inputs[bs]
            if backward == 0:
                with torch.no_grad(), autocast_ctx(device, autocast):
                    model(xb)
                continue
            xi = xb.detach().requires_grad_(True)
            with autocast_ctx(device, autocast):
                logits = model(xi)
            torch.autograd.grad(logits[:, 0].sum(), xi)

    return run


class LayerPassRecorder:
    """LRP's model work: its rules re-run layers of the canonised copy with modified parameters
    (``mammoxai.explainers._lrp_rules._call``: z⁺ one or two convolutions, α-β two or four, ε and flat
    one, each followed by the backward of that convolution to its input). While the context is active
    each such call is recorded as ``(layer, parameters, input shape, dtype)``; :func:`replay_layers`
    runs exactly these convolutions on the bare layers (no hooks, no rule arithmetic)."""

    def __init__(self) -> None:
        self.calls: list[tuple[nn.Module, dict[str, torch.Tensor], tuple[int, ...], torch.dtype]] = []

    def __enter__(self) -> "LayerPassRecorder":
        from mammoxai.explainers import _lrp_rules

        self._module = _lrp_rules
        self._original = _lrp_rules._call

        def call(module: nn.Module, params: dict[str, torch.Tensor], a: torch.Tensor) -> torch.Tensor:
            self.calls.append((module, params, tuple(a.shape), a.dtype))
            return self._original(module, params, a)

        _lrp_rules._call = call
        return self

    def __exit__(self, *exc: Any) -> None:
        self._module._call = self._original


def replay_layers(canon: nn.Module, x: torch.Tensor, layer_calls: list, device: torch.device,
                  autocast: str) -> Callable[[], None]:
    """LRP's model work and nothing else: one forward of the canonised copy ``canon`` (with gradients on, as
    LRP runs it, whose rules need the layer inputs), then, for each call :class:`LayerPassRecorder`
    recorded, that layer with the rule's modified parameters, forward and backward to its input."""
    from mammoxai.explainers._lrp_rules import layer_forward

    inputs = {(shape, dtype): torch.rand(shape, device=device, dtype=dtype) for _, _, shape, dtype in layer_calls}

    def run() -> None:
        xi = x.detach().requires_grad_(True)
        with autocast_ctx(device, autocast):
            canon(xi)
        for module, params, shape, dtype in layer_calls:
            a = inputs[(shape, dtype)].requires_grad_(True)
            with autocast_ctx(device, autocast):
                z = layer_forward(module, params, a)            # the bare layer: no hook, no rule
            torch.autograd.grad(z, a, z)

    return run


def _rss_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _hwm_bytes() -> int:
    """Peak RSS of this process's address space (VmHWM; unlike ru_maxrss, not inherited over fork/exec)."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def _reset_hwm() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0: write 5 to /proc/self/clear_refs); False if refused."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
    except OSError:
        return False
    return True


class PeakMemory:
    """Peak memory above the start while the block runs: RSS on CPU, allocated bytes on CUDA.

    On CPU the kernel's own peak (VmHWM, reset on entry) is exact; a sampling thread is only the
    fallback where the reset is refused, since an allocation freed between two samples (the thread
    waits for the GIL) would be missed.
    """

    def __init__(self, device: torch.device, interval_s: float = 0.005) -> None:
        self.device = device
        self.interval_s = interval_s
        self.peak_mb = float("nan")
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = _rss_bytes()
        self._peak = self._start
        self._kernel_peak = _reset_hwm()
        if not self._kernel_peak:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            sync(self.device)
            self.peak_mb = (torch.cuda.max_memory_allocated(self.device) - self._start) / 2**20
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
        self._peak = max(self._peak, _rss_bytes(), _hwm_bytes() if self._kernel_peak else 0)
        self.peak_mb = (self._peak - self._start) / 2**20


def timed(fn: Callable[[], Any], device: torch.device, repeats: int = 1,
          short_s: float = 1.0, short_repeats: int = 3) -> tuple[float, Any]:
    """Best wall time of ``repeats`` calls of ``fn`` (synchronised on CUDA) and the last result.

    A call shorter than ``short_s`` is repeated up to ``short_repeats`` times in all (timer
    noise and first-shape kernel selection dominate short calls); ours and the
    references get the same rule.
    """
    best, result = math.inf, None
    calls = 0
    now = CLOCKS[CLOCK]
    while calls < repeats or (best < short_s and calls < max(repeats, short_repeats)):
        calls += 1
        sync(device)
        start = now()
        result = fn()
        sync(device)
        best = min(best, now() - start)
    timed.calls = calls  # type: ignore[attr-defined]  # how many calls the last timing made
    return best, result


#: ``--clock``: wall time, or this process's CPU time (CPU only; with ``--threads 1`` it is the work done,
#: nearly blind to other processes sharing the cores, where wall time is not).
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}


#: the clock of :func:`timed` (``--clock``)
CLOCK = "wall"


def timed_rounds(fns: dict[str, Callable[[], Any]], device: torch.device, repeats: int,
                 short_s: float = 1.0, short_repeats: int = 10, clock: str = "wall") -> dict[str, float]:
    """Best time of each of ``fns`` by ``clock``, timed in interleaved rounds (one call of each per round), so
    that load from other processes on a shared machine hits all of them alike. ``repeats`` rounds, up to
    ``short_repeats`` while the slowest best time is under ``short_s``."""
    now = CLOCKS[clock]
    best = {name: math.inf for name in fns}
    rounds = 0
    while rounds < repeats or (max(best.values()) < short_s and rounds < max(repeats, short_repeats)):
        rounds += 1
        for name, fn in fns.items():
            sync(device)
            start = now()
            fn()
            sync(device)
            best[name] = min(best[name], now() - start)
    return best


def autocast_ctx(device: torch.device, mode: str):
    if device.type != "cuda" or mode == "off":
        return contextlib.nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if mode == "bf16" else torch.float16)


def model_costs(model: nn.Module, x: torch.Tensor, device: torch.device, autocast: str,
                batch_sizes: list[int]) -> dict[str, Any]:
    """Best per-image forward time and forward+backward (input gradient) time over ``batch_sizes``."""
    out: dict[str, Any] = {"forward": {}, "forward_backward": {}}
    for bs in batch_sizes:
        xb = x[:1].expand(bs, *x.shape[1:]).contiguous()
        target = torch.zeros(bs, dtype=torch.long, device=device)

        def fwd():
            with torch.no_grad(), autocast_ctx(device, autocast):
                return model(xb)

        def fwd_bwd():
            xi = xb.detach().requires_grad_(True)
            with autocast_ctx(device, autocast):
                logits = model(xi)
            grad, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), xi)
            return grad

        try:
            fwd()
            fwd_bwd()
            t_f, _ = timed(fwd, device, repeats=5)
            t_fb, _ = timed(fwd_bwd, device, repeats=5)
        except RuntimeError as exc:  # out of memory at a large batch: stop there
            if "out of memory" not in str(exc).lower():
                raise
            if device.type == "cuda":
                torch.cuda.empty_cache()
            break
        out["forward"][bs] = t_f / bs
        out["forward_backward"][bs] = t_fb / bs
    t_fwd = min(out["forward"].values())
    t_fb = min(out["forward_backward"].values())
    out["t_fwd"] = t_fwd
    out["t_bwd"] = max(t_fb - t_fwd, 0.0)
    return out


# ----------------------------------------------------------------------------------- references

def _ref_model(model: nn.Module) -> nn.Module:
    """A copy without in-place activations (captum's and zennit's backward hooks need that)."""
    ref = copy.deepcopy(model)
    for module in ref.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return ref.eval()


def _prob(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda inp: model(inp).softmax(dim=-1)


def _score_fn(model: nn.Module, score: str) -> Callable[[torch.Tensor], torch.Tensor]:
    return _prob(model) if score == "probability" else model


def _cam_layer(model: nn.Module, x: torch.Tensor, explainer: xai.Explainer) -> nn.Module:
    from mammoxai.explainers._targets import auto_target_name, find_module

    name = explainer.params.get("target_layer", "auto")
    if name == "auto":
        name = auto_target_name(model, x)
    return find_module(model, name)


def _baseline_tensor(x: torch.Tensor, explainer: xai.Explainer) -> torch.Tensor:
    from mammoxai.explainers.gradients import make_baseline

    return make_baseline(x, explainer.params["baseline"], explainer.params.get("blur_sigma", 8.0))


def _pert_baseline(x: torch.Tensor, explainer: xai.Explainer) -> torch.Tensor | float:
    from mammoxai.explainers._pert_common import baseline_image

    return baseline_image(x, explainer.params["baseline"], explainer.params["blur_sigma"])


def references(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor,
               explainer: xai.Explainer) -> list[tuple[str, Callable[[], Any]]]:
    """``(name, run)`` for each reference library of ``method``, configured to the explainer's parameters."""
    p = explainer.params
    bs = p["batch_size"]
    t = [int(v) for v in target]
    refs: list[tuple[str, Callable[[], Any]]] = []
    if method in ("gradcam", "gradcam_pp", "scorecam"):
        import pytorch_grad_cam as pgc
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        cls = {"gradcam": pgc.GradCAM, "gradcam_pp": pgc.GradCAMPlusPlus, "scorecam": pgc.ScoreCAM}[method]
        ref = _ref_model(model)
        layer = _cam_layer(ref, x, explainer)

        def run_cam():
            cam = cls(model=ref, target_layers=[layer])
            cam.batch_size = bs
            with cam:
                return cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in t])

        refs.append(("pytorch-grad-cam", run_cam))
    if method in ("integrated_gradients", "smoothgrad", "guided_backprop", "deeplift", "occlusion", "lime",
                  "kernel_shap", "saliency", "gradient_x_input"):
        import captum.attr as ca

        ref = _ref_model(model)
        if method == "integrated_gradients":
            base = _baseline_tensor(x, explainer)
            refs.append(("captum", lambda: ca.IntegratedGradients(ref).attribute(
                x, baselines=base, target=target, n_steps=p["steps"], method=p["method"], internal_batch_size=bs)))
        elif method == "smoothgrad":
            # captum takes one noise sd for the whole batch: exact for one image.
            sd = float(p["noise_level"] * (x.amax() - x.amin()))
            refs.append(("captum", lambda: ca.NoiseTunnel(ca.Saliency(ref)).attribute(
                x, nt_type="smoothgrad", nt_samples=p["samples"], nt_samples_batch_size=bs, stdevs=sd,
                target=target, abs=False)))
        elif method == "saliency":
            refs.append(("captum", lambda: ca.Saliency(ref).attribute(x, target=target, abs=True)))
        elif method == "gradient_x_input":
            refs.append(("captum", lambda: ca.InputXGradient(ref).attribute(x, target=target)))
        elif method == "guided_backprop":
            refs.append(("captum", lambda: ca.GuidedBackprop(ref).attribute(x, target=target)))
        elif method == "deeplift":
            base = _baseline_tensor(x, explainer)
            refs.append(("captum", lambda: ca.DeepLift(ref).attribute(x, baselines=base, target=target)))
        elif method == "occlusion":
            c = x.shape[1]
            base = _pert_baseline(x, explainer)
            fn = _score_fn(ref, p["score"])
            refs.append(("captum", lambda: ca.Occlusion(fn).attribute(
                x, sliding_window_shapes=(c, p["patch"], p["patch"]), strides=(c, p["stride"], p["stride"]),
                baselines=base, target=target, perturbations_per_eval=bs)))
        elif method in ("lime", "kernel_shap"):
            refs += _superpixel_refs(method, ref, x, target, explainer)
    if method == "lrp":
        refs.append(("zennit", _zennit_runner(model, x, target, explainer)))
    return refs


def _superpixel_refs(method: str, ref: nn.Module, x: torch.Tensor, target: torch.Tensor,
                     explainer: xai.Explainer) -> list[tuple[str, Callable[[], Any]]]:
    """captum Lime/KernelShap and lime / shap on our SLIC superpixels of the first image, same samples and
    forward batch size. Each run includes the segmentation (and the hidden image), as ours does."""
    import captum.attr as ca

    from mammoxai.explainers._pert_common import compose_from_presence, hidden_image, superpixels

    p = explainer.params
    bs = p["batch_size"]
    x0 = x[:1]
    fn = _score_fn(ref, p["score"])
    t0 = int(target[0])

    def segment() -> tuple[torch.Tensor, torch.Tensor]:
        segments = superpixels(x0[0], p["n_segments"], p["compactness"], p["slic_sigma"]).to(x.device)
        return segments, hidden_image(x0[0], segments, p["hide_color"])

    refs: list[tuple[str, Callable[[], Any]]] = []
    cls = ca.Lime if method == "lime" else ca.KernelShap

    def run_captum():
        segments, hidden = segment()
        return cls(fn).attribute(x0, target=t0, baselines=hidden[None], feature_mask=segments[None, None].expand_as(
            x0), n_samples=p["samples"], perturbations_per_eval=bs)

    refs.append(("captum", run_captum))
    if method == "lime":
        def run_lime():
            from lime import lime_image

            image = x0[0, 0].detach().cpu().double().numpy()

            def classifier_fn(images: np.ndarray) -> np.ndarray:
                batch = torch.from_numpy(images[..., 0]).to(x0.device, x0.dtype)[:, None]
                with torch.no_grad():
                    return fn(batch).float().cpu().numpy()

            def segmentation_fn(_img: np.ndarray) -> np.ndarray:
                return segment()[0].cpu().numpy()

            explainer_ = lime_image.LimeImageExplainer(kernel_width=p["kernel_width"], random_state=0)
            return explainer_.explain_instance(image, classifier_fn, labels=(t0,), top_labels=None,
                                               hide_color=None, num_samples=p["samples"], batch_size=bs,
                                               segmentation_fn=segmentation_fn)

        refs.append(("lime", run_lime))
    else:
        def run_shap():
            import shap

            segments, hidden = segment()
            m = int(segments.max()) + 1

            def f(z: np.ndarray) -> np.ndarray:
                presence = torch.from_numpy(z).to(x0.device, torch.float32)
                out = []
                with torch.no_grad():
                    for start in range(0, presence.shape[0], bs):
                        imgs = compose_from_presence(x0[0], hidden, segments, presence[start:start + bs])
                        out.append(fn(imgs)[:, t0].float().cpu())
                return torch.cat(out).numpy()

            kernel = shap.KernelExplainer(f, np.zeros((1, m)))
            return kernel.shap_values(np.ones((1, m)), nsamples=p["samples"], silent=True, l1_reg=False)

        refs.append(("shap", run_shap))
    return refs


def reference_r(method: str, ours: torch.Tensor, ref_out: Any) -> float | None:
    """Pearson r between our ``(N, H, W)`` map and the reference's output reduced the same way (channel sum;
    saliency: channel max of |·|), so that a speed ratio is only read as equal work where r ≈ 1.
    ``None`` where the reference's output is not a map of the same grid (e.g. LIME's explanation object)."""
    out = ref_out[0] if isinstance(ref_out, (tuple, list)) and len(ref_out) == 1 else ref_out
    try:
        ref = torch.as_tensor(np.asarray(out.detach().cpu() if isinstance(out, torch.Tensor) else out),
                              dtype=torch.float64)
    except Exception:  # noqa: BLE001 - not an array
        return None
    if ref.ndim == 4:
        ref = ref.abs().amax(dim=1) if method == "saliency" else ref.sum(dim=1)
    if ref.ndim == 2:
        ref = ref[None]
    if tuple(ref.shape) != tuple(ours.shape):
        return None
    a, b = ours.double().flatten(), ref.flatten()
    if float(a.std()) == 0 or float(b.std()) == 0:
        return None
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def _timm_residual_canonizer():
    """A zennit ``AttributeCanonizer`` doing for timm's ResNet blocks what zennit's ``ResNetCanonizer`` does for
    torchvision's: the residual addition becomes an explicit ``zennit.layer.Sum`` (which zennit's composites
    give the ``Norm`` rule). The block forwards are the ones mammoxai's own canonisation uses."""
    import types

    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    from mammoxai.explainers._lrp_canon import _TIMM_BLOCKS

    def attribute_map(_name: str, module: nn.Module) -> dict[str, Any] | None:
        key = (type(module).__module__, type(module).__name__)
        if key not in _TIMM_BLOCKS or key[1] == "ConvNeXtBlock":
            return None
        return {"forward": types.MethodType(_TIMM_BLOCKS[key], module), "lrp_sum": Sum()}

    return AttributeCanonizer(attribute_map)


def _zennit_runner(model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                   explainer: xai.Explainer) -> Callable[[], Any]:
    """zennit's Gradient attributor with the composite of the same name as our ``composite`` parameter
    (and its ε), given its best canonisation: BatchNorm merged by zennit's ``SequentialMergeBatchNorm``, and
    residual sums made explicit (:func:`_timm_residual_canonizer`, as zennit's torchvision ``ResNetCanonizer``).
    Without the latter, zennit computes another map on timm ResNets (r 0.83–0.94 on resnet50)."""
    from zennit import composites as zc
    from zennit import rules as zr
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm
    from zennit.types import Convolution, Linear

    ref = _ref_model(model)
    name = str(explainer.params.get("composite", "epsilon_plus_flat"))
    eps = float(explainer.params.get("epsilon", 1e-6))
    canonizers = [SequentialMergeBatchNorm(), _timm_residual_canonizer()]
    if name == "epsilon":
        composite = zc.LayerMapComposite(layer_map=[(Convolution, zr.Epsilon(epsilon=eps)),
                                                    (Linear, zr.Epsilon(epsilon=eps))], canonizers=canonizers)
    else:
        cls = {"epsilon_plus_flat": zc.EpsilonPlusFlat, "epsilon_plus": zc.EpsilonPlus,
               "epsilon_alpha2_beta1": zc.EpsilonAlpha2Beta1,
               "epsilon_alpha2_beta1_flat": zc.EpsilonAlpha2Beta1Flat}[name]
        composite = cls(epsilon=eps, canonizers=canonizers)
    with torch.no_grad():
        n_classes = ref(x[:1]).shape[1]
    onehot = torch.nn.functional.one_hot(target, n_classes).to(x.dtype)

    def run():
        with Gradient(model=ref, composite=composite) as attributor:
            _, relevance = attributor(x, onehot)
        return relevance

    return run


# ----------------------------------------------------------------------------------- the benchmark

def build_model(args: argparse.Namespace, device: torch.device) -> tuple[nn.Module, torch.Tensor, str, dict]:
    """The model and one preprocessed phantom input: the demo checkpoint (or ``--checkpoint``), else a
    random ``--architecture`` at ``--input-size``."""
    from mammoxai.models.phantoms import generate_phantom

    phantom = generate_phantom(args.seed, finding="malignant_mass")
    checkpoint = args.checkpoint
    if checkpoint == "demo":
        from mammoxai.models.classifier import demo_checkpoint

        checkpoint = str(demo_checkpoint("cnn"))
        if not Path(checkpoint).is_file():
            checkpoint = None
    if checkpoint:
        from mammoxai.models import load_classifier

        clf = load_classifier(checkpoint, device=str(device))
        x, _ = clf.preprocess(phantom.image, phantom.laterality)
        desc = f"{clf.metadata.architecture} ({Path(checkpoint).name})"
        return clf.module, x.to(device), desc, clf.metadata.to_dict()
    from mammoxai.models.classifier import ModelMetadata, create_module
    from mammoxai.models.preprocess import preprocess

    meta = ModelMetadata(architecture=args.architecture, input_size=tuple(args.input_size))
    torch.manual_seed(0)
    module = create_module(meta).eval()
    if args.live:
        live_branches(module)
    module = module.to(device)
    x, _ = preprocess(phantom.image, phantom.laterality, meta)
    return module, x.to(device), f"{args.architecture} (random weights)", meta.to_dict()


def method_params(method: str, args: argparse.Namespace, extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    cls = xai.explainer_class(method)
    params: dict[str, Any] = {"batch_size": args.batch_size, "autocast": args.autocast}
    meta = getattr(args, "metadata", None) or {}
    for key in ("mean", "std"):            # as the node passes them (attacks work in [0, 1] intensities)
        if key in cls.defaults and key in meta:
            default = cls.defaults[key]
            values = list(meta[key])
            params[key] = values if isinstance(default, (list, tuple)) or default is None else float(values[0])
    if args.quick:
        params.update({k: v for k, v in QUICK_PARAMS.get(method, {}).items() if k in cls.defaults})
    params.update(extra.get(method, {}))
    return params


def run_method(method: str, model: nn.Module, x: torch.Tensor, target: torch.Tensor, device: torch.device,
               args: argparse.Namespace, costs: dict[str, Any], extra: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Time ``method`` (after one untimed warm-up run), count its passes, time its references likewise."""
    params = method_params(method, args, extra)
    explainer = xai.create(method, **params)
    record: dict[str, Any] = {"method": method, "parameters": {k: v for k, v in explainer.params.items()
                                                                 if not isinstance(v, (list, tuple))}}
    layers = LayerPassRecorder() if method == "lrp" else contextlib.nullcontext()
    try:
        counter = PassCounter(model)
        try:
            with PeakMemory(device) if device.type == "cuda" else contextlib.nullcontext() as mem, layers:
                ours_map = explainer.explain(model, x, target).heatmap   # warm-up, as the references get; for r
        finally:
            counter.close()
    except xai.ExplainerNotApplicable as exc:
        record["error"] = f"not applicable: {exc.reason}"
        return record
    except Exception as exc:  # noqa: BLE001 - report it and go on
        record["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        if args.debug:
            traceback.print_exc()
        return record
    fwd, bwd, calls = counter.forward_images, counter.backward_images, counter.calls
    passes_assumed = fwd == 0 and bwd == 0 and method in ASSUMED_PASSES
    if passes_assumed:
        fwd, bwd = (v * x.shape[0] for v in ASSUMED_PASSES[method])
        calls = [[x.shape[0], x.shape[0] if bwd else 0]]
    work = replay(model, x, calls, device, args.autocast)
    layer_calls: list = []
    if isinstance(layers, LayerPassRecorder):            # LRP: the canonised forward and its rules' layer passes
        layer_calls = layers.calls
        canon = explainer._canonised(model, x)[0]        # the cached copy the warm-up built
        work = replay_layers(canon, x, layer_calls, device, args.autocast)
    fns: dict[str, Callable[[], Any]] = {"ours": lambda: explainer.explain(model, x, target), "model": work}
    refs: list[tuple[str, Callable[[], Any]]] = []
    ref_entries: list[dict[str, Any]] = []
    if not args.no_references:
        try:
            refs = references(method, model, x, target, explainer)
        except Exception as exc:  # noqa: BLE001
            ref_entries.append({"library": "?", "error": f"{type(exc).__name__}: {exc}"})
    if args.before:
        refs.append(("mammoxai before", _before_runner(method, params, model, x, target, args.before)))
    n_ref_images = 1 if method in ("lime", "kernel_shap") else x.shape[0]
    for library, run in refs:
        entry: dict[str, Any] = {"library": library}
        try:
            with autocast_ctx(device, args.autocast):
                entry["r"] = reference_r(method, ours_map[:n_ref_images], run())  # warm-up: caches, hooks
            fns[library] = lambda run=run: _with_autocast(run, device, args.autocast)
        except Exception as exc:  # noqa: BLE001
            entry["error"] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            if args.debug:
                traceback.print_exc()
        ref_entries.append(entry)
    best = timed_rounds(fns, device, args.repeats, clock=args.clock)
    seconds = best["ours"]
    limit = fwd * costs["t_fwd"] + bwd * costs["t_bwd"]
    record.update(seconds=seconds, seconds_per_image=seconds / x.shape[0], forward_images=fwd, backward_images=bwd,
                  passes_assumed=passes_assumed, limit_seconds=limit,
                  limit_ratio=seconds / limit if limit > 0 else None,
                  model_calls=calls, model_seconds=best["model"], layer_passes=len(layer_calls),
                  model_ratio=seconds / best["model"] if best["model"] > 0 else None)
    if mem is not None:
        record["memory"] = {"input": {"increase_mb": mem.peak_mb}}
    if not args.no_references:
        ours = seconds if n_ref_images == x.shape[0] else seconds / x.shape[0]
        for entry in ref_entries:
            if "error" not in entry and entry["library"] in best:
                t_ref = best[entry["library"]]
                entry.update(seconds=t_ref, images=n_ref_images, ours_seconds=ours, ratio=ours / t_ref)
        record["references"] = ref_entries
    return record


def _before_runner(method: str, params: dict[str, Any], model: nn.Module, x: torch.Tensor, target: torch.Tensor,
                   folder: Path) -> Callable[[], Any]:
    """Another version of mammoxai's explainers as one more reference ("mammoxai before"): ``folder`` holds a
    copy of the package renamed ``mammoxai_before`` (e.g. ``git archive HEAD mammoxai`` unpacked and renamed;
    the explainers import each other relatively), so before and after are timed in the same rounds."""
    import importlib

    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))
    before = importlib.import_module("mammoxai_before.explainers")
    explainer = before.create(method, **params)          # one instance, reused as ours is
    return lambda: explainer.explain(model, x, target).heatmap


def _with_autocast(run: Callable[[], Any], device: torch.device, mode: str) -> Any:
    with autocast_ctx(device, mode):
        return run()


def probe_params(method: str, args: argparse.Namespace, extra: dict[str, dict[str, Any]], cap: int) -> dict[str, Any]:
    """The method's parameters, sample counts capped at ``cap`` (0: not capped)."""
    params = method_params(method, args, extra)
    cls = xai.explainer_class(method)
    if cap > 0:
        for key in ("samples", "n_masks", "steps"):
            if key in cls.defaults:
                params[key] = min(params.get(key, cls.defaults[key]), cap)
    return params


def memory_probe(args: argparse.Namespace) -> int:
    """Child process: run one method once at one size and print its peak RSS as JSON (CPU memory)."""
    device = torch.device(args.device)
    extra = json.loads(args.params)
    model, x1, _, args.metadata = build_model(args, device)
    size = args.probe_size
    x = x1 if size == 0 else torch.randn(1, x1.shape[1], size, size, device=device)
    explainer = xai.create(args.probe, **probe_params(args.probe, args, extra, args.probe_cap))
    with torch.no_grad():
        model(x)
    before = _rss_bytes() / 2**20
    _reset_hwm()                                   # the peak of loading the model is not the method's
    explainer.explain(model, x, 0)
    peak = _hwm_bytes() / 2**20
    print(json.dumps({"baseline_mb": before, "peak_rss_mb": peak, "increase_mb": peak - before}))
    return 0


def memory_at(method: str, model: nn.Module, x1: torch.Tensor, size: int, device: torch.device,
              args: argparse.Namespace, extra: dict[str, dict[str, Any]]) -> dict[str, Any] | str:
    """Peak memory of ``method`` on one image: ``size`` 0 = the model's input (its own sample counts),
    else ``size``×``size`` with sample counts capped at ``--memory-samples``.

    CPU: a fresh child process (peak RSS, and its increase over the RSS after loading the model);
    CUDA: in process, peak allocated above the pre-call allocation.
    """
    cap = 0 if size == 0 else args.memory_samples
    if device.type == "cuda":
        x = x1 if size == 0 else torch.randn(1, x1.shape[1], size, size, device=device)
        explainer = xai.create(method, **probe_params(method, args, extra, cap))
        try:
            with PeakMemory(device) as mem:
                explainer.explain(model, x, 0)
        except Exception as exc:  # noqa: BLE001
            return f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}"
        finally:
            torch.cuda.empty_cache()
        return {"increase_mb": mem.peak_mb}
    forward = [a for a in sys.argv[1:]]
    cmd = [sys.executable, str(Path(__file__).resolve()), *forward, "--probe", method, "--probe-size", str(size),
           "--probe-cap", str(cap)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.probe_timeout)
    except subprocess.TimeoutExpired:
        return f"timeout > {args.probe_timeout} s"
    if done.returncode != 0:
        return "failed: " + (done.stderr.strip().splitlines() or ["?"])[-1][:120]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _calls_text(calls: list[list[int]]) -> str:
    """``[[16, 0], [16, 0], [1, 1]]`` -> ``16×2, 1×1+bwd``: the model calls a method made, run-length coded."""
    parts: list[str] = []
    for (bs, back) in calls:
        key = f"{bs}" + ("" if back == 0 else "+bwd")
        if parts and parts[-1].split("×")[0] == key.split("+")[0] and parts[-1].endswith("+bwd") == bool(back):
            head, n = parts[-1].rsplit("×", 1)
            n_val = int(n.split("+")[0])
            parts[-1] = f"{bs}×{n_val + 1}" + ("+bwd" if back else "")
        else:
            parts.append(f"{bs}×1" + ("+bwd" if back else ""))
    return ", ".join(parts) if parts else "–"


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [f"# Explainer benchmark — {result['model']} at {result['input_size']}, {result['images']} image(s)", "",
             f"Machine: {m['device_name']} ({m['device']}), {m['cpu']} ({m['cpu_count']} CPUs visible, "
             f"torch threads {m['torch_threads']}), torch {m['torch']}, autocast {result['autocast']}.",
             f"Command: `{result['command']}`", "",
             f"Clock: {result.get('clock', 'wall')} time (best of interleaved rounds).", "",
             f"Model: best forward {result['costs']['t_fwd'] * 1e3:.2f} ms/image, "
             f"backward {result['costs']['t_bwd'] * 1e3:.2f} ms/image "
             f"(per-batch-size: {', '.join(f'b{k}: {v * 1e3:.1f}' for k, v in result['costs']['forward'].items())}"
             " ms/image forward).", "",
             "## Against reference libraries (ours / reference; < 1 means mammoxai is faster)", "",
             "r = Pearson correlation of the two maps: a ratio compares equal work only where r ≈ 1.", "",
             "| method | parameters | ours (s) | library | library (s) | ratio | r |",
             "|---|---|---|---|---|---|---|"]
    for r in result["methods"]:
        if "error" in r:
            continue
        params = ", ".join(f"{k}={v}" for k, v in r["parameters"].items()
                           if k not in ("seed", "autocast") and v is not None)
        for ref in r.get("references", []):
            if "error" in ref:
                lines.append(f"| {r['method']} | {params} | {r['seconds']:.3f} | {ref['library']} | "
                             f"failed: {ref['error'][:80]} | – | – |")
            else:
                corr = "–" if ref.get("r") is None else f"{ref['r']:.4f}"
                lines.append(f"| {r['method']} | {params} | {ref['ours_seconds']:.3f} | {ref['library']} | "
                             f"{ref['seconds']:.3f} | {ref['ratio']:.2f} | {corr} |")
    lines += ["", "## Against the model's limit", "",
              "limit = forward images × best per-image forward + backward images × best per-image backward (the "
              "best over batch sizes); model = the same forward/backward calls at the batch sizes the method "
              "used, replayed on the bare model and timed in the same rounds as ours (`replay`).", "",
              "| method | s / image | forward images | backward images | calls (batch×n, +bwd) | limit (s) | "
              "time / limit | model, same batches (s) | time / model |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in result["methods"]:
        if "error" in r:
            lines.append(f"| {r['method']} | {r['error'][:80]} | | | | |")
            continue
        ratio = f"{r['limit_ratio']:.2f}" if r["limit_ratio"] is not None else "–"
        star = "*" if r.get("passes_assumed") else ""
        model_ratio = f"{r['model_ratio']:.2f}" if r.get("model_ratio") is not None else "–"
        calls_text = _calls_text(r.get("model_calls", []))
        if r.get("layer_passes"):
            calls_text = f"canonised copy {calls_text.split('+')[0]}, {r['layer_passes']} layer passes+bwd†"
        lines.append(f"| {r['method']} | {r['seconds_per_image']:.3f} | {r['forward_images']:.0f}{star} | "
                     f"{r['backward_images']:.0f}{star} | {calls_text} | "
                     f"{r['limit_seconds']:.3f} | {ratio} | {r.get('model_seconds', float('nan')):.3f} | "
                     f"{model_ratio} |")
    if any(r.get("passes_assumed") for r in result["methods"]):
        lines += ["", "\\* runs on a copy of the model that the pass counter cannot see: one forward and one "
                      "backward per image assumed for the limit."]
    if any(r.get("layer_passes") for r in result["methods"]):
        lines += ["", "† LRP's model work (*model* column): one forward of its canonised copy (BatchNorm merged) and "
                      "every layer pass its rules make, each a forward of that layer with the rule's modified "
                      "weights and a backward to its input (z⁺: one convolution where the layer's input is "
                      "non-negative, two otherwise; α-β twice that; ε, flat: one), replayed on the bare layers "
                      "in the same rounds; *time / model* is LRP's overhead over the convolutions its rules need."]
    if result.get("no_memory"):
        lines.append("")
        return "\n".join(lines)
    cuda = result["machine"]["device"].startswith("cuda")
    mem_label = "peak allocated CUDA MB above the start" if cuda else \
        "peak RSS of a fresh process, MB (increase over the RSS with the model loaded)"
    sizes = result.get("memory_sizes", [])
    lines += ["", f"## Memory ({mem_label})", "",
              f"Model input: the method's own sample counts; larger sizes: sample counts capped at "
              f"{result['memory_samples']} (memory depends on the forward batch, {result['batch_size']}, "
              "not on the number of batches).", "",
              "| method | " + " | ".join(["model input"] + [f"{s}×{s}" for s in sizes]) + " |",
              "|---|" + "---|" * (len(sizes) + 1)]

    def cell(v: Any) -> str:
        if isinstance(v, dict):
            if "peak_rss_mb" in v:
                return f"{v['peak_rss_mb']:.0f} (+{v['increase_mb']:.0f})"
            return f"{v['increase_mb']:.0f}"
        return str(v)[:40] if v is not None else "–"

    for r in result["methods"]:
        if "error" in r:
            continue
        mem = r.get("memory", {})
        lines.append(f"| {r['method']} | " + " | ".join(cell(mem.get(k)) for k in ["input", *map(str, sizes)])
                     + " |")
    lines.append("")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--autocast", choices=["off", "bf16", "fp16"], default="off", help="CUDA only")
    p.add_argument("--checkpoint", default="demo", help="'demo' (falls back to a random model), a .pt, or ''")
    p.add_argument("--architecture", default="resnet10t", help="timm name for the random model")
    p.add_argument("--live", action="store_true",
                   help="random model: randomise BatchNorm statistics and layer scales so every branch is live")
    p.add_argument("--input-size", type=int, nargs=2, default=[256, 256], metavar=("H", "W"),
                   help="input of the random model (a checkpoint brings its own)")
    p.add_argument("--in-chans", type=int, default=1)
    p.add_argument("--images", type=int, default=1, help="images per explain call")
    p.add_argument("--batch-size", type=int, default=16, help="forward batch of sampled methods (ours and refs)")
    p.add_argument("--methods", help="comma-separated (default: every registered explainer)")
    p.add_argument("--params", default="{}", help='JSON {"method": {"param": value}} overrides')
    p.add_argument("--quick", action="store_true", help="reduced sample counts (see QUICK_PARAMS)")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--no-references", action="store_true")
    p.add_argument("--memory-sizes", type=int, nargs="*", default=[1024],
                   help="extra square input sizes for the memory table (model input size is the timed run)")
    p.add_argument("--memory-samples", type=int, default=64)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=20_000_000, help="phantom seed of the input")
    p.add_argument("--out", type=Path, default=None, help="output path prefix: writes OUT.json and OUT.md")
    p.add_argument("--cost-batch-sizes", type=int, nargs="*", default=None,
                   help="batch sizes for the model's best per-image time (default: 1 4 16 [64 on CUDA])")
    p.add_argument("--no-memory", action="store_true", help="skip the memory table")
    p.add_argument("--probe-timeout", type=int, default=300, help="seconds per CPU memory probe")
    p.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                   help="time ours, the model replay and the references by wall time or by this process's CPU "
                        "time (cpu: for a shared CPU machine, with --threads 1)")
    p.add_argument("--before", type=Path, default=None,
                   help="folder holding another version of the package as mammoxai_before: timed as a reference")
    p.add_argument("--debug", action="store_true")
    p.add_argument("--probe", help=argparse.SUPPRESS)
    p.add_argument("--probe-size", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--probe-cap", type=int, default=0, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    global CLOCK
    CLOCK = args.clock
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.probe:
        return memory_probe(args)
    if args.clock == "cpu" and device.type != "cpu":
        print("bench_explainers: --clock cpu measures CPU time: use it with --device cpu", file=sys.stderr)
        return 2
    if device.type == "cuda" and not torch.cuda.is_available():
        print("bench_explainers: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.out is None:
        print("bench_explainers: --out is required", file=sys.stderr)
        return 2
    extra = json.loads(args.params)
    model, x1, desc, meta = build_model(args, device)
    args.metadata = meta
    args.in_chans = x1.shape[1]
    x = x1.expand(args.images, *x1.shape[1:]).contiguous()
    with torch.no_grad():
        target = model(x).argmax(dim=1)
    methods = [m.strip() for m in args.methods.split(",")] if args.methods else xai.available()
    unknown = [m for m in methods if m not in xai.available()]
    if unknown:
        print(f"bench_explainers: unknown method(s) {unknown}; available: {xai.available()}", file=sys.stderr)
        return 2
    batch_sizes = args.cost_batch_sizes or ([1, 4, 16, 64] if device.type == "cuda" else [1, 4, 16])
    costs = model_costs(model, x1, device, args.autocast, batch_sizes)
    result: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else " ".join(argv),
        "model": desc, "metadata": meta, "input_size": list(x.shape[1:]), "images": args.images,
        "autocast": args.autocast, "batch_size": args.batch_size, "quick": args.quick, "clock": args.clock,
        "memory_sizes": args.memory_sizes, "memory_samples": args.memory_samples, "no_memory": args.no_memory,
        "machine": {"device": str(device), "device_name": torch.cuda.get_device_name(device)
                    if device.type == "cuda" else "CPU", "cpu": platform.processor() or platform.machine(),
                    "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "torch": torch.__version__, "python": platform.python_version()},
        "costs": costs, "methods": [],
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    for method in methods:
        print(f"[bench] {method} ...", file=sys.stderr, flush=True)
        record = run_method(method, model, x, target, device, args, costs, extra)
        if "error" not in record and not args.no_memory:
            memory = record.setdefault("memory", {})
            if device.type != "cuda":
                memory["input"] = memory_at(method, model, x1, 0, device, args, extra)
            for size in args.memory_sizes:
                memory[str(size)] = memory_at(method, model, x1, size, device, args, extra)
        result["methods"].append(record)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        Path(f"{args.out}.json").write_text(json.dumps(result, indent=2, default=str))
    Path(f"{args.out}.md").write_text(markdown(result))
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
