"""The per-image TID 1500 Measurement Report (Comprehensive 3D SR) and the per-study summary.

Content tree (highdicom.sr):

* Observer: the model as a device (TID 1004: Device UID from the checkpoint hash).
* Procedure reported: (71651007, SCT, "Mammography").
* Imaging Measurements:

  - one TID 1501 group "mammoxai classification" for the whole image: the
    predicted class as a qualitative evaluation (121071, DCM, "Finding") =
    (21594007, SCT, "Malignant") / (30807003, SCT, "Benign") (other class
    names: 99MAMMOXAI codes), the probability of malignancy as a measurement
    (MXAI-PMALIGN, 99MAMMOXAI, unit UCUM ``1``), the model as TID 4019
    Algorithm Identification (name, version, family (123110, DCM, "Artificial
    Intelligence"), parameters ``architecture=…``, ``checkpoint_sha256=…``),
    the finding site (76752008, SCT, "Breast") with laterality;
  - per explainer, one TID 1501 group "<method> map" with the method's code
    (Measurement Method), its TID 4019 (name, version, one parameter per
    ``key=value``), its computation time (UCUM ``s``) and each quality score as
    a measurement (MXAI-Q-*, unit ``1``);
  - per hot region of each explainer, one TID 1410 planar ROI group: a closed
    SCOORD POLYLINE on the source image (stored-pixel coordinates), finding
    type MXAI-HOTREGION, the method's code, tracking identifier
    "<method> region k", and peak / mean normalised attribution and the
    fraction of attribution inside (unit ``1``).

* Qualitative Evaluations container (C0034375, UMLS): one TEXT
  (MXAI-EXPLFAIL) per failed method ("method: reason") and a (121106, DCM,
  "Comment") saying the report is not for diagnostic use.

Completion Flag COMPLETE, Verification Flag UNVERIFIED (nobody verified an AI
result). Contributing Equipment: the model (IHE AIR, see provenance).
"""

from __future__ import annotations

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes as dcodes

from ..config.settings import OutputSettings
from . import codes
from .mammogram import Mammogram
from .provenance import contributing_equipment, copied_names_quietly, device_uid, finish
from .regions import HotRegion
from .render import DISCLAIMER
from .results import AlgorithmInfo, ImageResult, MethodMap
from .series import series_info
from .write_errors import DicomWriteError

QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")
SECONDS = CodedConcept(*dcodes.UCUM.Second)
COMPUTATION_TIME = codes.private("MXAI-SECONDS", "Computation time")


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


def _finding_sites(mammogram: Mammogram) -> list[hd.sr.FindingSite]:
    return [hd.sr.FindingSite(anatomic_location=codes.BREAST, laterality=codes.laterality_code(mammogram.laterality))]


def _num(name: CodedConcept, value: float, unit: CodedConcept = codes.UNITLESS) -> hd.sr.Measurement:
    return hd.sr.Measurement(name=name, value=float(value), unit=unit)


def classification_group(mammogram: Mammogram, result: ImageResult, output: OutputSettings
                         ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The image-level TID 1501 group with the prediction (see the module docstring)."""
    source = mammogram.dataset
    measurements = [_num(codes.PROBABILITY_OF_MALIGNANCY, result.malignancy_probability)]
    for name, p in zip(result.class_names, result.probabilities):
        if name != result.positive_class:
            measurements.append(_num(codes.class_probability_code(name), p))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier="mammoxai classification"),
        algorithm_id=model_algorithm_id(result.algorithm, output.manufacturer),
        finding_sites=_finding_sites(mammogram),
        measurements=measurements,
        qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.FINDING, codes.class_code(result.predicted_class))],
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(source)],
    )


def method_group(mammogram: Mammogram, method_map: MethodMap, result: ImageResult, output: OutputSettings
                 ) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """The image-level TID 1501 group of one explainer: method, parameters, time, quality scores."""
    measurements = [_num(COMPUTATION_TIME, method_map.seconds, SECONDS)]
    for key, value in method_map.quality.items():
        if value is not None and float(value) == float(value):   # skip NaN
            measurements.append(_num(codes.quality_code(key), value))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{method_map.display_name} map"),
        method=codes.method_code(method_map.method, method_map.display_name),
        algorithm_id=method_algorithm_id(method_map, result.algorithm.software_version, output.manufacturer),
        finding_sites=_finding_sites(mammogram),
        measurements=measurements,
        source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(mammogram.dataset)],
    )


def region_group(mammogram: Mammogram, method_map: MethodMap, region: HotRegion, index: int,
                 result: ImageResult, output: OutputSettings
                 ) -> hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations:
    """The TID 1410 planar ROI of one hot region (closed SCOORD POLYLINE on the source image)."""
    region_ref = hd.sr.ImageRegion(
        graphic_type=hd.sr.GraphicTypeValues.POLYLINE,
        graphic_data=region.polygon.astype(float),
        source_image=hd.sr.SourceImageForRegion.from_source_image(mammogram.dataset))
    return hd.sr.PlanarROIMeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(
            uid=hd.UID(), identifier=f"{method_map.display_name} region {index}"),
        referenced_region=region_ref,
        finding_type=codes.HOT_REGION,
        method=codes.method_code(method_map.method, method_map.display_name),
        algorithm_id=method_algorithm_id(method_map, result.algorithm.software_version, output.manufacturer),
        finding_sites=_finding_sites(mammogram),
        measurements=[_num(codes.REGION_PEAK, region.peak), _num(codes.REGION_MEAN, region.mean),
                      _num(codes.REGION_MASS, region.mass_fraction)],
    )


def _text_item(name: CodedConcept, value: str) -> hd.sr.TextContentItem:
    return hd.sr.TextContentItem(name=name, value=value[:1024],
                                 relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)


def _add_evaluations(report: hd.sr.MeasurementReport, failures: dict[str, str], notes: list[str],
                     cautions: dict[str, str] | None = None) -> None:
    """Append the TID 1500 Qualitative Evaluations container (failures and map cautions as TEXT, the disclaimer)."""
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    items = [_text_item(codes.EXPLANATION_FAILED, f"{method}: {reason}") for method, reason in failures.items()]
    items += [_text_item(codes.EXPLANATION_CAUTION, f"{method}: {text}") for method, text in (cautions or {}).items()]
    items += [_text_item(CodedConcept(*dcodes.DCM.Comment), note) for note in notes]
    container.ContentSequence = hd.sr.ContentSequence(items)
    report[0].ContentSequence.append(container)


def _sr_dataset(mammograms: list[Mammogram], report: hd.sr.MeasurementReport, result: ImageResult,
                output: OutputSettings, kind: str) -> hd.sr.Comprehensive3DSR:
    source = mammograms[0].dataset
    series = series_info(mammograms[0].study_instance_uid, kind, output.series_number_base)
    with copied_names_quietly():
        sr = hd.sr.Comprehensive3DSR(
            evidence=[m.dataset for m in mammograms],
            content=report,
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer=output.manufacturer,
            is_complete=True,
            is_final=False,
            is_verified=False,
            institution_name=output.institution_name,
            contributing_equipment=[contributing_equipment(result.algorithm, output.manufacturer,
                                                           output.institution_name)],
            series_description=series.series_description,
        )
    return finish(sr, source, private_scheme=True)


def write_sr(mammogram: Mammogram, result: ImageResult, output: OutputSettings,
             regions: dict[str, list[HotRegion]]) -> hd.sr.Comprehensive3DSR:
    """The TID 1500 report of one image; ``regions`` maps method → its hot regions (stored grid)."""
    groups: list = [classification_group(mammogram, result, output)]
    for method_map in result.maps:
        groups.append(method_group(mammogram, method_map, result, output))
        for k, region in enumerate(regions.get(method_map.method, []), start=1):
            groups.append(region_group(mammogram, method_map, region, k, result, output))
    report = hd.sr.MeasurementReport(
        observation_context=_observer(result.algorithm, output.manufacturer),
        procedure_reported=codes.MAMMOGRAPHY,
        imaging_measurements=groups,
        title=dcodes.cid7021.ImagingMeasurementReport,
    )
    _add_evaluations(report, dict(result.failures), [
        f"{DISCLAIMER}: automatic result of {result.algorithm.name} {result.algorithm.version}, "
        "not verified by a physician. Hot regions show where the explanation method attributes the "
        "model's output; they are not lesion outlines."],
        {m.display_name: m.caution for m in result.maps if m.caution})
    return _sr_dataset([mammogram], report, result, output, "sr")


def write_summary_sr(mammograms: list[Mammogram], results: list[ImageResult],
                     output: OutputSettings) -> hd.sr.Comprehensive3DSR:
    """The study summary: per breast, the highest probability of malignancy across its views.

    One TID 1501 group per breast (finding site Breast + laterality) with
    MXAI-BREASTMAX (unit ``1``), the qualitative evaluation of that view's
    predicted class, and the views it was taken from as source images; one
    more group per image with its own probability. Images without laterality
    are grouped as breast "unknown" (finding site without laterality).
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
    algorithm = results[0].algorithm
    for laterality, indices in sorted(by_breast.items(), key=lambda kv: kv[0] or "Z"):
        best = max(indices, key=lambda i: results[i].malignancy_probability)
        label = {"L": "left breast", "R": "right breast"}.get(laterality or "", "breast (laterality unknown)")
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"mammoxai {label}"),
            algorithm_id=model_algorithm_id(algorithm, output.manufacturer),
            finding_sites=[hd.sr.FindingSite(anatomic_location=codes.BREAST,
                                             laterality=codes.laterality_code(laterality))],
            measurements=[_num(codes.BREAST_MAX_PROBABILITY, results[best].malignancy_probability)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                codes.FINDING, codes.class_code(results[best].predicted_class))],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(mammograms[i].dataset)
                           for i in indices],
        ))
    for m, r in zip(mammograms, results):
        groups.append(hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(
                uid=hd.UID(), identifier=f"mammoxai {' '.join(v for v in (m.laterality, m.view) if v) or 'image'}"),
            algorithm_id=model_algorithm_id(r.algorithm, output.manufacturer),
            finding_sites=_finding_sites(m),
            measurements=[_num(codes.PROBABILITY_OF_MALIGNANCY, r.malignancy_probability)],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(codes.FINDING, codes.class_code(r.predicted_class))],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(m.dataset)],
        ))
    report = hd.sr.MeasurementReport(
        observation_context=_observer(algorithm, output.manufacturer),
        procedure_reported=codes.MAMMOGRAPHY,
        imaging_measurements=groups,
        title=dcodes.cid7021.ImagingMeasurementReport,
    )
    failures = {f"{m.laterality or ''} {m.view or ''} {method}".strip(): reason
                for m, r in zip(mammograms, results) for method, reason in r.failures.items()}
    _add_evaluations(report, failures, [f"{DISCLAIMER}: automatic study summary, not verified by a physician."])
    return _sr_dataset(mammograms, report, results[0], output, "summary")
