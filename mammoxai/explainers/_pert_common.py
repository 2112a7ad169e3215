"""Shared pieces of the perturbation explainers: scores, baselines, chunked forwards, superpixels.

Everything here works on the model's device. The one exception is
:func:`superpixels`, which runs scikit-image's SLIC on the CPU once per image,
before (never inside) a sampling loop.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from ._blur import gaussian_blur  # noqa: F401 - re-exported for the perturbation tests

SCORES = ("logit", "probability", "log_odds")


def target_scores(logits: torch.Tensor, target: int | torch.Tensor, score: str) -> torch.Tensor:
    """The ``(K,)`` score of class ``target`` from ``(K, classes)`` logits, as float32.

    ``score`` is ``"logit"`` (the raw output), ``"probability"`` (softmax over classes) or ``"log_odds"``
    (``log p_t − log(1 − p_t)`` = ``logit_t − logsumexp(other logits)``, computed from the logits so it
    never saturates; for two classes the logit difference).
    """
    logits = logits.float()
    if score == "probability":
        logits = logits.softmax(dim=1)
    elif score == "log_odds":
        if logits.shape[1] < 2:
            raise ValueError("score 'log_odds' needs at least two classes")
        t = (target.view(-1, 1).to(logits.device) if isinstance(target, torch.Tensor) and target.ndim == 1
             else torch.full((logits.shape[0], 1), int(target), device=logits.device))
        own = logits.gather(1, t)
        others = logits.scatter(1, t, float("-inf")).logsumexp(dim=1, keepdim=True)
        return (own - others).squeeze(1)
    elif score != "logit":
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if isinstance(target, torch.Tensor) and target.ndim == 1:
        return logits.gather(1, target.view(-1, 1).to(logits.device)).squeeze(1)
    return logits[:, int(target)]


@torch.no_grad()
def evaluate_chunked(model: nn.Module, make_inputs: Callable[[int, int], torch.Tensor], count: int,
                     batch_size: int, target: int, score: str) -> torch.Tensor:
    """Scores of ``count`` perturbed inputs, built and forwarded ``batch_size`` at a time.

    ``make_inputs(start, stop)`` returns the ``(stop-start, C, H, W)`` inputs of samples
    ``start..stop-1`` on the model's device; the result is a ``(count,)`` float32 tensor on
    that device. Only one chunk of inputs exists at a time, which bounds memory.
    """
    out: list[torch.Tensor] = []
    for start in range(0, count, batch_size):
        stop = min(count, start + batch_size)
        out.append(target_scores(model(make_inputs(start, stop)), target, score))
    return torch.cat(out) if out else torch.zeros(0)


def baseline_image(image: torch.Tensor, baseline: float | str | None, blur_sigma: float) -> torch.Tensor:
    """The ``(1, C, H, W)`` image that replaces occluded pixels.

    ``baseline`` ``None`` means the constant 0.0 (in normalised space: the normalisation mean),
    a number means that constant, ``"blur"`` a Gaussian blur of ``image`` with ``blur_sigma`` pixels.
    """
    if baseline is None:
        return torch.zeros_like(image)
    if isinstance(baseline, str):
        if baseline != "blur":
            raise ValueError(f"baseline must be a number, None or 'blur', got {baseline!r}")
        return gaussian_blur(image, blur_sigma)
    return torch.full_like(image, float(baseline))


def check_baseline(method: str, baseline: object) -> None:
    """Raise ``ValueError`` unless ``baseline`` is ``None``, a number or ``"blur"``."""
    if baseline is None or baseline == "blur":
        return
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise ValueError(f"explainer {method!r}: baseline must be a number, None or 'blur', got {baseline!r}")


def superpixels(image: torch.Tensor, n_segments: int, compactness: float, sigma: float) -> torch.Tensor:
    """SLIC superpixels of one ``(C, H, W)`` image: an ``(H, W)`` long tensor of labels ``0..M-1``.

    The image is averaged over channels and rescaled to ``[0, 1]`` (min-max) before
    :func:`skimage.segmentation.slic` (``channel_axis=None``), so ``compactness`` is in
    units of that range. Labels are made contiguous. The result is on ``image``'s device.
    This is the only CPU/numpy step of LIME and Kernel SHAP and runs once per image.
    """
    from skimage.segmentation import slic

    gray = image.detach().float().mean(dim=0).cpu().numpy().astype(np.float64)
    lo, hi = float(gray.min()), float(gray.max())
    gray = (gray - lo) / (hi - lo) if hi > lo else np.zeros_like(gray)
    labels = slic(gray, n_segments=n_segments, compactness=compactness, sigma=sigma,
                  channel_axis=None, start_label=0, enforce_connectivity=True)
    _, inverse = np.unique(labels, return_inverse=True)
    return torch.from_numpy(inverse.reshape(labels.shape).astype(np.int64)).to(image.device)


def segment_means(image: torch.Tensor, segments: torch.Tensor) -> torch.Tensor:
    """``(C, H, W)`` image where every pixel holds its superpixel's per-channel mean (LIME's hide_color=None)."""
    count = int(segments.max()) + 1
    flat = segments.reshape(-1)
    # sorted cumulative sums instead of atomic scatter-adds: deterministic on every device
    order = torch.argsort(flat, stable=True)
    sizes = torch.bincount(flat, minlength=count)
    ends = torch.cumsum(sizes, 0)
    csum = torch.cumsum(image.reshape(image.shape[0], -1)[:, order].double(), dim=1)
    csum = torch.cat([torch.zeros(image.shape[0], 1, dtype=csum.dtype, device=csum.device), csum], dim=1)
    sums = csum[:, ends] - csum[:, ends - sizes]
    means = (sums / sizes.clamp(min=1).double()).to(image.dtype)
    return means[:, flat].reshape(image.shape)


def hidden_image(image: torch.Tensor, segments: torch.Tensor, hide_color: float | None) -> torch.Tensor:
    """What absent superpixels show: their mean (``None``, as LIME) or the constant ``hide_color``."""
    if hide_color is None:
        return segment_means(image, segments)
    return torch.full_like(image, float(hide_color))


def compose_from_presence(image: torch.Tensor, hidden: torch.Tensor, segments: torch.Tensor,
                          presence: torch.Tensor) -> torch.Tensor:
    """``(K, C, H, W)`` images keeping superpixel ``j`` of ``image`` where ``presence[k, j]`` is 1.

    ``presence`` is ``(K, M)`` (0/1, any dtype); absent superpixels show ``hidden``.
    """
    keep = presence.to(image.dtype)[:, segments].unsqueeze(1)  # K,1,H,W
    return hidden.unsqueeze(0) + keep * (image - hidden).unsqueeze(0)
