"""The per-image TID 1500 Measurement Report and the per-study summary, shaped so that viewers draw them.

Both are **Comprehensive SR** (1.2.840.10008.5.1.4.1.1.88.33): every
coordinate is a 2-D SCOORD on a source image, so no 3-D content is needed,
and this is the one SOP class both OHIF (its ``dicom-sr`` handler, not the 3-D
one) and Orthanc's Stone Web Viewer draw (docs/viewer.md gives the code we
read). Every measurement group is a **TID 1410 planar ROI** with its own
Tracking Identifier (112039) and Tracking Unique Identifier (112040) and one
closed SCOORD POLYLINE (111030, "Image Region") whose single IMAGE item,
concept (111040, DCM, "Original Source"), references the source image: OHIF
opens the first group and aborts the whole SR on a group without a coordinate,
and Stone draws only TID 1410 groups whose region is "Original Source".

Content tree of the per-image report:

* Observer: the model as a device (TID 1004: Device UID from the checkpoint hash).
* Procedure reported: (71651007, SCT, "Mammography").
* Imaging Measurements:

  1. "mammoxai classification": the region is the whole image (a closed
     polyline along its border; the classification is about the whole
     image), Finding (121071) = (21594007, SCT, "Malignant") /
     (30807003, SCT, "Benign") (other class names: 99MAMMOXAI codes), NUM
     (111047, DCM, "Probability of cancer") in UCUM ``%`` (what Stone shows;
     OHIF prints it as the first line of the region's label), the other
     classes' probabilities (``%``) only when there are more than two classes
     (with two, the other is 100 % minus this one: one home per fact), the
     domain check (score and threshold, unit ``1``; coded verdict in / out of
     domain / "domain not checked") and the calibration state, the laterality
     as a qualitative evaluation (272741003, SCT, "Laterality") = Left / Right,
     and the model as TID 4019 Algorithm Identification (name, version, family
     (123110, DCM, "Artificial Intelligence"), parameters ``architecture=…``,
     ``checkpoint_sha256=…``: IHE AIR). No Finding Site (363698007): OHIF
     prints a Finding Site as a label line "363698007: Breast"; the procedure
     (Mammography) and the referenced image say it is the breast. With
     ``prediction_withheld`` the finding and the probabilities are left out
     and the verdict says why.
  2. per hot region of each explainer (hottest first), one group: the region's
     closed polygon, finding type MXAI-HOTREGION, Measurement Method = the
     method's code, its TID 4019 (name, version, one parameter per
     ``key=value``), tracking identifier "<method> region k". OHIF puts one
     label per group at the right-most point of its outline (no clamping, no
     overlap avoidance in its DICOMSRDisplayTool) and prints the first five
     NUMs, "meaning: value unit"; the regions of several methods often sit on
     the same spot, so their labels pile up. Hence few NUMs: every region has
     the method's share of attribution in it (``MXAI-RS-<code>``, meaning
     "<method> attribution in region", ``%``: one line that names the
     method); the method's *first* (hottest) region alone also carries the
     method's figures (one home per fact): its quality scores (MXAI-Q-*, unit
     ``1``, faithfulness and the randomisation check first: :data:`LABEL_ORDER`)
     and computation time (``s``, last).

* Qualitative Evaluations container (C0034375, UMLS): per failed method a TEXT
  (MXAI-EXPLFAIL) "method: reason"; per map that is not informative a TEXT
  (MXAI-NOINFO) "method: reason" (such a map has no region); per map caution a
  TEXT (MXAI-CAUTION); a TEXT (MXAI-PREDCAUT) caution when the image is out of
  domain or the probabilities are not calibrated; and a (121106, DCM,
  "Comment") saying the report is not for diagnostic use.

Every CONTAINER is SEPARATE (Continuity of Content), so text renderings
(``dsr2html``, PACS SR views) print each item's concept name with its value.
Completion Flag COMPLETE, Verification Flag UNVERIFIED (nobody verified an AI
result). Contributing Equipment: the model (IHE AIR, see provenance).
The regions are deliberately not OHIF-*rehydratable* (editable measurements):
see docs/viewer.md.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes as dcodes

from ..config.settings import OutputSettings
from . import codes
from .identity import OutputIdentity
from .mammogram import Mammogram
from .provenance import contributing_equipment, copied_names_quietly, device_uid, finish
from .regions import HotRegion
from .render import DISCLAIMER
from .results import AlgorithmInfo, ImageResult, MethodMap
from .write_errors import DicomWriteError

QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
SECONDS = CodedConcept(*dcodes.UCUM.Second)
PERCENT = CodedConcept("%", "UCUM", "Percent")
COMPUTATION_TIME = codes.private("MXAI-SECONDS", "Computation time")
#: (111047, DCM, "Probability of cancer"): the concept Orthanc Stone shows with a region (in UCUM %).
PROBABILITY_OF_CANCER = CodedConcept("111047", "DCM", "Probability of cancer")
#: Concept of the IMAGE item under a region's SCOORD: Stone draws only regions whose image is "Original Source".
ORIGINAL_SOURCE = CodedConcept("111040", "DCM", "Original Source")
COMMENT = CodedConcept(*dcodes.DCM.Comment)


def _observer(algorithm: AlgorithmInfo, manufacturer: str) -> hd.sr.ObservationContext:
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(algorithm), name=algorithm.name[:64], manufacturer_name=manufacturer[:64],
        model_name=algorithm.architecture[:64])
    return hd.sr.ObservationContext(observer_person_context=None, observer_device_context=hd.sr.ObserverContext(
        observer_type=dcodes.cid270.Device, observer_identifying_attributes=device))


def model_algorithm_id(algorithm: AlgorithmInfo, manufacturer: str) -> hd.sr.AlgorithmIdentification:
    """TID 4019 of the classifier."""
    return hd.sr.AlgorithmIdentification(
        name=algorithm.name[:64] or "model", version=algorithm.version or "unknown",
        parameters=[f"architecture={algorithm.architecture}", f"checkpoint_sha256={algorithm.checkpoint_sha256}"],
        family=codes.ARTIFICIAL_INTELLIGENCE, manufacturer=manufacturer)


def method_algorithm_id(method_map: MethodMap, software_version: str, manufacturer: str
                        ) -> hd.sr.AlgorithmIdentification:
    """TID 4019 of an explainer: its display name, mammoxai's version, one ``key=value`` per parameter."""
    params = [f"{k}={v}" for k, v in sorted(method_map.parameters.items())]
    return hd.sr.AlgorithmIdentification(
        name=method_map.display_name or method_map.method, version=software_version or "unknown",
        parameters=params or None, manufacturer=manufacturer)


def _laterality(mammogram: Mammogram) -> list[hd.sr.QualitativeEvaluation]:
    """The image's laterality as a qualitative evaluation (none when unknown); see the module docstring."""
    side = codes.laterality_code(mammogram.laterality)
    return [hd.sr.QualitativeEvaluation(codes.LATERALITY, side)] if side is not None else []


def _num(name: CodedConcept, value: float, unit: CodedConcept = codes.UNITLESS) -> hd.sr.Measurement:
    """A NUM; percentages rounded to 0.01 %, other values to 4 decimals (the float noise of 100 × p
    would otherwise be printed as 17.0000000000000 %)."""
    digits = 2 if unit == PERCENT else 4
    return hd.sr.Measurement(name=name, value=round(float(value), digits), unit=unit)


def _finite(value: object) -> bool:
    try:
        return bool(np.isfinite(float(value)))   # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False


def image_border(mammogram: Mammogram) -> np.ndarray:
    """The closed polyline along the border of the image's pixel matrix, SCOORD pixel coordinates.

    Six points (a corner-to-corner rectangle with the middle of the top edge as an extra vertex), so that
    OHIF does not take the whole-image region for an editable rectangle measurement (see docs/viewer.md).
    """
    rows, cols = float(mammogram.dataset.Rows), float(mammogram.dataset.Columns)
    return np.array([[0.0, 0.0], [cols / 2, 0.0], [cols, 0.0], [cols, rows], [0.0, rows], [0.0, 0.0]])


def region_outline(polygon: np.ndarray) -> np.ndarray:
    """A region's closed polygon as written: a 4- or 5-point polygon gets the midpoint of its first edge
    inserted (same outline), so OHIF does not mistake it for an axis-aligned rectangle measurement."""
    points = np.asarray(polygon, dtype=float)
    if len(points) in (4, 5):
        points = np.vstack([points[:1], (points[:1] + points[1:2]) / 2.0, points[1:]])
    return points


def _image_region(mammogram: Mammogram, polyline: np.ndarray) -> hd.sr.ImageRegion:
    """SCOORD (111030) POLYLINE with its one IMAGE item (111040, DCM, "Original Source") → the source image."""
    source_image = hd.sr.SourceImageForRegion.from_source_image(mammogram.dataset)
    source_image.ConceptNameCodeSequence = [ORIGINAL_SOURCE]
    return hd.sr.ImageRegion(graphic_type=hd.sr.GraphicTypeValues.POLYLINE, graphic_data=polyline,
                             source_image=source_image)


def _domain_items(result: ImageResult) -> tuple[list[hd.sr.Measurement], list[hd.sr.QualitativeEvaluation]]:
    """The domain check (score, threshold, coded verdict) and calibration state of the classification group."""
    measurements: list[hd.sr.Measurement] = []
    domain = result.domain
    if domain is None:
        verdict = codes.DOMAIN_NOT_CHECKED
    else:
        if _finite(domain.score):
            measurements.append(_num(codes.DOMAIN_SCORE, domain.score))
        if _finite(domain.threshold):
            measurements.append(_num(codes.DOMAIN_THRESHOLD, domain.threshold))
        verdict = codes.IN_DOMAIN if domain.in_domain else codes.OUT_OF_DOMAIN
    evaluations = [hd.sr.QualitativeEvaluation(codes.DOMAIN_CHECK, verdict),
                   hd.sr.QualitativeEvaluation(codes.CALIBRATION,
                                               codes.CALIBRATED if result.calibrated else codes.NOT_CALIBRATED)]
    return measurements, evaluations


def classification_group(mammogram: Mammogram, result: ImageResult, output: OutputSettings, *,
                         identity: OutputIdentity, tracking: tuple[str, str] | None = None,
                         breast_max: bool = False) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The whole-image TID 1410 group with the prediction (see the module docstring); ``identity``: the SR's.

    ``tracking``: (identifier, UID) instead of "mammoxai classification"; ``breast_max``: add
    MXAI-BREASTMAX (this view has its breast's highest probability; study summary).
    """
    measurements: list[hd.sr.Measurement] = []
    finding = None
    if not result.prediction_withheld:
        finding = codes.class_code(result.predicted_class)
        measurements.append(_num(PROBABILITY_OF_CANCER, 100.0 * result.malignancy_probability, PERCENT))
        if breast_max:
            measurements.append(_num(codes.BREAST_MAX_PROBABILITY, 100.0 * result.malignancy_probability, PERCENT))
        if len(result.class_names) > 2:     # with two classes the other is 100 % minus P(cancer)
            for name, p in zip(result.class_names, result.probabilities):
                if name != result.positive_class:
                    measurements.append(_num(codes.class_probability_code(name), 100.0 * p, PERCENT))
    domain_nums, evaluations = _domain_items(result)
    if result.prediction_withheld:
        evaluations.insert(0, hd.sr.QualitativeEvaluation(codes.FINDING, codes.PREDICTION_WITHHELD))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=tracking[1], identifier=tracking[0]) if tracking else
        hd.sr.TrackingIdentifier(uid=identity.uid("classification"), identifier="mammoxai classification"),
        referenced_region=_image_region(mammogram, image_border(mammogram)),
        finding_type=finding,
        algorithm_id=model_algorithm_id(result.algorithm, output.manufacturer),
        measurements=measurements + domain_nums,
        qualitative_evaluations=evaluations + _laterality(mammogram),
    )


#: Quality figures first in a region's label (OHIF prints a label's first five NUMs): faithfulness, then the
#: sanity check against a randomised model, the stability of a sampled map, robustness, sparseness; the
#: figures faithfulness is computed from (deletion / insertion AUC) and the rest follow.
LABEL_ORDER: tuple[str, ...] = ("faithfulness", "randomisation_rho", "stability", "max_sensitivity", "sparseness")


def method_measurements(method_map: MethodMap) -> list[hd.sr.Measurement]:
    """A method's own figures: its quality scores (MXAI-Q-*, unit ``1``, NaN skipped) in :data:`LABEL_ORDER`,
    then its computation time (last)."""
    rank = {key: i for i, key in enumerate(LABEL_ORDER)}
    keys = sorted(method_map.quality, key=lambda key: rank.get(key, len(rank)))   # stable: the rest keep order
    measurements = [_num(codes.quality_code(key), method_map.quality[key]) for key in keys
                    if _finite(method_map.quality[key])]
    return measurements + [_num(COMPUTATION_TIME, method_map.seconds, SECONDS)]


def _figures_text(method_map: MethodMap) -> str:
    """A drawn method's figures ride on its first region group; an undrawn one's are written out here."""
    figures = [f"{codes.quality_code(key).meaning} {float(value):.3g}" for key, value in method_map.quality.items()
               if _finite(value)]
    return f"; {'; '.join(figures)}" if figures else ""


def region_group(mammogram: Mammogram, method_map: MethodMap, region: HotRegion, index: int,
                 result: ImageResult, output: OutputSettings, *, identity: OutputIdentity
                 ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The TID 1410 planar ROI of one hot region: the method's share of attribution in it; region 1 also carries
    the method's own figures (see the module docstring)."""
    measurements = [_num(codes.region_share_code(method_map), 100.0 * region.mass_fraction, PERCENT)]
    if index == 1:
        measurements += method_measurements(method_map)
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=identity.uid("region", method_map.method, index),
            identifier=f"{method_map.display_name} region {index}"),
        referenced_region=_image_region(mammogram, region_outline(region.polygon)),
        finding_type=codes.HOT_REGION,
        method=codes.method_code(method_map),
        algorithm_id=method_algorithm_id(method_map, result.algorithm.software_version, output.manufacturer),
        # no finding site: OHIF would print it as a label line "363698007: Breast" (see the module docstring)
        measurements=measurements,
    )


def _text_item(name: CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024],
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def domain_caution(result: ImageResult) -> str:
    """The reader's caution about the prediction itself ("" when none): out of domain, withheld, uncalibrated."""
    parts = []
    domain = result.domain
    if domain is not None and not domain.in_domain:
        parts.append(f"image out of the model's domain ({domain.score_name} {domain.score:.3g} > "
                     f"threshold {domain.threshold:.3g}"
                     + (f"; {'; '.join(domain.reasons)}" if domain.reasons else "") + ")")
    if result.prediction_withheld:
        parts.append("prediction withheld")
    if not result.calibrated and not result.prediction_withheld:
        parts.append("probabilities not calibrated")
    return "; ".join(parts)


def _add_evaluations(report: hd.sr.MeasurementReport, items: list[hd.sr.TextContentItem]) -> None:
    """Append the TID 1500 Qualitative Evaluations container with ``items``."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    container.ContentSequence = hd.sr.ContentSequence(items)
    report[0].ContentSequence.append(container)


def _separate(items) -> None:
    """Continuity of Content SEPARATE on every CONTAINER of a content tree (text views print concept names)."""
    for item in items:
        if getattr(item, "ValueType", None) == "CONTAINER":
            item.ContinuityOfContent = "SEPARATE"
        if "ContentSequence" in item:
            _separate(item.ContentSequence)


def _check_references(items, evidence: set[str]) -> None:
    """Every IMAGE / COMPOSITE item of a content tree references one of ``evidence`` (SOP Instance UIDs),
    and no item is a SCOORD3D (not allowed in a Comprehensive SR): the checks highdicom's constructor
    makes, which :func:`_sr_dataset` does not let it make on the whole tree."""
    for item in items:
        value_type = item.ValueType
        if value_type == "SCOORD3D":
            raise DicomWriteError("a Comprehensive SR cannot hold a SCOORD3D content item")
        if value_type in ("IMAGE", "COMPOSITE"):
            uid = item.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
            if uid not in evidence:
                raise DicomWriteError(f"the SR references {uid}, which is not one of its evidence images")
        if "ContentSequence" in item:
            _check_references(item.ContentSequence, evidence)


def _sr_dataset(mammograms: list[Mammogram], report: hd.sr.MeasurementReport, result: ImageResult,
                output: OutputSettings, identity: OutputIdentity) -> hd.sr.ComprehensiveSR:
    """The SR document of ``report`` on ``mammograms`` (the evidence, all of one study).

    highdicom's constructor deep-copies the content tree, re-parses the copy and searches the tree twice
    (evidence, SCOORD3D): about 100 ms for a report of a dozen groups, more than building the report. So the
    document is built around the root container with an empty Content Sequence (the evidence sequences
    list every evidence image whatever the content references), the report's Content Sequence element is
    then put in, as the constructor would have, and the document's ``.content`` is ``report`` itself (the
    :class:`~highdicom.sr.MeasurementReport` that ``srread`` would give; highdicom keeps it in ``_content``,
    highdicom is pinned and tests/dicom_write check ``.content``). :func:`_check_references` makes the
    constructor's checks on the real tree. The data set is the one the constructor makes from the whole
    report (tests/dicom_write compare them).
    """
    source = mammograms[0].dataset
    _separate(report)
    root = report[0]
    _check_references(root.ContentSequence, {m.sop_instance_uid for m in mammograms})
    bare_root = Dataset()
    for element in root:
        if element.keyword != "ContentSequence":
            bare_root.add(element)
    bare_root.ContentSequence = []
    with copied_names_quietly():
        sr = hd.sr.ComprehensiveSR(
            evidence=[m.dataset for m in mammograms],
            content=bare_root,
            series_instance_uid=identity.series_instance_uid,
            series_number=identity.series_number,
            sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number,
            manufacturer=output.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            institution_name=output.institution_name,
            contributing_equipment=[contributing_equipment(result.algorithm, output.manufacturer,
                                                           output.institution_name)],
            series_description=identity.series_description,
        )
    sr[root["ContentSequence"].tag] = root["ContentSequence"]
    sr._content = report
    return finish(sr, source, private_scheme=True)


def _report(groups: list, algorithm: AlgorithmInfo, output: OutputSettings) -> hd.sr.MeasurementReport:
    return hd.sr.MeasurementReport(
        observation_context=_observer(algorithm, output.manufacturer),
        procedure_reported=codes.MAMMOGRAPHY,
        imaging_measurements=groups,
        title=dcodes.cid7021.ImagingMeasurementReport,
    )


def write_sr(mammogram: Mammogram, result: ImageResult, output: OutputSettings,
             regions: dict[str, list[HotRegion]], *, identity: OutputIdentity) -> hd.sr.ComprehensiveSR:
    """The TID 1500 report of one image; ``regions`` maps method → its hot regions (stored grid);
    ``identity``: the SR's UIDs and series. Every method of ``result.maps`` is recorded: drawn as
    its regions, or, when its map is not informative or has no region, as a TEXT saying so."""
    groups: list = [classification_group(mammogram, result, output, identity=identity)]
    texts = [_text_item(codes.EXPLANATION_FAILED, f"{method}: {reason}") for method, reason in result.failures.items()]
    for method_map in result.maps:
        method_regions = [] if method_map.not_informative else regions.get(method_map.method, [])
        for k, region in enumerate(method_regions, start=1):
            groups.append(region_group(mammogram, method_map, region, k, result, output, identity=identity))
        if method_map.not_informative:
            texts.append(_text_item(codes.MAP_NOT_INFORMATIVE,
                                    f"{method_map.display_name}: {method_map.not_informative}"
                                    f"{_figures_text(method_map)}"))
        elif not method_regions:
            texts.append(_text_item(codes.MAP_NOT_INFORMATIVE,
                                    f"{method_map.display_name}: no hot region (no positive attribution)"
                                    f"{_figures_text(method_map)}"))
        if method_map.caution:
            texts.append(_text_item(codes.EXPLANATION_CAUTION, f"{method_map.display_name}: {method_map.caution}"))
    caution = domain_caution(result)
    if caution:
        texts.append(_text_item(codes.PREDICTION_CAUTION, caution))
    texts.append(_text_item(COMMENT, f"{DISCLAIMER}: automatic result of {result.algorithm.name} "
                            f"{result.algorithm.version}, not verified by a physician. Hot regions show where "
                            "the explanation method attributes the model's output; they are not lesion outlines."))
    report = _report(groups, result.algorithm, output)
    _add_evaluations(report, texts)
    return _sr_dataset([mammogram], report, result, output, identity)


def write_summary_sr(mammograms: list[Mammogram], results: list[ImageResult],
                     output: OutputSettings, *, identity: OutputIdentity) -> hd.sr.ComprehensiveSR:
    """The study summary: one whole-image TID 1410 group per view, breast by breast (left, right, unknown).

    ``identity``: the summary's UIDs and series (:func:`mammoxai.dicom_io.identity.summary_identity`).
    Each group is the view's classification group (as in the per-image report), tracking identifier
    "mammoxai <laterality> <view>"; the view with the highest probability of malignancy of its breast
    also carries MXAI-BREASTMAX (``%``). A caution TEXT (MXAI-PREDCAUT) names every view that is out of
    the model's domain, or whose prediction was withheld.
    """
    if not mammograms or len(mammograms) != len(results):
        raise DicomWriteError(f"study summary needs one result per image: {len(mammograms)} images, "
                              f"{len(results)} results")
    studies = {m.study_instance_uid for m in mammograms}
    if len(studies) != 1:
        raise DicomWriteError(f"study summary over several studies: {', '.join(sorted(studies))}")
    by_breast: dict[str | None, list[int]] = {}
    for i, m in enumerate(mammograms):
        by_breast.setdefault(m.laterality if m.laterality in ("L", "R") else None, []).append(i)
    groups: list = []
    for laterality, indices in sorted(by_breast.items(), key=lambda kv: kv[0] or "Z"):
        shown = [i for i in indices if not results[i].prediction_withheld]
        best = max(shown, key=lambda i: results[i].malignancy_probability) if shown else None
        for i in indices:
            m = mammograms[i]
            name = f"mammoxai {' '.join(v for v in (m.laterality, m.view) if v) or 'image'}"
            groups.append(classification_group(m, results[i], output, identity=identity, breast_max=i == best,
                                               tracking=(name, identity.uid("image", m.sop_instance_uid))))
    texts = [_text_item(codes.EXPLANATION_FAILED, f"{m.laterality or ''} {m.view or ''} {method}: {reason}".strip())
             for m, r in zip(mammograms, results) for method, reason in r.failures.items()]
    flagged = [f"{' '.join(v for v in (m.laterality, m.view) if v) or m.sop_instance_uid}: {domain_caution(r)}"
               for m, r in zip(mammograms, results)
               if (r.domain is not None and not r.domain.in_domain) or r.prediction_withheld]
    if flagged:
        texts.append(_text_item(codes.PREDICTION_CAUTION, "out of the model's domain - " + "; ".join(flagged)))
    texts.append(_text_item(COMMENT, f"{DISCLAIMER}: automatic study summary, not verified by a physician."))
    report = _report(groups, results[0].algorithm, output)
    _add_evaluations(report, texts)
    return _sr_dataset(mammograms, report, results[0], output, identity)
