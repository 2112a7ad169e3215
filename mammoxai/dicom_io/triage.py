"""Triage of a received header: is it ours, is it a source at all, is it a mammogram mammoxai reads?

The one home of these rules; the node's Storage SCP (:func:`triage`, before answering) and the
pipeline (:func:`is_our_output`, before reading pixels) both use them. Header only, torch-free,
and a malformed value never raises: it just does not match.

Why ours matter: a PACS that routes *everything* back to the node would otherwise make it
process its own results forever (loop prevention). The order of :func:`triage`:

1. :func:`our_output_reason`: Manufacturer, Contributing Equipment, or one of
   :data:`OUR_SOP_CLASSES` in our series range;
2. a SOP class the node only ever writes (:data:`OUTPUT_ONLY_SOP_CLASSES`: SR, SEG, GSPS,
   Parametric Map): never a source, whoever wrote it;
3. :func:`~mammoxai.dicom_io.classify.classify_dataset`: not a mammogram (CT, MR, an SC of
   another modality, ...) or one mammoxai cannot read (tomosynthesis, multi-frame, colour).
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..config.settings import OutputSettings
from .classify import classify_dataset
from .series import in_our_range

log = logging.getLogger(__name__)

#: SOP classes mammoxai writes: SC, Comprehensive 3D SR, Comprehensive SR, SEG, GSPS.
OUR_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.7",        # Secondary Capture Image Storage
    "1.2.840.10008.5.1.4.1.1.88.34",    # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.88.33",    # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.66.4",     # Segmentation
    "1.2.840.10008.5.1.4.1.1.11.1",     # Grayscale Softcopy Presentation State
})

#: SOP classes that are never a source image, whoever wrote them (results, annotations, maps).
OUTPUT_ONLY_SOP_CLASSES: frozenset[str] = frozenset({
    "1.2.840.10008.5.1.4.1.1.88.11",    # Basic Text SR
    "1.2.840.10008.5.1.4.1.1.88.22",    # Enhanced SR
    "1.2.840.10008.5.1.4.1.1.88.33",    # Comprehensive SR
    "1.2.840.10008.5.1.4.1.1.88.34",    # Comprehensive 3D SR
    "1.2.840.10008.5.1.4.1.1.66.4",     # Segmentation
    "1.2.840.10008.5.1.4.1.1.11.1",     # Grayscale Softcopy Presentation State
    "1.2.840.10008.5.1.4.1.1.30",       # Parametric Map
})


def our_output_reason(ds: Dataset, output: OutputSettings) -> str | None:
    """Why ``ds`` is an object mammoxai wrote (so the node must not process it again), or ``None``.

    Any of: Manufacturer (0008,0070) is ``output.manufacturer``; an item of the Contributing
    Equipment Sequence (0018,A001) has that Manufacturer (our writers add one with the IHE AIR
    "Processing Algorithm" purpose; an archive that rewrites the top-level Manufacturer keeps it);
    or the SOP Class is one of :data:`OUR_SOP_CLASSES` *and* the Series Number lies in our range
    (``series_number_base`` … ``+ 99``). A source image shares none of these.
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


def is_our_output(ds: Dataset, output: OutputSettings) -> bool:
    """Whether ``ds`` is an object mammoxai wrote; see :func:`our_output_reason`."""
    return our_output_reason(ds, output) is not None


def own_output_reason(ds: Dataset, output: OutputSettings) -> str | None:
    """Why ``ds`` is one of our own results or a kind of object that is never a source, or ``None``."""
    try:
        reason = our_output_reason(ds, output)
    except Exception as exc:  # noqa: BLE001 - a malformed received header must not stop the triage
        log.debug("loop check failed on %s: %s", ds.get("SOPInstanceUID", "?"), exc)
        reason = None
    if reason is not None:
        return reason
    sop_class = UID(str(ds.get("SOPClassUID", "")))
    if sop_class in OUTPUT_ONLY_SOP_CLASSES:
        return f"SOP class {sop_class.name} is one the node writes, never processes"
    return None


def triage(ds: Dataset, output: OutputSettings) -> str | None:
    """``None`` when ``ds`` is a mammogram to process; otherwise the reason it is ignored."""
    reason = own_output_reason(ds, output)
    if reason is not None:
        return reason
    verdict = classify_dataset(ds)
    return None if verdict.is_mammogram else str(verdict)
