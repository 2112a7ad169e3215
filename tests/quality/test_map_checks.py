"""Per-map checks: degenerate maps, split-half stability and its Spearman–Brown arithmetic, adaptive sampling."""

from __future__ import annotations

import math

import pytest
import torch

from mammoxai.explainers import Explanation, time_budget
from mammoxai.explainers._stability import (pearson, run_adaptive, samples_for, spearman_brown,
                                            split_half_stability)
from mammoxai.explainers.quality import explanation_not_informative, map_figures, not_informative_reason


def test_not_informative_reason_names_constant_near_constant_and_non_finite_maps():
    assert not_informative_reason(torch.zeros(8, 8)) == "map is constant (0)"
    assert not_informative_reason(torch.full((8, 8), 0.999)).startswith("map is constant")
    near = torch.full((8, 8), 1.0, dtype=torch.float64)
    near[0, 0] += 1e-8
    assert not_informative_reason(near).startswith("map is near-constant")
    nan = torch.rand(8, 8)
    nan[3, 3] = float("nan")
    assert not_informative_reason(nan) == "map has 1 non-finite value(s) of 64"
    assert not_informative_reason(torch.full((4, 4), float("inf"))).startswith("map has 16 non-finite")
    assert not_informative_reason(torch.rand(8, 8)) == ""
    small = torch.rand(8, 8) * 1e-9          # tiny but structured: informative
    assert not_informative_reason(small) == ""


def test_spearman_brown_and_prophecy():
    assert float(spearman_brown(0.5)) == pytest.approx(2 / 3)
    assert float(spearman_brown(1.0)) == 1.0
    assert float(spearman_brown(0.2, 4)) == pytest.approx(0.8 / 1.6)
    # the prophecy inverts Spearman–Brown: stability s with n samples -> ρ₁, then n for s again
    n = 16
    s = 0.3
    assert samples_for(s, n, s) == pytest.approx(n)
    rho1 = s / (n - (n - 1) * s)
    assert samples_for(s, n, 0.95) == pytest.approx(0.95 * (1 - rho1) / (rho1 * 0.05))
    assert samples_for(-0.1, n, 0.95) == math.inf


def test_split_half_stability_predicts_the_correlation_between_independent_runs():
    """Averages of noisy samples: the split-half figure estimates the run-to-run correlation."""
    gen = torch.Generator().manual_seed(0)
    truth = torch.randn(1, 64, 64, generator=gen)
    n = 40

    def run() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        samples = truth + 3.0 * torch.randn(n, 64, 64, generator=gen)
        return samples.mean(0, keepdim=True), samples[0::2].mean(0, keepdim=True), samples[1::2].mean(0, keepdim=True)

    full_a, half_1, half_2 = run()
    full_b, _, _ = run()
    estimate = float(split_half_stability(half_1, half_2)[0])
    actual = float(pearson(full_a, full_b)[0])
    expected = n / 9 / (1 + n / 9)            # signal variance 1, noise 9/n per pixel
    assert estimate == pytest.approx(actual, abs=0.05)
    assert actual == pytest.approx(expected, abs=0.05)
    same = torch.ones(1, 4, 4)
    assert float(split_half_stability(same, same)[0]) == 1.0


def _sampler(noise: float, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    truth = torch.randn(32, 32, generator=gen)
    sums = torch.zeros(2, 32, 32)
    counts = [0, 0]
    drawn: list[int] = []

    def draw(start: int, stop: int) -> None:
        drawn.append(stop - start)
        for i in range(start, stop):
            sums[i % 2] += truth + noise * torch.randn(32, 32, generator=gen)
            counts[i % 2] += 1

    def halves():
        return sums[0] / counts[0], sums[1] / counts[1]

    return draw, halves, drawn


def test_adaptive_sampling_reaches_the_target_and_reports_why_it_stopped():
    draw, halves, drawn = _sampler(noise=4.0)
    run = run_adaptive(draw, halves, 16, 0.9, 4096)
    assert run.stopped == "target" and run.stability >= 0.9 and run.samples > 16
    assert run.samples == sum(drawn) and all(k % 2 == 0 for k in drawn[1:])
    assert run.samples < 4096

    draw, halves, drawn = _sampler(noise=4.0)
    run = run_adaptive(draw, halves, 16, 0.0, 4096)          # target 0: the configured count only
    assert run.stopped == "off" and run.samples == 16 and drawn == [16]

    draw, halves, _ = _sampler(noise=4.0)
    run = run_adaptive(draw, halves, 16, 0.999, 100)         # the cap stops it
    assert run.stopped == "cap" and run.samples == 100 and run.stability < 0.999


def test_adaptive_sampling_stops_before_the_time_budget_runs_out():
    draw, halves, _ = _sampler(noise=50.0)
    with time_budget(0.0):                                   # no time left: nothing beyond the first batch
        run = run_adaptive(draw, halves, 8, 0.99, 10_000)
    assert run.stopped == "time" and run.samples == 8


def _explanation(extras: dict, **parameters) -> Explanation:
    return Explanation(method="x", heatmap=torch.zeros(2, 4, 4), target=torch.zeros(2, dtype=torch.long),
                       parameters=parameters, seconds=0.0, extras=extras)


def test_map_figures_report_stability_completeness_and_a_caution_below_the_target():
    e = _explanation({"stability": [0.97, 0.62], "samples_used": [64, 1024]}, stability_target=0.95)
    assert map_figures(e, 0) == ({"stability": 0.97}, "")
    figures, caution = map_figures(e, 1)
    assert figures == {"stability": 0.62} and caution == "map unstable: stability 0.62 < 0.95 after 1024 samples"
    assert map_figures(_explanation({"stability": [0.5, 0.5]}, stability_target=0.0), 0) == ({"stability": 0.5}, "")
    e = _explanation({"completeness_error": [0.004, float("nan")]})
    assert map_figures(e, 0) == ({"completeness_error": 0.004}, "")
    assert map_figures(e, 1) == ({}, "")


def test_a_map_from_saturated_scores_is_not_informative():
    """Perturbation scores that did not move (a saturated softmax) explain nothing, however the map looks."""
    e = _explanation({"score_range": [(0.99999994, 1.0), (0.2, 0.9)]})
    e.heatmap = torch.rand(2, 4, 4) * 1e-8
    assert explanation_not_informative(e, 0).startswith("model output did not change under perturbation")
    assert explanation_not_informative(e, 1) == ""
    e.heatmap[1] = 0.0
    assert explanation_not_informative(e, 1) == "map is constant (0)"


def test_a_budget_overrun_inside_an_extra_batch_keeps_what_was_drawn():
    from mammoxai.explainers import ExplainerTimeout

    draw, halves, drawn = _sampler(noise=4.0)
    calls = []

    def slow_draw(start: int, stop: int) -> None:
        calls.append((start, stop))
        if len(calls) > 1:                       # the machine slowed down: cut half-way through the batch
            draw(start, start + 2)
            raise ExplainerTimeout("x", "cut")
        draw(start, stop)

    run = run_adaptive(slow_draw, halves, 16, 0.99, 4096, count=lambda: sum(drawn))
    assert run.stopped == "time" and run.samples == 18 and -1 <= run.stability <= 1
