"""Grayscale pipeline: Modality LUT, VOI (window / LUT / none), polarity (PS3.3 C.11)."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mammoxai.dicom_io import DicomReadError, read_mammogram, write_phantom_dicom
from mammoxai.dicom_io.pixels import needs_inversion, window


def _linear(x, c, w):
    return np.clip((x - (c - 0.5)) / (w - 1) + 0.5, 0, 1)


def test_window_center_width_applied(image12):
    c, w = 1500.0, 1000.0
    mg = read_mammogram(write_phantom_dicom(image12, laterality="L", view="CC", voi=(c, w)))
    np.testing.assert_allclose(mg.pixels, _linear(image12.astype(np.float64), c, w), atol=1e-5)
    assert (mg.pixels == 0).any() and (mg.pixels == 1).any()   # the window really clips


def test_window_index_selects_second_window(image12):
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=[(2048, 4096), (1000, 400)])
    first = read_mammogram(ds)
    second = read_mammogram(ds, voi_window_index=1)
    np.testing.assert_allclose(first.pixels, _linear(image12.astype(np.float64), 2048, 4096), atol=1e-5)
    np.testing.assert_allclose(second.pixels, _linear(image12.astype(np.float64), 1000, 400), atol=1e-5)
    with pytest.raises(DicomReadError, match=r"index 2 out of range \(2 window"):
        read_mammogram(ds, voi_window_index=2)


def test_linear_exact_and_sigmoid_functions(image12):
    x = image12.astype(np.float64)
    exact = read_mammogram(write_phantom_dicom(image12, laterality="L", view="CC", voi=(1200, 800),
                                               voi_function="LINEAR_EXACT"))
    np.testing.assert_allclose(exact.pixels, np.clip((x - 1200) / 800 + 0.5, 0, 1), atol=1e-5)
    sigmoid = read_mammogram(write_phantom_dicom(image12, laterality="L", view="CC", voi=(1200, 800),
                                                 voi_function="SIGMOID"))
    np.testing.assert_allclose(sigmoid.pixels, 1 / (1 + np.exp(-4 * (x - 1200) / 800)), atol=1e-5)


def test_window_function_rejects_bad_width():
    with pytest.raises(ValueError, match="width 0.5 < 1"):
        window(np.zeros(3, np.float32), 10, 0.5)
    with pytest.raises(ValueError, match="not LINEAR"):
        window(np.zeros(3, np.float32), 10, 5, "GAMMA")


def test_voi_lut_sequence_applied(image12):
    lut = (np.sqrt(np.arange(4096) / 4095.0) * 65535).round().astype(np.uint16)   # a gamma-like curve
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=lut)
    assert "VOILUTSequence" in ds and "WindowCenter" not in ds
    mg = read_mammogram(ds)
    np.testing.assert_allclose(mg.pixels, lut[image12] / 65535.0, atol=1e-6)


def test_window_preferred_over_lut_unless_asked(image12):
    lut = (np.arange(4096)[::-1] * 16).astype(np.uint16)   # inverting LUT: tells the two apart
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=lut)
    ds.WindowCenter, ds.WindowWidth = "2048", "4096"
    x = image12.astype(np.float64)
    np.testing.assert_allclose(read_mammogram(ds).pixels, _linear(x, 2048, 4096), atol=1e-5)
    np.testing.assert_allclose(read_mammogram(ds, prefer_voi_lut=True).pixels, lut[image12] / 65535.0, atol=1e-6)


def test_no_voi_uses_min_max(image12):
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=None, presentation_intent="FOR PROCESSING")
    assert "WindowCenter" not in ds and "VOILUTSequence" not in ds
    mg = read_mammogram(ds)
    lo, hi = float(image12.min()), float(image12.max())
    np.testing.assert_allclose(mg.pixels, (image12 - lo) / (hi - lo), atol=1e-6)


def test_monochrome1_inverted_to_monochrome2(image12):
    m2 = write_phantom_dicom(image12, laterality="L", view="CC", voi=(1500, 2000))
    m1 = write_phantom_dicom(image12, laterality="L", view="CC", voi=(1500, 2000), photometric="MONOCHROME1")
    assert m1.PhotometricInterpretation == "MONOCHROME1" and m1.PresentationLUTShape == "INVERSE"
    assert not np.array_equal(m1.pixel_array, m2.pixel_array)   # stored values differ ...
    np.testing.assert_allclose(read_mammogram(m1).pixels, read_mammogram(m2).pixels, atol=1e-5)   # ... display doesn't


def test_monochrome1_with_lut_and_identity_shape(image12):
    lut = (np.sqrt(np.arange(4096) / 4095.0) * 65535).round().astype(np.uint16)
    m1 = write_phantom_dicom(image12, laterality="L", view="CC", voi=lut, photometric="MONOCHROME1")
    expected = lut[image12] / 65535.0
    np.testing.assert_allclose(read_mammogram(m1).pixels, expected, atol=1e-6)
    m1.PresentationLUTShape = "IDENTITY"   # MONOCHROME1 still wins (C.11.6.1: "other than to account for ...")
    np.testing.assert_allclose(read_mammogram(m1).pixels, expected, atol=1e-6)


def test_monochrome2_with_inverse_shape_is_inverted(image12):
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=(2048, 4096))
    plain = read_mammogram(ds).pixels
    ds.PresentationLUTShape = "INVERSE"
    assert needs_inversion(ds)
    np.testing.assert_allclose(read_mammogram(ds).pixels, 1.0 - plain, atol=1e-6)


def test_rescale_slope_intercept_before_window(image12):
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=(2048, 4096))
    ds.RescaleSlope, ds.RescaleIntercept = "2", "-100"
    ds.WindowCenter, ds.WindowWidth = "3000", "6000"    # in modality units
    x = image12.astype(np.float64) * 2 - 100
    np.testing.assert_allclose(read_mammogram(ds).pixels, _linear(x, 3000, 6000), atol=1e-5)


def test_modality_lut_sequence(image12):
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=None, presentation_intent="FOR PROCESSING")
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.ModalityLUTType = "US"
    item.LUTData = [int(v) for v in (4095 - np.arange(4096)) * 3]   # reversing, scaled
    ds.ModalityLUTSequence = Sequence([item])
    expected = (4095 - image12.astype(np.float64)) * 3
    expected = (expected - expected.min()) / (expected.max() - expected.min())
    np.testing.assert_allclose(read_mammogram(ds).pixels, expected, atol=1e-6)


def test_signed_pixel_representation(image12):
    signed = image12.astype(np.int32) - 2048                     # -2048..2047
    ds = write_phantom_dicom(image12, laterality="L", view="CC", voi=(0, 4096))
    ds.PixelRepresentation = 1
    ds.PixelData = (signed & 0x0FFF).astype(np.uint16).tobytes()  # 12-bit two's complement, high bits clear
    ds.WindowCenter, ds.WindowWidth = "0.5", "4096"
    mg = read_mammogram(ds)
    np.testing.assert_allclose(mg.pixels, _linear(signed.astype(np.float64), 0.5, 4096), atol=1e-5)
    assert (signed < 0).any() and (mg.pixels[signed < 0] < 0.5).all()   # sign-extended, not 2048..4095
    assert (mg.pixels[signed >= 0] >= 0.5).all()


def test_caller_dataset_is_not_modified_and_pixel_data_dropped(image12):
    ds = write_phantom_dicom(image12, laterality="L", view="CC")
    before = len(ds)
    mg = read_mammogram(ds)
    assert "PixelData" in ds and len(ds) == before
    assert "PixelData" not in mg.dataset
    kept = read_mammogram(ds, keep_pixel_data=True)
    assert "PixelData" in kept.dataset
    assert mg.sop_instance_uid == ds.SOPInstanceUID and mg.study_instance_uid == ds.StudyInstanceUID


def test_reads_file_with_pydicom_dataset_from_disk(tmp_path, image12):
    path = tmp_path / "a.dcm"
    write_phantom_dicom(image12, laterality="L", view="CC", path=path)
    from_path = read_mammogram(path)
    from_ds = read_mammogram(pydicom.dcmread(path))
    assert np.array_equal(from_path.pixels, from_ds.pixels)
    assert 0.0 <= from_path.pixels.min() and from_path.pixels.max() <= 1.0


def test_pixel_padding_ignored_by_min_max_and_black(image12):
    padded = image12 // 2                                   # 0..2047: no pixel of the phantom is 4000..4095
    padded[:, :10] = 4095                                   # a padded strip, brighter than the phantom
    ds = write_phantom_dicom(padded, laterality="L", view="CC", voi=None, presentation_intent="FOR PROCESSING")
    ds.PixelPaddingValue = 4095
    mg = read_mammogram(ds)
    assert (mg.pixels[:, :10] == 0).all()
    body = padded[:, 10:].astype(np.float64)
    lo, hi = body.min(), body.max()
    np.testing.assert_allclose(mg.pixels[:, 10:], (body - lo) / (hi - lo), atol=1e-6)
    ds.PixelPaddingValue, ds.PixelPaddingRangeLimit = 4000, 4095   # a range
    assert (read_mammogram(ds).pixels[:, :10] == 0).all()


def test_ddsm_like_header(image12):
    ds = write_phantom_dicom(image12, laterality="R", view="MLO")
    del ds.ImageLaterality, ds.ViewCodeSequence
    ds.Laterality, ds.PatientOrientation = "R", "MLO"          # CBIS-DDSM style
    mg = read_mammogram(ds)
    assert (mg.laterality, mg.view) == ("R", "MLO")


def test_dataset_without_file_meta_is_taken_as_native(image12):
    ds = write_phantom_dicom(image12, laterality="R", view="CC")
    bare = Dataset({tag: ds[tag] for tag in ds.keys()})          # as built in memory: no file meta
    assert not hasattr(bare, "file_meta")
    assert np.array_equal(read_mammogram(bare).pixels, read_mammogram(ds).pixels)
    assert not hasattr(bare, "file_meta")                         # and the caller's dataset is untouched
