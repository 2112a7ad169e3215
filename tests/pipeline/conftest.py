"""Fixtures for the pipeline and the `mammoxai explain` command: phantoms as DICOM, a CT, a corrupt file."""

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from mammoxai.config import load_settings
from mammoxai.dicom_io import write_phantom_dicom
from mammoxai.models.phantoms import generate_phantom


@pytest.fixture(scope="session")
def phantom_files(tmp_path_factory) -> dict[str, Path]:
    """Two views of one study (L CC malignant mass, R MLO normal), as MG For Presentation."""
    folder = tmp_path_factory.mktemp("phantoms")
    study = generate_uid()
    files = {}
    for name, seed, finding, laterality, view in [("lcc", 11, "malignant_mass", "L", "CC"),
                                                  ("rmlo", 12, "normal", "R", "MLO")]:
        p = generate_phantom(seed, finding=finding, laterality=laterality, view=view, shape=(512, 416))
        path = folder / f"{name}.dcm"
        write_phantom_dicom(p.image, laterality=p.laterality, view=p.view, bits_stored=p.bits_stored, path=path,
                            study_instance_uid=study, instance_number=len(files) + 1)
        files[name] = path
    return files


@pytest.fixture(scope="session")
def ct_file(tmp_path_factory) -> Path:
    """A small CT image routed by mistake."""
    ds = pydicom.Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.PatientID = "CT1"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.PixelData = np.zeros((8, 8), np.uint16).tobytes()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path_factory.mktemp("ct") / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def fast_settings(monkeypatch, tmp_path):
    for key in [k for k in __import__("os").environ if k.startswith("MAMMOXAI_")]:
        monkeypatch.delenv(key)
    settings = load_settings()
    settings.model.device = "cpu"
    settings.explainers.enabled = ["gradcam", "saliency"]
    settings.explainers.quality = False
    settings.output.sc_max_size = 512
    return settings
