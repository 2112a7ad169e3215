"""Deterministic output UIDs, so that re-processing an instance re-sends the *same* objects.

A C-STORE of an SOP Instance UID the archive already holds replaces it, so
when outputs are derived deterministically from the source, a job processed
twice (crash, restart, ``jobs retry``, the PACS sending the study again) still
leaves exactly one copy of each result in the archive.

:func:`make_deterministic` rewrites the SOP Instance UID and Series Instance
UID of each output to ``2.25.<integer from SHA-256>`` of stable inputs, and
replaces every reference to the old UIDs in all outputs (UI elements at any
depth, file meta included), so SR/GSPS/SEG references between our outputs
stay valid:

- SOP Instance UID: source SOP Instance UID + SOP Class + Series Number + Instance Number + position;
- Series Instance UID: Study Instance UID + SOP Class + Series Number (one series per kind and study,
  shared by all images of the study, as the writers intend).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from pydicom.dataset import Dataset


def uid_from(*parts: str) -> str:
    """A UID under the ``2.25`` root (ISO/IEC 9834-8 UUID-derived form) from the SHA-256 of ``parts``."""
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()[:16]
    return f"2.25.{int.from_bytes(digest, 'big')}"


def _replace(ds: Dataset, mapping: dict[str, str]) -> None:
    for elem in ds.iterall():
        if elem.VR != "UI" or elem.value is None:
            continue
        if elem.VM > 1:
            elem.value = [mapping.get(str(v), str(v)) for v in elem.value]
        elif str(elem.value) in mapping:
            elem.value = mapping[str(elem.value)]


def make_deterministic(outputs: Sequence[Dataset], source_sop_instance_uid: str) -> list[Dataset]:
    """Give ``outputs`` (modified in place and returned) UIDs that depend only on their source and kind."""
    mapping: dict[str, str] = {}
    for index, ds in enumerate(outputs):
        sop_class = str(ds.get("SOPClassUID", ""))
        series_number = str(ds.get("SeriesNumber", ""))
        old_sop = str(ds.get("SOPInstanceUID", ""))
        if old_sop:
            mapping.setdefault(old_sop, uid_from("sop", source_sop_instance_uid, sop_class, series_number,
                                                 str(ds.get("InstanceNumber", "")), str(index)))
        old_series = str(ds.get("SeriesInstanceUID", ""))
        if old_series:
            mapping.setdefault(old_series, uid_from("series", str(ds.get("StudyInstanceUID", "")),
                                                    sop_class, series_number))
    for ds in outputs:
        _replace(ds, mapping)
        if hasattr(ds, "file_meta"):
            _replace(ds.file_meta, mapping)
    return list(outputs)
