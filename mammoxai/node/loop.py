"""Loop prevention and triage of received instances: which ones the node processes.

A PACS that routes *everything* back to the node would otherwise make it
process its own results forever. The rules live in ``dicom_io`` (one place for
what "ours" and "a mammogram" mean, used by the SCP and the pipeline alike);
this module orders them and adds one node-only rule:

1. :func:`mammoxai.dicom_io.our_output_reason`: Manufacturer, Contributing
   Equipment or our SOP classes in our series range;
2. a SOP class the node only ever writes (SR, SEG, GSPS, Parametric Map): never
   a source, whoever wrote it;
3. :func:`mammoxai.dicom_io.classify_dataset`: not a mammogram (CT, MR, an SC of
   another modality, ...) or one mammoxai cannot read (tomosynthesis, multi-frame,
   colour).

Ignored instances are still accepted (Success) by the SCP, so a PACS routing a
whole study never sees a failure.
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pydicom.uid import UID

from ..config import OutputSettings
from ..dicom_io import classify_dataset, our_output_reason

log = logging.getLogger(__name__)

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


def own_output_reason(ds: Dataset, output: OutputSettings) -> str | None:
    """Why ``ds`` is one of our own results or a kind of object we only write, or ``None`` (header only)."""
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
    """``None`` when the node should process ``ds``; otherwise the reason it is ignored."""
    reason = own_output_reason(ds, output)
    if reason is not None:
        return reason
    verdict = classify_dataset(ds)
    return None if verdict.is_mammogram else str(verdict)
