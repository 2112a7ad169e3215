"""Our scores against Quantus 0.6.0, configured to the same definitions, on the same inputs (within 5 %)."""

from __future__ import annotations

import numpy as np
import pytest
import quantus
import torch

from mammoxai.explainers import quality

from .conftest import SIZE


def _relative_gap(ours: np.ndarray, theirs: np.ndarray) -> float:
    return float(np.max(np.abs(ours - theirs) / np.maximum(np.abs(theirs), 1e-12)))


def _blur_replacement(arr: np.ndarray, indices: np.ndarray, blurred: np.ndarray, **_: object) -> np.ndarray:
    """Quantus perturb_func: replace ``indices`` of each flattened image by the blurred image's values."""
    out = arr.copy()
    rows = np.arange(arr.shape[0])[:, None]
    out[rows, indices] = blurred.reshape(arr.shape[0], -1)[rows, indices]
    return out


@pytest.mark.parametrize("baseline", ["blur", "zero"])
def test_deletion_matches_quantus_pixel_flipping(linear_model, images, baseline):
    steps = 16
    x = images
    target = linear_model(x).argmax(dim=1)
    sign = torch.where(target == 1, 1.0, -1.0).view(-1, 1, 1)    # evidence for the predicted class
    heatmap = sign * (linear_model.weight * x)[:, 0].detach()
    deletion, _ = quality.perturbation_curves(linear_model, x, heatmap, target, steps=steps, baseline=baseline,
                                              batch_size=7)
    base = quality.make_baseline(x, baseline).numpy()
    metric = quantus.PixelFlipping(
        features_in_step=SIZE * SIZE // steps, abs=False, normalise=False, disable_warnings=True,
        perturb_func=_blur_replacement, perturb_func_kwargs={"blurred": base})
    curves = np.asarray(metric(model=linear_model, x_batch=x.numpy(), y_batch=target.numpy(),
                               a_batch=heatmap[:, None].numpy(), channel_first=True, softmax=True, device="cpu",
                               batch_size=x.shape[0]))
    ours = deletion.numpy()
    # Quantus' curve starts after the first step; its AUC is the trapezoid with unit spacing.
    assert curves.shape == (x.shape[0], steps)
    assert ours[:, 0].max() - ours[:, -1].min() > 0.2, "the curve must actually fall for a fair comparison"
    assert _relative_gap(ours[:, 1:], curves) < 0.05
    theirs_auc = np.trapezoid(np.concatenate([ours[:, :1], curves], axis=1), dx=1.0 / steps, axis=1)
    ours_auc = quality.curve_auc(deletion).numpy()
    assert _relative_gap(ours_auc, theirs_auc) < 0.05
    # Quantus' own AUC (return_auc_per_sample=True) is np.trapz(curve, dx=1), which numpy 2.4 no longer
    # has; the same rule, over the same points (it leaves out the unperturbed input):
    quantus_auc = np.trapezoid(curves, dx=1.0, axis=1)
    ours_from_step1 = np.trapezoid(ours[:, 1:], dx=1.0, axis=1)
    assert _relative_gap(ours_from_step1, quantus_auc) < 0.05


def test_sparseness_matches_quantus(images):
    gen = torch.Generator().manual_seed(3)
    maps = torch.randn(3, SIZE, SIZE, generator=gen) ** 3
    maps[1] = torch.zeros(SIZE, SIZE)
    maps[1, 5, 5] = 2.0
    ours = quality.sparseness(maps).numpy()
    theirs = np.asarray(quantus.Sparseness(disable_warnings=True)(
        model=None, x_batch=images.numpy(), y_batch=np.zeros(3, dtype=int), a_batch=maps[:, None].numpy().copy(),
        channel_first=True))
    assert _relative_gap(ours, theirs) < 0.05
    assert ours[1] > 0.99 and 0 < ours[0] < ours[1]


def test_localisation_matches_quantus(images, masks):
    gen = torch.Generator().manual_seed(4)
    maps = torch.rand(3, SIZE, SIZE, generator=gen)
    maps[0, 6, 6] = 5.0       # maximum inside mask 0
    maps[1, 0, 0] = 5.0       # maximum outside mask 1
    maps[2, 8:24, 20:28] += 1.0
    y = np.zeros(3, dtype=int)
    ours_pg = quality.pointing_game(maps, masks).numpy()
    theirs_pg = np.asarray(quantus.PointingGame(disable_warnings=True)(
        model=None, x_batch=images.numpy(), y_batch=y, a_batch=maps[:, None].numpy().copy(),
        s_batch=masks[:, None].numpy().astype(float), channel_first=True), dtype=float)
    np.testing.assert_array_equal(ours_pg, theirs_pg)
    assert list(ours_pg[:2]) == [1.0, 0.0]
    ours_rm = quality.relevance_mass(maps, masks).numpy()
    theirs_rm = np.asarray(quantus.RelevanceMassAccuracy(disable_warnings=True)(
        model=None, x_batch=images.numpy(), y_batch=y, a_batch=maps[:, None].numpy().copy(),
        s_batch=masks[:, None].numpy().astype(float), channel_first=True))
    assert _relative_gap(ours_rm, theirs_rm) < 0.05
