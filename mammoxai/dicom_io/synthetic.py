"""Write a pixel array (e.g. a numpy phantom) as a standard Digital Mammography X-Ray Image.

The object follows the Digital Mammography X-Ray Image IOD (PS3.3 A.26.2): Patient, General
Study, General Series, DX Series, Mammography Series, General Equipment, General Image, Image
Pixel, DX Anatomy Imaged, DX Image, DX Detector, Mammography Image, VOI LUT, Acquisition
Context and SOP Common modules. It is meant for tests and demos: ``dciodvfy`` reports no
errors on it (see tests/dicom_read).

The pixels are stored in the display convention of :mod:`mammoxai.dicom_io.read_orientation`
(chest wall on the right for a right breast, on the left for a left breast; lateral side up
for CC-family views, head end up for the others) and Patient Orientation (0020,0020) says so,
unless ``patient_orientation`` overrides it (to test flips).
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000,
    JPEG2000Lossless,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

from .classify import MG_FOR_PRESENTATION, MG_FOR_PROCESSING
from .identity import new_source_uid
from .read_orientation import VIEW_SCT, conventional_patient_orientation

VoiSpec = Literal["auto"] | tuple[float, float] | Sequence[tuple[float, float]] | np.ndarray | None

#: Transfer syntaxes :func:`write_phantom_dicom` can encode (pydicom + pylibjpeg/pyjpegls).
WRITABLE_TRANSFER_SYNTAXES: frozenset[UID] = frozenset({
    ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian, RLELossless,
    JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000,
})
_LOSSY = {JPEG2000: "ISO_15444_1", JPEGLSNearLossless: "ISO_14495_1"}


def _code(value: str, scheme: str, meaning: str) -> Dataset:
    item = Dataset()
    item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    item.CodeMeaning = meaning
    return item


def _ds_str(x: float) -> str:
    text = f"{x:.6g}"
    return text if len(text) <= 16 else f"{x:.8e}"[:16]


def _windows(voi: VoiSpec, pixels: np.ndarray) -> list[tuple[float, float]]:
    if isinstance(voi, str):
        if voi != "auto":
            raise ValueError(f"voi must be 'auto', (center, width), a list of them, a LUT array or None; got {voi!r}")
        lo, hi = int(pixels.min()), int(pixels.max())
        return [((lo + hi + 1) / 2.0, float(max(hi - lo + 1, 2)))]
    if isinstance(voi, tuple) and len(voi) == 2 and all(isinstance(v, (int, float, np.number)) for v in voi):
        return [(float(voi[0]), float(voi[1]))]
    return [(float(c), float(w)) for c, w in voi]   # type: ignore[union-attr]


def write_phantom_dicom(
    pixels: np.ndarray,
    *,
    laterality: str,
    view: str,
    bits_stored: int = 12,
    path: str | Path | None = None,
    patient_id: str = "MAMMOXAI-PHANTOM",
    patient_name: str = "Phantom^Mammoxai",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    photometric: Literal["MONOCHROME2", "MONOCHROME1"] = "MONOCHROME2",
    voi: VoiSpec = "auto",
    voi_function: Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"] | None = "LINEAR",
    transfer_syntax: str | UID = ExplicitVRLittleEndian,
    pixel_spacing_mm: float = 0.1,
    presentation_intent: Literal["FOR PRESENTATION", "FOR PROCESSING"] = "FOR PRESENTATION",
    patient_orientation: tuple[str, str] | None = None,
    instance_number: int = 1,
    lossy_ratio: float = 10.0,
) -> Dataset:
    """Build (and write to ``path`` if given) a Digital Mammography X-Ray Image.

    ``pixels``: 2-D unsigned integers < 2**bits_stored, *presentation intensities* (higher =
    brighter = denser), laid out in the display convention. ``bits_stored`` 8 gives Bits
    Allocated 8, 9..16 gives 16.

    * ``presentation_intent`` "FOR PRESENTATION" -> SOP Class 1.2.840.10008.5.1.4.1.1.1.2 with a
      VOI; "FOR PROCESSING" -> 1.2.840.10008.5.1.4.1.1.1.2.1 (VOI optional).
    * ``photometric`` MONOCHROME1 stores ``2**bits_stored - 1 - pixels`` with Presentation LUT
      Shape INVERSE, and mirrors the window / VOI LUT, so that reading gives the same
      presentation values as MONOCHROME2.
    * ``voi``: "auto" = one LINEAR window spanning the data's min..max; ``(center, width)`` or a
      list of them (Window Center/Width, multi-valued, with ``voi_function``); a 1-D array of
      2**bits_stored entries (VOI LUT Sequence, first mapped value 0, 16-bit entries); None = no
      VOI (only allowed FOR PROCESSING).
    * ``voi_function``: VOI LUT Function (0028,1056) of the window(s); None leaves the attribute out,
      which means LINEAR (PS3.3 C.11.2.1.2). OHIF 3.13 / cornerstone3D cannot read the attribute
      (cornerstone3D issue #2844: "Invalid VOI LUT function"), so images meant for that viewer omit it.
    * ``transfer_syntax``: one of :data:`WRITABLE_TRANSFER_SYNTAXES` (JPEG 2000 lossy uses
      ``lossy_ratio`` and sets Lossy Image Compression "01").
    * ``patient_orientation``: override the conventional Patient Orientation (the pixels are
      then *described* by it: use it to make stored grids that need display flips).

    UIDs come from :func:`mammoxai.dicom_io.identity.new_source_uid`. Returns the dataset as written.
    """
    laterality = str(laterality).upper()
    if laterality not in ("L", "R"):
        raise ValueError(f"laterality must be 'L' or 'R', got {laterality!r}")
    view = str(view).upper()
    if view not in VIEW_SCT:
        raise ValueError(f"view {view!r} is not one of {sorted(VIEW_SCT)}")
    arr = np.asarray(pixels)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"pixels must be a non-empty 2-D array, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"pixels must be unsigned integers, got {arr.dtype}")
    if not 1 <= bits_stored <= 16:
        raise ValueError(f"bits_stored must be 1..16, got {bits_stored}")
    max_value = 2 ** bits_stored - 1
    if int(arr.min()) < 0 or int(arr.max()) > max_value:
        raise ValueError(f"pixel values {int(arr.min())}..{int(arr.max())} do not fit bits_stored={bits_stored}")
    bits_allocated = 8 if bits_stored <= 8 else 16
    arr = arr.astype(np.uint8 if bits_allocated == 8 else np.uint16)
    ts = UID(str(transfer_syntax))
    if ts not in WRITABLE_TRANSFER_SYNTAXES:
        raise ValueError(f"transfer syntax {ts} ({ts.name}) cannot be written here; "
                         f"use one of {sorted(t.name for t in WRITABLE_TRANSFER_SYNTAXES)}")
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ValueError(f"photometric must be MONOCHROME1 or MONOCHROME2, got {photometric!r}")
    for_presentation = presentation_intent == "FOR PRESENTATION"
    if presentation_intent not in ("FOR PRESENTATION", "FOR PROCESSING"):
        raise ValueError(f"presentation_intent must be FOR PRESENTATION or FOR PROCESSING, got {presentation_intent!r}")
    if voi is None and for_presentation:
        raise ValueError("a FOR PRESENTATION mammogram needs a VOI (voi='auto', a window or a LUT)")
    inverse = photometric == "MONOCHROME1"
    stored = (max_value - arr).astype(arr.dtype) if inverse else arr

    now = _dt.datetime.now()
    sop_class = MG_FOR_PRESENTATION if for_presentation else MG_FOR_PROCESSING
    sop_instance = new_source_uid()

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "MAMMOXAI_0_1"

    ds = Dataset()
    ds.file_meta = meta
    # SOP Common
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    # Patient
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "F"
    # General Study
    ds.StudyInstanceUID = study_instance_uid or new_source_uid()
    ds.StudyDate = now.strftime("%Y%m%d")
    ds.StudyTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.StudyDescription = "mammoxai synthetic phantom - not a patient"
    # General Series / DX Series / Mammography Series
    ds.Modality = "MG"
    ds.SeriesInstanceUID = series_instance_uid or new_source_uid()
    ds.SeriesNumber = 1
    ds.SeriesDescription = "synthetic phantom"
    ds.PresentationIntentType = presentation_intent
    # General Equipment
    ds.Manufacturer = "mammoxai phantom generator"  # not "mammoxai": phantoms are input, not our output
    ds.ManufacturerModelName = "synthetic phantom writer"
    ds.SoftwareVersions = "0.1"
    # General Image / DX Image / Mammography Image
    ds.InstanceNumber = instance_number
    ds.ContentDate = now.strftime("%Y%m%d")
    ds.ContentTime = now.strftime("%H%M%S")
    ds.AcquisitionDateTime = now.strftime("%Y%m%d%H%M%S")
    ds.ImageType = ["DERIVED", "PRIMARY", ""]
    ds.PatientOrientation = list(patient_orientation or conventional_patient_orientation(laterality, view))
    ds.BurnedInAnnotation = "NO"
    ds.RecognizableVisualFeatures = "NO"
    ds.PixelIntensityRelationship = "LIN"
    ds.PixelIntensityRelationshipSign = 1
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = "1"
    ds.RescaleType = "US"
    ds.PresentationLUTShape = "INVERSE" if inverse else "IDENTITY"
    ds.LossyImageCompression = "00"
    ds.QualityControlImage = "NO"
    ds.PositionerType = "MAMMOGRAPHIC"
    ds.OrganExposed = "BREAST"
    ds.BreastImplantPresent = "NO"
    ds.PartialView = "NO"
    # DX Anatomy Imaged
    ds.ImageLaterality = laterality
    ds.BodyPartExamined = "BREAST"
    ds.AnatomicRegionSequence = DicomSequence([_code("76752008", "SCT", "Breast")])
    code, meaning = VIEW_SCT[view]
    view_item = _code(code, "SCT", meaning)
    view_item.ViewModifierCodeSequence = DicomSequence()
    ds.ViewCodeSequence = DicomSequence([view_item])
    # DX Detector
    spacing = _ds_str(float(pixel_spacing_mm))
    ds.DetectorType = "DIRECT"
    ds.ImagerPixelSpacing = [spacing, spacing]
    ds.PixelSpacing = [spacing, spacing]
    ds.PixelSpacingCalibrationType = "GEOMETRY"
    ds.PixelSpacingCalibrationDescription = "synthetic: nominal spacing"
    ds.EstimatedRadiographicMagnificationFactor = "1"
    ds.DistanceSourceToDetector = "650"
    ds.DistanceSourceToPatient = "650"
    # Acquisition Context
    ds.AcquisitionContextSequence = DicomSequence()
    # Image Pixel
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.Rows, ds.Columns = int(arr.shape[0]), int(arr.shape[1])
    ds.BitsAllocated = bits_allocated
    ds.BitsStored = bits_stored
    ds.HighBit = bits_stored - 1
    ds.PixelRepresentation = 0
    # VOI LUT
    if voi is not None:
        if isinstance(voi, np.ndarray):
            table = np.asarray(voi)
            if table.ndim != 1 or table.size != max_value + 1:
                raise ValueError(f"a VOI LUT needs {max_value + 1} entries (one per stored value), got {table.shape}")
            if table.min() < 0 or table.max() > 65535:
                raise ValueError("VOI LUT entries must fit 16 bits")
            table = table.astype(np.uint16)
            if inverse:
                table = (65535 - table[::-1]).astype(np.uint16)
            item = Dataset()
            item.LUTDescriptor = [table.size if table.size < 65536 else 0, 0, 16]
            item.LUTExplanation = "synthetic VOI LUT"
            item.LUTData = [int(v) for v in table]
            item["LUTData"].VR = "US"   # unambiguous VR for US LUT data
            ds.VOILUTSequence = DicomSequence([item])
        else:
            windows = _windows(voi, arr)
            if not windows:
                raise ValueError("voi: empty list of windows")
            if inverse:
                shift = 1.0 if voi_function in ("LINEAR", None) else 0.0
                windows = [(max_value - c + shift, w) for c, w in windows]
            ds.WindowCenter = [_ds_str(c) for c, _ in windows] if len(windows) > 1 else _ds_str(windows[0][0])
            ds.WindowWidth = [_ds_str(w) for _, w in windows] if len(windows) > 1 else _ds_str(windows[0][1])
            ds.WindowCenterWidthExplanation = [f"window {i + 1}" for i in range(len(windows))] \
                if len(windows) > 1 else "synthetic window"
            if voi_function is not None:
                ds.VOILUTFunction = voi_function
    ds.PixelData = np.ascontiguousarray(stored).tobytes()

    if ts in (RLELossless, JPEGLSLossless, JPEGLSNearLossless, JPEG2000Lossless, JPEG2000):
        kwargs: dict[str, object] = {}
        if ts == JPEG2000:
            kwargs["j2k_cr"] = [float(lossy_ratio)]
        if ts == JPEGLSNearLossless:
            kwargs["jls_error"] = 2
        ds.compress(ts, np.ascontiguousarray(stored), **kwargs)
        if ts in _LOSSY:
            ds.LossyImageCompression = "01"
            ds.LossyImageCompressionMethod = _LOSSY[ts]
            ds.LossyImageCompressionRatio = _ds_str(float(lossy_ratio) if ts == JPEG2000 else 1.0)
    else:
        ds.file_meta.TransferSyntaxUID = ts
    if path is not None:
        ds.save_as(Path(path), enforce_file_format=True)
    return ds
