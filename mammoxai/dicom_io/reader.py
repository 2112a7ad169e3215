"""Read a mammogram (file or dataset) into a :class:`~mammoxai.dicom_io.mammogram.Mammogram`."""

from __future__ import annotations

import logging
import os
import warnings
from pathlib import Path

import io

from pydicom import dcmread
from pydicom.dataset import Dataset, FileDataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import Tag
from pydicom.uid import DeflatedExplicitVRLittleEndian

from .classify import DatasetKind, classify_dataset
from .errors import DicomReadError, NotAMammogramError, UnsupportedMammogramError, describe_source
from .limits import DEFAULT_LIMITS, DecodeLimits, inflate_bounded
from .mammogram import Mammogram
from .read_orientation import chest_wall_on_right, display_flips, patient_orientation, read_laterality, read_view
from .pixels import presentation_values

log = logging.getLogger(__name__)

_PIXEL_DATA = Tag(0x7FE0, 0x0010)


def _read_deflated(path: Path, where: str, limits: DecodeLimits) -> Dataset | None:
    """The whole data set of a Deflated Explicit VR Little Endian file, inflated within
    ``limits.max_inflated_bytes`` (pydicom would inflate it whole, however large); None for other syntaxes."""
    with open(path, "rb") as raw:
        preamble = read_preamble(raw, False)
        meta = _read_file_meta_info(raw)
        if str(meta.get("TransferSyntaxUID", "")) != DeflatedExplicitVRLittleEndian:
            return None
        inflated = io.BytesIO()
        inflate_bounded(raw, inflated, limits.max_inflated_bytes, where)
    inflated.seek(0)
    ds = FileDataset(str(path), read_dataset(inflated, False, True), preamble, meta, False, True)
    ds.set_original_encoding(False, True, ds._character_set)
    return ds


def load_dataset(path: str | os.PathLike[str], limits: DecodeLimits = DEFAULT_LIMITS) -> Dataset:
    """Read a DICOM file whole; a missing, non-DICOM, empty or truncated file is a :class:`DicomReadError`.

    pydicom only warns about a file that ends early; here that is an error, so
    a half-received instance is never taken for a complete one. A deflated data
    set is inflated in bounded steps, at most ``limits.max_inflated_bytes``
    (:class:`~mammoxai.dicom_io.limits.ImageTooLargeError` beyond).
    """
    path = Path(path)
    where = f"file {path}"
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            ds = _read_deflated(path, where, limits) or dcmread(path)
        for w in caught:
            text = str(w.message)
            if "end of file" in text.lower() or "truncated" in text.lower():
                raise DicomReadError(f"{where}: truncated DICOM file ({text.splitlines()[0]})")
        if len(ds) == 0:
            raise DicomReadError(f"{where}: empty data set (truncated DICOM file?)")
        return ds
    except DicomReadError:
        raise
    except FileNotFoundError:
        raise DicomReadError(f"{where}: no such file") from None
    except IsADirectoryError:
        raise DicomReadError(f"{where}: is a directory") from None
    except InvalidDicomError as exc:
        raise DicomReadError(f"{where}: not a DICOM file ({str(exc).splitlines()[0]})") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise DicomReadError(f"{where}: unreadable or truncated DICOM file ({type(exc).__name__}: "
                             f"{(str(exc).splitlines() or [''])[0]})") from None


def _shallow_copy(ds: Dataset, keep_pixel_data: bool) -> Dataset:
    """A new Dataset sharing ``ds``'s elements (so the caller's dataset is never modified)."""
    out = Dataset({tag: ds[tag] for tag in ds.keys() if keep_pixel_data or tag != _PIXEL_DATA})
    meta = getattr(ds, "file_meta", None)
    if meta is not None:
        out.file_meta = FileMetaDataset({tag: meta[tag] for tag in meta.keys()})
    try:
        implicit, little = ds.original_encoding
        out.set_original_encoding(implicit, little, ds.original_character_set)
    except (AttributeError, TypeError, ValueError):
        pass
    for attr in ("preamble", "filename"):
        if getattr(ds, attr, None) is not None:
            setattr(out, attr, getattr(ds, attr))
    return out


def read_mammogram(source: str | os.PathLike[str] | Dataset, *, voi_window_index: int = 0,
                   keep_pixel_data: bool = False, prefer_voi_lut: bool = False,
                   guess_missing_orientation: bool = True, limits: DecodeLimits = DEFAULT_LIMITS) -> Mammogram:
    """Read a 2-D mammogram and return presentation values on the stored grid.

    ``source``: a path, or a dataset (e.g. from a C-STORE); a dataset is never modified.

    * Classification (header only, :func:`~mammoxai.dicom_io.classify.classify_dataset`):
      not a mammogram -> :class:`NotAMammogramError`; tomosynthesis, Breast Projection,
      multi-frame, colour -> :class:`UnsupportedMammogramError`.
    * Pixels: :func:`~mammoxai.dicom_io.pixels.presentation_values` (Modality LUT, VOI window
      ``voi_window_index`` or VOI LUT Sequence item ``voi_window_index``, MONOCHROME1 /
      Presentation LUT Shape polarity), float32 in [0, 1] on the stored grid.
    * Laterality / view: :mod:`mammoxai.dicom_io.read_orientation` (Image Laterality, Laterality,
      Patient Orientation; View Code Sequence, View Position, CBIS-DDSM one-valued Patient
      Orientation).
    * Flips from a two-valued Patient Orientation (0020,0020). Without one (e.g. CBIS-DDSM) and
      with ``guess_missing_orientation``, ``flip_horizontal`` comes from where the breast tissue
      is (:func:`~mammoxai.dicom_io.read_orientation.chest_wall_on_right`), ``flip_vertical`` is False.
      Field of View Horizontal Flip (0018,7034) is not used: it relates the image to the
      detector, while Patient Orientation (Type 1 in the Mammography Image module) already
      relates the stored grid to the patient.
    * ``dataset``: the header; Pixel Data is dropped unless ``keep_pixel_data``.
    * ``limits``: the decoded-size cap checked on the header before any decode
      (:class:`~mammoxai.dicom_io.limits.ImageTooLargeError`), and the inflated-size cap of a deflated file.

    Every failure is a :class:`DicomReadError` (or subclass) naming the SOP Instance UID and/or file.
    """
    if isinstance(source, Dataset):
        src = source
        filename = getattr(source, "filename", None)
        filename = str(filename) if isinstance(filename, (str, os.PathLike)) else None
    elif isinstance(source, (str, os.PathLike)):
        filename = str(source)
        src = load_dataset(source, limits)
    else:
        raise TypeError(f"read_mammogram: source must be a path or a pydicom Dataset, got {type(source).__name__}")

    uid = src.get("SOPInstanceUID")
    where = describe_source(str(uid) if uid else None, filename)

    if not src.get("SOPClassUID"):
        raise DicomReadError(f"{where}: no SOP Class UID (0008,0016) (truncated file, or not a composite instance)")
    verdict = classify_dataset(src)
    if verdict.kind is DatasetKind.NOT_MAMMOGRAM:
        raise NotAMammogramError(f"{where}: not a mammogram: {verdict.reason}")
    if verdict.kind is DatasetKind.UNSUPPORTED_MAMMOGRAM:
        raise UnsupportedMammogramError(f"{where}: unsupported mammogram: {verdict.reason}")

    work = _shallow_copy(src, keep_pixel_data=True)
    pixels = presentation_values(work, where, index=voi_window_index, prefer_voi_lut=prefer_voi_lut, limits=limits)
    header = work if keep_pixel_data else _shallow_copy(work, keep_pixel_data=False)

    laterality = read_laterality(src)
    view = read_view(src)
    flips = display_flips(patient_orientation(src), laterality, view)
    if flips is None:
        flip_h, flip_v = False, False
        if guess_missing_orientation and laterality in ("L", "R"):
            on_right = chest_wall_on_right(pixels)
            if on_right is not None:
                flip_h = on_right != (laterality == "R")
                log.debug("%s: no usable Patient Orientation; chest wall guessed on the %s", where,
                          "right" if on_right else "left")
    else:
        flip_h, flip_v = flips
    return Mammogram(dataset=header, pixels=pixels, laterality=laterality, view=view,
                     flip_horizontal=flip_h, flip_vertical=flip_v)


__all__ = ["read_mammogram", "DicomReadError", "NotAMammogramError", "UnsupportedMammogramError"]
