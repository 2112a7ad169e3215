"""Training and validation: AUC, seeds, a tiny phantom run via the CLI, a fake CBIS-DDSM tree."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammoxai.cli import main as cli_main
from mammoxai.errors import MammoxaiError
from mammoxai.models import load_classifier
from mammoxai.models.cbis_ddsm import (
    CbisDdsmError, cbis_arrays, find_dicom, read_case_csv, read_index, read_pixels, split_by_patient,
)
from mammoxai.models.phantoms import generate_phantom
from mammoxai.models.training import (
    TrainingError, check_disjoint, default_input_size, phantom_arrays, roc_auc, seed_everything, training_seeds,
    validate_on_phantoms, validation_seeds,
)

TINY_KWARGS = json.dumps({"channels": [8, 16, 32, 64], "stem_width": 8})


def test_roc_auc_matches_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.random(300) + 0.3 * y, 1)          # rounding makes many ties
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([0, 1], [0.5, 0.5]) == 0.5
    with pytest.raises(ValueError, match="positive and one negative"):
        roc_auc([1, 1], [0.2, 0.3])
    with pytest.raises(ValueError, match="labels but"):
        roc_auc([0, 1, 1], [0.2, 0.3])


def test_seed_ranges_are_disjoint_and_checked():
    assert list(training_seeds(3, seed=2)) == [2_000_000, 2_000_001, 2_000_002]
    assert validation_seeds(2)[0] == 10_000_000
    check_disjoint(training_seeds(2000), validation_seeds(400))
    with pytest.raises(TrainingError, match="overlap"):
        check_disjoint(range(0, 100), range(50, 60))
    assert default_input_size("vit_tiny_patch16_224") == (224, 192)
    assert default_input_size("resnet10t") == (256, 208)


def test_seed_everything_makes_torch_and_numpy_repeat():
    import random

    import torch

    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert a == (random.random(), np.random.rand(), torch.rand(1).item())


def test_phantom_arrays_labels_and_range():
    data = phantom_arrays([1, 2, 3, 4], (64, 48), shape=(128, 104))
    assert data.x.shape == (4, 64, 48) and data.x.dtype == np.float16
    assert list(data.y) == [generate_phantom(s).label for s in [1, 2, 3, 4]]
    assert 0.0 <= float(data.x.min()) and float(data.x.max()) <= 2.0


def test_train_and_validate_on_phantoms_via_cli(tmp_path, capsys):
    out = tmp_path / "run" / "m.pt"
    code = cli_main(["train", "--architecture", "resnet10t", "--train-size", "32", "--val-size", "16",
                     "--epochs", "1", "--batch-size", "8", "--input-size", "64", "48", "--seed", "1",
                     "--model-kwargs", TINY_KWARGS, "--out", str(out), "--device", "cpu"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "validation AUC" in printed and str(out) in printed
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["train_seeds"] == [1_000_000, 1_000_032]
    assert meta["training"]["epochs"] == 1 and meta["intended_use"].startswith("demo")
    clf = load_classifier(out, device="cpu")
    assert clf.metadata.input_size == (64, 48)

    assert cli_main(["validate", "--checkpoint", str(out), "--phantoms", "12"]) == 0
    line = capsys.readouterr().out
    assert "AUC on 12 held-out phantoms: " in line
    auc = float(line.split("AUC on 12 held-out phantoms: ")[1].split()[0])
    assert 0.0 <= auc <= 1.0
    # held-out seeds overlapping the training seeds are refused
    assert cli_main(["validate", "--checkpoint", str(out), "--phantoms", "5", "--seed", "1000010"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_validate_on_phantoms_returns_auc_and_accuracy(tiny_checkpoint):
    clf = load_classifier(tiny_checkpoint, device="cpu")
    auc, acc = validate_on_phantoms(clf, 8, shape=(128, 104))
    assert 0.0 <= auc <= 1.0 and 0.0 <= acc <= 1.0


# --- a fake CBIS-DDSM download -------------------------------------------------------------------------------

MASS_COLUMNS = ["patient_id", "breast_density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "mass shape", "mass margins", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]
CALC_COLUMNS = ["patient_id", "breast density", "left or right breast", "image view", "abnormality id",
                "abnormality type", "calc type", "calc distribution", "assessment", "pathology", "subtlety",
                "image file path", "cropped image file path", "ROI mask file path"]


def _write_dicom(path: Path, pixels: np.ndarray, series_uid: str, study_uid: str, monochrome1: bool = False) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality = "MG"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _fake_cbis(root: Path, n_train: int = 12, n_test: int = 4) -> dict[str, int]:
    """Build ROOT/{mass,calc}_case_description_{train,test}_set.csv + ROOT/CBIS-DDSM/<case>/... from phantoms."""
    labels: dict[str, int] = {}
    seed = 500
    for split, n in (("train", n_train), ("test", n_test)):
        rows = {"mass": [], "calc": []}
        for i in range(n):
            kind = "mass" if i % 2 == 0 else "calc"
            finding = ("benign_mass", "malignant_mass") if kind == "mass" else ("normal", "calcifications")
            ph = generate_phantom(seed, finding=finding[i % 4 // 2], shape=(192, 160), bits_stored=12)
            seed += 1
            side = "LEFT" if ph.laterality == "L" else "RIGHT"
            prefix = f"{'Mass' if kind == 'mass' else 'Calc'}-{'Training' if split == 'train' else 'Test'}"
            case = f"{prefix}_P_{seed:05d}_{side}_{ph.view}"
            study, series = generate_uid(), generate_uid()
            rel = f"{case}/{study}/{series}/000000.dcm"
            if i % 3 == 2:   # a download with descriptive folder names + an ROI mask series beside it
                base = root / "CBIS-DDSM" / case / "07-20-2016-DDSM-12345"
                _write_dicom(base / "1.000000-full mammogram images-24515" / "1-1.dcm", ph.image, series, study,
                             monochrome1=False)
                _write_dicom(base / "1.000000-ROI mask images-11111" / "1-1.dcm",
                             (ph.mask * 255).astype(np.uint16), generate_uid(), study)
            else:
                _write_dicom(root / "CBIS-DDSM" / rel, ph.image, series, study)
            pathology = "MALIGNANT" if ph.label else ("BENIGN" if i % 4 == 0 else "BENIGN_WITHOUT_CALLBACK")
            common = {"patient_id": f"P_{seed:05d}", "left or right breast": side, "image view": ph.view,
                      "abnormality id": "1", "abnormality type": "mass" if kind == "mass" else "calcification",
                      "assessment": "4", "pathology": pathology, "subtlety": "3", "image file path": rel,
                      "cropped image file path": rel.replace("000000", "000001"),
                      "ROI mask file path": rel.replace("000000", "000000")}
            if kind == "mass":
                rows["mass"].append({**common, "breast_density": "2", "mass shape": "OVAL", "mass margins": "CIRCUMSCRIBED"})
            else:
                rows["calc"].append({**common, "breast density": "2", "calc type": "PLEOMORPHIC",
                                     "calc distribution": "CLUSTERED"})
            labels[rel] = ph.label
            if split == "train" and i == 0:   # a second, malignant abnormality on the same (benign) image
                rows["mass"].append({**rows["mass"][-1], "abnormality id": "2", "pathology": "MALIGNANT"})
                labels[rel] = 1
        for kind, columns in (("mass", MASS_COLUMNS), ("calc", CALC_COLUMNS)):
            with open(root / f"{kind}_case_description_{split}_set.csv", "w", newline="") as fh:
                writer = csv.DictWriter(fh, fieldnames=columns)
                writer.writeheader()
                writer.writerows(rows[kind])
    return labels


@pytest.fixture(scope="module")
def fake_cbis(tmp_path_factory):
    root = tmp_path_factory.mktemp("cbis")
    return root, _fake_cbis(root)


def test_read_index_labels_layouts_and_columns(fake_cbis):
    root, labels = fake_cbis
    train = read_index(root, "train")
    test = read_index(root, "test")
    assert len(train) == 12 and len(test) == 4
    for image in train + test:
        assert image.dicom_path is not None and image.dicom_path.is_file()
        assert image.label == labels[image.image_file_path]
        assert image.laterality in ("L", "R") and image.view in ("CC", "MLO")
        ds = pydicom.dcmread(image.dicom_path, stop_before_pixels=True)
        assert "ROI" not in str(image.dicom_path)                 # the full mammogram, not the mask series
        assert ds.SeriesInstanceUID == image.image_file_path.split("/")[2]
    first = train[0]
    assert first.pathologies == ["BENIGN", "MALIGNANT"] and first.label == 1      # malignant if any is
    assert {"mass", "calcification"} <= {t for im in train for t in im.abnormality_types}
    rows = read_case_csv(root / "calc_case_description_train_set.csv")
    assert "breast density" in rows[0] and "patient id" in rows[0]


def test_find_dicom_missing_and_split_by_patient(fake_cbis):
    root, _ = fake_cbis
    assert find_dicom(root, "Mass-Training_P_99999_LEFT_CC/1.2/3.4/000000.dcm") is None
    images = read_index(root, "train")
    a, b = split_by_patient(images, 0.25, seed=0)
    assert len(a) + len(b) == len(images) and b
    assert not {im.patient_id for im in a} & {im.patient_id for im in b}


def test_read_pixels_inverts_monochrome1(tmp_path):
    img = np.arange(64 * 48, dtype=np.uint16).reshape(64, 48)
    _write_dicom(tmp_path / "m2.dcm", img, generate_uid(), generate_uid())
    _write_dicom(tmp_path / "m1.dcm", img, generate_uid(), generate_uid(), monochrome1=True)
    m2, m1 = read_pixels(tmp_path / "m2.dcm"), read_pixels(tmp_path / "m1.dcm")
    assert m2.dtype == np.float32 and m2.shape == (64, 48)
    assert np.corrcoef(m2.ravel(), m1.ravel())[0, 1] < -0.99
    (tmp_path / "bad.dcm").write_bytes(b"nope")
    with pytest.raises(MammoxaiError, match="bad.dcm"):        # CbisDdsmError, or dicom_io's read error
        read_pixels(tmp_path / "bad.dcm")


def test_bad_cbis_folders(tmp_path, fake_cbis):
    with pytest.raises(CbisDdsmError, match="folder not found"):
        read_index(tmp_path / "nowhere")
    with pytest.raises(CbisDdsmError, match="none of"):
        read_index(tmp_path)
    root, _ = fake_cbis
    bad = tmp_path / "bad"
    bad.mkdir()
    text = (root / "mass_case_description_train_set.csv").read_text().replace("MALIGNANT", "MAYBE", 1)
    (bad / "mass_case_description_train_set.csv").write_text(text)
    with pytest.raises(CbisDdsmError, match=r"mass_case_description_train_set.csv:\d+: unknown pathology 'MAYBE'"):
        read_index(bad)


def test_cbis_arrays_and_training_via_cli(fake_cbis, tmp_path, capsys):
    root, _ = fake_cbis
    train, val, info = cbis_arrays(root, (64, 48))
    assert train.x.shape == (12, 64, 48) and val.x.shape == (4, 64, 48)
    assert info["validation"] == "test split"
    out = tmp_path / "cbis.pt"
    code = cli_main(["train", "--data", "cbis-ddsm", "--cbis-root", str(root), "--architecture", "resnet10t",
                     "--epochs", "1", "--batch-size", "4", "--input-size", "64", "48",
                     "--model-kwargs", TINY_KWARGS, "--out", str(out), "--device", "cpu"])
    assert code == 0
    assert "on 4 held-out images" in capsys.readouterr().out
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["training"]["data"] == "cbis-ddsm" and meta["intended_use"].startswith("research")
    assert load_classifier(out, device="cpu").metadata.architecture == "resnet10t"
    assert cli_main(["train", "--data", "cbis-ddsm", "--out", str(out)]) == 2      # --cbis-root missing
