"""The whole chain on real files: read → predict → explain → write, and what it refuses."""

import pydicom
import pytest

from mammoxai.config import SettingsError
from mammoxai.dicom_io import is_our_output
from mammoxai.pipeline import Pipeline, build_explainers


@pytest.fixture(scope="module")
def pipeline(request):
    from mammoxai.config import load_settings

    settings = load_settings()
    settings.model.device = "cpu"
    settings.explainers.enabled = ["gradcam", "saliency"]
    settings.explainers.quality = True
    settings.output.sc_max_size = 512
    return Pipeline(settings)


def test_phantom_study_is_classified_explained_and_written(pipeline, phantom_files):
    items = pipeline.process([phantom_files["lcc"], phantom_files["rmlo"]])
    assert [i.status for i in items] == ["done", "done"], [i.reason for i in items]
    for item in items:
        source = pydicom.dcmread(item.path, stop_before_pixels=True)
        result = item.result
        assert result.class_names == ("benign", "malignant")
        assert abs(sum(result.probabilities) - 1) < 1e-5
        assert {m.method for m in result.maps} == {"gradcam", "saliency"}
        for method_map in result.maps:
            assert method_map.heatmap.shape == (source.Rows, source.Columns)  # back on the stored grid
            assert method_map.quality["sparseness"] >= 0  # quality scores travel with the map
            assert {"faithfulness", "deletion_auc", "insertion_auc", "max_sensitivity"} <= set(method_map.quality)
        modalities = sorted(ds.Modality for ds in item.outputs)
        assert modalities.count("SR") == 1 and modalities.count("PR") == 1 and modalities.count("SEG") == 2
        assert "OT" in modalities  # the overlay SC(s) and the montage
        for ds in item.outputs:
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == source.PatientID
            assert is_our_output(ds, pipeline.settings.output)
        assert {"read", "predict", "explain.gradcam", "explain.saliency", "quality", "write"} <= set(item.timings)
    summary = pipeline.study_summary(items)
    assert summary is not None and summary.Modality == "SR"
    assert summary.StudyInstanceUID == items[0].outputs[0].StudyInstanceUID


def test_malignant_phantom_scores_higher_than_normal(pipeline, phantom_files):
    lcc, rmlo = pipeline.process([phantom_files["lcc"], phantom_files["rmlo"]])
    assert lcc.result.malignancy_probability > rmlo.result.malignancy_probability


def test_ct_is_ignored_with_a_reason(pipeline, ct_file):
    (item,) = pipeline.process([ct_file])
    assert item.status == "ignored"
    assert "CT" in item.reason and item.outputs == []


def test_corrupt_file_fails_with_its_name(pipeline, tmp_path, phantom_files):
    broken = tmp_path / "broken.dcm"
    broken.write_bytes(phantom_files["lcc"].read_bytes()[:4000])
    garbage = tmp_path / "garbage.dcm"
    garbage.write_bytes(b"not dicom at all" * 10)
    items = pipeline.process([broken, garbage, phantom_files["rmlo"]])
    assert [i.status for i in items] == ["failed", "failed", "done"]  # one bad file never loses the others
    assert all(i.reason for i in items[:2])


def test_our_own_output_is_not_processed_again(pipeline, phantom_files, tmp_path):
    (item,) = pipeline.process([phantom_files["lcc"]])
    for n, ds in enumerate(item.outputs):
        path = tmp_path / f"out{n}.dcm"
        ds.save_as(path, enforce_file_format=True)
        (again,) = pipeline.process([path])
        assert again.status == "ignored", (ds.Modality, again.reason)


def test_phantom_input_is_not_mistaken_for_our_output(pipeline, phantom_files):
    header = pydicom.dcmread(phantom_files["lcc"], stop_before_pixels=True)
    assert not is_our_output(header, pipeline.settings.output)


def test_one_failing_explainer_never_loses_the_others(pipeline, phantom_files):
    from mammoxai.explainers import create

    original = pipeline.explainers
    pipeline.explainers = [create("attention_rollout"), create("gradcam")]  # attention does not apply to a CNN
    try:
        (item,) = pipeline.process([phantom_files["lcc"]])
    finally:
        pipeline.explainers = original
    assert item.status == "done"
    assert [m.method for m in item.result.maps] == ["gradcam"]
    assert "attention_rollout" in item.result.failures


def test_unknown_explainer_or_parameter_is_a_settings_error(fast_settings, pipeline):
    fast_settings.explainers.enabled = ["gradcam", "telepathy"]
    with pytest.raises(SettingsError, match="explainers.enabled: unknown explainer 'telepathy'"):
        build_explainers(fast_settings, pipeline.classifier)
    fast_settings.explainers.enabled = ["integrated_gradients"]
    fast_settings.explainers.params = {"integrated_gradients": {"stepz": 3}}
    with pytest.raises(SettingsError, match=r"explainers.params.integrated_gradients: .*stepz"):
        build_explainers(fast_settings, pipeline.classifier)


def test_wrong_positive_class_is_a_settings_error(fast_settings, pipeline):
    fast_settings.model.positive_class = "cancer"
    with pytest.raises(SettingsError, match="model.positive_class"):
        Pipeline(fast_settings, classifier=pipeline.classifier)


@pytest.mark.parametrize("profile", ["fast", "full"])
def test_every_profile_builds_with_valid_parameters(profile, pipeline):
    from mammoxai.config import PROFILE_METHODS, load_settings

    settings = load_settings()
    settings.explainers.profile = profile
    explainers = build_explainers(settings, pipeline.classifier)
    assert [e.name for e in explainers] == PROFILE_METHODS[profile]
    for explainer in explainers:
        for key, value in settings.explainers.parameters_for(explainer.name).items():
            assert explainer.params[key] == value
