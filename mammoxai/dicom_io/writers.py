"""Entry points of the DICOM writers: all output objects of one image, the study summary, loop prevention.

:func:`write_results` returns, for one mammogram and its :class:`ImageResult`,
the objects ``output`` asks for, in this order:

1. one Secondary Capture overlay per selected method (:func:`select_sc_methods`),
   each in its method's series for this breast ("mammoxai Grad-CAM L");
2. one SC montage of the maps (``output.montage``);
3. one Comprehensive SR, TID 1500 (``output.structured_report``), listing every map;
4. (``output.segmentation``) one BINARY SEG of every method's hot regions (a segment per
   method, for viewers: OHIF; its own series, kind ``"region_seg"``) and one FRACTIONAL SEG
   per explainer (the maps as data, kind ``"seg"``; see :mod:`mammoxai.dicom_io.seg`);
5. one GSPS with the hot regions of every method (``output.gsps``).

Maps whose ``not_informative`` is set are never drawn (no overlay, montage
tile, SEG, hot region): :func:`drawable_maps`; the SR records them.

Everything goes into the source study (same Study Instance UID, patient and
study attributes copied unchanged) and references the source image. The
UIDs, series and numbers of every object come from
:mod:`mammoxai.dicom_io.identity`, in series numbered from
``output.series_number_base`` (:mod:`mammoxai.dicom_io.series`); left and
right breasts never share a series. No Parametric Map: MG has no Frame of
Reference (see :mod:`mammoxai.dicom_io.seg`).
"""

from __future__ import annotations

import dataclasses
import logging

import pydicom
from pydicom.dataset import Dataset

from ..config.settings import OutputSettings
from .mammogram import Mammogram
from .identity import OutputIdentity, image_output_identity, summary_identity
from .regions import HotRegion, find_hot_regions
from .results import ImageResult, MethodMap
from .sc import write_montage_sc, write_overlay_sc
from .seg import write_hot_region_seg, write_seg
from .sr import write_sr, write_summary_sr
from .gsps import write_gsps
from .write_errors import DicomWriteError

log = logging.getLogger(__name__)

#: The methods ``sc_methods = "auto"`` draws (when they ran), plus ``lime`` with a GPU.
AUTO_SC_METHODS: tuple[str, ...] = ("gradcam", "lrp", "integrated_gradients")
AUTO_SC_METHODS_GPU: tuple[str, ...] = AUTO_SC_METHODS + ("lime",)

def select_sc_methods(result: ImageResult, output: OutputSettings, *, gpu_present: bool = False) -> list[str]:
    """The methods that get an SC overlay, in the order of ``result.maps``.

    ``"auto"``: gradcam, lrp, integrated_gradients (+ lime when ``gpu_present``) among those that ran;
    ``"all"``: every map; a list: those of its names that ran (unknown names are ignored).
    """
    ran = [m.method for m in result.maps]
    if output.sc_methods == "all":
        return ran
    wanted = (AUTO_SC_METHODS_GPU if gpu_present else AUTO_SC_METHODS) if output.sc_methods == "auto" \
        else tuple(output.sc_methods)
    return [m for m in ran if m in wanted]


def hot_regions(result: ImageResult, output: OutputSettings) -> dict[str, list[HotRegion]]:
    """Each map's hot regions (``output.hot_region_threshold``, ``output.max_regions_per_method``)."""
    return {m.method: find_hot_regions(m.heatmap, threshold=output.hot_region_threshold,
                                       max_regions=output.max_regions_per_method)
            for m in result.maps}


def drawable_maps(result: ImageResult) -> tuple[MethodMap, ...]:
    """The maps that may be drawn (SC overlay, montage tile, SEG, GSPS / SR hot regions): the informative
    ones. A map with ``not_informative`` set says nothing; the SR records it with its reason."""
    return tuple(m for m in result.maps if not m.not_informative)


def write_results(mammogram: Mammogram, result: ImageResult, output: OutputSettings, *,
                  gpu_present: bool = False) -> list[pydicom.Dataset]:
    """All objects ``output`` asks for about one image (see the module docstring for the order).

    Each object's UIDs, series and numbers come from :mod:`mammoxai.dicom_io.identity` (the
    same for the same source, kind, method and laterality, whatever else ran or failed).
    """
    if len(result.class_names) != len(result.probabilities) or result.positive_class not in result.class_names:
        raise DicomWriteError(f"{mammogram.sop_instance_uid}: result classes {result.class_names} do not match "
                              f"its probabilities / positive class {result.positive_class!r}")
    shape = mammogram.pixels.shape
    for m in result.maps:
        if m.heatmap.shape != shape:
            raise DicomWriteError(f"{mammogram.sop_instance_uid}: {m.method} map has shape {m.heatmap.shape}, "
                                  f"the image's stored grid is {shape}")
    base = output.series_number_base

    def identity(kind: str, method_map: MethodMap | None = None) -> OutputIdentity:
        try:
            if method_map is None:
                return image_output_identity(mammogram, kind, base)
            return image_output_identity(mammogram, kind, base, method=method_map.method,
                                         display_name=method_map.display_name,
                                         series_slot=method_map.series_slot)
        except ValueError as exc:
            raise DicomWriteError(f"{mammogram.sop_instance_uid}: {exc}") from None

    drawable = drawable_maps(result)
    drawn = dataclasses.replace(result, maps=drawable)
    outputs: list[Dataset] = []
    by_name = {m.method: m for m in drawable}
    if output.secondary_capture:
        for method in select_sc_methods(drawn, output, gpu_present=gpu_present):
            outputs.append(write_overlay_sc(mammogram, by_name[method], result, output,
                                            identity=identity("sc", by_name[method])))
    if output.montage and drawable:
        outputs.append(write_montage_sc(mammogram, drawn, output, identity=identity("montage")))
    regions = hot_regions(drawn, output) if (output.structured_report or output.gsps or output.segmentation) else {}
    if output.structured_report:
        outputs.append(write_sr(mammogram, result, output, regions, identity=identity("sr")))
    if output.segmentation:
        binary = write_hot_region_seg(mammogram, drawn, output, regions, identity=identity("region_seg"))
        if binary is not None:
            outputs.append(binary)
        for m in drawable:
            outputs.append(write_seg(mammogram, m, result, output, identity=identity("seg", m)))
    if output.gsps:
        outputs.append(write_gsps(mammogram, drawn, output, regions, identity=identity("gsps")))
    return outputs


def write_study_summary(mammograms: list[Mammogram], results: list[ImageResult],
                        output: OutputSettings) -> pydicom.Dataset:
    """The study-level SR: per breast, the highest probability of malignancy across its views.

    One per study (:func:`mammoxai.dicom_io.identity.summary_identity`): a summary remade when
    more views arrive replaces the earlier one.
    """
    if not mammograms:
        raise DicomWriteError("study summary needs at least one image")
    try:
        identity = summary_identity(mammograms[0].study_instance_uid, output.series_number_base)
    except ValueError as exc:
        raise DicomWriteError(str(exc)) from None
    return write_summary_sr(list(mammograms), list(results), output, identity=identity)
