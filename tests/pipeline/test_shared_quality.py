"""The node scores every map of an image in shared passes: the figures are those of each map scored alone,
and a failure of the shared call falls back to one map at a time; the SC renderer resizes the image once."""

import logging

import numpy as np
import pytest

from mammoxai.dicom_io import Mammogram, render
from mammoxai.explainers import quality
from mammoxai.pipeline import Pipeline


@pytest.fixture
def scored(fast_settings, phantom_files):
    fast_settings.explainers.enabled = ["gradcam", "saliency", "integrated_gradients"]
    fast_settings.explainers.params = {"integrated_gradients": {"steps": 4}}
    fast_settings.explainers.sanity = "off"
    fast_settings.explainers.quality = True
    fast_settings.explainers.quality_steps = 6
    fast_settings.output.sc_max_size = 512
    pipeline = Pipeline(fast_settings)
    (item,) = pipeline.process([phantom_files["lcc"]])
    assert item.status == "done", item.reason
    return pipeline, item


def test_shared_scores_are_each_maps_own(scored, phantom_files):
    pipeline, item = scored
    options = pipeline.settings.explainers
    mammogram = item.mammogram
    batch, _ = pipeline.classifier.preprocess(mammogram.pixels, mammogram.laterality)
    by_name = {e.name: e for e in pipeline.explainers}
    for method_map in item.result.maps:
        explainer = by_name[method_map.method]
        explanation = explainer.explain(pipeline.classifier.module, batch)
        (alone,) = quality.score_explanation(pipeline.classifier.module, batch, explanation,
                                             explainer=explainer if pipeline._gets_sensitivity(explainer) else None,
                                             steps=options.curve_steps(),
                                             baseline=options.quality_baseline, batch_size=options.batch_size,
                                             sensitivity_samples=options.sensitivity_samples)
        assert set(alone) <= set(method_map.quality)
        for key, value in alone.items():
            assert method_map.quality[key] == pytest.approx(value, rel=1e-4, abs=1e-5), (method_map.method, key)


def test_a_failing_shared_call_scores_the_maps_one_by_one(fast_settings, phantom_files, monkeypatch, caplog):
    fast_settings.explainers.enabled = ["gradcam", "saliency"]
    fast_settings.explainers.sanity = "off"
    fast_settings.explainers.quality = True
    fast_settings.explainers.quality_steps = 4
    fast_settings.output.sc_max_size = 512

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory")

    monkeypatch.setattr("mammoxai.pipeline.score_explanations", broken)
    with caplog.at_level(logging.WARNING, logger="mammoxai.pipeline"):
        (item,) = Pipeline(fast_settings).process([phantom_files["lcc"]])
    assert "scoring them one by one" in caplog.text
    assert all("faithfulness" in m.quality for m in item.result.maps)


def test_display_image_is_made_once_per_array_and_size(monkeypatch):
    pixels = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    mammogram = Mammogram(dataset=None, pixels=pixels, laterality="R", view="CC")
    calls = []
    original = render.resize
    monkeypatch.setattr(render, "resize", lambda a, s: calls.append(s) or original(a, s))
    first = render.display_image(mammogram, (32, 24))
    assert render.display_image(mammogram, (32, 24)) is first and calls == [(32, 24)]
    np.testing.assert_array_equal(first, original(mammogram.display_pixels(), (32, 24)))
    assert not first.flags.writeable
    render.display_image(mammogram, (16, 12))                       # another size: made anew
    other = Mammogram(dataset=None, pixels=pixels.copy(), laterality="R", view="CC")
    render.display_image(other, (32, 24))                           # another array: made anew
    flipped = Mammogram(dataset=None, pixels=pixels, laterality="R", view="CC", flip_horizontal=True)
    np.testing.assert_array_equal(render.display_image(flipped, (32, 24)), first[:, ::-1])   # other flips: anew
    assert calls == [(32, 24), (16, 12), (32, 24), (32, 24)]
