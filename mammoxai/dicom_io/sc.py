"""Secondary Capture (SC) overlays: one page per selected method and one montage of all methods.

``highdicom.sc.SCImage`` RGB uint8 (or JPEG baseline, YBR_FULL_422, when
``output.sc_compression = "jpeg_baseline"``), in the source study, with
Burned In Annotation YES (the method, the prediction and "NOT FOR
DIAGNOSTIC USE" are in the pixels), Source Image Sequence and Referenced
Image Sequence pointing at the source, and Patient Orientation (0020,0020)
of the *displayed* orientation (two values, see :func:`display_orientation`).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np
from pydicom.uid import JPEGBaseline8Bit, ExplicitVRLittleEndian

from ..config.settings import OutputSettings
from . import render
from .mammogram import Mammogram
from .orientation import display_orientation
from .provenance import contributing_equipment, copied_names_quietly, finish, source_image_item
from .results import ImageResult, MethodMap
from .identity import OutputIdentity
from .write_errors import DicomWriteError

#: Purpose of reference of the source image: (121322, DCM, "Source image for image processing operation").
SOURCE_PURPOSE = ("121322", "DCM", "Source image for image processing operation")


def _transfer_syntax(output: OutputSettings) -> tuple[str, str]:
    if output.sc_compression == "jpeg_baseline":
        return JPEGBaseline8Bit, "YBR_FULL_422"
    return ExplicitVRLittleEndian, "RGB"


def build_sc(mammogram: Mammogram, page: np.ndarray, result: ImageResult, output: OutputSettings, *,
             identity: OutputIdentity, derivation: str) -> hd.sc.SCImage:
    """One SC of an RGB page with the UIDs, series and number of ``identity``, referencing the source."""
    if page.ndim != 3 or page.shape[2] != 3 or page.dtype != np.uint8:
        raise DicomWriteError(f"{mammogram.sop_instance_uid}: SC page must be RGB uint8, got "
                              f"{page.dtype} {page.shape}")
    source = mammogram.dataset
    orientation = display_orientation(mammogram)
    transfer_syntax, photometric = _transfer_syntax(output)
    with copied_names_quietly():
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=np.ascontiguousarray(page),
            photometric_interpretation=photometric,
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=identity.series_instance_uid,
            series_number=identity.series_number,
            sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number,
            manufacturer=output.manufacturer,
            laterality=mammogram.laterality if mammogram.laterality in ("L", "R") else None,
            # highdicom accepts one letter per direction only: oblique values ("FL") are set below
            patient_orientation=(orientation[0][0], orientation[1][0]) if orientation else ("A", "F"),
            transfer_syntax_uid=transfer_syntax,
            contributing_equipment=[contributing_equipment(result.algorithm, output.manufacturer,
                                                           output.institution_name)],
            series_description=identity.series_description,
            institution_name=output.institution_name,
        )
    # Type 2C: unknown orientation is sent empty
    sc.PatientOrientation = list(orientation) if orientation else ""
    sc.BurnedInAnnotation = "YES"
    sc.RecognizableVisualFeatures = "NO"
    if "BodyPartExamined" in source:
        sc.BodyPartExamined = source.BodyPartExamined
    sc.DerivationDescription = derivation[:1024]
    sc.SourceImageSequence = [source_image_item(source, SOURCE_PURPOSE)]
    sc.ReferencedImageSequence = [source_image_item(source)]
    if transfer_syntax == JPEGBaseline8Bit:
        sc.LossyImageCompression = "01"
        sc.LossyImageCompressionMethod = "ISO_10918_1"
        raw = page.size
        sc.LossyImageCompressionRatio = f"{raw / max(1, len(sc.PixelData)):.2f}"[:16]
    sc.ImageComments = "mammoxai explanation overlay - " + render.DISCLAIMER
    return finish(sc, source)


def _parameters_text(method_map: MethodMap) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(method_map.parameters.items()))


def write_overlay_sc(mammogram: Mammogram, method_map: MethodMap, result: ImageResult,
                     output: OutputSettings, *, identity: OutputIdentity) -> hd.sc.SCImage:
    """The SC overlay page of one method; ``identity``: its UIDs and the method's series ("mammoxai <method> L")."""
    page = render.render_overlay(mammogram, method_map, result, colormap=output.colormap,
                                 max_size=output.sc_max_size)
    cmap = render.SIGNED_COLORMAP if method_map.signed else output.colormap
    params = _parameters_text(method_map)
    derivation = (f"mammoxai {method_map.display_name} ({method_map.method}) map of model "
                  f"{result.algorithm.name} {result.algorithm.version} blended in {cmap}"
                  + (f"; parameters: {params}" if params else "") + f"; {render.DISCLAIMER}")
    return build_sc(mammogram, page, result, output, identity=identity, derivation=derivation)


def write_montage_sc(mammogram: Mammogram, result: ImageResult, output: OutputSettings, *,
                     identity: OutputIdentity) -> hd.sc.SCImage:
    """The SC montage of all maps of ``result`` (one panel per method); ``identity``: its UIDs and series."""
    page = render.render_montage(mammogram, result, colormap=output.colormap, max_size=output.sc_max_size)
    names = ", ".join(m.display_name for m in result.maps)
    derivation = (f"mammoxai montage of {len(result.maps)} explanation maps ({names}) of model "
                  f"{result.algorithm.name} {result.algorithm.version}; {render.DISCLAIMER}")
    return build_sc(mammogram, page, result, output, identity=identity, derivation=derivation)
