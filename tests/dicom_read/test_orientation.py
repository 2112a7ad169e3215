"""Laterality, view and display flips (ImageLaterality / Laterality / PatientOrientation,
ViewCodeSequence / ViewPosition)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mammoxai.dicom_io import conventional_patient_orientation, read_mammogram, write_phantom_dicom
from mammoxai.dicom_io.read_orientation import (
    VIEW_SCT,
    chest_wall_on_right,
    display_flips,
    normalise_view,
    patient_orientation,
    read_laterality,
    read_view,
)

VIEWS = ["CC", "MLO", "ML", "LM", "XCCL", "XCCM", "LMO", "FB"]


@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("view", VIEWS)
def test_laterality_and_view_from_standard_header(image12, laterality, view):
    mg = read_mammogram(write_phantom_dicom(image12, laterality=laterality, view=view))
    assert (mg.laterality, mg.view) == (laterality, view)
    assert (mg.flip_horizontal, mg.flip_vertical) == (False, False)   # written in the display convention


def test_view_code_values_follow_cid_4014():
    assert VIEW_SCT["CC"][0] == "399162004" and VIEW_SCT["MLO"][0] == "399368009"
    assert VIEW_SCT["ML"][0] == "399260004" and VIEW_SCT["LM"][0] == "399352003"
    assert VIEW_SCT["XCCL"][0] == "399192008" and VIEW_SCT["XCCM"][0] == "399101009"


@pytest.mark.parametrize("code,scheme,expected", [("R-10242", "SRT", "CC"), ("R-10226", "SNM3", "MLO"),
                                                  ("Y-X1770", "SRT", "XCCL"), ("123", "99X", None)])
def test_view_from_legacy_codes(code, scheme, expected):
    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code, scheme, "x"
    ds = Dataset()
    ds.ViewCodeSequence = Sequence([item])
    assert read_view(ds) == expected


def test_view_position_and_ddsm_single_value_orientation():
    ds = Dataset()
    ds.ViewPosition = "MLO "
    assert read_view(ds) == "MLO"
    ds = Dataset()
    ds.PatientOrientation = "CC"          # CBIS-DDSM: one non-standard value
    assert read_view(ds) == "CC" and patient_orientation(ds) is None
    ds.PatientOrientation = ["P", "L"]
    assert read_view(ds) is None and patient_orientation(ds) == ("P", "L")
    assert normalise_view("AP") is None


@pytest.mark.parametrize("laterality,view,expected", [
    ("R", "CC", ("P", "L")), ("L", "CC", ("A", "R")), ("R", "MLO", ("P", "FL")), ("L", "MLO", ("A", "FR")),
    ("R", "ML", ("P", "F")), ("L", "LM", ("A", "F")), ("R", "XCCL", ("P", "L")),
])
def test_conventional_patient_orientation(laterality, view, expected):
    assert conventional_patient_orientation(laterality, view) == expected


def test_conventional_patient_orientation_rejects_bad_laterality():
    with pytest.raises(ValueError, match="laterality"):
        conventional_patient_orientation("B", "CC")


@pytest.mark.parametrize("laterality", ["L", "R"])
@pytest.mark.parametrize("view", ["CC", "MLO"])
def test_laterality_from_patient_orientation_only(image12, laterality, view):
    ds = write_phantom_dicom(image12, laterality=laterality, view=view)
    del ds.ImageLaterality
    assert "Laterality" not in ds
    mg = read_mammogram(ds)
    assert mg.laterality == laterality and mg.view == view


def test_laterality_precedence():
    ds = Dataset()
    ds.ImageLaterality, ds.Laterality, ds.PatientOrientation = "R", "L", ["A", "R"]
    assert read_laterality(ds) == "R"
    del ds.ImageLaterality
    assert read_laterality(ds) == "L"
    del ds.Laterality
    assert read_laterality(ds) == "L"     # row direction A: chest wall left -> left breast
    ds.PatientOrientation = ["P", "FL"]
    assert read_laterality(ds) == "R"
    ds.ImageLaterality = "B"
    assert read_laterality(ds) is None
    assert read_laterality(Dataset()) is None


@pytest.mark.parametrize("laterality,view", [("R", "CC"), ("L", "CC"), ("R", "MLO"), ("L", "MLO")])
@pytest.mark.parametrize("flip_h", [False, True])
@pytest.mark.parametrize("flip_v", [False, True])
def test_flips_from_patient_orientation(phantom, laterality, view, flip_h, flip_v):
    """Store a mirrored grid, describe it honestly in Patient Orientation: the reader's flips undo it."""
    display = phantom(laterality, view)
    stored = display[:, ::-1] if flip_h else display
    stored = stored[::-1, :] if flip_v else stored
    row, col = conventional_patient_orientation(laterality, view)
    opposite = {"A": "P", "P": "A", "L": "R", "R": "L", "F": "H", "H": "F"}
    if flip_h:
        row = "".join(opposite[c] for c in row)
    if flip_v:
        col = "".join(opposite[c] for c in col) if view == "CC" else col.replace("F", "H")
    ds = write_phantom_dicom(np.ascontiguousarray(stored), laterality=laterality, view=view,
                             patient_orientation=(row, col))
    mg = read_mammogram(ds)
    assert (mg.flip_horizontal, mg.flip_vertical) == (flip_h, flip_v)
    assert mg.pixels.shape == stored.shape       # never reoriented: stored grid
    reference = read_mammogram(write_phantom_dicom(display, laterality=laterality, view=view))
    assert np.array_equal(mg.display_pixels(), reference.pixels)


def test_display_flips_rules():
    assert display_flips(("A", "L"), "R", "CC") == (True, False)
    assert display_flips(("P", "R"), "R", "CC") == (False, True)
    assert display_flips(("P", "HL"), "R", "MLO") == (False, True)
    assert display_flips(("H", "L"), "R", "CC") == (False, False)    # rotated 90 degrees: cannot flip
    assert display_flips(None, "R", "CC") is None


def test_missing_orientation_guessed_from_tissue(phantom):
    display = phantom("L", "CC")                   # chest wall on the left
    for stored, expected in [(display, False), (np.ascontiguousarray(display[:, ::-1]), True)]:
        ds = write_phantom_dicom(stored, laterality="L", view="CC")
        del ds.PatientOrientation
        mg = read_mammogram(ds)
        assert mg.flip_horizontal is expected and mg.flip_vertical is False
        assert read_mammogram(ds, guess_missing_orientation=False).flip_horizontal is False


def test_chest_wall_heuristic():
    img = np.zeros((100, 80), np.float32)
    img[:, 50:] = 0.8
    assert chest_wall_on_right(img) is True
    assert chest_wall_on_right(img[:, ::-1]) is False
    assert chest_wall_on_right(np.full((10, 10), 0.5, np.float32)) is None
