"""Header-only triage: classify_dataset / is_mammogram."""

from __future__ import annotations

import pydicom
import pytest
from pydicom.uid import CTImageStorage, SecondaryCaptureImageStorage, generate_uid

from mammoxai.dicom_io import Classification, DatasetKind, classify_dataset, is_mammogram, write_phantom_dicom
from mammoxai.dicom_io.classify import BREAST_PROJECTION_FOR_PRESENTATION, BREAST_TOMOSYNTHESIS


@pytest.fixture
def mg(image12) -> pydicom.Dataset:
    return write_phantom_dicom(image12, laterality="R", view="CC")


def test_mammography_sop_classes_accepted(mg, image12):
    assert classify_dataset(mg) == Classification(DatasetKind.MAMMOGRAM)
    assert str(classify_dataset(mg)) == "mammogram" and is_mammogram(mg)
    processing = write_phantom_dicom(image12, laterality="R", view="CC", voi=None, presentation_intent="FOR PROCESSING")
    assert processing.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2.1" and is_mammogram(processing)


def test_mg_secondary_capture_accepted_other_sc_not(mg):
    mg.SOPClassUID = SecondaryCaptureImageStorage
    assert is_mammogram(mg)
    mg.Modality = "OT"
    verdict = classify_dataset(mg)
    assert verdict.kind is DatasetKind.NOT_MAMMOGRAM and "Modality OT" in verdict.reason


def test_ct_is_not_a_mammogram(mg):
    mg.SOPClassUID, mg.Modality = CTImageStorage, "CT"
    verdict = classify_dataset(mg)
    assert not is_mammogram(mg)
    assert str(verdict) == "not_mammogram: Modality CT, SOP Class CT Image Storage"


def test_sr_without_pixels_is_not_a_mammogram():
    ds = pydicom.Dataset()
    ds.SOPClassUID, ds.Modality, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.88.34", "SR", generate_uid()
    assert classify_dataset(ds).kind is DatasetKind.NOT_MAMMOGRAM
    assert classify_dataset(pydicom.Dataset()).reason.startswith("no SOP Class UID")


@pytest.mark.parametrize("uid,word", [(BREAST_TOMOSYNTHESIS, "Tomosynthesis"),
                                      (BREAST_PROJECTION_FOR_PRESENTATION, "Breast Projection")])
def test_tomosynthesis_family_unsupported(mg, uid, word):
    mg.SOPClassUID = uid
    verdict = classify_dataset(mg)
    assert verdict.kind is DatasetKind.UNSUPPORTED_MAMMOGRAM and word in verdict.reason
    assert not is_mammogram(mg)


def test_rgb_and_multiframe_unsupported(mg):
    mg.SamplesPerPixel, mg.PhotometricInterpretation = 3, "RGB"
    assert "Samples per Pixel is 3" in classify_dataset(mg).reason
    mg.SamplesPerPixel, mg.PhotometricInterpretation = 1, "PALETTE COLOR"
    assert "PALETTE COLOR" in classify_dataset(mg).reason
    mg.PhotometricInterpretation, mg.NumberOfFrames = "MONOCHROME2", 4
    verdict = classify_dataset(mg)
    assert verdict.kind is DatasetKind.UNSUPPORTED_MAMMOGRAM and "4 frames" in verdict.reason
