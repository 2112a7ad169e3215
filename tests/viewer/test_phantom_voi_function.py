"""write_phantom_dicom(voi_function=None): the window without VOI LUT Function (0028,1056).

OHIF 3.13 (cornerstone3D issue #2844) cannot read the attribute, so the viewer tests' phantoms omit
it. Its absence means LINEAR (PS3.3 C.11.2.1.2): the image must read exactly as with LINEAR.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from mammoxai.dicom_io import read_mammogram, write_phantom_dicom
from mammoxai.models.phantoms import generate_phantom


@pytest.mark.parametrize("photometric", ["MONOCHROME2", "MONOCHROME1"])
def test_no_voi_lut_function_reads_as_linear(tmp_path, photometric):
    p = generate_phantom(3, finding="malignant_mass", laterality="R", view="CC", shape=(128, 104))
    kwargs = dict(laterality="R", view="CC", bits_stored=p.bits_stored, photometric=photometric)
    without = write_phantom_dicom(p.image, path=tmp_path / "none.dcm", voi_function=None, **kwargs)
    linear = write_phantom_dicom(p.image, path=tmp_path / "linear.dcm", voi_function="LINEAR", **kwargs)
    assert "VOILUTFunction" not in without and linear.VOILUTFunction == "LINEAR"
    assert (without.WindowCenter, without.WindowWidth) == (linear.WindowCenter, linear.WindowWidth)
    a, b = read_mammogram(tmp_path / "none.dcm"), read_mammogram(tmp_path / "linear.dcm")
    np.testing.assert_array_equal(a.pixels, b.pixels)
    done = subprocess.run(["dciodvfy", str(tmp_path / "none.dcm")], capture_output=True, text=True)
    errors = [line for line in (done.stdout + done.stderr).splitlines() if line.startswith("Error")]
    assert done.returncode == 0 and errors == [], errors
