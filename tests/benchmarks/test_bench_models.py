"""``benchmarks/bench_models.py``: the realistic checkpoint is reproducible and loads as the node loads it;
``--scale`` scales the counts it says it scales and projects with the right ratios."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(scope="module")
def bench(load_benchmark):
    return load_benchmark("bench_models")


def test_realistic_checkpoint_is_reproducible_and_loads(bench, tmp_path: Path) -> None:
    from mammoxai.models import load_classifier
    from mammoxai.models.classifier import file_sha256

    a = bench.build_checkpoint(tmp_path / "a", "efficientnet_b2", (1024, 512), 3, seed=0)
    b = bench.build_checkpoint(tmp_path / "b", "efficientnet_b2", (1024, 512), 3, seed=0)
    c = bench.build_checkpoint(tmp_path / "c", "efficientnet_b2", (1024, 512), 3, seed=1)
    assert file_sha256(a) == file_sha256(b) != file_sha256(c)
    assert a.with_suffix(".json").is_file()
    clf = load_classifier(a, device="cpu")
    assert clf.metadata.in_chans == 3 and clf.metadata.input_size == (1024, 512)
    assert clf.metadata.mean == bench.IMAGENET_MEAN and "not for clinical use" in clf.metadata.intended_use
    assert 7.0 < sum(p.numel() for p in clf.module.parameters()) / 1e6 < 8.5   # EfficientNet-B2, 2 classes
    x, geometry = clf.preprocess(torch.rand(2048, 1664).numpy(), "L")
    assert tuple(x.shape) == (1, 3, 1024, 512) and geometry.input_size == (1024, 512)


def test_scale_one_leaves_the_profile_alone(bench) -> None:
    from mammoxai.config import PROFILE_METHODS, PROFILE_PARAMS

    methods, params, ratios = bench.profile_parameters("full", 1.0)
    assert methods == PROFILE_METHODS["full"] and params == PROFILE_PARAMS["full"] and ratios == {}


def test_scale_reduces_counts_and_records_the_pass_ratios(bench) -> None:
    methods, params, ratios = bench.profile_parameters("full", 0.25)
    assert params["integrated_gradients"]["steps"] == 16 and ratios["integrated_gradients"] == 4.0
    assert params["rise"]["n_masks"] == 1000 and params["lime"]["samples"] == 250
    assert params["occlusion"] == {"patch": 32, "stride": 16} and ratios["occlusion"] == 4.0
    assert "gradcam" not in ratios and "scorecam" not in ratios      # not sample-driven: measured as they are


def test_projection_scales_explain_and_sensitivity(bench) -> None:
    result = {"pass_ratios": {"integrated_gradients": 4.0, "rise": 10.0},
              "sensitivity_methods": ["integrated_gradients"], "sensitivity_samples": 2,
              "images": [{"kind": "counted", "wall_s": 10.0, "stages_s": {
                  "predict": 1.0, "explain.integrated_gradients": 2.0, "explain.rise": 1.0, "quality": 3.0,
                  "write": 2.0}}]}
    s = bench.summarise(result)
    assert s["s_per_image"] == 10.0 and s["stages_median_s"]["other"] == pytest.approx(1.0)
    p = s["projected"]
    assert p["stages_median_s"]["explain.integrated_gradients"] == 8.0
    assert p["stages_median_s"]["explain.rise"] == 10.0
    assert p["stages_median_s"]["quality"] == pytest.approx(3.0 + 2 * 6.0)   # IG's two noisy re-runs
    assert p["s_per_image"] == pytest.approx(10.0 + 6.0 + 9.0 + 12.0)
