"""Segmentations of the explanation maps (highdicom.seg.Segmentation), referencing the source image.

Two kinds, each in its own series:

* :func:`write_hot_region_seg` — **one BINARY SEG per image, one segment per
  method** that has hot regions, in the series "mammoxai hot regions (SEG)"
  (output kind ``"region_seg"`` of :mod:`.identity`): the pixels inside the
  method's hot-region outlines (the same polygons as the SR and GSPS), for
  viewers that overlay segmentations (OHIF). One object with all methods as
  segments rather than one per method: the reader opens one item and toggles
  methods in one segment list (OHIF loads overlapping binary segments as
  stacked labelmaps; hot regions are small, unlike whole maps). Each
  segment's Recommended Display CIELab Value is the method's colour from
  :mod:`.palette` (shared with the GSPS layers): the SC overlays use one
  colour *map* for every method, so they offer no per-method colour to match.
  What OHIF 3.13 needs and we write (docs/viewer.md): a shared Pixel Measures
  item (with the source's Pixel Spacing when it has one; else only a private
  element (0029,xx10) "pixel spacing unknown", because an empty item is
  dropped by Orthanc's DICOMweb JSON and OHIF needs the item) and a shared
  Plane Orientation item. A projection mammogram has neither Image
  Orientation (Patient) nor a Frame of Reference, and highdicom refuses
  ``plane_orientation`` without one; the item is added after construction
  with ``[1, 0, 0, 0, 1, 0]``, the orientation OHIF assumes for such an
  image, which is what lets it match the SEG to the MG. Without a Frame of
  Reference these values relate to no patient coordinate system (the IOD
  requires the macro only with one; dciodvfy accepts it without).
  **Deflated Explicit VR Little Endian** (:data:`HOT_REGION_SEG_TRANSFER_SYNTAX`):
  the 1-bit frames of a 2600 × 4700 mammogram are 1.5 MB a method
  uncompressed and a few kB deflated (zlib over the whole data set, PS3.5
  A.5; bench: benchmarks/bench_storage.py). Not JPEG 2000: highdicom refuses
  RLE and JPEG-LS for BINARY, and OHIF's first request asks for the whole
  object uncompressed, which Orthanc 1.10 could not give from 1-bit JPEG 2000
  (HTTP 500 without the GDCM plugin, a crash with it); a deflated object is
  inflated by DCMTK inside Orthanc, no codec plugin involved. A peer that does
  not accept the deflated context gets the Explicit VR Little Endian encoding
  of the same data set (:func:`mammoxai.node.scu.c_store`); dciodvfy cannot
  read deflated files, so the tests check that re-encoding. highdicom's reader
  ``segread`` refuses a Pixel Measures item without Slice Thickness, which a
  projection has not: read it with pydicom.
* :func:`write_seg` — the FRACTIONAL map of one explainer (the data; OHIF
  3.13 shows no FRACTIONAL SEG), in the series "mammoxai explanation maps
  (SEG)" (output kind ``"seg"``). One object per method rather than one with a
  segment per method: every map covers the whole breast, so its segments
  would overlap everywhere; one object per method keeps each map whole and
  lets an archive delete one. It carries the same Pixel Measures and Plane
  Orientation items, so that opening it in OHIF gives OHIF's "not supported"
  message instead of a blank app.

The single frame is the map on the source's stored grid normalised to [0, 1]
(unsigned: positive part / positive max; signed: the positive part only —
the evidence *for* the predicted class — divided by its max; the negative
part is in the SR/SC, not here), Segmentation Fractional Type PROBABILITY,
Maximum Fractional Value 255, JPEG 2000 lossless. MG sources have no Frame of
Reference: highdicom (≥ 0.18.2) writes a single-frame SEG without one;
Patient Orientation of the stored grid is then added (General Image, Type
2C). Pixel Measures and Plane Orientation: as for the BINARY SEG.

Parametric Map: not written. The Parametric Map IOD requires the Frame of
Reference module (and Plane Position/Orientation functional groups), which a
projection mammogram does not have; highdicom 0.28 fails to build one for MG
("Unexpected mismatch between dimension index values"), and inventing a
Frame of Reference UID would assert a patient coordinate system that does not
exist. There is therefore no ``output.parametric_map`` setting (it is refused with this reason).
"""

from __future__ import annotations

from typing import Any

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, JPEG2000Lossless

from ..config.settings import OutputSettings
from . import codes
from .mammogram import Mammogram
from .orientation import stored_orientation
from .palette import method_cielab
from .provenance import contributing_equipment, copied_names_quietly, finish
from .render import normalise_map
from .regions import HotRegion
from .results import ImageResult, MethodMap
from .identity import OutputIdentity
from .write_errors import DicomWriteError

#: Segmented Property Category (85756007, SCT, "Tissue"); the type is MXAI-ATTRIB ("Attribution map").
CATEGORY = hd.sr.CodedConcept("85756007", "SCT", "Tissue")


def fractional_map(method_map: MethodMap) -> np.ndarray:
    """The [0, 1] float32 frame of a map (see the module docstring), on the grid of the 256 stored levels.

    Each value is snapped to ``k / 255`` with ``k = round(255 × value)``, the level highdicom stores for it
    (``round(255 × value)`` again gives ``k``, checked for every level in tests/dicom_write): the stored
    pixels are those of the unsnapped map, and highdicom's check of the frame (``np.unique``, a sort) runs
    over 256 distinct values instead of millions (4 × faster on an LRP map).
    """
    levels = normalise_map(method_map.heatmap, signed=False)      # a new array
    np.clip(levels, 0.0, 1.0, out=levels)
    levels *= 255.0
    np.around(levels, out=levels)
    levels /= 255.0
    return levels


def write_seg(mammogram: Mammogram, method_map: MethodMap, result: ImageResult, output: OutputSettings, *,
              identity: OutputIdentity) -> hd.seg.Segmentation:
    """The FRACTIONAL SEG of one explainer's map; ``identity``: its UIDs, series and Instance Number."""
    source = mammogram.dataset
    if method_map.heatmap.shape != (int(source.Rows), int(source.Columns)):
        raise DicomWriteError(f"{mammogram.sop_instance_uid}: {method_map.method} map has shape "
                              f"{method_map.heatmap.shape}, the image is {source.Rows} x {source.Columns}")
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
        tracking_uid=identity.uid("segment", 1),
        tracking_id=f"{method_map.display_name} map"[:64],
        anatomic_regions=[codes.BREAST],
    )
    frame = fractional_map(method_map)[None]      # (1, Rows, Columns)
    return _segmentation(
        mammogram, frame, result, output, identity=identity, segment_descriptions=[description],
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        content_label=codes.method_code(method_map).value.replace("-", "_"),   # e.g. MXAI_M_GCAM
        content_description=f"mammoxai {method_map.display_name} map (normalised positive part)",
        transfer_syntax_uid=SEG_TRANSFER_SYNTAX, fractional_type=hd.seg.SegmentationFractionalTypeValues.PROBABILITY,
        max_fractional_value=255, omit_empty_frames=False)


def _segmentation(mammogram: Mammogram, pixel_array: np.ndarray, result: ImageResult, output: OutputSettings, *,
                  identity: OutputIdentity, content_description: str, **kind: Any) -> hd.seg.Segmentation:
    """A SEG on ``mammogram`` with our identity, equipment and the items OHIF needs; ``kind``: the
    type-specific arguments of :class:`highdicom.seg.Segmentation` (type, segments, label, syntax, ...)."""
    source = mammogram.dataset
    with copied_names_quietly():
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=pixel_array,
            series_instance_uid=identity.series_instance_uid,
            series_number=identity.series_number,
            sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number,
            manufacturer=output.manufacturer,
            manufacturer_model_name=result.algorithm.name[:64] or "mammoxai",
            software_versions=result.algorithm.software_version or "unknown",
            device_serial_number=result.algorithm.checkpoint_sha256[:16] or "0",
            content_description=content_description[:64],
            contributing_equipment=[contributing_equipment(result.algorithm, output.manufacturer,
                                                           output.institution_name)],
            series_description=identity.series_description,
            institution_name=output.institution_name,
            **kind,
        )
    # highdicom mints a random Dimension Organization UID: ours comes from the identity, like every UID
    organization_uid = identity.uid("dimension-organization")
    for item in [*seg.get("DimensionOrganizationSequence", []), *seg.get("DimensionIndexSequence", [])]:
        if "DimensionOrganizationUID" in item:
            item.DimensionOrganizationUID = organization_uid
    orientation = stored_orientation(mammogram)
    seg.PatientOrientation = list(orientation) if orientation else ""   # General Image, Type 2C (no FoR)
    add_ohif_functional_groups(seg, source)
    return finish(seg, source, private_scheme=True)


def add_ohif_functional_groups(seg: hd.seg.Segmentation, source) -> None:
    """The shared Pixel Measures and Plane Orientation items OHIF 3.13 needs to open a SEG at all (see the module
    docstring): without Pixel Measures its viewport throws and the whole app goes blank."""
    shared = seg.SharedFunctionalGroupsSequence[0]
    if "PixelMeasuresSequence" not in shared:
        # The source has no Pixel Spacing: nothing true to put in the item, and an empty item is dropped by
        # DICOMweb servers (Orthanc's JSON omits it), which crashes OHIF all the same. A private element
        # saying so keeps the item without asserting a geometry.
        measures = Dataset()
        measures.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True).add_new(
            0x10, "LO", "pixel spacing unknown (source has none)")
        shared.PixelMeasuresSequence = [measures]
    if "PlaneOrientationSequence" not in shared:
        plane = Dataset()
        plane.ImageOrientationPatient = list(source.get("ImageOrientationPatient") or OHIF_DEFAULT_ORIENTATION)
        shared.PlaneOrientationSequence = [plane]


#: Orientation OHIF assumes for an image without Image Orientation (Patient) (see the module docstring).
OHIF_DEFAULT_ORIENTATION = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
#: Transfer syntax of the FRACTIONAL map SEGs: lossless JPEG 2000. A smooth 8-bit map is about 6 × smaller than
#: with RLE (0.38 vs 2.2 MB measured on CBIS-DDSM): the difference between fitting the storage budget
#: (BENCHMARKS.md) or not. A viewer that wants them uncompressed needs a JPEG 2000 decoder in the archive
#: (Orthanc: the GDCM plugin); OHIF 3.13 does not display FRACTIONAL SEGs anyway.
SEG_TRANSFER_SYNTAX = JPEG2000Lossless
#: Transfer syntax of the BINARY hot-region SEG: Deflated Explicit VR Little Endian (see the module docstring).
#: highdicom encodes the object in Explicit VR Little Endian; the file is deflated when it is written.
HOT_REGION_SEG_TRANSFER_SYNTAX = DeflatedExplicitVRLittleEndian
#: Private block of the Pixel Measures item of a SEG whose source has no Pixel Spacing (see add_ohif_functional_groups).
PRIVATE_GROUP, PRIVATE_CREATOR = 0x0029, "mammoxai"


def region_mask(regions: list[HotRegion], shape: tuple[int, int]) -> np.ndarray:
    """The pixels (stored grid) whose centres lie inside any of ``regions``' polygons (SCOORD pixel
    coordinates: the centre of pixel (r, c) is (c + 0.5, r + 0.5)); even-odd rule."""
    mask = np.zeros(shape, dtype=bool)
    for region in regions:                  # at most output.max_regions_per_method polygons
        polygon_mask(np.asarray(region.polygon, dtype=np.float64), mask)
    return mask


def polygon_mask(polygon: np.ndarray, mask: np.ndarray) -> None:
    """Set in ``mask`` the pixels whose centres lie inside the closed ``polygon`` ((N, 2) x, y; even-odd rule).

    Scanline fill without a Python loop over rows or pixels: for every pixel row of the polygon's bounding
    box, each edge that crosses the row's centre line (half-open in y, so a vertex is counted once) toggles
    the parity from the first pixel whose centre is right of the crossing; a cumulative sum of the toggles
    along the row is odd inside.
    """
    rows, cols = mask.shape
    x, y = polygon[:, 0], polygon[:, 1]
    if not np.array_equal(polygon[0], polygon[-1]):
        x, y = np.append(x, x[0]), np.append(y, y[0])
    r0, r1 = max(0, int(np.ceil(y.min() - 0.5))), min(rows, int(np.floor(y.max() - 0.5)) + 1)
    c0, c1 = max(0, int(np.floor(x.min()))), min(cols, int(np.ceil(x.max())) + 1)
    if r0 >= r1 or c0 >= c1:
        return
    centre_y = (np.arange(r0, r1) + 0.5)[:, None]                        # (R, 1)
    ya, yb, xa, xb = y[None, :-1], y[None, 1:], x[None, :-1], x[None, 1:]  # (1, E) edges
    crosses = (ya > centre_y) != (yb > centre_y)                          # (R, E)
    row, edge = np.nonzero(crosses)
    cy = centre_y[row, 0]
    at = xa[0, edge] + (cy - ya[0, edge]) * (xb[0, edge] - xa[0, edge]) / (yb[0, edge] - ya[0, edge])
    first = np.clip(np.ceil(at - 0.5).astype(np.int64) - c0, 0, c1 - c0)   # first centre at or right of it
    toggles = np.zeros((r1 - r0, c1 - c0 + 1), dtype=np.int32)
    np.add.at(toggles, (row, first), 1)
    mask[r0:r1, c0:c1] |= (np.cumsum(toggles, axis=1)[:, :-1] & 1).astype(bool)


def write_hot_region_seg(mammogram: Mammogram, result: ImageResult, output: OutputSettings,
                         regions: dict[str, list[HotRegion]], *, identity: OutputIdentity
                         ) -> hd.seg.Segmentation | None:
    """The BINARY SEG of every method's hot regions (one segment per method with regions; see the module
    docstring), or ``None`` when no method has a region. ``regions``: method → hot regions (stored grid)."""
    source = mammogram.dataset
    shape = (int(source.Rows), int(source.Columns))
    descriptions, masks = [], []
    for order, method_map in enumerate(result.maps):
        method_regions = regions.get(method_map.method, [])
        mask = region_mask(method_regions, shape) if method_regions else None
        if mask is None or not mask.any():
            continue
        number = len(descriptions) + 1
        descriptions.append(hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=method_map.display_name[:64],
            segmented_property_category=CATEGORY,
            segmented_property_type=codes.HOT_REGION,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name=f"mammoxai {method_map.method}"[:64], family=codes.ARTIFICIAL_INTELLIGENCE,
                version=result.algorithm.software_version or "unknown",
                parameters={"hot_region_threshold": str(output.hot_region_threshold),
                            "max_regions_per_method": str(output.max_regions_per_method)}),
            tracking_uid=identity.uid("segment", method_map.method),
            tracking_id=f"{method_map.display_name} hot regions"[:64],
            anatomic_regions=[codes.BREAST],
            display_color=method_cielab(order),
        ))
        masks.append(mask)
    if not descriptions:
        return None
    # (1, Rows, Columns, segments), each segment's plane contiguous: highdicom sums over segments (overlap
    # check) and takes one segment's plane per frame, both fast in this layout
    pixels = np.moveaxis(np.stack(masks).view(np.uint8), 0, -1)[None]
    seg = _segmentation(
        mammogram, pixels, result, output, identity=identity, segment_descriptions=descriptions,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, content_label="MXAI_HOTREGIONS",
        content_description="mammoxai hot regions of each explanation method",
        transfer_syntax_uid=ExplicitVRLittleEndian)
    seg.file_meta.TransferSyntaxUID = HOT_REGION_SEG_TRANSFER_SYNTAX    # deflated when written
    return seg
