"""The 99MAMMOXAI codes and the provenance helpers (patient/study copy, IHE AIR Contributing Equipment)."""

from __future__ import annotations

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from mammoxai.dicom_io import codes
from mammoxai.dicom_io.results import MethodMap
from mammoxai.dicom_io.provenance import (
    contributing_equipment,
    copy_patient_and_study,
    device_uid,
    finish,
    source_image_item,
)


def test_codes_fit_dicom_and_are_stable():
    gradcam = MethodMap("gradcam", "Grad-CAM", np.zeros((2, 2), np.float32), signed=False, code="GCAM")
    assert codes.method_code(gradcam) == codes.private("MXAI-M-GCAM", "Grad-CAM")
    plugin = MethodMap("brand_new_method", "Brand New", np.zeros((2, 2), np.float32), signed=False)
    new = codes.method_code(plugin)
    assert new.value.startswith("MXAI-M-") and new.meaning == "Brand New" and new == codes.method_code(plugin)
    assert codes.quality_code("faithfulness").value == "MXAI-Q-FAITH"
    for code in (new, codes.quality_code("x" * 80), codes.class_code("calcification"),
                 codes.class_probability_code("benign"), codes.method_code(gradcam)):
        assert len(code.value) <= 16 and code.scheme_designator == "99MAMMOXAI" and len(code.meaning) <= 64
    assert codes.class_code("Malignant").value == "21594007" and codes.class_code("benign").value == "30807003"
    assert codes.laterality_code("L").value == "7771000" and codes.laterality_code(None) is None
    ds = Dataset()
    codes.add_scheme_identification(ds)
    codes.add_scheme_identification(ds)                       # idempotent
    assert [i.CodingSchemeDesignator for i in ds.CodingSchemeIdentificationSequence] == ["99MAMMOXAI", "99IHE"]
    only_ihe = Dataset()
    codes.add_scheme_identification(only_ihe, private_scheme=False)
    assert [i.CodingSchemeDesignator for i in only_ihe.CodingSchemeIdentificationSequence] == ["99IHE"]


def test_patient_and_study_are_copied_verbatim(dw):
    src = dw.phantom_dataset()
    src.PatientName = "Müller^Anna"
    target = Dataset()
    target.PatientName = "Someone^Else"
    copy_patient_and_study(src, target)
    assert target.PatientName == "Müller^Anna" and target.SpecificCharacterSet == "ISO_IR 100"
    assert target.StudyInstanceUID == src.StudyInstanceUID and target.AccessionNumber == "ACC123"
    assert "Modality" not in target and "SOPInstanceUID" not in target
    finish(target, src)
    assert target.InstanceCreationDate and target.ContentDate
    no_content = finish(Dataset(), src, content_date=False)
    assert "ContentDate" not in no_content


def test_contributing_equipment_follows_ihe_air(dw):
    algo = dw.make_result((4, 4), methods=()).algorithm
    item = contributing_equipment(algo, "mammoxai", "Hospital X")
    purpose = item.PurposeOfReferenceCodeSequence[0]
    assert (purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning) == (
        "Newcode1", "99IHE", "Processing Algorithm")
    assert item.Manufacturer == "mammoxai" and item.InstitutionName == "Hospital X"
    assert list(item.SoftwareVersions) == ["mammoxai 0.1.0", "model 0.1.0"]
    assert item.DeviceUID == device_uid(algo) == device_uid(algo) and item.DeviceUID.startswith("2.25.")
    other = algo.__class__(**{**algo.__dict__, "checkpoint_sha256": "cd" * 32})
    assert device_uid(other) != device_uid(algo)


def test_source_image_item(dw):
    src = dw.phantom_dataset()
    item = source_image_item(src, ("121322", "DCM", "Source image for image processing operation"))
    assert item.ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert item.PurposeOfReferenceCodeSequence[0].CodeValue == "121322"
    assert "PurposeOfReferenceCodeSequence" not in source_image_item(src)
    assert isinstance(item, pydicom.Dataset)
