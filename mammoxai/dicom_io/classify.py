"""Header-only triage: is a dataset a mammogram mammoxai can read?

No pixel data is decoded here; the node calls :func:`is_mammogram` on every
received instance to ignore CT, SR, presentation states and so on.

Accepted (``DatasetKind.MAMMOGRAM``):

* Digital Mammography X-Ray Image Storage - For Presentation (1.2.840.10008.5.1.4.1.1.1.2)
  and - For Processing (1.2.840.10008.5.1.4.1.1.1.2.1), whatever the Modality;
* Secondary Capture Image Storage (1.2.840.10008.5.1.4.1.1.7, and the multi-frame
  grayscale byte / word SC …7.2 / …7.3 with one frame), Digital X-Ray Image Storage
  For Presentation / For Processing (1.2.840.10008.5.1.4.1.1.1.1 / …1.1.1.1) and
  Computed Radiography Image Storage (1.2.840.10008.5.1.4.1.1.1) with Modality
  (0008,0060) ``MG`` (CBIS-DDSM ships its scanned films as MG Secondary Capture;
  CR mammography plates are stored as CR);

all of them single frame, one sample per pixel, MONOCHROME1 or MONOCHROME2.

``DatasetKind.UNSUPPORTED_MAMMOGRAM``: Breast Tomosynthesis (1.2.840.10008.5.1.4.1.1.13.1.3),
Breast Projection X-Ray (…13.1.4 / …13.1.5), and any accepted class above that is
multi-frame, RGB/colour or has Samples per Pixel != 1.

``DatasetKind.NOT_MAMMOGRAM``: everything else (the reason names the Modality and SOP Class).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from pydicom.dataset import Dataset
from pydicom.uid import UID

MG_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.2")
MG_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.2.1")
COMPUTED_RADIOGRAPHY = UID("1.2.840.10008.5.1.4.1.1.1")
DX_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.1.1")
DX_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.1.1.1")
SECONDARY_CAPTURE = UID("1.2.840.10008.5.1.4.1.1.7")
MULTIFRAME_GRAYSCALE_BYTE_SC = UID("1.2.840.10008.5.1.4.1.1.7.2")
MULTIFRAME_GRAYSCALE_WORD_SC = UID("1.2.840.10008.5.1.4.1.1.7.3")
BREAST_TOMOSYNTHESIS = UID("1.2.840.10008.5.1.4.1.1.13.1.3")
BREAST_PROJECTION_FOR_PRESENTATION = UID("1.2.840.10008.5.1.4.1.1.13.1.4")
BREAST_PROJECTION_FOR_PROCESSING = UID("1.2.840.10008.5.1.4.1.1.13.1.5")

MAMMOGRAPHY_SOP_CLASSES = frozenset({MG_FOR_PRESENTATION, MG_FOR_PROCESSING})
MG_MODALITY_SOP_CLASSES = frozenset({SECONDARY_CAPTURE, MULTIFRAME_GRAYSCALE_BYTE_SC, MULTIFRAME_GRAYSCALE_WORD_SC,
                                     DX_FOR_PRESENTATION, DX_FOR_PROCESSING, COMPUTED_RADIOGRAPHY})
#: Every SOP class that may carry a mammogram (the Storage SCP offers these the decodable transfer syntaxes)
MAMMOGRAM_CARRIER_SOP_CLASSES = MAMMOGRAPHY_SOP_CLASSES | MG_MODALITY_SOP_CLASSES
OUT_OF_SCOPE_SOP_CLASSES = {
    BREAST_TOMOSYNTHESIS: "Breast Tomosynthesis is out of scope (2D mammograms only)",
    BREAST_PROJECTION_FOR_PRESENTATION: "Breast Projection X-Ray (enhanced, tomosynthesis family) is not supported",
    BREAST_PROJECTION_FOR_PROCESSING: "Breast Projection X-Ray (enhanced, tomosynthesis family) is not supported",
}


class DatasetKind(str, enum.Enum):
    """What :func:`classify_dataset` found."""

    MAMMOGRAM = "mammogram"
    UNSUPPORTED_MAMMOGRAM = "unsupported_mammogram"
    NOT_MAMMOGRAM = "not_mammogram"


@dataclass(frozen=True)
class Classification:
    """Result of :func:`classify_dataset`: a kind and, unless a mammogram, a one-line reason.

    ``str(c)`` is ``"mammogram"`` or ``"<kind>: <reason>"``, e.g.
    ``"not_mammogram: Modality CT, SOP Class CT Image Storage"``.
    """

    kind: DatasetKind
    reason: str = ""

    @property
    def is_mammogram(self) -> bool:
        return self.kind is DatasetKind.MAMMOGRAM

    def __str__(self) -> str:
        return self.kind.value if not self.reason else f"{self.kind.value}: {self.reason}"


def _sop_class_text(uid: UID) -> str:
    name = uid.name
    return name if name and name != str(uid) else str(uid)


def classify_dataset(ds: Dataset) -> Classification:
    """Triage ``ds`` from its header alone (SOP Class UID, Modality, Samples per Pixel,
    Photometric Interpretation, Number of Frames); see the module docstring for the rules."""
    sop_class = ds.get("SOPClassUID")
    if not sop_class:
        return Classification(DatasetKind.NOT_MAMMOGRAM, "no SOP Class UID (0008,0016)")
    sop_class = UID(str(sop_class))
    modality = str(ds.get("Modality", "") or "").strip().upper()

    if sop_class in OUT_OF_SCOPE_SOP_CLASSES:
        return Classification(DatasetKind.UNSUPPORTED_MAMMOGRAM, OUT_OF_SCOPE_SOP_CLASSES[sop_class])
    if sop_class not in MAMMOGRAPHY_SOP_CLASSES and not (
        sop_class in MG_MODALITY_SOP_CLASSES and modality == "MG"
    ):
        return Classification(
            DatasetKind.NOT_MAMMOGRAM,
            f"Modality {modality or '(none)'}, SOP Class {_sop_class_text(sop_class)}",
        )

    problem = unsupported_image_reason(ds)
    if problem:
        return Classification(DatasetKind.UNSUPPORTED_MAMMOGRAM, problem)
    return Classification(DatasetKind.MAMMOGRAM)


def unsupported_image_reason(ds: Dataset) -> str:
    """Why the Image Pixel module describes something mammoxai cannot use, or ``""``.

    Checks Samples per Pixel (0028,0002) == 1, Photometric Interpretation (0028,0004)
    MONOCHROME1/MONOCHROME2 and Number of Frames (0028,0008) <= 1.
    """
    spp = ds.get("SamplesPerPixel", 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if spp not in (None, "") and int(spp) != 1:
        return f"Samples per Pixel is {int(spp)} ({photometric or 'colour'}); mammograms are grayscale"
    if photometric and photometric not in ("MONOCHROME1", "MONOCHROME2"):
        return f"Photometric Interpretation {photometric}; mammograms are MONOCHROME1/MONOCHROME2"
    frames = ds.get("NumberOfFrames", 1)
    try:
        n_frames = int(frames) if frames not in (None, "") else 1
    except (TypeError, ValueError):
        return f"Number of Frames {frames!r} is not an integer"
    if n_frames > 1:
        return f"multi-frame image ({n_frames} frames); only single-frame mammograms are supported"
    return ""


def is_mammogram(ds: Dataset) -> bool:
    """``True`` when :func:`classify_dataset` says ``MAMMOGRAM`` (header only, no pixel decode).

    Tomosynthesis, multi-frame and colour objects give ``False``; use
    :func:`classify_dataset` to tell them from non-mammograms.
    """
    return classify_dataset(ds).is_mammogram
