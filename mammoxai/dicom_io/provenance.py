"""What every mammoxai output object carries about where it comes from.

* Patient and study attributes are copied from the source header element by
  element (never altered): :func:`copy_patient_and_study`.
* Contributing Equipment Sequence (0018,A001) item of the model, as IHE
  Radiology AI Results (AIR) asks: Purpose of Reference
  ``(Newcode1, 99IHE, "Processing Algorithm")``, Manufacturer
  (``output.manufacturer``), Manufacturer's Model Name (model name),
  Software Versions (mammoxai version, model version), Device UID (derived
  from the checkpoint hash, so one model = one device), Contribution
  Description (architecture, full checkpoint SHA-256, intended use).
  highdicom only accepts DCM purposes: the item is built with
  ``(109102, DCM, "Processing Equipment")`` and its purpose replaced after.
* Instance Creation Date/Time (0008,0012/0013), Content Date/Time.
* References to the source image: :func:`source_image_item`.
"""

from __future__ import annotations

import contextlib
import datetime
import warnings
from typing import Iterator

import highdicom as hd
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from .codes import IHE_PROCESSING_ALGORITHM, add_scheme_identification
from .results import AlgorithmInfo
from . import identity

#: Patient / study / general-study attributes copied verbatim from the source when present.
PATIENT_STUDY_KEYWORDS: tuple[str, ...] = (
    "PatientName", "PatientID", "IssuerOfPatientID", "IssuerOfPatientIDQualifiersSequence",
    "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence", "PatientAge", "PatientSize",
    "PatientWeight", "EthnicGroup", "PatientComments", "PatientIdentityRemoved",
    "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "IssuerOfAccessionNumberSequence", "StudyDescription", "ProcedureCodeSequence",
    "RequestAttributesSequence",
)


def copy_patient_and_study(source: Dataset, target: Dataset) -> None:
    """Copy each of :data:`PATIENT_STUDY_KEYWORDS` present in ``source`` into ``target`` unchanged.

    Also copies Specific Character Set (0008,0005) so the copied names decode as in the source.
    """
    for keyword in ("SpecificCharacterSet", *PATIENT_STUDY_KEYWORDS):
        if keyword in source:
            target[keyword] = source[keyword]   # the same DataElement: value and VR unchanged


def device_uid(algorithm: AlgorithmInfo) -> str:
    """Device UID (0018,1002) of a model: a 2.25 UID derived from the checkpoint's SHA-256 (see identity)."""
    return identity.device_uid(algorithm.checkpoint_sha256)


def contributing_equipment(algorithm: AlgorithmInfo, manufacturer: str,
                           institution_name: str | None = None) -> hd.ContributingEquipment:
    """The model's Contributing Equipment item (IHE AIR; see the module docstring)."""
    description = (f"{algorithm.name} ({algorithm.architecture}) checkpoint sha256 {algorithm.checkpoint_sha256}"
                   + (f"; {algorithm.intended_use}" if algorithm.intended_use else ""))
    item = hd.ContributingEquipment(
        manufacturer=manufacturer[:64],
        purpose_of_reference=codes.DCM.ProcessingEquipment,
        manufacturer_model_name=algorithm.name[:64],
        software_versions=[f"mammoxai {algorithm.software_version}"[:64], f"model {algorithm.version}"[:64]],
        institution_name=institution_name[:64] if institution_name else None,
        contribution_datetime=datetime.datetime.now(),
        contribution_description=description[:1024],
    )
    purpose = Dataset()
    purpose.CodeValue, purpose.CodingSchemeDesignator, purpose.CodeMeaning = IHE_PROCESSING_ALGORITHM
    item.PurposeOfReferenceCodeSequence = [purpose]
    item.DeviceUID = device_uid(algorithm)
    return item


def finish(ds: Dataset, source: Dataset, *, private_scheme: bool = False, content_date: bool = True) -> Dataset:
    """Common last touches: patient/study copied, creation date/time, coding schemes. Returns ``ds``.

    ``private_scheme``: the object uses 99MAMMOXAI codes (listed in the Coding Scheme Identification).
    ``content_date``: add Content Date/Time when missing (not for presentation states, whose IOD
    has Presentation Creation Date/Time instead).
    """
    copy_patient_and_study(source, ds)
    now = datetime.datetime.now()
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    if content_date and not ds.get("ContentDate"):
        ds.ContentDate = now.strftime("%Y%m%d")
    if content_date and not ds.get("ContentTime"):
        ds.ContentTime = now.strftime("%H%M%S")
    add_scheme_identification(ds, private_scheme=private_scheme)
    return ds


def source_image_item(source: Dataset, purpose: tuple[str, str, str] | None = None) -> Dataset:
    """An item of Source Image Sequence / Referenced Image Sequence pointing at the source image."""
    item = Dataset()
    item.ReferencedSOPClassUID = source.SOPClassUID
    item.ReferencedSOPInstanceUID = source.SOPInstanceUID
    if purpose is not None:
        code = Dataset()
        code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = purpose
        item.PurposeOfReferenceCodeSequence = [code]
    return item


@contextlib.contextmanager
def copied_names_quietly() -> Iterator[None]:
    """Silence highdicom's "unlikely to represent the intended person name" warning while building.

    The names are the source's (e.g. CBIS-DDSM's single-component ones), copied unchanged.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*unlikely to represent the intended person name")
        yield
