"""The whole chain on real files: read → predict → explain → write, and what it refuses."""

import pydicom
import pytest

from mammoxai.config import SettingsError
from mammoxai.dicom_io import is_our_output
from mammoxai.outcome import SummaryRecord
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
        assert modalities.count("SR") == 1 and modalities.count("PR") == 1 and modalities.count("SEG") == 2 + 1   # per map, + the hot regions
        assert "OT" in modalities  # the overlay SC(s) and the montage
        for ds in item.outputs:
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == source.PatientID
            assert is_our_output(ds, pipeline.settings.output)
        assert {"read", "predict", "explain.gradcam", "explain.saliency", "quality", "write"} <= set(item.timings)
    # the node keeps only each image's summary record (JSON), and makes the study summary from those
    outcomes = [item.outcome() for item in items]
    assert [o.status for o in outcomes] == ["done", "done"] and all(o.record is not None for o in outcomes)
    records = [SummaryRecord.from_json(o.record.to_json()) for o in outcomes]
    summary = pipeline.study_summary(records)
    assert summary is not None and summary.Modality == "SR"
    assert summary.StudyInstanceUID == items[0].outputs[0].StudyInstanceUID
    assert pipeline.study_summary(records[:1]) is None                 # one view: no summary


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

    from mammoxai.explainers.sanity import sanity_verdicts

    settings = load_settings()
    settings.explainers.profile = profile
    explainers = build_explainers(settings, pipeline.classifier)
    failing = {n for n, (_, passed) in sanity_verdicts(pipeline.classifier.metadata.sanity).items() if not passed}
    # by default, what fails the demo CNN's randomisation check is left out (Guided Backprop, Eigen-CAM, ...)
    assert [e.name for e in explainers] == [n for n in PROFILE_METHODS[profile] if n not in failing]
    if profile == "full":
        assert {"guided_backprop", "eigencam", "guided_gradcam"} <= failing
    for explainer in explainers:
        for key, value in settings.explainers.parameters_for(explainer.name).items():
            assert explainer.params[key] == value


def _with_sanity_record(classifier, methods):
    """A copy of ``classifier`` whose metadata carries a randomisation record with these (ρ, passed) verdicts."""
    import dataclasses

    record = {"randomised": ["layer3", "layer4", "fc"], "threshold": 0.5,
              "methods": {n: {"spearman": rho, "passed": ok} for n, (rho, ok) in methods.items()}}
    return dataclasses.replace(classifier, metadata=dataclasses.replace(classifier.metadata, sanity=record))


def test_sanity_policy_excludes_failing_methods_by_default(fast_settings, pipeline, caplog):
    classifier = _with_sanity_record(pipeline.classifier, {"saliency": (0.91, False), "gradcam": (0.08, True)})
    with caplog.at_level("WARNING", logger="mammoxai.pipeline"):
        names = [e.name for e in build_explainers(fast_settings, classifier)]
    assert names == ["gradcam"]
    assert "saliency not run" in caplog.text and "0.91" in caplog.text and "explainers.sanity = 'label'" in caplog.text
    fast_settings.explainers.sanity = "off"
    assert [e.name for e in build_explainers(fast_settings, classifier)] == ["gradcam", "saliency"]


@pytest.mark.parametrize("policy", ["label", "off"])
def test_sanity_policy_label_marks_the_outputs(policy, fast_settings, pipeline, phantom_files, tmp_path):
    from mammoxai.dicom_io import write_results

    fast_settings.explainers.sanity = policy
    classifier = _with_sanity_record(pipeline.classifier, {"saliency": (0.91, False), "gradcam": (0.08, True)})
    (item,) = Pipeline(fast_settings, classifier=classifier).process([phantom_files["lcc"]])
    assert item.status == "done", item.reason
    maps = {m.method: m for m in item.result.maps}
    assert set(maps) == {"gradcam", "saliency"}
    sr = [ds for ds in item.outputs if ds.Modality == "SR"][0]
    texts = [str(i.TextValue) for i in sr.ContentSequence[-1].ContentSequence]
    if policy == "off":
        assert all(m.caution == "" and "randomisation_rho" not in m.quality for m in maps.values())
        assert not any("randomisation" in t for t in texts)
        return
    assert maps["saliency"].caution == "map fails model-randomisation check" and maps["gradcam"].caution == ""
    assert maps["saliency"].quality["randomisation_rho"] == 0.91 and maps["gradcam"].quality["randomisation_rho"] == 0.08
    assert "Saliency (vanilla gradient): map fails model-randomisation check" in texts
    rho = {}
    for group in sr.ContentSequence:
        for item_ in getattr(group, "ContentSequence", []):
            for entry in getattr(item_, "ContentSequence", []):
                if entry.ValueType == "NUM" and entry.ConceptNameCodeSequence[0].CodeValue == "MXAI-Q-RANDRHO":
                    rho.setdefault("values", []).append(float(entry.MeasuredValueSequence[0].NumericValue))
    assert sorted(rho["values"]) == [0.08, 0.91]


def test_attack_verdicts_reach_the_report(fast_settings, pipeline, phantom_files):
    """How far to trust the decision: the smallest decision-flipping perturbation goes into the SR and JSON."""
    fast_settings.explainers.enabled = ["fgsm"]
    fast_settings.explainers.params = {"fgsm": {"eps_max": 0.2, "n_eps": 4}}
    fast_settings.explainers.sanity = "off"   # this test is about the attack report, not the policy
    (item,) = Pipeline(fast_settings, classifier=pipeline.classifier).process([phantom_files["lcc"]])
    assert item.status == "done", item.reason
    (fgsm,) = item.result.maps
    assert fgsm.signed and fgsm.quality["adversarial_max_epsilon"] == pytest.approx(0.2)
    assert fgsm.quality["adversarial_flipped"] in (0.0, 1.0)
    assert ("adversarial_epsilon" in fgsm.quality) == (fgsm.quality["adversarial_flipped"] == 1.0)
    sr = [ds for ds in item.outputs if ds.Modality == "SR"][0]
    codes_found = {entry.ConceptNameCodeSequence[0].CodeValue: float(entry.MeasuredValueSequence[0].NumericValue)
                   for group in sr.ContentSequence for item_ in getattr(group, "ContentSequence", [])
                   for entry in getattr(item_, "ContentSequence", []) if entry.ValueType == "NUM"}
    assert codes_found["MXAI-Q-ADVMAXEPS"] == pytest.approx(0.2)
    assert codes_found["MXAI-Q-ADVFLIP"] == fgsm.quality["adversarial_flipped"]


def test_a_verdict_measured_with_other_parameters_is_flagged(fast_settings, pipeline, caplog):
    import dataclasses

    record = {"randomised": ["layer3", "layer4", "fc"], "threshold": 0.5,
              "methods": {"gradcam": {"spearman": 0.1, "passed": True, "parameters": {"seed": 0, "target_layer": "layer3"}},
                          "saliency": {"spearman": 0.2, "passed": True, "parameters": {"seed": 0}}}}
    classifier = dataclasses.replace(pipeline.classifier,
                                     metadata=dataclasses.replace(pipeline.classifier.metadata, sanity=record))
    with caplog.at_level("WARNING", logger="mammoxai.pipeline"):
        build_explainers(fast_settings, classifier)
    assert "measured with other parameters" not in caplog.text        # as measured: silent
    fast_settings.explainers.params = {"gradcam": {"target_layer": "layer4"}}
    with caplog.at_level("WARNING", logger="mammoxai.pipeline"):
        build_explainers(fast_settings, classifier)
    assert "gradcam: the checkpoint's randomisation verdict was measured with other parameters" in caplog.text
    assert "target_layer 'layer3' -> 'layer4'" in caplog.text and "saliency:" not in caplog.text


def test_the_verdict_measured_with_the_configured_parameters_is_the_one_used(fast_settings, pipeline, caplog):
    import dataclasses

    layer3 = {"spearman": 0.1, "passed": True, "parameters": {"seed": 0, "target_layer": "layer3"}}
    layer4 = {"spearman": 0.8, "passed": False, "parameters": {"seed": 0, "target_layer": "layer4"}}
    record = {"randomised": ["layer3", "layer4", "fc"], "threshold": 0.5,
              "methods": {"gradcam": {**layer3, "variants": [layer4]}}}
    classifier = dataclasses.replace(pipeline.classifier,
                                     metadata=dataclasses.replace(pipeline.classifier.metadata, sanity=record))
    fast_settings.explainers.enabled = ["gradcam"]
    assert [e.name for e in build_explainers(fast_settings, classifier)] == ["gradcam"]
    fast_settings.explainers.params = {"gradcam": {"target_layer": "layer4"}}
    with caplog.at_level("WARNING", logger="mammoxai.pipeline"):
        assert build_explainers(fast_settings, classifier) == []
    assert "gradcam not run" in caplog.text and "0.80" in caplog.text
    assert "measured with other parameters" not in caplog.text
    fast_settings.explainers.sanity = "label"
    assert Pipeline(fast_settings, classifier=classifier).sanity == {"gradcam": (0.8, False)}


@pytest.mark.parametrize("wanted, measured", [
    ("auto", {"saliency"}), ("all", {"saliency", "occlusion", "integrated_gradients"}),
    (["occlusion"], {"occlusion"})])
def test_max_sensitivity_skips_multi_pass_methods_on_cpu_by_default(wanted, measured, fast_settings, pipeline,
                                                                     phantom_files):
    fast_settings.explainers.enabled = ["saliency", "occlusion", "integrated_gradients"]
    fast_settings.explainers.sensitivity_methods = wanted
    fast_settings.explainers.quality = True
    fast_settings.explainers.sanity = "off"
    (item,) = Pipeline(fast_settings, classifier=pipeline.classifier).process([phantom_files["lcc"]])
    assert item.status == "done", item.reason
    got = {m.method for m in item.result.maps if m.quality.get("max_sensitivity") is not None}
    assert got == measured
    assert all("faithfulness" in m.quality for m in item.result.maps)       # the other scores stay


def test_unknown_sensitivity_method_is_a_settings_error(fast_settings, pipeline):
    fast_settings.explainers.sensitivity_methods = ["gradcam", "no_such_method"]
    with pytest.raises(SettingsError, match="explainers.sensitivity_methods: .*no_such_method"):
        Pipeline(fast_settings, classifier=pipeline.classifier)


def test_max_sensitivity_auto_measures_every_method_on_a_gpu(fast_settings, pipeline, monkeypatch):
    fast_settings.explainers.enabled = ["saliency", "occlusion"]
    node = Pipeline(fast_settings, classifier=pipeline.classifier)
    assert [node._gets_sensitivity(e) for e in node.explainers] == [True, False]
    monkeypatch.setattr(Pipeline, "gpu_present", property(lambda self: True))
    assert [node._gets_sensitivity(e) for e in node.explainers] == [True, True]


def test_time_budget_cuts_a_method_that_overruns_and_the_others_stand(fast_settings, pipeline, phantom_files):
    """explainers.time_budget_s keeps its word: a looping method past it is stopped and reported, per image."""
    fast_settings.explainers.enabled = ["gradcam", "smoothgrad"]
    fast_settings.explainers.sanity = "off"
    fast_settings.explainers.params = {"smoothgrad": {"samples": 4, "batch_size": 1}}
    fast_settings.explainers.time_budget_s = 1e-6
    (item,) = Pipeline(fast_settings, classifier=pipeline.classifier).process([phantom_files["lcc"]])
    assert item.status == "done", item.reason                           # the job goes on without it
    assert [m.method for m in item.result.maps] == ["gradcam"]          # single pass: not interruptible
    assert item.result.failures == {"smoothgrad": "cut: exceeded time budget of 1e-06 s (explainers.time_budget_s)"}
    sr = [ds for ds in item.outputs if ds.Modality == "SR"][0]
    assert "cut: exceeded time budget" in str(sr.to_json_dict())        # the reader is told which and why


@pytest.mark.parametrize("steps", [None, 4])
def test_curve_steps_are_used_and_recorded_with_the_map(steps, fast_settings, pipeline, phantom_files):
    """explainers.quality_steps (default: the profile's) sets the deletion/insertion curves' length, and each
    scored map carries it in its parameters (the SR's algorithm parameters), so a figure says how it was made.
    The curves' length itself: tests/quality/test_bench.py counts the forward passes it costs."""
    fast_settings.explainers.enabled = ["gradcam"]
    fast_settings.explainers.quality = True
    fast_settings.explainers.sanity = "off"
    fast_settings.explainers.sensitivity_samples = 0
    fast_settings.explainers.quality_steps = steps
    (item,) = Pipeline(fast_settings, classifier=pipeline.classifier).process([phantom_files["lcc"]])
    assert item.status == "done", item.reason
    (gradcam,) = item.result.maps
    expected = steps if steps is not None else 10      # the fast profile's
    assert gradcam.parameters["quality_steps"] == expected
