"""The SR and SEG have the shapes that OHIF 3.13 and Orthanc Stone Web Viewer need to draw them (issue 12).

What each viewer requires was read from its code (docs/viewer.md cites the functions); these tests pin
those requirements on our objects, next to dciodvfy and highdicom's parsers. The browser test
(tests/viewer) checks that OHIF really draws them.
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest

from mammoxai.config.settings import OutputSettings
from mammoxai.dicom_io import codes
from mammoxai.dicom_io.identity import image_output_identity, summary_identity
from mammoxai.dicom_io.results import DomainCheck
from mammoxai.dicom_io.palette import METHOD_RGB
from mammoxai.dicom_io.seg import OHIF_DEFAULT_ORIENTATION, region_mask, write_hot_region_seg
from mammoxai.dicom_io.sr import domain_caution, image_border, region_outline, write_sr, write_summary_sr
from mammoxai.dicom_io.writers import hot_regions

COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"


def _code(item) -> str:
    return str(item.ConceptNameCodeSequence[0].CodeValue)


def _groups(ds) -> list:
    (measurements,) = [i for i in ds.ContentSequence if _code(i) == "126010"]
    return list(measurements.ContentSequence)


def _sr(mg, result, tmp_path, name="sr"):
    ds = write_sr(mg, result, OutputSettings(), hot_regions(result, OutputSettings()),
                  identity=image_output_identity(mg, "sr", 9100))
    path = tmp_path / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return ds, path


def assert_viewer_shape(ds, source_uids: set[str]) -> None:
    """What OHIF's dicom-sr handler and Stone's DicomStructuredReport require of a TID 1500 SR."""
    assert ds.SOPClassUID == COMPREHENSIVE_SR and ds.Modality == "SR"           # Stone: 88.33 only
    assert _code(ds) == "126000" and len(ds.ContentTemplateSequence) == 1
    assert (ds.ContentTemplateSequence[0].MappingResource, ds.ContentTemplateSequence[0].TemplateIdentifier) == \
        ("DCMR", "1500")
    evidence = [i.ReferencedSOPInstanceUID for s in ds.CurrentRequestedProcedureEvidenceSequence
                for r in s.ReferencedSeriesSequence for i in r.ReferencedSOPSequence]
    assert sorted(evidence) == sorted(source_uids)                             # Stone: each instance once
    groups = _groups(ds)
    assert groups
    for group in groups:
        assert _code(group) == "125007" and group.ContentTemplateSequence[0].TemplateIdentifier == "1410"
        content = list(group.ContentSequence)
        assert [i.ValueType for i in content if _code(i) == "112039"] == ["TEXT"]     # Tracking Identifier
        assert [i.ValueType for i in content if _code(i) == "112040"] == ["UIDREF"]   # Tracking Unique Identifier
        scoords = [i for i in content if i.ValueType == "SCOORD"]
        assert len(scoords) == 1 and _code(scoords[0]) == "111030" and scoords[0].GraphicType == "POLYLINE"
        points = np.asarray(scoords[0].GraphicData, dtype=float).reshape(-1, 2)
        assert np.allclose(points[0], points[-1])                                  # closed
        assert len(points) not in (4, 5)        # never taken for an editable OHIF rectangle
        (image,) = scoords[0].ContentSequence                                      # exactly one IMAGE item
        assert (image.RelationshipType, image.ValueType, _code(image)) == ("SELECTED FROM", "IMAGE", "111040")
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID in source_uids
        tracking = [str(i.TextValue) for i in content if _code(i) == "112039"][0]
        assert not tracking.startswith("Cornerstone3DTools")
        for item in content:                    # Stone reads CodeValue of every CONTAINS item's concept
            assert "CodeValue" in item.ConceptNameCodeSequence[0]
    # every container SEPARATE: text views print concept names
    def containers(items):
        for item in items:
            if item.ValueType == "CONTAINER":
                yield item
            yield from containers(item.get("ContentSequence", []))
    assert ds.ContinuityOfContent == "SEPARATE"
    assert {str(c.ContinuityOfContent) for c in containers(ds.ContentSequence)} == {"SEPARATE"}


def test_per_image_sr_is_drawable_by_ohif_and_stone(phantom_l_cc, dw, tmp_path):
    result = dw.make_result(phantom_l_cc.pixels.shape)
    ds, path = _sr(phantom_l_cc, result, tmp_path)
    dw.assert_valid(path)
    assert_viewer_shape(pydicom.dcmread(path), {phantom_l_cc.sop_instance_uid})
    groups = _groups(pydicom.dcmread(path))
    first = groups[0]                           # OHIF opens the first measurement: the classification
    assert [str(i.TextValue) for i in first.ContentSequence if _code(i) == "112039"] == ["mammoxai classification"]
    nums = [i for i in first.ContentSequence if i.ValueType == "NUM"]
    assert _code(nums[0]) == "111047"           # Probability of cancer, in %, the first label line
    value = nums[0].MeasuredValueSequence[0]
    assert float(value.NumericValue) == pytest.approx(83.0)
    assert value.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    scoord = [i for i in first.ContentSequence if i.ValueType == "SCOORD"][0]
    assert np.allclose(np.asarray(scoord.GraphicData).reshape(-1, 2), image_border(phantom_l_cc))
    # OHIF prints the first five NUMs as "meaning: value unit": the first names the method, then its figures
    regions = hot_regions(result, OutputSettings())
    for method_map in result.maps:
        mine = [g for g in groups if any(str(i.TextValue).startswith(f"{method_map.display_name} region ")
                                         for i in g.ContentSequence if _code(i) == "112039")]
        assert len(mine) == len(regions[method_map.method]) >= 1
        labels = [i.ConceptNameCodeSequence[0].CodeMeaning for i in mine[0].ContentSequence if i.ValueType == "NUM"]
        assert labels[0] == f"{method_map.display_name} attribution in region"
        assert labels[1:3] == [codes.quality_code("faithfulness").meaning,    # the figures a reader looks for
                               codes.quality_code("randomisation_rho").meaning]
        assert labels[-1] == "Computation time"
        # the method's figures once, on its first region; every other region's label is one line naming it
        for group in mine[1:]:
            assert [i.ConceptNameCodeSequence[0].CodeMeaning for i in group.ContentSequence
                    if i.ValueType == "NUM"] == [labels[0]]
    # OHIF prints a Finding Site (363698007) as a label line "363698007: Breast": none; laterality is coded instead
    assert not [i for g in groups for i in g.ContentSequence if _code(i) == "363698007"]
    laterality = [i for i in first.ContentSequence if _code(i) == "272741003"]
    assert [str(i.ConceptCodeSequence[0].CodeMeaning) for i in laterality] == ["Left"]
    # two classes: P(benign) would be 100 % - P(cancer), a second home for one fact and one more label line
    percents = [_code(i) for i in nums if i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"]
    assert percents == ["111047"]


def test_sr_round_trips_through_highdicom(phantom_l_cc, dw, tmp_path):
    result = dw.make_result(phantom_l_cc.pixels.shape)
    ds, path = _sr(phantom_l_cc, result, tmp_path)
    sr = hd.sr.srread(path)
    rois = sr.content.get_planar_roi_measurement_groups()
    assert len(rois) == len(_groups(ds))
    assert {r.tracking_identifier for r in rois} >= {"mammoxai classification", "Grad-CAM region 1"}
    again = hd.sr.ComprehensiveSR.from_dataset(pydicom.dcmread(path))
    assert len(again.content.get_planar_roi_measurement_groups()) == len(rois)


def test_dsr2html_prints_concept_names(phantom_l_cc, dw, tmp_path):
    assert shutil.which("dsr2html"), "dcmtk's dsr2html is not installed"
    result = dw.make_result(phantom_l_cc.pixels.shape)
    _, path = _sr(phantom_l_cc, result, tmp_path)
    html = subprocess.run(["dsr2html", str(path)], capture_output=True, text=True, timeout=60, check=True).stdout
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))
    assert re.search(r"Probability of cancer: 83(\.0+)? %", text)
    assert re.search(r"Grad-CAM attribution in region: [0-9.]+ %", text)
    assert "Tracking Identifier = \"mammoxai classification\"" in text


def test_not_informative_map_and_domain_are_recorded(phantom_l_cc, dw, tmp_path):
    base = dw.make_result(phantom_l_cc.pixels.shape, methods=("gradcam", "lrp"))
    maps = (base.maps[0], dataclasses.replace(base.maps[1], not_informative="map is constant"))
    result = dataclasses.replace(base, maps=maps, calibrated=False, domain=DomainCheck(
        score=7.5, threshold=3.0, in_domain=False, score_name="Mahalanobis distance", reasons=("no VOI LUT",)))
    regions = hot_regions(dataclasses.replace(result, maps=maps[:1]), OutputSettings())   # as write_results does
    ds = write_sr(phantom_l_cc, result, OutputSettings(), regions, identity=image_output_identity(phantom_l_cc, "sr", 9100))
    path = tmp_path / "ood.dcm"
    ds.save_as(path, enforce_file_format=True)
    dw.assert_valid(path)
    ds = pydicom.dcmread(path)
    assert_viewer_shape(ds, {phantom_l_cc.sop_instance_uid})
    texts = {(_code(i), str(i.TextValue)) for i in ds.ContentSequence[-1].ContentSequence}
    noinfo = [t for c, t in texts if c == "MXAI-NOINFO" and t.startswith(f"{maps[1].display_name}: map is constant")]
    assert len(noinfo) == 1
    for key, value in maps[1].quality.items():   # an undrawn map's figures are still in the report
        assert f"{codes.quality_code(key).meaning} {float(value):.3g}" in noinfo[0]
    cautions = [t for c, t in texts if c == "MXAI-PREDCAUT"]
    assert len(cautions) == 1 and "out of the model's domain" in cautions[0] and "not calibrated" in cautions[0]
    assert not any(str(i.TextValue).startswith(maps[1].display_name) for g in _groups(ds) for i in g.ContentSequence
                   if _code(i) == "112039")                              # the uninformative map is not drawn
    first = _groups(ds)[0].ContentSequence
    nums = {_code(i): float(i.MeasuredValueSequence[0].NumericValue) for i in first if i.ValueType == "NUM"}
    assert nums["MXAI-DOMSCORE"] == 7.5 and nums["MXAI-DOMTHRESH"] == 3.0
    coded = {_code(i): str(i.ConceptCodeSequence[0].CodeValue) for i in first if i.ValueType == "CODE"}
    assert coded["MXAI-DOMCHECK"] == "MXAI-OUTDOMAIN" and coded["MXAI-CALIB"] == "MXAI-CALIBNO"
    hd.sr.srread(path)


def test_domain_not_checked_and_prediction_withheld(phantom_l_cc, dw, tmp_path):
    result = dw.make_result(phantom_l_cc.pixels.shape, methods=("gradcam",))
    ds, _ = _sr(phantom_l_cc, dataclasses.replace(result, calibrated=True), tmp_path, "nc")
    first = _groups(ds)[0].ContentSequence
    coded = {_code(i): str(i.ConceptCodeSequence[0].CodeValue) for i in first if i.ValueType == "CODE"}
    assert coded["MXAI-DOMCHECK"] == "MXAI-DOMNOTCHK" and coded["MXAI-CALIB"] == "MXAI-CALIBYES"
    assert domain_caution(dataclasses.replace(result, calibrated=True)) == ""
    withheld = dataclasses.replace(result, prediction_withheld=True, domain=DomainCheck(
        score=9.0, threshold=3.0, in_domain=False, score_name="distance"))
    ds, path = _sr(phantom_l_cc, withheld, tmp_path, "withheld")
    dw.assert_valid(path)
    first = _groups(pydicom.dcmread(path))[0].ContentSequence
    assert not [i for i in first if i.ValueType == "NUM" and _code(i) in ("111047", "MXAI-BREASTMAX")]
    findings = [str(i.ConceptCodeSequence[0].CodeValue) for i in first if _code(i) == "121071"]
    assert findings == ["MXAI-WITHHELD"]
    assert "prediction withheld" in domain_caution(withheld)


def test_summary_is_drawable_and_cautions_out_of_domain(dw, tmp_path):
    left = dw.phantom_dataset(laterality="L", view="CC")
    right = dw.phantom_dataset(laterality="R", view="CC", study_uid=left.StudyInstanceUID)
    mgs = [dw.mammogram_from_dataset(left, laterality="L", view="CC"),
           dw.mammogram_from_dataset(right, laterality="R", view="CC")]
    results = [dw.make_result(m.pixels.shape, methods=("gradcam",), malignant=p) for m, p in zip(mgs, (0.2, 0.6))]
    results[1] = dataclasses.replace(results[1], domain=DomainCheck(score=5.0, threshold=2.0, in_domain=False,
                                                                    score_name="distance"))
    ds = write_summary_sr(mgs, results, OutputSettings(), identity=summary_identity(mgs[0].study_instance_uid, 9100))
    path = tmp_path / "summary.dcm"
    ds.save_as(path, enforce_file_format=True)
    dw.assert_valid(path)
    ds = pydicom.dcmread(path)
    assert_viewer_shape(ds, {m.sop_instance_uid for m in mgs})
    cautions = [str(i.TextValue) for i in ds.ContentSequence[-1].ContentSequence if _code(i) == "MXAI-PREDCAUT"]
    assert len(cautions) == 1 and cautions[0].startswith("out of the model's domain - R CC:")
    hd.sr.srread(path)


def test_region_outline_keeps_the_shape_but_not_four_or_five_points():
    square = np.array([[0, 0], [4, 0], [4, 4], [0, 4], [0, 0]], dtype=float)
    out = region_outline(square)
    assert len(out) == 6 and np.allclose(out[1], [2, 0]) and np.allclose(out[[0, 2, 3, 4, 5]], square)
    hexagon = np.vstack([square[:4], [[-1, 2]], square[:1]])
    assert np.array_equal(region_outline(hexagon), hexagon)


@pytest.mark.parametrize("pixel_spacing", [True, False])
def test_binary_hot_region_seg_for_ohif(dw, tmp_path, pixel_spacing):
    ds = dw.phantom_dataset(laterality="L", view="CC")
    if not pixel_spacing:                      # a film-scanned mammogram (CBIS-DDSM) has none
        for keyword in ("PixelSpacing", "PixelSpacingCalibrationType", "PixelSpacingCalibrationDescription"):
            if keyword in ds:
                delattr(ds, keyword)
    mg = dw.mammogram_from_dataset(ds, laterality="L", view="CC")
    result = dw.make_result(mg.pixels.shape, methods=("gradcam", "integrated_gradients", "saliency"))
    regions = hot_regions(result, OutputSettings())
    seg = write_hot_region_seg(mg, result, OutputSettings(), regions, identity=image_output_identity(
        mg, "region_seg", 9100))
    path = tmp_path / "binary.dcm"
    seg.save_as(path, enforce_file_format=True)
    dw.assert_valid(path)          # dciodvfy on the Explicit VR re-encoding (it cannot read deflated files)
    seg = pydicom.dcmread(path)
    assert seg.SegmentationType == "BINARY" and (seg.Rows, seg.Columns) == mg.pixels.shape
    # deflated (see seg.HOT_REGION_SEG_TRANSFER_SYNTAX): the file is a small fraction of its 1-bit frames
    assert seg.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    assert path.stat().st_size < len(seg.PixelData) / 4
    assert [s.SegmentLabel for s in seg.SegmentSequence] == [m.display_name for m in result.maps]
    for k, segment in enumerate(seg.SegmentSequence):
        expected = hd.color.CIELabColor.from_rgb(*METHOD_RGB[k]).value
        assert tuple(segment.RecommendedDisplayCIELabValue) == tuple(expected)
    shared = seg.SharedFunctionalGroupsSequence[0]
    assert len(shared.PixelMeasuresSequence) == 1                                 # OHIF reads this item
    measures = shared.PixelMeasuresSequence[0]
    assert ("PixelSpacing" in measures) == pixel_spacing
    assert len(measures) > 0        # never empty: DICOMweb (Orthanc) drops an empty item, and OHIF then crashes
    if not pixel_spacing:
        assert measures.private_block(0x0029, "mammoxai")[0x10].value == "pixel spacing unknown (source has none)"
    assert [float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient] == \
        list(OHIF_DEFAULT_ORIENTATION)
    assert "ReferencedSeriesSequence" in seg
    frames = seg.pixel_array.reshape(len(seg.SegmentSequence), *mg.pixels.shape)
    for k, method_map in enumerate(result.maps):
        frame_item = seg.PerFrameFunctionalGroupsSequence[k]
        assert frame_item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID == \
            mg.sop_instance_uid
        assert np.array_equal(frames[k].astype(bool), region_mask(regions[method_map.method], mg.pixels.shape))
        (cx, cy) = regions[method_map.method][0].centroid
        assert frames[k][int(cy), int(cx)] == 1


def test_no_hot_region_no_binary_seg(phantom_l_cc, dw):
    result = dw.make_result(phantom_l_cc.pixels.shape, methods=("gradcam",))
    assert write_hot_region_seg(phantom_l_cc, result, OutputSettings(), {"gradcam": []}, identity=image_output_identity(
        phantom_l_cc, "region_seg", 9100)) is None


def test_region_mask_takes_the_pixels_whose_centres_are_inside():
    """The scanline fill agrees with matplotlib's point-in-polygon test at every pixel centre."""
    from matplotlib.path import Path as MplPath

    from mammoxai.dicom_io.regions import HotRegion
    from mammoxai.dicom_io.seg import polygon_mask

    square = np.array([[10, 10], [20, 10], [20, 20], [10, 20], [10, 10]], dtype=float)
    mask = np.zeros((40, 40), dtype=bool)
    polygon_mask(square, mask)
    assert mask.sum() == 100 and mask[10:20, 10:20].all()        # centres 10.5 ... 19.5
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:60, 0:50]
    centres = np.c_[xx.ravel() + 0.5, yy.ravel() + 0.5]
    for _ in range(20):             # random star-shaped polygons, some crossing the image border
        angles = np.sort(rng.uniform(0, 2 * np.pi, 9))
        radius = rng.uniform(5, 30, 9)
        ring = np.c_[25 + radius * np.cos(angles), 30 + radius * np.sin(angles)]
        polygon = np.vstack([ring, ring[:1]]).astype(np.float32)
        expected = MplPath(polygon).contains_points(centres).reshape(60, 50)
        got = region_mask([HotRegion(polygon, 0.0, 1.0, 1.0, 1.0, (0.0, 0.0))], (60, 50))
        assert np.array_equal(got, expected)


def test_more_than_two_classes_list_every_class_probability(phantom_l_cc, dw, tmp_path):
    base = dw.make_result(phantom_l_cc.pixels.shape, methods=("gradcam",))
    result = dataclasses.replace(base, class_names=("normal", "benign", "malignant"), probabilities=(0.2, 0.3, 0.5))
    ds, path = _sr(phantom_l_cc, result, tmp_path, "three")
    dw.assert_valid(path)
    nums = [i for i in _groups(ds)[0].ContentSequence if i.ValueType == "NUM"
            and i.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"]
    assert [_code(i) for i in nums] == ["111047", codes.class_probability_code("normal").value,
                                        codes.class_probability_code("benign").value]
    assert [float(i.MeasuredValueSequence[0].NumericValue) for i in nums] == [50.0, 20.0, 30.0]
