"""Sending the Deflated Explicit VR Little Endian hot-region SEG (issue 12): to a peer that accepts deflate it
goes deflated; to one that does not, re-encoded in Explicit VR Little Endian with its SOP Instance UID kept;
STOW-RS and folder destinations deliver it too. Real peers: dcmtk's storescp and Orthanc."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from mammoxai.config.settings import DestinationSettings, OutputSettings
from mammoxai.dicom_io import read_mammogram
from mammoxai.dicom_io.results import AlgorithmInfo, ImageResult, MethodMap
from mammoxai.dicom_io.synthetic import write_phantom_dicom
from mammoxai.dicom_io.writers import write_results
from mammoxai.node.scu import DicomDestination, DicomWebDestination, FolderDestination, Peer, c_store
from node_helpers import free_port, poll


def _hot_region_seg(path: Path) -> pydicom.Dataset:
    """The BINARY hot-region SEG the writers make for a 256 x 192 phantom with one Gaussian map, saved at ``path``."""
    rows, cols = 256, 192
    yy, xx = np.mgrid[0:rows, 0:cols]
    pixels = np.where(((yy - rows / 2) / (rows * 0.45)) ** 2 + (xx / (cols * 0.9)) ** 2 <= 1, 2500, 100)
    mg = dataclasses.replace(read_mammogram(write_phantom_dicom(pixels.astype(np.uint16), laterality="L", view="CC")),
                             laterality="L", view="CC")
    heat = np.exp(-((yy - 100.0) ** 2 + (xx - 60.0) ** 2) / (2 * 15.0 ** 2)).astype(np.float32)
    result = ImageResult(class_names=("benign", "malignant"), probabilities=(0.3, 0.7),
                         algorithm=AlgorithmInfo("test model", "1", "ab" * 32, "resnet10t", "0.1.0"),
                         maps=(MethodMap("gradcam", "Grad-CAM", heat, signed=False, code="GCAM", series_slot=6),))
    (seg,) = [d for d in write_results(mg, result, OutputSettings(secondary_capture=False, montage=False,
                                                                  structured_report=False, gsps=False))
              if d.SegmentationType == "BINARY"]
    seg.save_as(path, enforce_file_format=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    return pydicom.dcmread(path)


def _same_data_set(a: pydicom.Dataset, b: pydicom.Dataset) -> None:
    assert a.SOPInstanceUID == b.SOPInstanceUID
    assert a == b and a.PixelData == b.PixelData


def _storescp(out: Path, *options: str):
    port = free_port()
    proc = subprocess.Popen(["storescp", *options, "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    poll(lambda: subprocess.run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)],
                                capture_output=True).returncode == 0, 20, 0.1, "storescp")
    return proc, Peer("STORESCP", "127.0.0.1", port)


@pytest.mark.parametrize("accepts_deflate", [False, True])
def test_c_store_deflated_seg_to_storescp(tmp_path, accepts_deflate):
    """storescp accepts only uncompressed syntaxes unless told ``+xd`` (prefer deflated)."""
    seg = _hot_region_seg(tmp_path / "seg.dcm")
    out = tmp_path / "received"
    out.mkdir()
    proc, peer = _storescp(out, *(["+xd"] if accepts_deflate else []))
    try:
        assert [s for _, s in c_store([tmp_path / "seg.dcm"], peer, "MAMMOXAI")] == [0]
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    (received,) = [pydicom.dcmread(p) for p in out.iterdir()]
    expected = DeflatedExplicitVRLittleEndian if accepts_deflate else ExplicitVRLittleEndian
    assert received.file_meta.TransferSyntaxUID == expected
    _same_data_set(received, seg)


def test_deflated_seg_to_orthanc_by_c_store_stow_and_to_a_folder(tmp_path, orthanc):
    seg = _hot_region_seg(tmp_path / "seg.dcm")
    client = orthanc.client()
    dicom = DestinationSettings(kind="dicom", ae_title="ORTHANC", host="127.0.0.1", port=orthanc.dicom_port)
    for destination in (DicomDestination(dicom, "MAMMOXAI"),
                        DicomWebDestination(f"http://{orthanc.USER}:{orthanc.PASSWORD}@127.0.0.1:"
                                            f"{orthanc.http_port}/dicom-web")):
        orthanc.clear()
        destination.send([tmp_path / "seg.dcm"])
        (instance,) = orthanc.study_instances(str(seg.StudyInstanceUID))
        assert instance["SOPInstanceUID"] == seg.SOPInstanceUID
        (found,) = client.post_tools_lookup(str(seg.SOPInstanceUID))
        orthanc_id = found["ID"]
        stored = tmp_path / f"{destination.describe().split()[0]}.dcm"
        stored.write_bytes(client.get_instances_id_file(orthanc_id))
        _same_data_set(pydicom.dcmread(stored), seg)
    FolderDestination(tmp_path / "folder").send([tmp_path / "seg.dcm"])
    copy = tmp_path / "folder" / seg.StudyInstanceUID / seg.SeriesInstanceUID / f"{seg.SOPInstanceUID}.dcm"
    assert copy.read_bytes() == (tmp_path / "seg.dcm").read_bytes()
