"""Entry points of the DICOM writers: all output objects of one image, the study summary, loop prevention.

:func:`write_results` returns, for one mammogram and its :class:`ImageResult`,
the objects ``output`` asks for, in this order:

1. one Secondary Capture overlay per selected method (:func:`select_sc_methods`),
   each in its method's series ("mammoxai Grad-CAM L");
2. one SC montage of *all* maps (``output.montage``);
3. one Comprehensive 3D SR, TID 1500 (``output.structured_report``);
4. one FRACTIONAL SEG per explainer (``output.segmentation``; see
   :mod:`mammoxai.dicom_io.seg` for why one per explainer);
5. one GSPS with the hot regions of every method (``output.gsps``).

Everything goes into the source study (same Study Instance UID, patient and
study attributes copied unchanged) with new series from
``output.series_number_base`` (:mod:`mammoxai.dicom_io.series`), and
references the source image. ``output.parametric_map`` cannot be honoured on
MG (no Frame of Reference, see :mod:`mammoxai.dicom_io.seg`): it is logged
and ignored.
"""

from __future__ import annotations

import logging

import pydicom
from pydicom.dataset import Dataset

from ..config.settings import OutputSettings
from .mammogram import Mammogram
from .regions import HotRegion, find_hot_regions
from .results import ImageResult
from .sc import write_montage_sc, write_overlay_sc
from .seg import write_seg
from .series import in_our_range
from .sr import write_sr, write_summary_sr
from .gsps import write_gsps
from .write_errors import DicomWriteError

log = logging.getLogger(__name__)

#: The methods ``sc_methods = "auto"`` draws (when they ran), plus ``lime`` with a GPU.
AUTO_SC_METHODS: tuple[str, ...] = ("gradcam", "lrp", "integrated_gradients")
AUTO_SC_METHODS_GPU: tuple[str, ...] = AUTO_SC_METHODS + ("lime",)

#: SOP classes mammoxai writes: SC, Comprehensive 3D SR, Comprehensive SR, SEG, GSPS, Parametric Map.
OUR_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",        # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.88.34",    # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33",    # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.66.4",     # Segmentation
    "1.2.840.10008.5.1.4.1.1.11.1",     # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.30",       # Parametric Map
})


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


def write_results(mammogram: Mammogram, result: ImageResult, output: OutputSettings, *,
                  gpu_present: bool = False) -> list[pydicom.Dataset]:
    """All objects ``output`` asks for about one image (see the module docstring for the order)."""
    if len(result.class_names) != len(result.probabilities) or result.positive_class not in result.class_names:
        raise DicomWriteError(f"{mammogram.sop_instance_uid}: result classes {result.class_names} do not match "
                              f"its probabilities / positive class {result.positive_class!r}")
    shape = mammogram.pixels.shape
    for m in result.maps:
        if m.heatmap.shape != shape:
            raise DicomWriteError(f"{mammogram.sop_instance_uid}: {m.method} map has shape {m.heatmap.shape}, "
                                  f"the image's stored grid is {shape}")
    outputs: list[Dataset] = []
    by_name = {m.method: m for m in result.maps}
    if output.secondary_capture:
        for k, method in enumerate(select_sc_methods(result, output, gpu_present=gpu_present), start=1):
            outputs.append(write_overlay_sc(mammogram, by_name[method], result, output, instance_number=k))
    if output.montage and result.maps:
        outputs.append(write_montage_sc(mammogram, result, output))
    regions = hot_regions(result, output) if (output.structured_report or output.gsps) else {}
    if output.structured_report:
        outputs.append(write_sr(mammogram, result, output, regions))
    if output.segmentation:
        for k, m in enumerate(result.maps, start=1):
            outputs.append(write_seg(mammogram, m, result, output, instance_number=k))
    if output.gsps:
        outputs.append(write_gsps(mammogram, result, output, regions))
    if output.parametric_map:
        log.warning("%s: output.parametric_map ignored: the Parametric Map IOD needs a Frame of Reference, "
                    "which a projection mammogram does not have (the SEG carries the maps)",
                    mammogram.sop_instance_uid)
    return outputs


def write_study_summary(mammograms: list[Mammogram], results: list[ImageResult],
                        output: OutputSettings) -> pydicom.Dataset:
    """The study-level SR: per breast, the highest probability of malignancy across its views."""
    return write_summary_sr(list(mammograms), list(results), output)


def our_output_reason(ds: pydicom.Dataset, output: OutputSettings) -> str | None:
    """Why ``ds`` is an object mammoxai wrote (so the node must not process it again), or ``None``.

    Any of (header only): Manufacturer (0008,0070) is ``output.manufacturer``;
    an item of the Contributing Equipment Sequence (0018,A001) has that
    Manufacturer (our writers add one with the IHE AIR "Processing Algorithm"
    purpose; an archive that rewrites the top-level Manufacturer keeps it); or
    the SOP Class is one of :data:`OUR_SOP_CLASSES` *and* the Series Number lies
    in our range (``series_number_base`` … ``+ 99``). A source image shares none
    of these. A malformed value never raises: it just does not match.
    """
    manufacturer = output.manufacturer.strip().lower()
    if str(ds.get("Manufacturer", "") or "").strip().lower() == manufacturer:
        return f"our own output (Manufacturer {output.manufacturer})"
    for item in ds.get("ContributingEquipmentSequence", None) or []:
        if str(item.get("Manufacturer", "") or "").strip().lower() == manufacturer:
            return f"our own output (Contributing Equipment {output.manufacturer})"
    try:   # a malformed Series Number (IS) in a received header must not break triage
        raw = ds.get("SeriesNumber")
        number = int(raw) if raw not in (None, "") else None
    except (TypeError, ValueError, OverflowError):
        number = None
    if str(ds.get("SOPClassUID", "")) in OUR_SOP_CLASSES and in_our_range(number, output.series_number_base):
        return f"our own output (SOP class of ours in our series range, Series Number {number})"
    return None


def is_our_output(ds: pydicom.Dataset, output: OutputSettings) -> bool:
    """Whether ``ds`` is an object mammoxai wrote; see :func:`our_output_reason`."""
    return our_output_reason(ds, output) is not None
