"""Loop prevention and triage of received instances: which ones the node processes.

A PACS that routes *everything* back to the node would otherwise make it
process its own results forever. An instance is never processed when any of
these holds (PS3.3 attribute names):

- ``mammoxai.dicom_io.is_our_output`` says so;
- its Manufacturer (0008,0070) is ours (``output.manufacturer``) and its
  SeriesNumber (0020,0011) lies in our range ``[series_number_base, +1000)``;
- a Contributing Equipment Sequence (0018,A001) item names our manufacturer;
- it is of a SOP class the node only ever writes (SR, SEG, GSPS, ...).

Everything else that cannot carry a mammogram (CT, MR, ...) is accepted by
the SCP and ignored, so a PACS routing a whole study never sees a failure.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..config import OutputSettings
from ..dicom_io import is_our_output

log = logging.getLogger(__name__)

DIGITAL_MAMMOGRAPHY_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
DIGITAL_MAMMOGRAPHY_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.2.1")
#: SOP classes whose instances are mammograms whatever their Modality
MAMMOGRAPHY_SOP_CLASSES = frozenset({DIGITAL_MAMMOGRAPHY_PRESENTATION, DIGITAL_MAMMOGRAPHY_PROCESSING})
#: SOP classes that carry a mammogram when Modality (0008,0060) is MG: Secondary Capture (single and
#: multi-frame grayscale) and Digital X-Ray (CBIS-DDSM and digitised film arrive as these)
GENERIC_IMAGE_SOP_CLASSES = frozenset({
    UID("1.2.840.10008.5.1.4.1.1.7"),        # Secondary Capture Image
    UID("1.2.840.10008.5.1.4.1.1.7.2"),      # Multi-frame Grayscale Byte SC
    UID("1.2.840.10008.5.1.4.1.1.7.3"),      # Multi-frame Grayscale Word SC
    UID("1.2.840.10008.5.1.4.1.1.1.1"),      # Digital X-Ray Image - For Presentation
    UID("1.2.840.10008.5.1.4.1.1.1.1.1"),    # Digital X-Ray Image - For Processing
})
#: SOP classes the node writes and never reads back
OUTPUT_ONLY_SOP_CLASSES = frozenset({
    UID("1.2.840.10008.5.1.4.1.1.88.11"),    # Basic Text SR
    UID("1.2.840.10008.5.1.4.1.1.88.22"),    # Enhanced SR
    UID("1.2.840.10008.5.1.4.1.1.88.33"),    # Comprehensive SR
    UID("1.2.840.10008.5.1.4.1.1.88.34"),    # Comprehensive 3D SR
    UID("1.2.840.10008.5.1.4.1.1.66.4"),     # Segmentation
    UID("1.2.840.10008.5.1.4.1.1.11.1"),     # Grayscale Softcopy Presentation State
    UID("1.2.840.10008.5.1.4.1.1.30"),       # Parametric Map
})
SERIES_RANGE = 1000


def own_output_reason(ds: Dataset, output: OutputSettings) -> str | None:
    """Why ``ds`` is one of our own results, or ``None`` when it is not (header only; no pixel data needed)."""
    ours = output.manufacturer.strip().lower()
    manufacturer = str(ds.get("Manufacturer", "") or "").strip().lower()
    try:
        series_number = int(ds.get("SeriesNumber", None) or -1)
    except (TypeError, ValueError):
        series_number = -1
    base = output.series_number_base
    if manufacturer == ours and base <= series_number < base + SERIES_RANGE:
        return f"our own output (Manufacturer {output.manufacturer}, SeriesNumber {series_number})"
    for item in ds.get("ContributingEquipmentSequence", None) or []:
        if str(item.get("Manufacturer", "") or "").strip().lower() == ours:
            return f"our own output (Contributing Equipment {output.manufacturer})"
    if UID(str(ds.get("SOPClassUID", ""))) in OUTPUT_ONLY_SOP_CLASSES:
        return f"SOP class {UID(str(ds.SOPClassUID)).name} is one the node writes, never processes"
    try:
        if is_our_output(ds, output):
            return "our own output (dicom_io.is_our_output)"
    except Exception as exc:  # a malformed header must not stop the triage
        log.debug("is_our_output failed on %s: %s", ds.get("SOPInstanceUID", "?"), exc)
    return None


def triage(ds: Dataset, output: OutputSettings) -> str | None:
    """``None`` when the node should process ``ds``; otherwise the reason it is ignored."""
    reason = own_output_reason(ds, output)
    if reason is not None:
        return reason
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if sop_class in MAMMOGRAPHY_SOP_CLASSES:
        return None
    modality = str(ds.get("Modality", "") or "")
    if sop_class in GENERIC_IMAGE_SOP_CLASSES:
        return None if modality == "MG" else f"Modality {modality or '(none)'} is not MG"
    return f"SOP class {sop_class.name or sop_class} does not carry mammograms"
