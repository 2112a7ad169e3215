"""End to end with the reading side: write_phantom_dicom -> read_mammogram -> write_results -> dciodvfy."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest

from mammoxai.config.settings import OutputSettings
from mammoxai.dicom_io.reader import read_mammogram
from mammoxai.dicom_io.synthetic import write_phantom_dicom
from mammoxai.dicom_io.writers import write_results


@pytest.mark.parametrize("laterality,view,conventional", [("R", "MLO", ["P", "FL"]), ("L", "CC", ["A", "R"])])
def test_mirrored_stored_grid_gets_display_orientation(dw, tmp_path, laterality, view, conventional):
    rows, cols = 360, 240
    yy, xx = np.mgrid[0:rows, 0:cols]
    chest_right = laterality == "R"                                  # display convention
    dist = (cols - 1 - xx) if chest_right else xx
    display = np.where(((yy - rows / 2) / (rows * 0.45)) ** 2 + (dist / (cols * 0.9)) ** 2 <= 1, 3000, 80)
    stored = np.ascontiguousarray(display[:, ::-1]).astype(np.uint16)   # stored mirrored ...
    opposite = str.maketrans("AP", "PA")
    row, col = conventional
    ds = write_phantom_dicom(stored, laterality=laterality, view=view,
                             patient_orientation=(row.translate(opposite), col))   # ... and described so
    mg = read_mammogram(ds)
    assert mg.flip_horizontal and not mg.flip_vertical
    result = dw.make_result(mg.pixels.shape, methods=("gradcam", "lrp"))
    outputs = write_results(mg, result, OutputSettings(sc_max_size=512))
    paths = dw.save_all(outputs, tmp_path, f"{laterality}{view}")
    for path in paths:
        dw.assert_valid(path)
    by_modality = {}
    for path in paths:
        d = pydicom.dcmread(path)
        by_modality.setdefault(d.Modality, []).append(d)
    for sc in by_modality["OT"]:
        assert list(sc.PatientOrientation) == conventional                # as displayed
        assert sc.Laterality == laterality
    for seg in by_modality["SEG"]:
        assert list(seg.PatientOrientation) == [row.translate(opposite), col]   # as stored
    (gsps,) = by_modality["PR"]
    assert gsps.ImageHorizontalFlip == "Y" and int(gsps.ImageRotation) == 0
    assert gsps.DisplayedAreaSelectionSequence[0].DisplayedAreaTopLeftHandCorner == [cols, 1]
    voi = gsps.SoftcopyVOILUTSequence[0]
    assert float(voi.WindowWidth) == float(ds.WindowWidth)             # the source's window, copied
