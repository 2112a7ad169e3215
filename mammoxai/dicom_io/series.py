"""Series Number, Series Description and Series Instance UID of each kind of output object.

Every output goes into the *source* study, in a new series per kind. Series
Numbers are ``output.series_number_base + offset`` (offsets in
:data:`SERIES_OFFSETS`). The overlay SCs get one series *per explanation
method* ("mammoxai Grad-CAM", holding that method's overlay of every view of
the study, so a viewer hangs them like the source series), numbered
``base + 10 + k`` with ``k`` the method's place in
:data:`mammoxai.dicom_io.codes.METHOD_CODES` (unknown methods: 40 + a hash,
below 90). Every number from the base up to
``base + SERIES_SPAN - 1`` is reserved for mammoxai (loop prevention,
:func:`mammoxai.dicom_io.writers.is_our_output`). Series Instance UIDs are
deterministic per (study, kind): :func:`derived_uid` of ``[study_uid,
"mammoxai", kind(, method, laterality)]``, a ``2.25.`` UID of a name-based
(RFC 4122 version 5) UUID (``pydicom.uid.generate_uid(prefix=None, ...)``
ignores its entropy sources and returns a random UUID, so it cannot be used),
so that every object of one kind for one study (e.g. the SCs of all four
views of one breast) lands in the same series, and a re-run adds to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import hashlib
import uuid

from .codes import METHOD_CODES

OutputKind = Literal["sc", "montage", "sr", "seg", "gsps", "pmap", "summary"]

#: Offset of each kind's Series Number from ``output.series_number_base``.
SERIES_OFFSETS: dict[str, int] = {
    "sc": 1, "montage": 2, "sr": 3, "seg": 4, "gsps": 5, "pmap": 6, "summary": 7,
}
#: Series Numbers ``[base, base + SERIES_SPAN)`` are mammoxai's.
SERIES_SPAN = 100

_DESCRIPTIONS: dict[str, str] = {
    "montage": "mammoxai montage",
    "sr": "mammoxai SR",
    "seg": "mammoxai explanation maps (SEG)",
    "gsps": "mammoxai hot regions (GSPS)",
    "pmap": "mammoxai explanation maps (PMAP)",
    "summary": "mammoxai study summary SR",
}


@dataclass(frozen=True)
class SeriesInfo:
    """General Series module values of one output kind in one study."""

    kind: str
    series_instance_uid: str
    series_number: int
    series_description: str


#: Namespace of mammoxai's name-based UUIDs (uuid5 of the DNS-style name "mammoxai.invalid").
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "mammoxai.invalid")


def derived_uid(*parts: str) -> str:
    """A deterministic UID ``2.25.<decimal UUID>`` from a version-5 UUID of ``parts`` (PS3.5 B.2)."""
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


def _check(kind: str, method: str | None) -> None:
    if kind not in SERIES_OFFSETS:
        raise ValueError(f"unknown output kind {kind!r} (known: {', '.join(SERIES_OFFSETS)})")
    if (kind == "sc") != (method is not None):
        raise ValueError("an 'sc' series needs the method name; other kinds take none")


def series_uid(study_instance_uid: str, kind: str, method: str | None = None, laterality: str | None = None) -> str:
    """The deterministic Series Instance UID (0020,000E) of ``kind`` (method, laterality) in the study (``2.25.``)."""
    _check(kind, method)
    if not study_instance_uid:
        raise ValueError("empty StudyInstanceUID: cannot derive an output series UID")
    sources = [str(study_instance_uid), "mammoxai", kind] + ([method] if method is not None else [])
    if laterality:
        sources.append(f"laterality={laterality}")
    return derived_uid(*sources)


def _method_offset(method: str) -> int:
    names = list(METHOD_CODES)
    if method in names:
        return 10 + names.index(method)
    return 40 + int(hashlib.sha1(method.encode("utf-8")).hexdigest(), 16) % 50


def series_info(study_instance_uid: str, kind: str, series_number_base: int, *,
                method: str | None = None, display_name: str | None = None,
                laterality: str | None = None) -> SeriesInfo:
    """Series UID, number (0020,0011) and description (0008,103E) of ``kind`` (and method) for the study.

    Objects that carry the series-level Laterality (0020,0060) (SC, GSPS)
    pass it: the left and right breasts then get separate series, so that
    every instance of a series agrees on it.
    """
    _check(kind, method)
    if kind == "sc":
        assert method is not None
        number = series_number_base + _method_offset(method)
        description = f"mammoxai {display_name or method}"[:64]
    else:
        number = series_number_base + SERIES_OFFSETS[kind]
        description = _DESCRIPTIONS[kind]
    if laterality:
        description = f"{description} {laterality}"[:64]
    return SeriesInfo(kind=kind, series_instance_uid=series_uid(study_instance_uid, kind, method, laterality),
                      series_number=number, series_description=description)


def in_our_range(series_number: int | None, series_number_base: int) -> bool:
    """Whether a Series Number lies in mammoxai's reserved range."""
    return series_number is not None and series_number_base <= int(series_number) < series_number_base + SERIES_SPAN
