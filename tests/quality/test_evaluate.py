"""``mammoxai evaluate | sanity | bench`` on a small real checkpoint, phantoms and a CBIS-DDSM-like folder."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from mammoxai import cli
from mammoxai import evaluate as ev
from mammoxai.models.phantoms import generate_phantom
from mammoxai.models.preprocess import Geometry

from .conftest import INPUT_SIZE, InputGradient, NotForThisModel, write_mg

SMALL = (256, 208)


def test_model_mask_thresholds_and_keeps_tiny_lesions():
    geometry = Geometry(original_shape=(100, 100), crop_box=(0, 0, 100, 100), flipped=False, input_size=(10, 10))
    mask = np.zeros((100, 100), dtype=bool)
    assert ev.model_mask(geometry, mask) is None
    mask[0:30, 0:30] = True
    small = ev.model_mask(geometry, mask)
    assert small.dtype == bool and small.shape == (10, 10) and 4 <= small.sum() <= 16
    tiny = np.zeros((100, 100), dtype=bool)
    tiny[55, 55] = True                                      # 1 % of one model pixel
    assert ev.model_mask(geometry, tiny).sum() >= 1


def test_phantom_samples_carry_their_masks(classifier):
    samples = ev.phantom_samples(classifier, 4, shape=SMALL)
    assert [s.image_id for s in samples] == [f"phantom-{ev.EVAL_SEED + i}" for i in range(4)]
    for s in samples:
        truth = generate_phantom(int(s.image_id.split("-")[1]), shape=SMALL)
        assert s.tensor.shape == (1, 1, *INPUT_SIZE) and s.finding == truth.finding and s.label == truth.label
        assert (s.mask is None) == (truth.finding == "normal")
        if s.mask is not None:
            assert s.mask.shape == INPUT_SIZE and s.mask.any()


def test_evaluate_samples_summary_table_and_plot(classifier, tmp_path):
    samples = ev.phantom_samples(classifier, 3, shape=SMALL)
    explainers = [InputGradient(times_input=True), NotForThisModel()]
    rows, failures = ev.evaluate_samples(classifier, explainers, samples, batch_images=2, steps=4,
                                         sensitivity_samples=1)
    assert list(failures) == ["test_not_applicable"] and "never applies" in failures["test_not_applicable"]
    assert len(rows) == 3 and {r["method"] for r in rows} == {"test_input_gradient"}
    for row, sample in zip(rows, samples):
        assert row["image_id"] == sample.image_id and row["seconds"] > 0
        assert ("pointing_game" in row) == (sample.mask is not None)
        assert -1 <= row["faithfulness"] <= 1
    # the randomisation check runs on the first batch (2 images): gradient × input depends on the weights
    assert [("randomisation_rho" in r) for r in rows] == [True, True, False]
    assert all(r["randomisation_rho"] < 0.9 for r in rows[:2])
    summary = ev.summarise_rows(rows)
    assert len(summary) == 1 and summary[0]["n"] == 3 and summary[0]["randomisation_rho_n"] == 2
    mean, sd, n = ev.summarise([r["sparseness"] for r in rows])
    assert summary[0]["sparseness_mean"] == pytest.approx(mean) and summary[0]["sparseness_sd"] == pytest.approx(sd)
    text = ev.markdown_table(summary, failures)
    assert "| test_input_gradient |" in text and "test_not_applicable: " in text and "Trust order" in text
    path = ev.write_csv(rows, tmp_path / "rows.csv")
    with path.open() as handle:
        read = list(csv.DictReader(handle))
    assert len(read) == 3 and float(read[0]["sparseness"]) == pytest.approx(rows[0]["sparseness"])
    png = ev.plot_summary(summary, tmp_path / "s.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_trust_order_ranks_by_mean_rank():
    def entry(method, faith, sens):
        e = {"source": "phantoms", "method": method, "n": 2}
        for key in ev.TRUST_SCORES:
            e[f"{key}_mean"], e[f"{key}_sd"], e[f"{key}_n"] = math.nan, math.nan, 0
        e.update(faithfulness_mean=faith, faithfulness_n=2, max_sensitivity_mean=sens, max_sensitivity_n=2)
        return e

    order = ev.trust_order([entry("a", 0.1, 0.9), entry("b", 0.5, 0.1), entry("c", 0.5, 0.5)])
    assert [m for m, _ in order] == ["b", "c", "a"]
    assert order[0][1] == pytest.approx((1.5 + 1) / 2)


def test_cbis_samples_read_images_and_roi_masks(classifier, tmp_path):
    phantom = generate_phantom(7, finding="malignant_mass", laterality="L", shape=SMALL)
    root = tmp_path / "cbis"
    image_dir = "Mass-Test_P_00001_LEFT_CC"
    write_mg(root / image_dir / "1.2.3" / "4.5.6" / "000000.dcm", phantom.image, "L")
    roi_dir = root / "Mass-Test_P_00001_LEFT_CC_1" / "1.2.3" / "7.8.9"
    write_mg(roi_dir / "000000.dcm", phantom.image[:40, :40], "L")            # the cropped lesion
    write_mg(roi_dir / "000001.dcm", phantom.mask.astype(np.uint16) * 255, "L")  # the ROI mask
    with (root / "mass_case_description_test_set.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["patient_id", "pathology", "image file path", "ROI mask file path"])
        writer.writerow(["P_00001", "MALIGNANT", f"{image_dir}/x/y/000000.dcm",
                         "Mass-Test_P_00001_LEFT_CC_1/x/y/000001.dcm"])
        writer.writerow(["P_00002", "BENIGN", "Mass-Test_P_00002_LEFT_CC/x/y/000000.dcm", ""])   # not downloaded
    samples = ev.cbis_samples(classifier, root, limit=5)
    assert len(samples) == 1
    s = samples[0]
    assert s.source == "cbis-ddsm" and s.label == 1 and s.finding == "malignant_mass"
    assert s.tensor.shape == (1, 1, *INPUT_SIZE) and s.mask is not None and s.mask.any()
    with pytest.raises(ev.EvaluateError, match="no CBIS-DDSM case-description CSV"):
        ev.cbis_samples(classifier, tmp_path / "cbis" / image_dir, limit=5)
    with pytest.raises(ev.EvaluateError, match="not found"):
        ev.cbis_samples(classifier, tmp_path / "missing", limit=5)


def _env(monkeypatch, checkpoint):
    monkeypatch.setenv("MAMMOXAI_MODEL__CHECKPOINT", str(checkpoint))
    monkeypatch.setenv("MAMMOXAI_MODEL__DEVICE", "cpu")


def test_cli_evaluate_writes_tables_and_plot(checkpoint, tmp_path, monkeypatch, capsys):
    _env(monkeypatch, checkpoint)
    out = tmp_path / "eval"
    code = cli.main(["evaluate", "--phantoms", "2", "--explainers", "test_input_gradient,test_not_applicable",
                     "--out", str(out)])
    assert code == 0
    for name in ("scores.csv", "summary.csv", "summary.md", "summary.png", "failures.json"):
        assert (out / name).is_file(), name
    md = (out / "summary.md").read_text()
    assert "resnet10t" in md and "| test_input_gradient |" in md and "never applies" in md
    with (out / "scores.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 2
    assert "| test_input_gradient |" in capsys.readouterr().out
    assert cli.main(["evaluate", "--phantoms", "0", "--out", str(out)]) == 2     # nothing to evaluate


def test_cli_sanity_separates_methods(checkpoint, monkeypatch, capsys):
    _env(monkeypatch, checkpoint)
    code = cli.main(["sanity", "--phantoms", "2", "--explainers",
                     "test_input_gradient,test_input_intensity,test_not_applicable"])
    assert code == 0
    lines = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines()
             if line.startswith("| test_")}
    assert "passes" in lines["test_input_gradient"]
    assert "FAILS" in lines["test_input_intensity"]
    assert "error: never applies" in lines["test_not_applicable"]


def test_cli_sanity_write_keeps_the_verdicts_for_the_node(checkpoint, tmp_path, monkeypatch, capsys):
    import json
    import shutil

    from mammoxai.config import load_settings
    from mammoxai.models import load_classifier
    from mammoxai.pipeline import build_explainers

    copy = tmp_path / "tiny.pt"
    shutil.copyfile(checkpoint, copy)
    shutil.copyfile(checkpoint.with_suffix(".json"), copy.with_suffix(".json"))
    _env(monkeypatch, copy)
    assert cli.main(["sanity", "--phantoms", "2", "--seeds", "1", "--write", "--explainers",
                     "test_input_gradient,test_input_intensity,test_not_applicable"]) == 0
    assert "written to" in capsys.readouterr().out
    record = json.loads(copy.with_suffix(".json").read_text())["sanity"]
    assert record["randomised"] == ["layer3", "layer4", "fc"] and record["threshold"] == 0.5
    methods = record["methods"]
    assert methods["test_input_gradient"]["passed"] and not methods["test_input_intensity"]["passed"]
    assert methods["test_input_intensity"]["images"].startswith("2 phantoms") and methods["test_input_intensity"]["seeds"] == [0]
    assert "never applies" in methods["test_not_applicable"]["error"]
    # a second run of one method merges into the record; the node then leaves the failing method out
    assert cli.main(["sanity", "--phantoms", "1", "--write", "--explainers", "test_input_gradient"]) == 0
    again = json.loads(copy.with_suffix(".json").read_text())["sanity"]["methods"]
    assert set(again) == set(methods) and again["test_input_gradient"]["images"].startswith("1 phantom,")
    assert "variants" not in again["test_input_gradient"]        # same parameters: replaced, not added
    # other parameters: a second measurement beside the first, which the node picks when so configured
    monkeypatch.setenv("MAMMOXAI_EXPLAINERS__PARAMS", '{"test_input_gradient": {"times_input": true}}')
    assert cli.main(["sanity", "--phantoms", "1", "--write", "--explainers", "test_input_gradient"]) == 0
    entry = json.loads(copy.with_suffix(".json").read_text())["sanity"]["methods"]["test_input_gradient"]
    assert entry["parameters"]["times_input"] is False
    assert [v["parameters"]["times_input"] for v in entry["variants"]] == [True]
    monkeypatch.delenv("MAMMOXAI_EXPLAINERS__PARAMS")
    settings = load_settings()
    settings.explainers.enabled = ["test_input_gradient", "test_input_intensity"]
    assert [e.name for e in build_explainers(settings, load_classifier(copy, device="cpu"))] == ["test_input_gradient"]
    assert cli.main(["sanity", "--phantoms", "1", "--randomise", "layer9"]) == 2
    assert "--randomise" in capsys.readouterr().err


def test_cli_bench_unknown_name_is_a_one_line_error(capsys):
    assert cli.main(["bench", "no_such_benchmark"]) == 2
    assert "no such benchmark" in capsys.readouterr().err


def test_build_explainers_from_settings(classifier):
    from mammoxai.config import Settings, SettingsError
    from mammoxai.pipeline import build_explainers
    from mammoxai.explainers.base import _REGISTRY, register

    class Normalised(InputGradient):
        name = "test_normalised"
        defaults = {"mean": 0.0, "std": 1.0}

    if _REGISTRY.get(Normalised.name) is not None:
        _REGISTRY.pop(Normalised.name)
    register(Normalised)
    try:
        settings = Settings()
        settings.explainers.enabled = ["test_normalised", "test_input_gradient"]
        settings.explainers.seed = 5
        settings.explainers.params = {"test_input_gradient": {"times_input": True}}
        built = build_explainers(settings, classifier)
        assert [e.name for e in built] == ["test_normalised", "test_input_gradient"]
        assert built[0].params["mean"] == pytest.approx(classifier.metadata.mean[0]) and built[0].params["seed"] == 5
        assert built[1].params["times_input"] is True
        settings.explainers.params = {"test_input_gradient": {"times_input": "yes"}}
        with pytest.raises(SettingsError, match="explainers.params.test_input_gradient"):
            build_explainers(settings, classifier)
        settings.explainers.enabled = ["no_such_method"]
        with pytest.raises(SettingsError, match="explainers.enabled"):
            build_explainers(settings, classifier)
    finally:
        _REGISTRY.pop(Normalised.name, None)
