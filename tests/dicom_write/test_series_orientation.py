"""The reserved Series Number range and the Patient Orientation of written images (identity: test_identity.py)."""

from __future__ import annotations

import dataclasses

from mammoxai.dicom_io.orientation import display_orientation, stored_orientation
from mammoxai.dicom_io.series import (
    MAX_SERIES_SLOT,
    METHOD_SERIES_OFFSET,
    SERIES_OFFSETS,
    SERIES_SPAN,
    UNRECORDED_METHOD_OFFSET,
    in_our_range,
)


def test_series_range():
    assert in_our_range(9100, 9100) and in_our_range(9199, 9100) and not in_our_range(9200, 9100)
    assert not in_our_range(None, 9100) and not in_our_range(1, 9100)
    offsets = [*SERIES_OFFSETS.values(), UNRECORDED_METHOD_OFFSET, METHOD_SERIES_OFFSET,
               METHOD_SERIES_OFFSET + MAX_SERIES_SLOT]
    assert len(set(offsets)) == len(offsets) and all(0 <= o < SERIES_SPAN for o in offsets)
    assert max(SERIES_OFFSETS.values()) < UNRECORDED_METHOD_OFFSET < METHOD_SERIES_OFFSET


def test_display_orientation_applies_flips_to_source_value(phantom_l_cc):
    assert display_orientation(phantom_l_cc) == ("A", "R")          # phantom stored in display convention
    flipped = dataclasses.replace(phantom_l_cc, flip_horizontal=True, flip_vertical=True)
    assert display_orientation(flipped) == ("P", "L")
    assert stored_orientation(flipped) == ("A", "R")                 # the source's own value


def test_orientation_from_laterality_and_view_when_source_has_none(real_lcc):
    assert str(real_lcc.dataset.PatientOrientation) == "CC"          # CBIS-DDSM: one, non-standard value
    shown = display_orientation(real_lcc)
    assert shown == ("A", "R")
    expected_stored = ("P", "R") if real_lcc.flip_horizontal else ("A", "R")
    assert stored_orientation(real_lcc) == expected_stored
    unknown = dataclasses.replace(real_lcc, view=None)
    assert display_orientation(unknown) is None and stored_orientation(unknown) is None


def test_mlo_vertical_flip_reverses_column_direction(dw):
    ds = dw.phantom_dataset(laterality="R", view="MLO")
    ds.PatientOrientation = ["P", "FL"]
    mg = dataclasses.replace(dw.mammogram_from_dataset(ds, laterality="R", view="MLO"),
                             flip_horizontal=False, flip_vertical=True)
    assert display_orientation(mg) == ("P", "HR")
