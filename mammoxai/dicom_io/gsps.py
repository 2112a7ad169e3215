"""Grayscale Softcopy Presentation State with the hot regions of every explainer on the *unaltered* mammogram.

One GSPS per image referencing the source (highdicom.pr). One graphic layer
per method (Graphic Layer = ``M1``, ``M2``… with the method's display name as
Graphic Layer Description and its colour from :mod:`.palette`, the same as its
SEG segment's) holding its regions as
closed POLYLINEs in PIXEL units (stored grid) and a text label
"<method> k" anchored at each region's top; one more layer ``INFO`` with the
prediction and "NOT FOR DIAGNOSTIC USE". Presentation:

* VOI: the source's window (or VOI LUT) is copied (highdicom does it).
* Presentation LUT: IDENTITY, or INVERSE for a MONOCHROME1 source (the
  presentation state replaces the image's own polarity).
* Spatial transformation: the Mammogram's display flips as Image
  Horizontal Flip / Image Rotation (a vertical flip = rotation 180° +
  horizontal flip), so that a viewer shows the conventional orientation;
  PIXEL annotations move with the image.
* Laterality (0020,0060): set for a paired body part (dciodvfy requires it).
"""

from __future__ import annotations

import highdicom as hd
import numpy as np

from ..config.settings import OutputSettings
from .mammogram import Mammogram
from .palette import method_cielab
from .provenance import contributing_equipment, copied_names_quietly, finish
from .regions import HotRegion
from .render import DISCLAIMER
from .results import ImageResult
from .identity import OutputIdentity

def write_gsps(mammogram: Mammogram, result: ImageResult, output: OutputSettings,
               regions: dict[str, list[HotRegion]], *, identity: OutputIdentity
               ) -> hd.pr.GrayscaleSoftcopyPresentationState:
    """The GSPS of one image (see the module docstring); ``regions``: method → hot regions;
    ``identity``: its UIDs and series."""
    source = mammogram.dataset
    layers, annotations = [], []
    rows, cols = int(source.Rows), int(source.Columns)
    for order, method_map in enumerate(result.maps, start=1):
        method_regions = regions.get(method_map.method, [])
        if not method_regions:
            continue
        layer = hd.pr.GraphicLayer(layer_name=f"M{order}", order=order,
                                   description=f"mammoxai {method_map.display_name} hot regions"[:64],
                                   display_color=method_cielab(order - 1))
        graphics, texts = [], []
        for k, region in enumerate(method_regions, start=1):
            graphics.append(hd.pr.GraphicObject(graphic_type=hd.pr.GraphicTypeValues.POLYLINE,
                                                graphic_data=region.polygon.astype(np.float32),
                                                units=hd.pr.AnnotationUnitsValues.PIXEL,
                                                tracking_id=f"{method_map.method} region {k}"[:64],
                                                tracking_uid=identity.uid("region", method_map.method, k)))
            top = int(np.argmin(region.polygon[:, 1]))
            x, y = (float(v) for v in region.polygon[top])
            texts.append(hd.pr.TextObject(text_value=f"{method_map.display_name} {k}"[:1024],
                                          units=hd.pr.AnnotationUnitsValues.PIXEL,
                                          anchor_point=(min(max(x, 0.0), cols), min(max(y, 0.0), rows)),
                                          anchor_point_visible=False))
        layers.append(layer)
        annotations.append(hd.pr.GraphicAnnotation(referenced_images=[source], graphic_layer=layer,
                                                   graphic_objects=graphics, text_objects=texts))
    info = hd.pr.GraphicLayer(layer_name="INFO", order=len(result.maps) + 1,
                              description="mammoxai prediction and disclaimer")
    text = (f"mammoxai: {result.predicted_class}, P({result.positive_class}) = "
            f"{result.malignancy_probability:.2f} - {DISCLAIMER}")
    annotations.append(hd.pr.GraphicAnnotation(
        referenced_images=[source], graphic_layer=info,
        text_objects=[hd.pr.TextObject(text_value=text, units=hd.pr.AnnotationUnitsValues.DISPLAY,
                                       bounding_box=(0.01, 0.95, 0.99, 0.995))]))
    layers.append(info)
    inverse = str(source.get("PhotometricInterpretation", "")) == "MONOCHROME1"
    with copied_names_quietly():
        gsps = hd.pr.GrayscaleSoftcopyPresentationState(
            referenced_images=[source],
            series_instance_uid=identity.series_instance_uid,
            series_number=identity.series_number,
            sop_instance_uid=identity.sop_instance_uid,
            instance_number=identity.instance_number,
            manufacturer=output.manufacturer,
            manufacturer_model_name=result.algorithm.name[:64] or "mammoxai",
            software_versions=result.algorithm.software_version or "unknown",
            device_serial_number=result.algorithm.checkpoint_sha256[:16] or "0",
            content_label="MAMMOXAI",
            content_description=f"mammoxai hot regions of {len(regions)} explanation methods"[:64],
            graphic_annotations=annotations,
            graphic_layers=layers,
            institution_name=output.institution_name,
            presentation_lut_transformation=hd.PresentationLUTTransformation(
                presentation_lut_shape=hd.PresentationLUTShapeValues.INVERSE if inverse
                else hd.PresentationLUTShapeValues.IDENTITY),
            contributing_equipment=[contributing_equipment(result.algorithm, output.manufacturer,
                                                           output.institution_name)],
            series_description=identity.series_description,
        )
    if mammogram.laterality in ("L", "R"):
        gsps.Laterality = mammogram.laterality
    rotation, flip = 0, False
    if mammogram.flip_horizontal and mammogram.flip_vertical:
        rotation = 180
    elif mammogram.flip_vertical:
        rotation, flip = 180, True
    elif mammogram.flip_horizontal:
        flip = True
    gsps.ImageRotation = rotation
    gsps.ImageHorizontalFlip = "Y" if flip else "N"
    # Displayed Area corners name the image pixels that end up top-left / bottom-right once the
    # spatial transformation is applied (dciodvfy checks this); 180 degrees and a flip commute.
    (x0, y0), (x1, y1) = (1, 1), (cols, rows)
    if flip:
        x0, x1 = x1, x0
    if rotation == 180:
        (x0, y0), (x1, y1) = (x1, y1), (x0, y0)
    for area in gsps.DisplayedAreaSelectionSequence:
        area.DisplayedAreaTopLeftHandCorner = [x0, y0]
        area.DisplayedAreaBottomRightHandCorner = [x1, y1]
    return finish(gsps, source, content_date=False)
