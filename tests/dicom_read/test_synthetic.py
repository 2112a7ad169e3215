"""write_phantom_dicom: a standard Digital Mammography X-Ray Image (checked with dciodvfy)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000, JPEGBaseline8Bit, RLELossless

from mammoxai.dicom_io import write_phantom_dicom


@pytest.mark.parametrize("kwargs", [
    dict(laterality="R", view="CC"),
    dict(laterality="L", view="MLO", photometric="MONOCHROME1", voi=[(2000, 3000), (1000, 800)]),
    dict(laterality="R", view="XCCL", voi=np.arange(4096, dtype=np.uint16) * 16, transfer_syntax=RLELossless),
    dict(laterality="L", view="ML", voi=None, presentation_intent="FOR PROCESSING"),
    dict(laterality="R", view="LM", transfer_syntax=JPEG2000, voi_function="SIGMOID"),
    dict(laterality="L", view="CC", bits_stored=16),
])
def test_dciodvfy_reports_no_errors(tmp_path, phantom, dciodvfy, kwargs):
    bits = kwargs.get("bits_stored", 12)
    path = tmp_path / "mg.dcm"
    write_phantom_dicom(phantom(kwargs["laterality"], "CC", bits), path=path, **kwargs)
    rc, errors = dciodvfy(path)
    assert rc == 0 and errors == [], errors


def test_deflated_file_is_valid_after_inflating(tmp_path, image12, tool, dciodvfy):
    path, inflated = tmp_path / "deflated.dcm", tmp_path / "inflated.dcm"
    write_phantom_dicom(image12, laterality="L", view="CC", transfer_syntax=DeflatedExplicitVRLittleEndian, path=path)
    assert tool("dcmconv", "+te", str(path), str(inflated)).returncode == 0   # dciodvfy cannot inflate
    assert dciodvfy(inflated) == (0, [])


def test_header_content(image12):
    study = pydicom.uid.generate_uid()
    ds = write_phantom_dicom(image12, laterality="R", view="MLO", study_instance_uid=study, pixel_spacing_mm=0.07,
                             patient_id="P1", patient_name="Doe^Jane")
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.1.2" and ds.Modality == "MG"
    assert ds.StudyInstanceUID == study and ds.PatientID == "P1" and str(ds.PatientName) == "Doe^Jane"
    assert ds.ImageLaterality == "R" and list(ds.PatientOrientation) == ["P", "FL"]
    assert ds.ViewCodeSequence[0].CodeValue == "399368009" and ds.ViewCodeSequence[0].CodingSchemeDesignator == "SCT"
    assert ds.PresentationIntentType == "FOR PRESENTATION" and ds.BurnedInAnnotation == "NO"
    assert [float(v) for v in ds.PixelSpacing] == [0.07, 0.07] == [float(v) for v in ds.ImagerPixelSpacing]
    assert (ds.BitsAllocated, ds.BitsStored, ds.HighBit) == (16, 12, 11)
    assert float(ds.WindowCenter) == (image12.min() + image12.max() + 1) / 2
    for uid in (ds.SOPInstanceUID, ds.SeriesInstanceUID):
        assert uid.is_valid and uid != study
    other = write_phantom_dicom(image12, laterality="R", view="MLO", study_instance_uid=study)
    assert other.SOPInstanceUID != ds.SOPInstanceUID and other.SeriesInstanceUID != ds.SeriesInstanceUID
    assert np.array_equal(ds.pixel_array, image12)


def test_eight_bit(image12):
    image = (image12 >> 4).astype(np.uint16)
    ds = write_phantom_dicom(image, laterality="L", view="CC", bits_stored=8)
    assert ds.BitsAllocated == 8 and ds.pixel_array.dtype == np.uint8
    assert np.array_equal(ds.pixel_array, image)


@pytest.mark.parametrize("kwargs,pattern", [
    (dict(laterality="X", view="CC"), "laterality"),
    (dict(laterality="L", view="AP"), "view"),
    (dict(laterality="L", view="CC", bits_stored=10), "do not fit bits_stored=10"),
    (dict(laterality="L", view="CC", transfer_syntax=JPEGBaseline8Bit), "cannot be written here"),
    (dict(laterality="L", view="CC", voi=None), "needs a VOI"),
    (dict(laterality="L", view="CC", voi=np.arange(10)), "4096 entries"),
    (dict(laterality="L", view="CC", photometric="RGB"), "MONOCHROME"),
])
def test_rejects_bad_arguments(image12, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        write_phantom_dicom(image12, **kwargs)


def test_rejects_bad_arrays():
    with pytest.raises(ValueError, match="2-D"):
        write_phantom_dicom(np.zeros((4, 4, 3), np.uint16), laterality="L", view="CC")
    with pytest.raises(ValueError, match="unsigned integers"):
        write_phantom_dicom(np.zeros((4, 4), np.float32), laterality="L", view="CC")
