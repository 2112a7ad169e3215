"""Read a CBIS-DDSM download (Sawyer-Lee et al., TCIA, doi:10.7937/K9/TCIA.2016.7O02S9CY) for training.

Published layout: ``mass_case_description_{train,test}_set.csv`` and
``calc_case_description_{train,test}_set.csv`` (one row per abnormality; columns
``patient_id``, ``breast_density`` / ``breast density``, ``left or right breast``,
``image view``, ``abnormality id``, ``abnormality type``, ``pathology``
(``BENIGN`` | ``BENIGN_WITHOUT_CALLBACK`` | ``MALIGNANT``), ``image file path``,
...) next to the DICOM tree. ``image file path`` reads
``Mass-Training_P_00001_LEFT_CC/<StudyInstanceUID>/<SeriesInstanceUID>/000000.dcm``
(the NBIA "classic" folder names). Downloads with descriptive folder names
(``Mass-Training_P_00001_LEFT_CC/07-20-2016-DDSM-74994/1.000000-full mammogram
images-24515/1-1.dcm``) are found through the case folder: the full-mammogram
DICOM is the one whose SeriesInstanceUID matches the CSV path, else the one in a
folder named "full mammogram", else the only DICOM there. The tree may sit in
the root itself or in ``ROOT/CBIS-DDSM``.

Labels are per image: malignant (1) if any abnormality on it is ``MALIGNANT``,
else benign (0) (``BENIGN`` and ``BENIGN_WITHOUT_CALLBACK``).
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..errors import MammoxaiError
from .preprocess import preprocess_array

log = logging.getLogger(__name__)

CSV_NAMES: dict[str, tuple[str, str]] = {
    "train": ("mass_case_description_train_set.csv", "calc_case_description_train_set.csv"),
    "test": ("mass_case_description_test_set.csv", "calc_case_description_test_set.csv"),
}
PATHOLOGY_LABELS: dict[str, int] = {"BENIGN": 0, "BENIGN_WITHOUT_CALLBACK": 0, "MALIGNANT": 1}


class CbisDdsmError(MammoxaiError, ValueError):
    """The CBIS-DDSM folder or one of its files is not as published; the message names the file."""


@dataclass
class CbisImage:
    """One full-field mammogram of CBIS-DDSM with its image-level label."""

    image_file_path: str          # as written in the CSV
    patient_id: str
    laterality: str               # "L" | "R"
    view: str                     # "CC" | "MLO"
    label: int                    # 1 if any abnormality is MALIGNANT
    abnormality_types: list[str] = field(default_factory=list)
    pathologies: list[str] = field(default_factory=list)
    dicom_path: Path | None = None


def _norm(key: str) -> str:
    return " ".join(key.strip().lower().replace("_", " ").split())


def read_case_csv(path: str | Path) -> list[dict[str, str]]:
    """Rows of one case-description CSV with normalised column names (lower case, ``_`` -> space)."""
    path = Path(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            rows = [{_norm(k): (v or "").strip() for k, v in row.items() if k is not None} for row in reader]
    except OSError as exc:
        raise CbisDdsmError(f"{path}: cannot read: {exc}") from None
    required = {"patient id", "left or right breast", "image view", "pathology", "image file path"}
    if rows and not required <= set(rows[0]):
        raise CbisDdsmError(f"{path}: missing column(s) {', '.join(sorted(required - set(rows[0])))}")
    return rows


def _tree_root(root: Path) -> Path:
    nested = root / "CBIS-DDSM"
    return nested if nested.is_dir() else root


def find_dicom(root: Path, image_file_path: str) -> Path | None:
    """The DICOM file for a CSV ``image file path`` under ``root`` (see the module docstring), or None."""
    tree = _tree_root(root)
    rel = image_file_path.strip().strip('"').replace("\\", "/")
    literal = tree / rel
    if literal.is_file():
        return literal
    parts = [p for p in rel.split("/") if p]
    if not parts:
        return None
    case_dir = tree / parts[0]
    if not case_dir.is_dir():
        return None
    candidates = sorted(case_dir.rglob("*.dcm"))
    if not candidates:
        return None
    if len(candidates) == 1:
        return candidates[0]
    series_uid = parts[2] if len(parts) >= 4 else None
    if series_uid:
        import pydicom

        for cand in candidates:
            try:
                ds = pydicom.dcmread(cand, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            except Exception:  # not a DICOM we can read: skip it
                continue
            if str(ds.get("SeriesInstanceUID", "")) == series_uid:
                return cand
    full = [c for c in candidates if "full mammogram" in str(c.parent).lower()]
    return full[0] if len(full) == 1 else None


def read_index(root: str | Path, split: str = "train", *, require_files: bool = True) -> list[CbisImage]:
    """Image-level index of ``split`` ("train" or "test") from the mass and calcification CSVs found in ``root``.

    Raises :class:`CbisDdsmError` when no CSV of the split exists, a pathology or
    laterality value is unknown, or (``require_files``) no image is found on disk.
    Images whose DICOM is missing are skipped with a warning.
    """
    root = Path(root)
    if split not in CSV_NAMES:
        raise ValueError(f"split {split!r} must be 'train' or 'test'")
    if not root.is_dir():
        raise CbisDdsmError(f"{root}: CBIS-DDSM folder not found")
    images: dict[str, CbisImage] = {}
    found_csv = False
    for name in CSV_NAMES[split]:
        csv_path = root / name
        if not csv_path.is_file():
            continue
        found_csv = True
        for n, row in enumerate(read_case_csv(csv_path), start=2):
            pathology = row["pathology"].upper()
            if pathology not in PATHOLOGY_LABELS:
                raise CbisDdsmError(f"{csv_path}:{n}: unknown pathology {row['pathology']!r}")
            side = row["left or right breast"].upper()
            if side not in ("LEFT", "RIGHT"):
                raise CbisDdsmError(f"{csv_path}:{n}: unknown 'left or right breast' value {row['left or right breast']!r}")
            key = row["image file path"].strip()
            image = images.get(key)
            if image is None:
                image = images[key] = CbisImage(
                    image_file_path=key, patient_id=row["patient id"], laterality=side[0],
                    view=row["image view"].upper(), label=0)
            image.label = max(image.label, PATHOLOGY_LABELS[pathology])
            image.pathologies.append(pathology)
            image.abnormality_types.append(row.get("abnormality type", ""))
    if not found_csv:
        raise CbisDdsmError(f"{root}: none of {', '.join(CSV_NAMES[split])} found")
    out = []
    for image in images.values():
        image.dicom_path = find_dicom(root, image.image_file_path)
        if image.dicom_path is None:
            log.warning("CBIS-DDSM: no DICOM found for %s", image.image_file_path)
            continue
        out.append(image)
    if require_files and not out:
        raise CbisDdsmError(f"{root}: no DICOM file of the {split} split was found (checked {len(images)} paths)")
    return out


def read_pixels(path: str | Path) -> np.ndarray:
    """MONOCHROME2 float32 pixels of a mammogram DICOM (higher = denser).

    Uses :func:`mammoxai.dicom_io.read_mammogram` when available; otherwise
    pydicom with the Modality LUT (rescale) and MONOCHROME1 inversion (the
    normalisation in preprocessing takes care of the window).
    """
    path = Path(path)
    try:
        from ..dicom_io import read_mammogram  # type: ignore[attr-defined]
    except ImportError:
        read_mammogram = None
    if read_mammogram is not None:
        try:
            return np.asarray(read_mammogram(path).pixels, dtype=np.float32)
        except MammoxaiError:
            raise
        except Exception as exc:  # fall back to the plain reader below
            log.debug("read_mammogram failed on %s (%s); using pydicom directly", path, exc)
    import pydicom
    from pydicom.pixels import apply_modality_lut

    try:
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:
        raise CbisDdsmError(f"{path}: cannot read the DICOM pixels: {type(exc).__name__}: {exc}") from None
    arr = np.asarray(apply_modality_lut(arr, ds), dtype=np.float32)
    if arr.ndim != 2:
        raise CbisDdsmError(f"{path}: expected one grayscale frame, got pixel shape {arr.shape}")
    if str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        arr = arr.max() - arr
    return arr


def images_to_arrays(images: Sequence[CbisImage], input_size: Sequence[int], *, progress: bool = False):
    """Preprocess each image's DICOM to the model input grid: :class:`~mammoxai.models.training.ArrayDataset`."""
    from .training import ArrayDataset, _progress

    xs = np.empty((len(images), int(input_size[0]), int(input_size[1])), dtype=np.float16)
    ys = np.empty(len(images), dtype=np.int64)
    for i, image in enumerate(_progress(images, len(images), "CBIS-DDSM", progress)):
        assert image.dicom_path is not None
        x, _ = preprocess_array(read_pixels(image.dicom_path), image.laterality, input_size)
        xs[i] = x
        ys[i] = image.label
    return ArrayDataset(xs, ys)


def split_by_patient(images: Sequence[CbisImage], fraction: float, seed: int) -> tuple[list[CbisImage], list[CbisImage]]:
    """Split into (train, held-out) with about ``fraction`` of the patients held out (never a patient in both)."""
    patients = sorted({im.patient_id for im in images})
    rng = np.random.default_rng(seed)
    rng.shuffle(patients)
    n_held = max(1, int(round(fraction * len(patients)))) if len(patients) > 1 else 0
    held = set(patients[:n_held])
    return [im for im in images if im.patient_id not in held], [im for im in images if im.patient_id in held]


def cbis_arrays(root: str | Path, input_size: Sequence[int], *, seed: int = 0, progress: bool = False):
    """(train ArrayDataset, validation ArrayDataset, info dict) from a CBIS-DDSM folder.

    Validation is the published test split when its CSVs and files are there,
    else 20 % of the training patients.
    """
    root = Path(root)
    train_images = read_index(root, "train")
    try:
        val_images = read_index(root, "test")
        source = "test split"
    except CbisDdsmError:
        train_images, val_images = split_by_patient(train_images, 0.2, seed)
        source = "20% of training patients"
    info = {"cbis_root": str(root), "train_images": len(train_images), "val_images": len(val_images),
            "validation": source,
            "train_malignant": int(sum(im.label for im in train_images))}
    return (images_to_arrays(train_images, input_size, progress=progress),
            images_to_arrays(val_images, input_size, progress=progress), info)

