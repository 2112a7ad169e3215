"""A SEG sent to a destination that does not accept RLE keeps its SOP Instance UID on every retry (issue 16, fault 4).

The destination is dcmtk's ``storescp`` with its default transfer syntaxes (uncompressed only), so the
SCU has to decompress the RLE SEG; pydicom's ``decompress`` would mint a new SOP Instance UID each time.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, RLELossless, generate_uid

from mammoxai.config import DestinationSettings
from mammoxai.node.scu import DicomDestination
from node_helpers import echo_ok, free_port, poll

SEGMENTATION = "1.2.840.10008.5.1.4.1.1.66.4"


@pytest.fixture
def storescp(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """dcmtk storescp on a free loopback port, uncompressed transfer syntaxes only, unique file names."""
    port, folder = free_port(), tmp_path / "archive"
    folder.mkdir()
    log = open(tmp_path / "storescp.log", "wb")
    proc = subprocess.Popen(["storescp", "+uf", "-aet", "ARCHIVE", "-od", str(folder), str(port)],
                            stdout=log, stderr=log)
    try:
        poll(lambda: proc.poll() is not None or echo_ok(port, "ARCHIVE"), 30, 0.1, "storescp to answer")
        assert proc.poll() is None
        yield port, folder
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)


def rle_seg(path: Path) -> Dataset:
    """A small 8-bit segmentation-class instance, RLE Lossless (as the node writes SEG)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SEGMENTATION
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality, ds.PatientID, ds.PatientName = "SEG", "P1", "Test^Seg"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows = ds.Columns = 32
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.NumberOfFrames = 1
    ds.PixelData = (np.arange(32 * 32) % 200).astype(np.uint8).tobytes()
    ds.compress(RLELossless, generate_instance_uid=False)
    ds.save_as(path, enforce_file_format=True)
    return ds


def test_retried_seg_keeps_its_sop_instance_uid(tmp_path, storescp):
    port, archive = storescp
    seg = rle_seg(tmp_path / "seg.dcm")
    assert pydicom.dcmread(tmp_path / "seg.dcm").file_meta.TransferSyntaxUID == RLELossless
    destination = DicomDestination(DestinationSettings(kind="dicom", ae_title="ARCHIVE", host="127.0.0.1",
                                                       port=port), "MAMMOXAI")
    for _ in range(3):                      # the first send and two retries
        destination.send([tmp_path / "seg.dcm"])
    received = sorted(archive.iterdir())
    assert len(received) == 3
    stored = [pydicom.dcmread(p) for p in received]
    assert {str(d.SOPInstanceUID) for d in stored} == {str(seg.SOPInstanceUID)}
    assert all(d.file_meta.TransferSyntaxUID != RLELossless for d in stored)   # really decompressed
    assert all(d.file_meta.MediaStorageSOPInstanceUID == seg.SOPInstanceUID for d in stored)
