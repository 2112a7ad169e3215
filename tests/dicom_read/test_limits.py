"""Bounds checked before any pixel decode or inflation (mammoxai.dicom_io.limits), and the reader using them."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless, generate_uid

from mammoxai.config import Settings
from mammoxai.dicom_io import DicomReadError, UnsupportedTransferSyntaxError, load_dataset, read_mammogram
from mammoxai.dicom_io.limits import (
    DEFER_BYTES,
    DecodeLimits,
    ImageTooLargeError,
    check_first_frame,
    check_image,
    check_size,
    check_transfer_syntax,
    check_values,
    decoded_size,
    first_fragment,
    inflate_bounded,
    native_length,
    read_header,
)

MIB = 1024 * 1024


def mammogram(rows: int = 32, cols: int = 24, ts: str = ExplicitVRLittleEndian, pixel_data: bytes | None = None) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ts
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.Laterality, ds.ImageLaterality, ds.ViewPosition = "MG", "L", "L", "CC"
    ds.PatientOrientation = ["A", "R"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = rows, cols
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixel_data if pixel_data is not None else \
        (np.arange(rows * cols, dtype=np.uint16) % 4096).tobytes()
    return ds


def rle_bomb(path: Path, side: int = 60000) -> None:
    """The issue's 1.8 KB RLE file whose header says side x side x 16 bit."""
    head = struct.pack("<16L", 2, 64, 64 + 400, *([0] * 13))
    frame = head + bytes([0x81, 0]) * 200 + bytes([0x81, 0]) * 200
    ds = mammogram(side, side, RLELossless, encapsulate([frame]))
    ds.save_as(path, enforce_file_format=True)


def test_sizes_and_settings():
    ds = mammogram(4096, 3328)
    assert decoded_size(ds) == 4096 * 3328 * 2 == native_length(ds)
    ds.NumberOfFrames, ds.SamplesPerPixel, ds.BitsAllocated = 3, 3, 1
    assert decoded_size(ds) == 4096 * 3328 * 3 * 3 and native_length(ds) == 4096 * 3328 * 3 * 3 // 8
    limits = DecodeLimits.from_settings(Settings(node={"max_pixel_data_mb": 10, "max_inflated_mb": 20}).node)
    assert limits == DecodeLimits(10 * MIB, 20 * MIB)
    check_size(mammogram(4096, 3328), "x")                          # the largest real MG fits the default
    with pytest.raises(ImageTooLargeError, match="node.max_pixel_data_mb"):
        check_size(mammogram(4096, 3328), "x", limits)
    with pytest.raises(DicomReadError, match="Rows is missing"):
        check_size(mammogram(0, 10), "x")


def test_inflate_bounded_stops_at_the_cap():
    packer = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = packer.compress(b"\0" * (64 * MIB)) + packer.flush()
    out = io.BytesIO()
    assert inflate_bounded(io.BytesIO(bomb), out, 64 * MIB, "x") == 64 * MIB
    with pytest.raises(ImageTooLargeError, match="node.max_inflated_mb"):
        inflate_bounded(io.BytesIO(bomb), io.BytesIO(), 8 * MIB, "x")
    with pytest.raises(DicomReadError, match="corrupt"):
        inflate_bounded(io.BytesIO(b"\xff\xfe" * 100), io.BytesIO(), MIB, "x")


def test_load_dataset_inflates_within_the_cap(tmp_path):
    ds = mammogram()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.add_new(0x00091010, "LO", "PAD")
    ds.add_new(0x00091011, "OB", b"\0" * (16 * MIB))   # inflates to 16 MiB, a few KB on disk
    path = tmp_path / "deflated.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert path.stat().st_size < MIB
    assert load_dataset(path).Rows == 32
    with pytest.raises(ImageTooLargeError, match="node.max_inflated_mb"):
        load_dataset(path, DecodeLimits(max_inflated_bytes=4 * MIB))
    with pytest.raises(ImageTooLargeError):
        read_header(path, "x", DecodeLimits(max_inflated_bytes=4 * MIB), scratch_dir=tmp_path)
    assert read_header(path, "x", scratch_dir=tmp_path).dataset.Rows == 32
    assert sorted(p.name for p in tmp_path.iterdir()) == ["deflated.dcm"]   # scratch file removed


def test_the_worker_reader_refuses_the_60000_squared_rle_before_decoding(tmp_path):
    path = tmp_path / "bomb.dcm"
    rle_bomb(path)
    assert path.stat().st_size < 2048
    with pytest.raises(ImageTooLargeError, match="60000 x 60000"):
        read_mammogram(path)


def test_read_header_leaves_bulk_values_on_disk(tmp_path):
    ds = mammogram()
    ds.add_new(0x00091010, "LO", "PAD")
    ds.add_new(0x00091011, "OB", b"\1" * (4 * MIB))
    path = tmp_path / "big.dcm"
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path, "x")
    raw = header.dataset.get_item(0x00091011, keep_deferred=True)
    assert raw.value is None and raw.length == 4 * MIB > DEFER_BYTES      # not in memory
    assert "PixelData" not in header.dataset
    assert header.pixel_length == 32 * 24 * 2 == header.pixel_bytes_available
    check_image(header, "x")
    assert header.dataset.get_item(0x00091011, keep_deferred=True).value is None   # still on disk
    path.write_bytes(path.read_bytes()[:-100])                            # truncated Pixel Data
    with pytest.raises(DicomReadError, match="truncated"):
        check_image(read_header(path, "x"), "x")


def test_first_frame_headers_are_checked():
    ds = mammogram(32, 24)
    good_rle = struct.pack("<16L", 2, 64, 70, *([0] * 13)) + b"\0" * 12
    check_first_frame(good_rle, RLELossless, ds, "x")
    with pytest.raises(DicomReadError, match="RLE header declares 3"):
        check_first_frame(struct.pack("<16L", 3, 64, 70, 80, *([0] * 12)), RLELossless, ds, "x")
    with pytest.raises(DicomReadError, match="without a readable first fragment"):
        check_first_frame(None, RLELossless, ds, "x")

    def jpeg(height: int, width: int) -> bytes:
        return b"\xff\xd8\xff\xc3" + struct.pack(">HBHHB", 11, 12, height, width, 1) + b"\x01\x11\x00"

    lossless = "1.2.840.10008.1.2.4.70"
    check_first_frame(jpeg(32, 24), lossless, ds, "x")
    with pytest.raises(DicomReadError, match="JPEG frame is 64 x 24"):
        check_first_frame(jpeg(64, 24), lossless, ds, "x")

    def j2k(height: int, width: int) -> bytes:
        return b"\xff\x4f\xff\x51" + struct.pack(">HH8LHBBB", 41, 0, width, height, 0, 0, width, height, 0, 0,
                                                 1, 11, 1, 1)

    check_first_frame(j2k(32, 24), "1.2.840.10008.1.2.4.90", ds, "x")
    with pytest.raises(DicomReadError, match="JPEG 2000 frame is 32 x 48"):
        check_first_frame(j2k(32, 48), "1.2.840.10008.1.2.4.90", ds, "x")


def test_transfer_syntax_and_values_checks():
    check_transfer_syntax(RLELossless, "x")
    with pytest.raises(UnsupportedTransferSyntaxError, match="MPEG2"):
        check_transfer_syntax("1.2.840.10008.1.2.4.100", "x")
    ds = mammogram()
    ds.WindowCenter = "100"
    check_values(ds, "x")
    ds["WindowCenter"]._value = "abc"                 # what pydicom keeps for an unparsable DS when reading
    with pytest.raises(DicomReadError, match="invalid DS value 'abc'"):
        check_values(ds, "x")


def test_first_fragment_of_encapsulated_pixel_data(tmp_path):
    frame = struct.pack("<16L", 2, 64, 70, *([0] * 13)) + b"\0" * 12
    ds = mammogram(ts=RLELossless, pixel_data=encapsulate([frame]))
    assert first_fragment(io.BytesIO(ds.PixelData)) == frame
    assert first_fragment(io.BytesIO(b"\x01\x02" * 10)) is None          # no Basic Offset Table item
    path = tmp_path / "rle.dcm"
    ds.save_as(path, enforce_file_format=True)
    header = read_header(path, "x")
    assert header.encapsulated and header.first_fragment == frame
    with pytest.raises(DicomReadError, match="RLE header declares 2 segment"):   # 8-bit data needs one segment
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
        check_first_frame(frame, RLELossless, ds, "x")
