"""The one place that decides the identity of every object mammoxai writes.

Every output UID comes from here: SOP Instance UID (0008,0018), Series Instance
UID (0020,000E), Series Number (0020,0011), Series Description (0008,103E),
Instance Number (0020,0013), and the UIDs *inside* our objects (SR / SEG / GSPS
Tracking Unique Identifiers, SEG Dimension Organization UID, Device UID). They
are derived from what the result *is*, never from where it sits in a list:

* a per-image object: (source SOP Instance UID, output kind, method,
  laterality, ``output.series_number_base``);
* its series: (Study Instance UID, output kind, method for SC overlays,
  laterality, ``series_number_base``): one series per kind, per method for
  the SC overlays, and **per breast** ("mammoxai Grad-CAM L" holds only left
  views; left and right never share a series);
* the study summary SR: (Study Instance UID, "summary", base), study-level.

So a job processed twice (crash, retry, the PACS sending the study again),
with or without a failing explainer, and ``mammoxai explain --dicom`` on the
same file all produce the same UIDs for the same result, and a C-STORE
replaces the archive's copy instead of adding a duplicate. The model is
deliberately *not* part of the identity: a re-run with a new checkpoint
replaces the old result.

A UID is ``2.25.<decimal of a name-based (RFC 4122 version 5) UUID>`` (PS3.5
B.2). ``pydicom.uid.generate_uid(prefix=None, entropy_srcs=...)`` ignores its
entropy sources and returns a random UUID, so it cannot be used.

Series Numbers stay in mammoxai's reserved range
(:data:`~mammoxai.dicom_io.series.SERIES_SPAN` numbers from
``series_number_base``, see :mod:`mammoxai.dicom_io.series`), which loop
prevention relies on.

The writers (:mod:`.sc`, :mod:`.sr`, :mod:`.seg`, :mod:`.gsps`) take an
:class:`OutputIdentity` as a keyword argument, the way highdicom's
constructors take ``series_instance_uid`` / ``sop_instance_uid``;
:func:`mammoxai.dicom_io.writers.write_results` asks this module for them.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Literal

from .mammogram import Mammogram
from .series import MAX_SERIES_SLOT, METHOD_SERIES_OFFSET, SERIES_OFFSETS, UNRECORDED_METHOD_OFFSET

OutputKind = Literal["sc", "montage", "sr", "seg", "region_seg", "gsps", "summary"]

#: Kinds written once per source image; "summary" is once per study. "seg": a FRACTIONAL map SEG (one per
#: method), "region_seg": the BINARY hot-region SEG (one per image, every method a segment), each kind in
#: its own series (a viewer that opens one SEG per series finds the one it can show).
IMAGE_KINDS: tuple[str, ...] = ("sc", "montage", "sr", "seg", "region_seg", "gsps")
#: Kinds with one object per method and image (the method is part of the SOP identity).
PER_METHOD_KINDS: tuple[str, ...] = ("sc", "seg")

_DESCRIPTIONS: dict[str, str] = {
    "montage": "mammoxai montage",
    "sr": "mammoxai SR",
    "seg": "mammoxai explanation maps (SEG)",
    "region_seg": "mammoxai hot regions (SEG)",
    "gsps": "mammoxai hot regions (GSPS)",
    "summary": "mammoxai study summary SR",
}

#: Namespace of mammoxai's name-based UUIDs (uuid5 of the DNS-style name "mammoxai.invalid").
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_DNS, "mammoxai.invalid")


def derived_uid(*parts: object) -> str:
    """A deterministic UID ``2.25.<decimal UUID>`` from a version-5 UUID of ``parts`` (PS3.5 B.2), ≤ 64 chars."""
    name = "\x1f".join(str(p) for p in parts)
    return f"2.25.{uuid.uuid5(_NAMESPACE, name).int}"


@dataclass(frozen=True)
class OutputIdentity:
    """General Series + SOP Common identity of one output object, decided before the object is built.

    ``laterality`` is the breast ("L" / "R") the object's series is for, ``None``
    for an unknown laterality or a study-level object.
    """

    kind: str
    method: str | None
    laterality: str | None
    series_instance_uid: str
    series_number: int
    series_description: str
    sop_instance_uid: str
    instance_number: int

    def uid(self, *parts: object) -> str:
        """A UID inside this object (e.g. a Tracking Unique Identifier (0062,0021) / (112040, DCM)),
        derived from the object's SOP Instance UID and ``parts`` naming what it identifies."""
        return derived_uid(self.sop_instance_uid, "inner", *parts)


def _laterality(laterality: str | None) -> str | None:
    return laterality if laterality in ("L", "R") else None


def _series_number(kind: str, base: int, series_slot: int | None) -> int:
    if kind != "sc":
        return base + SERIES_OFFSETS[kind]
    if series_slot is None:
        return base + UNRECORDED_METHOD_OFFSET
    if not 0 <= int(series_slot) <= MAX_SERIES_SLOT:
        raise ValueError(f"series slot {series_slot} is outside 0..{MAX_SERIES_SLOT} (mammoxai's series range)")
    return base + METHOD_SERIES_OFFSET + int(series_slot)


def _instance_number(source_instance_number: object) -> int:
    """The source's Instance Number (so our series hang like the source's), 1 when it has none."""
    try:
        number = int(str(source_instance_number))
    except (TypeError, ValueError):
        return 1
    return number if 1 <= number < 10_000_000 else 1


def output_identity(kind: str, *, study_instance_uid: str, source_sop_instance_uid: str,
                    series_number_base: int, laterality: str | None = None, method: str | None = None,
                    display_name: str | None = None, series_slot: int | None = None,
                    source_instance_number: object = None) -> OutputIdentity:
    """The identity of the ``kind`` object made from one source image (see the module docstring).

    ``method`` (registry name) is required for the per-method kinds ("sc", "seg") and refused
    for the others; ``display_name`` and ``series_slot`` (the method's record) name and number
    an SC overlay series. A method without a record (a plugin, a test double) has
    ``series_slot=None``: its series shares the Series Number ``base + 9`` but keeps its own UID.
    """
    if kind not in IMAGE_KINDS:
        raise ValueError(f"unknown per-image output kind {kind!r} (known: {', '.join(IMAGE_KINDS)})")
    if (kind in PER_METHOD_KINDS) != (method is not None):
        raise ValueError(f"the {kind!r} identity {'needs' if kind in PER_METHOD_KINDS else 'takes no'} method")
    if not study_instance_uid or not source_sop_instance_uid:
        raise ValueError("empty StudyInstanceUID or source SOPInstanceUID: cannot derive output UIDs")
    side = _laterality(laterality)
    series_method = method if kind == "sc" else None
    series_uid = derived_uid(study_instance_uid, "mammoxai", "series", kind, series_method or "",
                             side or "", series_number_base)
    sop_uid = derived_uid(source_sop_instance_uid, "mammoxai", "instance", kind, method or "",
                          side or "", series_number_base)
    if kind == "sc":
        description = f"mammoxai {display_name or method}"
    else:
        description = _DESCRIPTIONS[kind]
    if side:
        description = f"{description[:62]} {side}"
    instance = _instance_number(source_instance_number)
    if kind == "seg":   # one SEG per method of each view: the method's slot orders them within the view
        instance = instance * 100 + (1 + (series_slot if series_slot is not None else 90))
        instance = instance if instance < 2**31 else 1
    return OutputIdentity(kind=kind, method=method, laterality=side, series_instance_uid=series_uid,
                          series_number=_series_number(kind, series_number_base, series_slot),
                          series_description=description[:64], sop_instance_uid=sop_uid,
                          instance_number=instance)


def image_output_identity(mammogram: Mammogram, kind: str, series_number_base: int, *,
                          method: str | None = None, display_name: str | None = None,
                          series_slot: int | None = None) -> OutputIdentity:
    """:func:`output_identity` of an object made from ``mammogram`` (its UIDs, laterality, Instance Number)."""
    return output_identity(kind, study_instance_uid=mammogram.study_instance_uid,
                           source_sop_instance_uid=mammogram.sop_instance_uid,
                           series_number_base=series_number_base, laterality=mammogram.laterality,
                           method=method, display_name=display_name, series_slot=series_slot,
                           source_instance_number=mammogram.dataset.get("InstanceNumber"))


def summary_identity(study_instance_uid: str, series_number_base: int) -> OutputIdentity:
    """The identity of the study summary SR: one per study, in the study-level summary series.

    A summary remade when more views arrive keeps its UIDs and so replaces the earlier one.
    """
    if not study_instance_uid:
        raise ValueError("empty StudyInstanceUID: cannot derive the summary's UIDs")
    return OutputIdentity(
        kind="summary", method=None, laterality=None,
        series_instance_uid=derived_uid(study_instance_uid, "mammoxai", "series", "summary", "", "",
                                        series_number_base),
        series_number=_series_number("summary", series_number_base, None),
        series_description=_DESCRIPTIONS["summary"],
        sop_instance_uid=derived_uid(study_instance_uid, "mammoxai", "instance", "summary", "", "",
                                     series_number_base),
        instance_number=1)


def device_uid(checkpoint_sha256: str) -> str:
    """Device UID (0018,1002) of a model: derived from its checkpoint's SHA-256 (one model = one device)."""
    return derived_uid("mammoxai-device", checkpoint_sha256)


def stand_in_uid(name: str) -> str:
    """SOP Instance UID of a header made up for a non-DICOM input (a PNG), from its name; never written."""
    return derived_uid("mammoxai-stand-in", name)


def new_source_uid() -> str:
    """A fresh, random UID for a *synthetic source* image (phantom SOP Instance, Study or Series UID).

    Not an output's identity: phantoms stand in for what a modality would send, and every phantom is a
    new acquisition. Kept here so that this module is the one place in mammoxai that makes up a UID.
    """
    return f"2.25.{uuid.uuid4().int}"
