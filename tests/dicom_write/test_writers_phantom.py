"""write_results / write_study_summary / is_our_output on a Digital Mammography For Presentation phantom.

Every object is saved, checked by dciodvfy (no Error line, exit 0, only the justified warnings of
``conftest.ALLOWED_WARNINGS``), re-read with pydicom and highdicom, and checked for its references to the
source image and its copied patient / study attributes.
"""

from __future__ import annotations

import dataclasses
import logging

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataelem import RawDataElement
from pydicom.sr.codedict import codes
from pydicom.tag import Tag
from pydicom.uid import JPEGBaseline8Bit

from mammoxai.config.settings import OutputSettings
from mammoxai.dicom_io.provenance import PATIENT_STUDY_KEYWORDS
from mammoxai.dicom_io.triage import is_our_output
from mammoxai.dicom_io.writers import (
    AUTO_SC_METHODS,
    hot_regions,
    select_sc_methods,
    write_results,
    write_study_summary,
)
from mammoxai.dicom_io.write_errors import DicomWriteError

SC, SR3D, SEG, GSPS = ("1.2.840.10008.5.1.4.1.1.7", "1.2.840.10008.5.1.4.1.1.88.33",   # SR: Comprehensive SR
                       "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.11.1")


@pytest.fixture(scope="module")
def written(tmp_path_factory, phantom_l_cc, dw):
    result = dw.make_result(phantom_l_cc.pixels.shape, failures={"rise": "timed out after 300 s"})
    outputs = write_results(phantom_l_cc, result, OutputSettings())
    folder = tmp_path_factory.mktemp("phantom_out")
    paths = dw.save_all(outputs, folder, "ph")
    return phantom_l_cc, result, outputs, paths


def test_objects_in_order_and_all_valid(written, dw):
    source, result, outputs, paths = written
    classes = [str(ds.SOPClassUID) for ds in outputs]
    assert classes == [SC] * 3 + [SC] + [SR3D] + [SEG] + [SEG] * 5 + [GSPS]   # binary hot-region SEG, then maps
    for path in paths:
        dw.assert_valid(path)


def test_common_attributes_copy_the_study_and_use_new_series(written):
    source, _, _, paths = written
    src = source.dataset
    sop_uids = set()
    for path in paths:
        ds = pydicom.dcmread(path)
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword in src:
                assert ds[keyword].value == src[keyword].value, (path.name, keyword)
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert 9100 <= int(ds.SeriesNumber) < 9200
        assert ds.Manufacturer == "mammoxai" and ds.InstanceCreationDate and ds.InstanceCreationTime
        items = [i for i in ds.ContributingEquipmentSequence
                 if i.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"]
        assert len(items) == 1
        assert items[0].PurposeOfReferenceCodeSequence[0].CodeValue == "Newcode1"
        assert items[0].ManufacturerModelName == "mammoxai demo CNN (resnet10t)"
        assert items[0].DeviceUID.startswith("2.25.") and "ab" * 32 in items[0].ContributionDescription
        sop_uids.add(ds.SOPInstanceUID)
    assert len(sop_uids) == len(paths)


def test_secondary_captures(written):
    source, result, outputs, paths = written
    src = source.dataset
    descriptions = []
    for path in paths[:4]:
        ds = pydicom.dcmread(path)
        assert ds.BurnedInAnnotation == "YES" and ds.PhotometricInterpretation == "YBR_FULL_422"   # JPEG default
        assert ds.LossyImageCompression == "01" and ds.LossyImageCompressionMethod == "ISO_10918_1"
        assert float(ds.LossyImageCompressionRatio) > 1
        assert list(ds.PatientOrientation) == ["A", "R"] and ds.Laterality == "L"
        for seq in (ds.SourceImageSequence, ds.ReferencedImageSequence):
            assert (seq[0].ReferencedSOPClassUID, seq[0].ReferencedSOPInstanceUID) == (
                src.SOPClassUID, src.SOPInstanceUID)
        assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)
        descriptions.append(ds.SeriesDescription)
    assert descriptions == ["mammoxai Grad-CAM L", "mammoxai Layer-wise Relevance Propagation L",
                            "mammoxai Integrated Gradients L",
                            "mammoxai montage L"]
    assert len({pydicom.dcmread(p).SeriesInstanceUID for p in paths[:4]}) == 4


def test_structured_report_content(written):
    source, result, outputs, paths = written
    sr = hd.sr.srread(paths[4])
    assert sr.SeriesDescription == "mammoxai SR L" and sr.CompletionFlag == "COMPLETE"
    assert sr.VerificationFlag == "UNVERIFIED"
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.sop_instance_uid
    groups = sr.content.get_planar_roi_measurement_groups()      # every group is a drawable TID 1410
    classification = [g for g in groups if g.tracking_identifier == "mammoxai classification"][0]
    # (highdicom's get_qualitative_evaluations returns the TID 4019 Algorithm Family here: search by name)
    (evaluation,) = hd.sr.utils.find_content_items(classification[0], name=codes.DCM.Finding)
    assert (evaluation.value.value, evaluation.value.scheme_designator) == ("21594007", "SCT")   # Malignant
    (prob,) = [m for m in classification.get_measurements() if m.name.value == "111047"]   # Probability of cancer
    assert prob.value == pytest.approx(83.0) and prob.unit.value == "%"
    def text_of(group, code):
        return [i.value for i in hd.sr.utils.find_content_items(group[0], name=code)]
    assert text_of(classification, codes.DCM.AlgorithmName) == ["mammoxai demo CNN (resnet10t)"]
    assert text_of(classification, codes.DCM.AlgorithmVersion) == ["0.1.0"]
    assert f"checkpoint_sha256={'ab' * 32}" in text_of(classification, codes.DCM.AlgorithmParameters)
    method_groups = [g for g in groups if g.tracking_identifier.endswith(" region 1")]   # method figures: region 1
    assert len(method_groups) == 5
    gradcam = [g for g in method_groups if g.tracking_identifier == "Grad-CAM region 1"][0]
    assert gradcam.method.value == "MXAI-M-GCAM"
    assert text_of(gradcam, codes.DCM.AlgorithmParameters) == ["layer=layer4"]
    names = {m.name.value: m.value for m in gradcam.get_measurements()}
    assert names["MXAI-Q-FAITH"] == pytest.approx(0.71) and names["MXAI-Q-SPARSE"] == pytest.approx(0.4)
    assert names["MXAI-Q-RANDRHO"] == pytest.approx(0.2)          # the checkpoint's randomisation check
    rois = sr.content.get_planar_roi_measurement_groups()
    regions = hot_regions(result, OutputSettings())
    assert len(rois) == 1 + sum(len(v) for v in regions.values()) >= 6   # classification + every hot region
    roi = rois[1]
    assert roi.reference_type.value == "111030"                        # Image Region
    region = roi.roi
    assert region.graphic_type.value == "POLYLINE"
    data = region.value
    assert np.allclose(data[0], data[-1]) and data.shape[1] == 2
    assert region.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.sop_instance_uid
    texts = [str(i.TextValue) for i in pydicom.dcmread(paths[4]).ContentSequence[-1].ContentSequence]
    assert "rise: timed out after 300 s" in texts
    assert any("NOT FOR DIAGNOSTIC USE" in t for t in texts)
    # a map that fails the randomisation check is marked in the report, and only that one
    cautions = [i for i in pydicom.dcmread(paths[4]).ContentSequence[-1].ContentSequence
                if i.ConceptNameCodeSequence[0].CodeValue == "MXAI-CAUTION"]
    assert [str(i.TextValue) for i in cautions] == ["Saliency (vanilla gradient): map fails model-randomisation check"]


def test_segmentations(written):
    source, result, outputs, paths = written
    for path, method_map in zip(paths[6:11], result.maps):
        # pydicom, not segread: the shared Pixel Measures item OHIF needs has no Slice Thickness (see seg.py)
        seg = pydicom.dcmread(path)
        assert seg.SegmentationType == "FRACTIONAL" and seg.MaximumFractionalValue == 255
        assert seg.SegmentSequence[0].SegmentLabel == method_map.display_name
        refs = seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
        assert refs[0].ReferencedSOPInstanceUID == source.sop_instance_uid
        shared = seg.SharedFunctionalGroupsSequence[0]
        assert "PixelMeasuresSequence" in shared and "PlaneOrientationSequence" in shared   # OHIF opens it
        ds = pydicom.dcmread(path)
        assert list(ds.PatientOrientation) == ["A", "R"]
        frame = ds.pixel_array
        assert frame.shape == source.pixels.shape and frame.max() == 255
        peak = np.unravel_index(np.argmax(np.maximum(method_map.heatmap, 0)), frame.shape)
        assert frame[peak] == 255
        if method_map.signed:                                          # negative part left out
            assert frame[method_map.heatmap < 0].max() == 0


def test_gsps(written):
    source, result, outputs, paths = written
    ds = pydicom.dcmread(paths[11])
    src = source.dataset
    ref = ds.ReferencedSeriesSequence[0]
    assert ref.SeriesInstanceUID == src.SeriesInstanceUID
    assert ref.ReferencedImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert ds.Laterality == "L" and ds.PresentationLUTShape == "IDENTITY"
    voi = ds.SoftcopyVOILUTSequence[0]
    assert (float(voi.WindowCenter), float(voi.WindowWidth)) == (float(src.WindowCenter), float(src.WindowWidth))
    assert ds.ImageHorizontalFlip == "N" and int(ds.ImageRotation) == 0
    layers = {str(layer.GraphicLayer): layer.GraphicLayerDescription for layer in ds.GraphicLayerSequence}
    assert layers["M1"] == "mammoxai Grad-CAM hot regions" and "INFO" in layers
    regions = hot_regions(result, OutputSettings())
    polylines = [g for a in ds.GraphicAnnotationSequence for g in a.get("GraphicObjectSequence", [])]
    assert len(polylines) == sum(len(v) for v in regions.values())
    first = np.array(polylines[0].GraphicData, dtype=float).reshape(-1, 2)
    assert np.allclose(first, regions["gradcam"][0].polygon, atol=1e-3)
    texts = [t.UnformattedTextValue for a in ds.GraphicAnnotationSequence for t in a.get("TextObjectSequence", [])]
    assert any("NOT FOR DIAGNOSTIC USE" in t for t in texts) and "Grad-CAM 1" in texts


def test_is_our_output(written, dw):
    source, _, outputs, _ = written
    settings = OutputSettings()
    assert all(is_our_output(ds, settings) for ds in outputs)
    assert not is_our_output(source.dataset, settings)
    foreign = pydicom.Dataset()
    foreign.SOPClassUID, foreign.SeriesNumber, foreign.Manufacturer = SR3D, 9103, "Other AI"
    assert is_our_output(foreign, settings)                             # our SOP class in our range
    foreign.SeriesNumber = 5
    assert not is_our_output(foreign, settings)
    del foreign.SeriesNumber                                           # a malformed IS, as received
    foreign[0x00200011] = RawDataElement(Tag(0x00200011), "IS", 2, b"x ", 0, True, True)
    with pytest.warns(UserWarning, match="Invalid value for VR IS"):
        assert not is_our_output(foreign, settings)
    relabelled = pydicom.dcmread(dw.save_all([outputs[4]], written[3][0].parent, "relabel")[0])
    relabelled.Manufacturer, relabelled.SeriesNumber = "PACS", 1      # an archive rewrote them
    assert is_our_output(relabelled, settings)                         # Contributing Equipment still says so
    assert not is_our_output(relabelled, OutputSettings(manufacturer="someone else"))


def test_sc_method_selection_and_switches(phantom_l_cc, dw):
    result = dw.make_result(phantom_l_cc.pixels.shape, methods=("lime", "gradcam", "occlusion"))
    assert select_sc_methods(result, OutputSettings()) == ["gradcam"]
    assert select_sc_methods(result, OutputSettings(), gpu_present=True) == ["lime", "gradcam"]
    assert select_sc_methods(result, OutputSettings(sc_methods="all")) == ["lime", "gradcam", "occlusion"]
    assert select_sc_methods(result, OutputSettings(sc_methods=["occlusion", "nope"])) == ["occlusion"]
    assert set(AUTO_SC_METHODS) == {"gradcam", "lrp", "integrated_gradients"}
    off = OutputSettings(secondary_capture=False, montage=False, structured_report=False, segmentation=False,
                         gsps=False)
    assert write_results(phantom_l_cc, result, off) == []
    only_sr = write_results(phantom_l_cc, dataclasses.replace(result, maps=()),
                            OutputSettings(secondary_capture=True, montage=True, segmentation=False, gsps=False))
    assert [str(d.SOPClassUID) for d in only_sr] == [SR3D]            # no maps: no SC, no montage


def test_jpeg_baseline_sc_and_parametric_map_request(phantom_l_cc, dw, tmp_path, caplog):
    result = dw.make_result(phantom_l_cc.pixels.shape, methods=("gradcam",))
    with pytest.raises(ValueError, match="Parametric Map IOD needs a Frame of Reference"):
        OutputSettings(parametric_map=True)          # refused, never silently ignored
    settings = OutputSettings(sc_compression="jpeg_baseline", montage=False, structured_report=False,
                              segmentation=False, gsps=False, sc_max_size=256)
    (sc,) = write_results(phantom_l_cc, result, settings)
    (path,) = dw.save_all([sc], tmp_path, "jpeg")
    dw.assert_valid(path)
    ds = pydicom.dcmread(path)
    assert ds.file_meta.TransferSyntaxUID == JPEGBaseline8Bit and ds.PhotometricInterpretation == "YBR_FULL_422"
    assert ds.LossyImageCompression == "01" and max(ds.Rows, ds.Columns) <= 256
    assert ds.pixel_array.shape == (ds.Rows, ds.Columns, 3)
    (raw,) = write_results(phantom_l_cc, result, settings.model_copy(update={"sc_compression": "none"}))
    assert raw.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian   # lossless kept as a setting
    assert raw.PhotometricInterpretation == "RGB" and "LossyImageCompression" not in raw


def test_bad_results_are_typed_errors(phantom_l_cc, dw):
    result = dw.make_result(phantom_l_cc.pixels.shape, methods=("gradcam",))
    bad_map = dataclasses.replace(result.maps[0], heatmap=np.zeros((3, 3), np.float32))
    with pytest.raises(DicomWriteError, match=phantom_l_cc.sop_instance_uid):
        write_results(phantom_l_cc, dataclasses.replace(result, maps=(bad_map,)), OutputSettings())
    with pytest.raises(DicomWriteError, match="positive class"):
        write_results(phantom_l_cc, dataclasses.replace(result, positive_class="cancer"), OutputSettings())


def test_monochrome1_and_flipped_source_gsps(dw, tmp_path):
    ds = dw.phantom_dataset(laterality="R", view="CC", monochrome1=True)
    mg = dataclasses.replace(dw.mammogram_from_dataset(ds, laterality="R", view="CC"),
                             flip_horizontal=True, flip_vertical=True)
    result = dw.make_result(mg.pixels.shape, methods=("gradcam",))
    outputs = write_results(mg, result, OutputSettings(structured_report=False, segmentation=False))
    paths = dw.save_all(outputs, tmp_path, "m1")
    for path in paths:
        dw.assert_valid(path)
    gsps = pydicom.dcmread(paths[-1])
    assert gsps.PresentationLUTShape == "INVERSE" and gsps.Laterality == "R"
    assert int(gsps.ImageRotation) == 180 and gsps.ImageHorizontalFlip == "N"    # both flips = 180 degrees
    sc = pydicom.dcmread(paths[0])
    assert list(sc.PatientOrientation) == ["A", "R"]      # source P\L with both display flips applied


def test_study_summary(dw, tmp_path):
    left = dw.phantom_dataset(laterality="L", view="CC")
    study = left.StudyInstanceUID
    views = [(left, "L", "CC", 0.3), (dw.phantom_dataset(laterality="L", view="MLO", study_uid=study), "L", "MLO", 0.7),
             (dw.phantom_dataset(laterality="R", view="CC", study_uid=study), "R", "CC", 0.1)]
    mammograms = [dw.mammogram_from_dataset(ds, laterality=lat, view=view) for ds, lat, view, _ in views]
    results = [dw.make_result(m.pixels.shape, methods=("gradcam",), malignant=p) for m, (*_, p) in zip(mammograms, views)]
    summary = write_study_summary(mammograms, results, OutputSettings())
    (path,) = dw.save_all([summary], tmp_path, "summary")
    dw.assert_valid(path)
    sr = hd.sr.srread(path)
    assert sr.SeriesDescription == "mammoxai study summary SR" and int(sr.SeriesNumber) == 9107
    groups = {g.tracking_identifier: g for g in sr.content.get_planar_roi_measurement_groups()}
    def breast_max(name):     # MXAI-BREASTMAX sits in the group of the view with its breast's highest probability
        return [m.value for m in groups[name].get_measurements() if m.name.value == "MXAI-BREASTMAX"]
    assert breast_max("mammoxai L MLO") == [pytest.approx(70.0)] and breast_max("mammoxai L CC") == []
    assert breast_max("mammoxai R CC") == [pytest.approx(10.0)]
    assert set(groups) == {"mammoxai L CC", "mammoxai L MLO", "mammoxai R CC"}
    refs = {i.ReferencedSOPInstanceUID for s in sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence
            for i in s.ReferencedSOPSequence}
    assert refs == {m.sop_instance_uid for m in mammograms}
    with pytest.raises(DicomWriteError, match="one result per image"):
        write_study_summary(mammograms, results[:2], OutputSettings())
    other = dw.mammogram_from_dataset(dw.phantom_dataset(), laterality="L", view="CC")
    with pytest.raises(DicomWriteError, match="several studies"):
        write_study_summary([mammograms[0], other], results[:2], OutputSettings())


def test_unknown_orientation_is_sent_empty(dw, tmp_path):
    ds = dw.phantom_dataset(laterality="L", view="CC")
    del ds.PatientOrientation
    mg = dw.mammogram_from_dataset(ds, laterality="L", view=None)
    result = dw.make_result(mg.pixels.shape, methods=("gradcam",))
    outputs = write_results(mg, result, OutputSettings(structured_report=False, gsps=False, montage=False))
    paths = dw.save_all(outputs, tmp_path, "noori")
    for path in paths:
        dw.assert_valid(path)
        assert pydicom.dcmread(path).PatientOrientation in ("", None)       # Type 2C, empty: unknown


def test_dicom_io_writers_do_not_import_torch():
    import subprocess
    import sys
    code = ("import sys, mammoxai.dicom_io.writers, mammoxai.dicom_io.render; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"
