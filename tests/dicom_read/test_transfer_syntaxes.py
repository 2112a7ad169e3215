"""Every supported transfer syntax round-trips through write -> (dcmtk) -> read_mammogram."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.pixels import get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from mammoxai.dicom_io import read_mammogram, write_phantom_dicom

WINDOW12 = (2048.0, 4096.0)   # LINEAR window covering 0..4095 exactly: y = x / 4095


def _stored(ds: pydicom.Dataset) -> np.ndarray:
    return get_decoder(ds.file_meta.TransferSyntaxUID).as_array(ds)[0]


@pytest.mark.parametrize("ts", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian,
                                RLELossless, JPEGLSLossless, JPEG2000Lossless])
def test_lossless_round_trip_pydicom(tmp_path, image12, ts):
    path = tmp_path / "mg.dcm"
    write_phantom_dicom(image12, laterality="L", view="CC", voi=WINDOW12, transfer_syntax=ts, path=path)
    on_disk = pydicom.dcmread(path)
    assert on_disk.file_meta.TransferSyntaxUID == ts
    assert np.array_equal(_stored(on_disk), image12)
    mg = read_mammogram(path)
    expected = ((image12.astype(np.float64) - 2047.5) / 4095.0 + 0.5).clip(0, 1)
    np.testing.assert_allclose(mg.pixels, expected, atol=1e-5)
    assert mg.pixels.dtype == np.float32 and mg.pixels.shape == image12.shape


@pytest.mark.parametrize("ts,tolerance", [(JPEG2000, 0.06), (JPEGLSNearLossless, 3 / 4095 + 1e-6)])
def test_lossy_round_trip_pydicom(tmp_path, image12, ts, tolerance):
    reference = read_mammogram(write_phantom_dicom(image12, laterality="L", view="CC", voi=WINDOW12))
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=WINDOW12, transfer_syntax=ts,
                             path=tmp_path / "lossy.dcm")
    assert ds.LossyImageCompression == "01"
    mg = read_mammogram(tmp_path / "lossy.dcm")
    diff = np.abs(mg.pixels - reference.pixels)
    assert diff.max() <= tolerance
    assert diff.mean() < 0.01


@pytest.mark.parametrize("option,bits,ts,lossless", [
    ("+eb", 8, JPEGBaseline8Bit, False),
    ("+ee", 12, JPEGExtended12Bit, False),
    ("+e1", 12, JPEGLosslessSV1, True),
    ("+e1", 16, JPEGLosslessSV1, True),
])
def test_dcmtk_jpeg_round_trip(tmp_path, phantom, tool, option, bits, ts, lossless):
    image = phantom("R", "MLO", bits)
    src, out = tmp_path / "native.dcm", tmp_path / "jpeg.dcm"
    write_phantom_dicom(image, laterality="R", view="MLO", bits_stored=bits, path=src)
    result = tool("dcmcjpeg", option, str(src), str(out))
    assert result.returncode == 0, result.stderr
    assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
    reference, mg = read_mammogram(src), read_mammogram(out)
    diff = np.abs(mg.pixels - reference.pixels)
    if lossless:
        assert diff.max() == 0.0
    else:
        assert diff.max() < 0.08 and diff.mean() < 0.01
    assert (mg.laterality, mg.view) == ("R", "MLO")


def test_dcmtk_jpegls_and_rle_and_deflate_round_trip(tmp_path, image12, tool):
    src = tmp_path / "native.dcm"
    write_phantom_dicom(image12, laterality="L", view="CC", path=src)
    reference = read_mammogram(src)
    for program, options, name, ts in [("dcmcjpls", ["+el"], "jls.dcm", JPEGLSLossless),
                                       ("dcmcrle", [], "rle.dcm", RLELossless),
                                       ("dcmconv", ["+td"], "deflated.dcm", DeflatedExplicitVRLittleEndian)]:
        out = tmp_path / name
        result = tool(program, *options, str(src), str(out))
        assert result.returncode == 0, (program, result.stderr)
        assert pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID == ts
        assert np.array_equal(read_mammogram(out).pixels, reference.pixels), program
