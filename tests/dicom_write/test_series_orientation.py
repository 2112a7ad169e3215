"""Series numbers / UIDs / descriptions and the Patient Orientation of written images."""

from __future__ import annotations

import dataclasses

import pytest

from mammoxai.dicom_io.orientation import display_orientation, stored_orientation
from mammoxai.dicom_io.series import SERIES_OFFSETS, SERIES_SPAN, in_our_range, series_info, series_uid

STUDY = "1.2.3.4.5"


def test_series_uid_is_deterministic_2_25_and_distinct_per_kind():
    a = series_uid(STUDY, "sr")
    assert a == series_uid(STUDY, "sr") and a.startswith("2.25.") and len(a) <= 64
    uids = {series_uid(STUDY, k) for k in SERIES_OFFSETS if k != "sc"}
    uids |= {series_uid(STUDY, "sc", "gradcam"), series_uid(STUDY, "sc", "lrp"),
             series_uid(STUDY, "sc", "gradcam", "L"), series_uid("1.2.3.4.6", "sr")}
    assert len(uids) == len(SERIES_OFFSETS) - 1 + 4


def test_series_info_numbers_and_descriptions():
    info = series_info(STUDY, "sr", 9100)
    assert (info.series_number, info.series_description) == (9103, "mammoxai SR")
    sc = series_info(STUDY, "sc", 9100, method="gradcam", display_name="Grad-CAM", laterality="L")
    assert sc.series_description == "mammoxai Grad-CAM L"
    assert 9110 <= sc.series_number < 9100 + SERIES_SPAN
    other = series_info(STUDY, "sc", 9100, method="some_new_method")
    assert 9140 <= other.series_number < 9190
    assert series_info(STUDY, "seg", 500).series_number == 504
    assert in_our_range(9100, 9100) and in_our_range(9199, 9100) and not in_our_range(9200, 9100)
    assert not in_our_range(None, 9100) and not in_our_range(1, 9100)


@pytest.mark.parametrize("kind,method", [("nope", None), ("sc", None), ("sr", "gradcam")])
def test_series_info_rejects_bad_kinds(kind, method):
    with pytest.raises(ValueError):
        series_info(STUDY, kind, 9100, method=method)
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        series_uid("", "sr")


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
