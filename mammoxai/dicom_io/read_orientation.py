"""Laterality, view and display flips of a mammogram *as read*, from its header.

(The writers' :mod:`mammoxai.dicom_io.orientation` computes the Patient Orientation of the
objects mammoxai writes; this module reads the source's.)

Display convention implemented (ACR / IHE Mammography Image profile hanging,
the one :func:`conventional_patient_orientation` writes):

* the breasts are shown mirrored, chest walls facing each other: a **right**
  breast has its chest wall at the **right** edge of the displayed image
  (nipple pointing left), a **left** breast at the **left** edge;
* CC-family views (CC, XCCL, XCCM, FB) show the lateral side at the top;
* MLO / ML / LM / LMO / SIO / ISO show the head end (superior) at the top.

In Patient Orientation (0020,0020) terms (first value: direction of the rows,
i.e. increasing column index, left to right; second value: direction of the
columns, i.e. increasing row index, top to bottom; PS3.3 C.7.6.1.1.1):
RCC ``P\\L``, LCC ``A\\R``, RMLO ``P\\FL``, LMLO ``A\\FR``, RML ``P\\F``, LML ``A\\F``.

The flips are metadata: pixels stay on the stored grid; ``flip_horizontal``
says "mirror the columns to display", ``flip_vertical`` "mirror the rows".
A stored grid rotated by 90 degrees (row direction H/F/R/L) cannot be fixed
by flips and is left unflipped.
"""

from __future__ import annotations

import logging
from typing import Iterable

import numpy as np
from pydicom.dataset import Dataset

log = logging.getLogger(__name__)

# PS3.16 CID 4014 "View for Mammography": SNOMED CT code (SCT) and the legacy
# SNOMED RT code (SRT / SNM3) -> ACR MQCM abbreviation.
VIEW_CODES: dict[str, str] = {
    "399260004": "ML", "R-10224": "ML",
    "399368009": "MLO", "R-10226": "MLO",
    "399352003": "LM", "R-10228": "LM",
    "399099002": "LMO", "R-10230": "LMO",
    "399162004": "CC", "R-10242": "CC",
    "399196006": "FB", "R-10244": "FB",
    "399188001": "SIO", "R-102D0": "SIO",
    "441555000": "ISO", "R-40AAA": "ISO",
    "399192008": "XCCL", "R-1024A": "XCCL", "Y-X1770": "XCCL",
    "399101009": "XCCM", "R-1024B": "XCCM", "Y-X1771": "XCCM",
    "127457009": "SPECIMEN", "G-8310": "SPECIMEN",
}

# abbreviation -> (SCT code value, code meaning), used by the phantom writer.
VIEW_SCT: dict[str, tuple[str, str]] = {
    "ML": ("399260004", "medio-lateral"),
    "MLO": ("399368009", "medio-lateral oblique"),
    "LM": ("399352003", "latero-medial"),
    "LMO": ("399099002", "latero-medial oblique"),
    "CC": ("399162004", "cranio-caudal"),
    "FB": ("399196006", "caudo-cranial (from below)"),
    "SIO": ("399188001", "superolateral to inferomedial oblique"),
    "ISO": ("441555000", "inferomedial to superolateral oblique"),
    "XCCL": ("399192008", "cranio-caudal exaggerated laterally"),
    "XCCM": ("399101009", "cranio-caudal exaggerated medially"),
}

CC_FAMILY = frozenset({"CC", "XCCL", "XCCM", "FB"})
SIDE_FAMILY = frozenset({"MLO", "ML", "LM", "LMO", "SIO", "ISO"})
KNOWN_VIEWS = frozenset(VIEW_SCT) | {"SPECIMEN"}
# View Position (0018,5101) spellings seen in the wild -> abbreviation.
_VIEW_ALIASES = {"XCC": "XCCL", "CCX": "XCCL", "MEDIOLATERAL OBLIQUE": "MLO", "CRANIOCAUDAL": "CC",
                 "CRANIO-CAUDAL": "CC", "MEDIOLATERAL": "ML", "LATEROMEDIAL": "LM"}
_DIRECTION_LETTERS = frozenset("APLRHF")


def normalise_view(value: str | None) -> str | None:
    """An abbreviation from CID 4014 (``"CC"``, ``"MLO"``, ...) for a View Position-like string, else None."""
    if not value:
        return None
    v = str(value).strip().upper()
    v = _VIEW_ALIASES.get(v, v)
    return v if v in KNOWN_VIEWS else None


def _orientation_values(ds: Dataset) -> list[str]:
    po = ds.get("PatientOrientation")
    if po is None or po == "":
        return []
    values: Iterable[str] = [po] if isinstance(po, str) else po
    return [str(v).strip().upper() for v in values]


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """Patient Orientation (0020,0020) as (row direction, column direction), or None when it
    does not hold two direction strings made of A/P/L/R/H/F (CBIS-DDSM stores a single ``CC``)."""
    values = _orientation_values(ds)
    if len(values) != 2 or not all(v and set(v) <= _DIRECTION_LETTERS for v in values):
        return None
    return values[0], values[1]


def read_view(ds: Dataset) -> str | None:
    """The view: View Code Sequence (0054,0220) code (CID 4014, SCT or legacy SRT codes), else
    View Position (0018,5101), else a single non-direction Patient Orientation value such as
    CBIS-DDSM's ``CC``/``MLO``, else None."""
    seq = ds.get("ViewCodeSequence")
    if seq:
        code = str(seq[0].get("CodeValue", "") or "").strip()
        if code in VIEW_CODES:
            return VIEW_CODES[code]
        meaning = str(seq[0].get("CodeMeaning", "") or "").strip().lower()
        for abbrev, (_, m) in VIEW_SCT.items():
            if meaning == m:
                return abbrev
    view = normalise_view(ds.get("ViewPosition"))
    if view:
        return view
    values = _orientation_values(ds)
    if len(values) == 1:
        return normalise_view(values[0])
    return None


def read_laterality(ds: Dataset) -> str | None:
    """``"L"``/``"R"`` from Image Laterality (0020,0062), else Laterality (0020,0060), else the row
    direction of a two-valued Patient Orientation (``P`` -> right, ``A`` -> left: this last
    fallback assumes the image is stored with the chest wall on the conventional side), else None.
    Image Laterality ``B`` (both) or ``U`` (unpaired) gives None."""
    for keyword in ("ImageLaterality", "Laterality"):
        value = str(ds.get(keyword, "") or "").strip().upper()
        if value in ("L", "R"):
            return value
        if value in ("B", "U"):
            return None
    po = patient_orientation(ds)
    if po is not None:
        row = po[0]
        if "P" in row and "A" not in row:
            return "R"
        if "A" in row and "P" not in row:
            return "L"
    return None


def conventional_patient_orientation(laterality: str, view: str | None) -> tuple[str, str]:
    """Patient Orientation (row, column) of an image stored in the display convention of this
    module, e.g. ``("P", "L")`` for a right CC and ``("A", "FR")`` for a left MLO."""
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    row = "P" if laterality == "R" else "A"
    other = "L" if laterality == "R" else "R"   # the patient's side medial to this breast
    if view in SIDE_FAMILY:
        column = "F" if view in ("ML", "LM") else "F" + other
    else:   # CC family (lateral side up) and unknown views
        column = other
    return row, column


def display_flips(orientation: tuple[str, str] | None, laterality: str | None,
                  view: str | None) -> tuple[bool, bool] | None:
    """(flip_horizontal, flip_vertical) that bring a stored grid with ``orientation`` into the
    display convention, or None when the header does not say (no two-valued Patient Orientation)."""
    if orientation is None:
        return None
    row, column = orientation
    flip_h = False
    if laterality in ("L", "R"):
        want, opposite = ("P", "A") if laterality == "R" else ("A", "P")
        if opposite in row and want not in row:
            flip_h = True
        elif want not in row:
            log.warning("Patient Orientation %s\\%s: row direction is not anterior/posterior "
                        "(image rotated by 90 degrees?); no horizontal flip", row, column)
    flip_v = False
    if "H" in column or "F" in column:
        flip_v = "H" in column and "F" not in column
    elif laterality in ("L", "R") and (view is None or view in CC_FAMILY):
        medial = "L" if laterality == "R" else "R"
        lateral = "R" if laterality == "R" else "L"
        flip_v = lateral in column and medial not in column
    return flip_h, flip_v


def chest_wall_on_right(pixels: np.ndarray, band: float = 0.25) -> bool | None:
    """Heuristic for images without usable Patient Orientation: ``True`` when the breast (bright
    tissue, presentation values) sits against the right edge of the stored grid, ``False`` when
    against the left edge, None when the two outer bands (``band`` of the width each) do not
    differ clearly (means within 20 % of each other)."""
    width = pixels.shape[1]
    k = max(1, int(round(width * band)))
    step = max(1, pixels.shape[0] // 512)
    left = float(pixels[::step, :k].mean())
    right = float(pixels[::step, width - k:].mean())
    high, low = max(left, right), min(left, right)
    if high <= 0 or (high - low) < 0.2 * high:
        return None
    return right > left
