"""Patient Orientation (0020,0020) of the images mammoxai writes: as displayed (SC) or as stored (SEG)."""

from __future__ import annotations

import re

from .mammogram import Mammogram
from .read_orientation import conventional_patient_orientation

_OPPOSITE = str.maketrans("LRAPHF", "RLPAFH")
_ORIENTATION = re.compile(r"^[LRAPHF]{1,3}$")


def _source_values(mammogram: Mammogram) -> list[str] | None:
    source = mammogram.dataset.get("PatientOrientation")
    if source is None:
        return None
    values = [str(source)] if isinstance(source, str) else [str(v) for v in source]
    if len(values) == 2 and all(_ORIENTATION.match(v) for v in values):
        return values
    return None


def display_orientation(mammogram: Mammogram) -> tuple[str, str] | None:
    """Patient Orientation (row direction, column direction) of the image as displayed.

    From the source's two-value Patient Orientation with the display flips
    applied (a horizontal flip reverses the row direction, a vertical flip
    the column direction). Without a usable source value (e.g. CBIS-DDSM's
    single "CC"), from laterality and view, assuming the reader flipped the
    image to the conventional display
    (:func:`mammoxai.dicom_io.read_orientation.conventional_patient_orientation`:
    L CC ``A\\R``, R CC ``P\\L``, L MLO ``A\\FR``, R MLO ``P\\FL``).
    ``None`` when neither is known.
    """
    values = _source_values(mammogram)
    if values is not None:
        row, col = values
        if mammogram.flip_horizontal:
            row = row.translate(_OPPOSITE)
        if mammogram.flip_vertical:
            col = col.translate(_OPPOSITE)
        return row, col
    if mammogram.laterality not in ("L", "R") or not mammogram.view:
        return None
    try:
        return conventional_patient_orientation(mammogram.laterality, mammogram.view)
    except ValueError:
        return None


def stored_orientation(mammogram: Mammogram) -> tuple[str, str] | None:
    """Patient Orientation of the *stored* grid: the source's valid value, else :func:`display_orientation`
    with the display flips undone. ``None`` when unknown."""
    values = _source_values(mammogram)
    if values is not None:
        return values[0], values[1]
    shown = display_orientation(mammogram)
    if shown is None:
        return None
    row, col = shown
    if mammogram.flip_horizontal:
        row = row.translate(_OPPOSITE)
    if mammogram.flip_vertical:
        col = col.translate(_OPPOSITE)
    return row, col
