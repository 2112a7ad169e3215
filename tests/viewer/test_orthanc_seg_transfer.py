"""The hot-region SEG OHIF overlays needs no codec plugin in the archive (issue 12).

OHIF's first request for a SEG asks for the whole instance in the default transfer syntax (WADO-RS
``multipart/related; type="application/dicom"`` without ``transfer-syntax=*``), so the archive must be able to
give it uncompressed. Orthanc 1.10 with only its DICOMweb plugin (no GDCM) inflates our Deflated Explicit VR
Little Endian BINARY SEG itself (DCMTK), and answers HTTP 500 for the JPEG 2000 FRACTIONAL map SEGs: those
need a JPEG 2000 decoder (the GDCM plugin) in whatever viewer asks for them uncompressed; OHIF 3.13 does not.
"""

from __future__ import annotations

import io
import urllib.error
import urllib.request
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless
from viewer_harness import Orthanc, Study

pytestmark = [pytest.mark.orthanc]

DEFAULT_SYNTAX = 'multipart/related; type="application/dicom"'


def _wado(orthanc: Orthanc, ds: pydicom.Dataset, accept: str) -> tuple[int, bytes]:
    url = (f"{orthanc.url}/dicom-web/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}"
           f"/instances/{ds.SOPInstanceUID}")
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": accept}), timeout=60) as answer:
            return answer.status, answer.read()
    except urllib.error.HTTPError as exc:
        return exc.code, b""


def test_orthanc_without_gdcm_serves_the_deflated_hot_region_seg(phantom_study: Study, tmp_path: Path):
    orthanc = Orthanc(tmp_path / "orthanc", plugins=("libOrthancDicomWeb.so",))    # no GDCM
    orthanc.start()
    try:
        segs = [pydicom.dcmread(p) for p in phantom_study.result_files("SEG")]
        for path in phantom_study.result_files("SEG"):
            orthanc.upload(path)
        (binary,) = [s for s in segs if s.SegmentationType == "BINARY"]
        assert binary.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
        status, body = _wado(orthanc, binary, DEFAULT_SYNTAX)
        assert status == 200
        part = body[body.index(b"DICM") - 128:body.rindex(b"\r\n--")]     # the one part: a Part 10 file
        served = pydicom.dcmread(io.BytesIO(part))
        assert served.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
        assert served.SOPInstanceUID == binary.SOPInstanceUID and served.PixelData == binary.PixelData
        fractional = [s for s in segs if s.SegmentationType == "FRACTIONAL"]
        assert fractional and all(s.file_meta.TransferSyntaxUID == JPEG2000Lossless for s in fractional)
        assert _wado(orthanc, fractional[0], DEFAULT_SYNTAX)[0] == 500     # needs GDCM (docs/viewer.md)
        assert _wado(orthanc, fractional[0], DEFAULT_SYNTAX + "; transfer-syntax=*")[0] == 200
    finally:
        orthanc.stop()
