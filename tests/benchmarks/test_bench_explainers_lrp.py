"""``benchmarks/bench_explainers.py``: LRP's model work is the layer passes its rules make, recorded and replayed.

LRP runs on a canonised copy with modified weights, which the model's pass counter cannot see; the
benchmark records every layer pass of its rules (:class:`LayerPassRecorder`) and replays exactly those
convolutions on the bare layers (:func:`replay_layers`), so that "time / model" is LRP's own overhead.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mammoxai import explainers as xai


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_explainers")


def _cnn() -> nn.Module:
    """conv (signed image input) → ReLU → conv (non-negative input) → ReLU → average pool → linear."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 2)).eval()


@pytest.mark.parametrize(("composite", "passes"), [
    ("epsilon_plus_flat", 4),      # flat 1, z⁺ on a non-negative input 1, pool 1, ε 1
    ("epsilon_plus", 5),           # z⁺ on the signed image 2, z⁺ 1, pool 1, ε 1
    ("epsilon_alpha2_beta1", 8),   # α-β on the signed image 4, on a non-negative input 2, pool 1, ε 1
])
def test_recorder_sees_each_layer_pass_of_lrps_rules(bench, composite, passes):
    model, x = _cnn(), torch.randn(1, 1, 16, 16)
    explainer = xai.create("lrp", composite=composite)
    with bench.LayerPassRecorder() as recorder:
        explainer.explain(model, x, 1)
    assert len(recorder.calls) == passes
    from mammoxai.explainers import _lrp_rules
    assert _lrp_rules._call is recorder._original          # restored on exit
    shapes = {shape for _, _, shape, _ in recorder.calls}
    assert (1, 1, 16, 16) in shapes and (1, 4, 16, 16) in shapes


def test_replay_runs_the_recorded_layers_forward_and_backward(bench, monkeypatch):
    model, x = _cnn(), torch.randn(1, 1, 16, 16)
    explainer = xai.create("lrp")
    with bench.LayerPassRecorder() as recorder:
        explainer.explain(model, x, 1)
    canon = explainer._canonised(model, x)[0]
    from mammoxai.explainers import _lrp_rules

    passes: list[tuple[type, tuple[int, ...], bool]] = []
    original = _lrp_rules.layer_forward

    def counting(module, params, a):
        passes.append((type(module), tuple(a.shape), a.requires_grad))
        return original(module, params, a)

    monkeypatch.setattr(_lrp_rules, "layer_forward", counting)
    forwards: list[int] = []
    handle = canon.register_forward_hook(lambda mod, i, o: forwards.append(i[0].shape[0]))
    try:
        work = bench.replay_layers(canon, x, recorder.calls, torch.device("cpu"), "off")
        work()
    finally:
        handle.remove()
    assert forwards == [1]                                    # one forward of the canonised copy
    assert passes == [(type(m), shape, True) for m, _, shape, _ in recorder.calls]   # each layer pass, with grad
    times = bench.timed_rounds({"model": work}, torch.device("cpu"), 1, clock="cpu")
    assert times["model"] > 0
