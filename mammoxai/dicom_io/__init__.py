"""DICOM input/output of mammoxai (numpy + pydicom + highdicom only; never torch).

Reading side: :func:`read_mammogram` -> :class:`Mammogram`; header triage with
:func:`is_mammogram` / :func:`classify_dataset`; :func:`write_phantom_dicom` writes a
standard Digital Mammography X-Ray Image for tests and demos.
"""

from .classify import Classification, DatasetKind, classify_dataset, is_mammogram
from .errors import DicomReadError, NotAMammogramError, UnsupportedMammogramError, UnsupportedTransferSyntaxError
from .mammogram import Mammogram
from .read_orientation import conventional_patient_orientation
from .reader import read_mammogram
from .synthetic import WRITABLE_TRANSFER_SYNTAXES, write_phantom_dicom

__all__ = [
    "Classification",
    "DatasetKind",
    "DicomReadError",
    "Mammogram",
    "NotAMammogramError",
    "UnsupportedMammogramError",
    "UnsupportedTransferSyntaxError",
    "WRITABLE_TRANSFER_SYNTAXES",
    "classify_dataset",
    "conventional_patient_orientation",
    "is_mammogram",
    "read_mammogram",
    "write_phantom_dicom",
]
