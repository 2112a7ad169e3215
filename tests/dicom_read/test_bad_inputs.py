"""Bad input: each gives a typed DicomReadError naming the SOP Instance UID / file and the problem."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from pydicom.encaps import encapsulate
from pydicom.uid import CTImageStorage, JPEG2000Lossless, RLELossless

from mammoxai.dicom_io import (
    DicomReadError,
    NotAMammogramError,
    UnsupportedMammogramError,
    UnsupportedTransferSyntaxError,
    load_dataset,
    read_mammogram,
    write_phantom_dicom,
)
from mammoxai.errors import MammoxaiError


@pytest.fixture
def native(tmp_path, image12):
    path = tmp_path / "ok.dcm"
    ds = write_phantom_dicom(image12, laterality="L", view="CC", path=path)
    return path, ds


def _one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text
    return text


def test_errors_are_mammoxai_errors():
    assert issubclass(DicomReadError, MammoxaiError)
    assert issubclass(NotAMammogramError, DicomReadError) and issubclass(UnsupportedMammogramError, DicomReadError)
    assert issubclass(UnsupportedTransferSyntaxError, UnsupportedMammogramError)


@pytest.mark.parametrize("keep", [0.97, 0.5])
def test_truncated_native_file(tmp_path, native, keep):
    path, ds = native
    data = path.read_bytes()
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(DicomReadError) as info:
        read_mammogram(cut)
    text = _one_line(info.value)
    assert ds.SOPInstanceUID in text and str(cut) in text and "truncated" in text


def test_truncated_header(tmp_path, native):
    path, _ = native
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(DicomReadError, match=r"no Pixel Data .*truncated"):
        read_mammogram(cut)
    cut.write_bytes(path.read_bytes()[:300])       # meta header only
    with pytest.raises(DicomReadError, match="truncated"):
        read_mammogram(cut)


@pytest.mark.parametrize("ts", [RLELossless, JPEG2000Lossless])
def test_truncated_compressed_file(tmp_path, image12, ts):
    path = tmp_path / "c.dcm"
    write_phantom_dicom(image12, laterality="L", view="CC", transfer_syntax=ts, path=path)
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:-400])
    with pytest.raises(DicomReadError, match=f"{cut}.*truncated"):
        read_mammogram(cut)


def test_corrupt_compressed_stream(image12):
    ds = write_phantom_dicom(image12, laterality="L", view="CC", transfer_syntax=JPEG2000Lossless)
    frame = pydicom.encaps.generate_frames(ds.PixelData, number_of_frames=1).__next__()
    ds.PixelData = encapsulate([frame[: len(frame) // 3]])
    with pytest.raises(DicomReadError, match=f"{ds.SOPInstanceUID}: cannot decode Pixel Data"):
        read_mammogram(ds)


def test_pixel_data_shorter_than_header(native):
    _, ds = native
    ds.PixelData = ds.PixelData[:-200]
    with pytest.raises(DicomReadError, match=rf"{ds.SOPInstanceUID}: Pixel Data is 26424 bytes .* need 26624"):
        read_mammogram(ds)


@pytest.mark.parametrize("keyword", ["Rows", "Columns"])
def test_missing_rows_columns(native, keyword):
    _, ds = native
    delattr(ds, keyword)
    with pytest.raises(DicomReadError, match=f"{ds.SOPInstanceUID}: {keyword} is missing"):
        read_mammogram(ds)


@pytest.mark.parametrize("uid,pattern", [("1.2.3.4.5.6", "transfer syntax 1.2.3.4.5.6 has no pixel data decoder"),
                                         ("1.2.840.10008.1.2.4.100", r"MPEG2 .* has no pixel data decoder")])
def test_unsupported_transfer_syntax(native, uid, pattern):
    _, ds = native
    ds.file_meta.TransferSyntaxUID = uid
    with pytest.raises(UnsupportedTransferSyntaxError, match=pattern):
        read_mammogram(ds)


def test_rgb_mammogram(native):
    _, ds = native
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    with pytest.raises(UnsupportedMammogramError, match=f"{ds.SOPInstanceUID}: unsupported mammogram: .*RGB"):
        read_mammogram(ds)


def test_multi_frame(native):
    _, ds = native
    ds.NumberOfFrames = 2
    with pytest.raises(UnsupportedMammogramError, match="multi-frame image .2 frames"):
        read_mammogram(ds)


def test_not_dicom(tmp_path):
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"this is not DICOM" * 50)
    with pytest.raises(DicomReadError, match=f"file {junk}: not a DICOM file"):
        read_mammogram(junk)
    with pytest.raises(DicomReadError, match="no such file"):
        read_mammogram(tmp_path / "missing.dcm")
    with pytest.raises(TypeError):
        read_mammogram(42)   # type: ignore[arg-type]


def test_load_dataset_reads_whole_files_and_refuses_broken_ones(tmp_path, native):
    path, ds = native
    loaded = load_dataset(path)
    assert loaded.SOPInstanceUID == ds.SOPInstanceUID and "PixelData" in loaded
    assert read_mammogram(loaded).sop_instance_uid == ds.SOPInstanceUID     # the pipeline reads each file once
    cut = tmp_path / "cut.dcm"
    cut.write_bytes(path.read_bytes()[:300])
    with pytest.raises(DicomReadError, match=f"file {cut}: .*truncated"):
        load_dataset(cut)
    (tmp_path / "junk.dcm").write_bytes(b"this is not DICOM" * 50)
    with pytest.raises(DicomReadError, match="not a DICOM file"):
        load_dataset(tmp_path / "junk.dcm")
    with pytest.raises(DicomReadError, match="no such file"):
        load_dataset(tmp_path / "missing.dcm")


def test_wrong_modality_ct(tmp_path, native):
    _, ds = native
    ds.SOPClassUID, ds.Modality = CTImageStorage, "CT"
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    path = tmp_path / "ct.dcm"
    ds.save_as(path, enforce_file_format=True)
    with pytest.raises(NotAMammogramError, match=f"{ds.SOPInstanceUID} \\(file {path}\\): not a mammogram: Modality CT"):
        read_mammogram(path)


def test_tomosynthesis(native):
    _, ds = native
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.13.1.3"
    with pytest.raises(UnsupportedMammogramError, match="Tomosynthesis is out of scope"):
        read_mammogram(ds)


def test_missing_sop_class(native):
    _, ds = native
    del ds.SOPClassUID
    with pytest.raises(DicomReadError, match="no SOP Class UID"):
        read_mammogram(ds)


def test_voi_index_negative(native):
    _, ds = native
    with pytest.raises(DicomReadError, match="negative"):
        read_mammogram(ds, voi_window_index=-1)


def test_invalid_window_falls_back(native, image12):
    _, ds = native
    ds.WindowWidth = "0"
    mg = read_mammogram(ds)   # logged warning, then min/max
    lo, hi = float(image12.min()), float(image12.max())
    np.testing.assert_allclose(mg.pixels, (image12 - lo) / (hi - lo), atol=1e-6)
