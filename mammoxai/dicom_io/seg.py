"""FRACTIONAL Segmentation (highdicom.seg.Segmentation), one object per explainer, referencing the source.

Why one SEG per explainer rather than one SEG with a segment per method:
viewers that show SEGs (OHIF/Cornerstone, Slicer) load a SEG as one
labelmap, where overlapping segments of a multi-segment object collide —
and every explanation map covers the whole breast, so all segments would
overlap everywhere. One object per method keeps each map whole, lets the
viewer toggle methods like series, and lets an archive delete one.
All of them share the study's SEG series ("mammoxai explanation maps (SEG)").

The single frame is the map on the source's stored grid normalised to [0, 1]
(unsigned: positive part / positive max; signed: the positive part only —
the evidence *for* the predicted class — divided by its max; the negative
part is in the SR/SC, not here), Segmentation Fractional Type PROBABILITY,
Maximum Fractional Value 255, RLE Lossless. MG sources have no Frame of
Reference: highdicom (≥ 0.18.2) writes a single-frame SEG without one;
Patient Orientation of the stored grid is then added (General Image, Type
2C). The Pixel Measures functional group is dropped when the source has Pixel
Spacing (highdicom writes it without Slice Thickness, which its own reader
``segread`` requires; a projection image has no slice thickness).

Parametric Map: not written. The Parametric Map IOD requires the Frame of
Reference module (and Plane Position/Orientation functional groups), which a
projection mammogram does not have; highdicom 0.28 fails to build one for MG
("Unexpected mismatch between dimension index values"), and inventing a
Frame of Reference UID would assert a patient coordinate system that does not
exist. ``output.parametric_map = true`` is therefore reported and ignored.
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.uid import RLELossless

from ..config.settings import OutputSettings
from . import codes
from .mammogram import Mammogram
from .orientation import stored_orientation
from .provenance import contributing_equipment, copied_names_quietly, finish
from .render import normalise_map
from .results import ImageResult, MethodMap
from .series import series_info
from .write_errors import DicomWriteError

#: Segmented Property Category (85756007, SCT, "Tissue"); the type is MXAI-ATTRIB ("Attribution map").
CATEGORY = hd.sr.CodedConcept("85756007", "SCT", "Tissue")


def fractional_map(method_map: MethodMap) -> np.ndarray:
    """The [0, 1] float32 frame of a map (see the module docstring)."""
    return np.clip(normalise_map(method_map.heatmap, signed=False), 0.0, 1.0)


def write_seg(mammogram: Mammogram, method_map: MethodMap, result: ImageResult, output: OutputSettings, *,
              instance_number: int = 1) -> hd.seg.Segmentation:
    """The FRACTIONAL SEG of one explainer's map."""
    source = mammogram.dataset
    if method_map.heatmap.shape != (int(source.Rows), int(source.Columns)):
        raise DicomWriteError(f"{mammogram.sop_instance_uid}: {method_map.method} map has shape "
                              f"{method_map.heatmap.shape}, the image is {source.Rows} x {source.Columns}")
    series = series_info(mammogram.study_instance_uid, "seg", output.series_number_base)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=f"mammoxai {method_map.method}"[:64], family=codes.ARTIFICIAL_INTELLIGENCE,
        version=result.algorithm.software_version or "unknown",
        parameters={str(k)[:64]: str(v)[:64] for k, v in method_map.parameters.items()} or None)
    label = method_map.display_name[:64]
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label=label,
        segmented_property_category=CATEGORY,
        segmented_property_type=codes.ATTRIBUTION_MAP,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm,
        tracking_uid=hd.UID(),
        tracking_id=f"{method_map.display_name} map"[:64],
        anatomic_regions=[codes.BREAST],
    )
    frame = fractional_map(method_map)[None]      # (1, Rows, Columns)
    with copied_names_quietly():
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=frame,
            segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
            segment_descriptions=[description],
            series_instance_uid=series.series_instance_uid,
            series_number=series.series_number,
            sop_instance_uid=hd.UID(),
            instance_number=instance_number,
            manufacturer=output.manufacturer,
            manufacturer_model_name=result.algorithm.name[:64] or "mammoxai",
            software_versions=result.algorithm.software_version or "unknown",
            device_serial_number=result.algorithm.checkpoint_sha256[:16] or "0",
            fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
            max_fractional_value=255,
            content_label=codes.method_code(method_map.method).value.replace("-", "_"),   # e.g. MXAI_M_GCAM
            content_description=f"mammoxai {method_map.display_name} map (normalised positive part)"[:64],
            transfer_syntax_uid=RLELossless,
            omit_empty_frames=False,
            contributing_equipment=[contributing_equipment(result.algorithm, output.manufacturer,
                                                           output.institution_name)],
            series_description=series.series_description,
            institution_name=output.institution_name,
        )
    orientation = stored_orientation(mammogram)
    seg.PatientOrientation = list(orientation) if orientation else ""   # General Image, Type 2C (no FoR)
    shared = seg.SharedFunctionalGroupsSequence[0]
    measures = shared.get("PixelMeasuresSequence")
    if measures is not None and "SliceThickness" not in measures[0]:
        # highdicom copies Pixel Spacing alone; its own reader (segread) then refuses the object, and a
        # projection image has no slice thickness to add. The grid is the source's: spacing is there.
        del shared.PixelMeasuresSequence
    return finish(seg, source, private_scheme=True)
