"""DICOM input/output of mammoxai (numpy + pydicom + highdicom only; never torch).

Reading side: :func:`read_mammogram` -> :class:`Mammogram`; header triage with
:func:`is_mammogram` / :func:`classify_dataset`; :func:`write_phantom_dicom` writes a
standard Digital Mammography X-Ray Image for tests and demos.

Writing side: :func:`write_results` turns an :class:`~mammoxai.dicom_io.results.ImageResult`
into the objects chosen in ``[output]`` (Secondary Capture overlays and montage, TID 1500
SR, FRACTIONAL Segmentation, GSPS); :func:`write_study_summary` makes the study-level SR;
:func:`is_our_output` recognises what we wrote (loop prevention; all triage rules in :mod:`.triage`).
"""

from .classify import MAMMOGRAM_CARRIER_SOP_CLASSES, Classification, DatasetKind, classify_dataset, is_mammogram
from .errors import DicomReadError, NotAMammogramError, UnsupportedMammogramError, UnsupportedTransferSyntaxError
from .mammogram import Mammogram
from .read_orientation import conventional_patient_orientation
from .reader import load_dataset, read_mammogram
from .results import AlgorithmInfo, ImageResult, MethodMap
from .synthetic import WRITABLE_TRANSFER_SYNTAXES, write_phantom_dicom
from .write_errors import DicomWriteError
from .triage import is_our_output, our_output_reason, triage
from .writers import select_sc_methods, write_results, write_study_summary

__all__ = [
    "MAMMOGRAM_CARRIER_SOP_CLASSES",
    "AlgorithmInfo",
    "Classification",
    "DicomWriteError",
    "ImageResult",
    "MethodMap",
    "is_our_output",
    "our_output_reason",
    "triage",
    "select_sc_methods",
    "write_results",
    "write_study_summary",
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
    "load_dataset",
    "read_mammogram",
    "write_phantom_dicom",
]
