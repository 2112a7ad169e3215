"""Stored pixel values -> presentation values in [0, 1] (PS3.3 C.11 grayscale pipeline).

Pipeline, all on the stored grid (Rows x Columns), float32:

1. **Decode** Pixel Data (pydicom 3 + pylibjpeg/pyjpegls decoders); Bits Stored and Pixel
   Representation (two's complement) are honoured by the decoder. Native data shorter than
   Rows x Columns x Bits Allocated says, unknown transfer syntaxes and missing decoders raise
   typed errors.
2. **Modality LUT** (C.11.1): Modality LUT Sequence (0028,3000) first item, else Rescale
   Slope/Intercept (0028,1053)/(0028,1052); none -> identity.
3. **VOI LUT** (C.11.2), one of:

   * Window Center/Width (0028,1050)/(0028,1051), value ``index`` (default first), with VOI
     LUT Function (0028,1056) ``LINEAR`` (default), ``LINEAR_EXACT`` or ``SIGMOID``
     (C.11.2.1.2/3), output range [0, 1];
   * VOI LUT Sequence (0028,3010) item ``index``: table look-up (values below the first
     mapped value take the first entry, above the last take the last), divided by
     2**(LUT Descriptor bits) - 1;
   * neither: the minimum..maximum of the modality values maps linearly onto [0, 1]
     (a constant image gives all zeros); padding pixels (below) do not count.

   When both a window and a VOI LUT Sequence are present the window is used unless
   ``prefer_voi_lut``. An invalid window (width < 1 for LINEAR, <= 0 otherwise) is skipped
   with a warning and the next VOI source is used.
4. **Polarity**: MONOCHROME1 is inverted (``1 - y``) whatever Presentation LUT Shape
   (2050,0020) says (INVERSE is the value the DX/MG modules require with MONOCHROME1;
   IDENTITY is defined "other than to account for Photometric Interpretation", C.11.6.1);
   MONOCHROME2 with Presentation LUT Shape INVERSE is inverted too. Result: 0 = black,
   1 = white = dense tissue.
5. **Padding**: pixels whose stored value is Pixel Padding Value (0028,0120) (or within it and
   Pixel Padding Range Limit (0028,0121)) are set to 0 (black, the background of a mammogram).
"""

from __future__ import annotations

import io
import logging
from struct import unpack_from

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import get_decoder
from pydicom.uid import UID, ExplicitVRLittleEndian

from .errors import DicomReadError, UnsupportedMammogramError, UnsupportedTransferSyntaxError
from .limits import DEFAULT_LIMITS, DecodeLimits, check_first_frame, check_size, first_fragment

log = logging.getLogger(__name__)


def _ts_of(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    ts = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(ts)) if ts else None


def transfer_syntax(ds: Dataset, where: str) -> UID:
    """The Transfer Syntax UID from the file meta; a dataset built in memory without one is taken
    as native (Explicit VR Little Endian) when its Pixel Data is not encapsulated."""
    ts = _ts_of(ds)
    if ts is not None:
        return ts
    elem = ds.get("PixelData")
    if elem is not None and isinstance(ds.PixelData, (bytes, bytearray)) and ds.PixelData[:4] == b"\xfe\xff\x00\xe0":
        raise DicomReadError(f"{where}: encapsulated Pixel Data but no Transfer Syntax UID (0002,0010)")
    return ExplicitVRLittleEndian


def decode_stored_values(ds: Dataset, where: str, limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """The stored values as a 2-D integer array (Rows, Columns), checked for the problems a
    mammography node meets: missing Rows/Columns/Pixel Data, short native data, colour,
    multi-frame, unknown transfer syntax or no decoder installed; and, before anything is
    decoded, the decoded size against ``limits`` and the first frame's own header (RLE
    segment table, JPEG SOF, JPEG 2000 SIZ) against the data set's."""
    if "PixelData" not in ds:
        raise DicomReadError(f"{where}: no Pixel Data (7FE0,0010) (truncated file?)")
    check_size(ds, where, limits)
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if spp != 1 or photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise UnsupportedMammogramError(
            f"{where}: Photometric Interpretation {photometric or '(none)'} with {spp} sample(s) per pixel; "
            "only MONOCHROME1/MONOCHROME2 grayscale mammograms are supported")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames > 1:
        raise UnsupportedMammogramError(f"{where}: multi-frame image ({frames} frames); only single-frame "
                                        "mammograms are supported")
    bits_allocated = int(ds.BitsAllocated)
    if bits_allocated not in (8, 16, 32):
        raise UnsupportedMammogramError(f"{where}: Bits Allocated {bits_allocated} is not supported (8, 16, 32)")
    bits_stored = int(ds.get("BitsStored", bits_allocated) or bits_allocated)
    if not 1 <= bits_stored <= bits_allocated:
        raise DicomReadError(f"{where}: Bits Stored {bits_stored} is not within 1..Bits Allocated {bits_allocated}")

    ts = transfer_syntax(ds, where)
    try:
        decoder = get_decoder(ts)
    except NotImplementedError:
        raise UnsupportedTransferSyntaxError(
            f"{where}: transfer syntax {ts}{' (' + ts.name + ')' if ts.is_valid and ts.name != str(ts) else ''} "
            "has no pixel data decoder") from None
    if not decoder.is_available:
        missing = "; ".join(f"{k}: {v}" for k, v in decoder.missing_dependencies.items()) \
            if isinstance(decoder.missing_dependencies, dict) else str(decoder.missing_dependencies)
        raise UnsupportedTransferSyntaxError(
            f"{where}: no decoder installed for transfer syntax {ts.name} ({ts}): {missing}")

    if ts.is_encapsulated:
        pixel_data = ds.PixelData
        check_first_frame(first_fragment(io.BytesIO(pixel_data)) if isinstance(pixel_data, (bytes, bytearray))
                          else None, ts, ds, where)
    else:
        expected = rows * cols * bits_allocated // 8
        got = len(ds.PixelData)
        if got < expected:
            raise DicomReadError(
                f"{where}: Pixel Data is {got} bytes but Rows {rows} x Columns {cols} x Bits Allocated "
                f"{bits_allocated} need {expected} (truncated?)")

    try:
        arr, _ = decoder.as_array(ds, index=0)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is a read error for the operator
        text = str(exc).splitlines()[0] if str(exc) else ""
        raise DicomReadError(f"{where}: cannot decode Pixel Data ({ts.name}): {type(exc).__name__}: {text}") from exc
    if arr.ndim != 2 or arr.shape != (rows, cols):
        raise DicomReadError(f"{where}: decoded Pixel Data has shape {arr.shape}, header says ({rows}, {cols})")
    return arr


def _lut_table(item: Dataset, ds: Dataset, where: str, name: str) -> tuple[np.ndarray, int, int]:
    """(table, first mapped value, bits per entry) of a Modality/VOI LUT Sequence item."""
    try:
        n_entries, first_map, bits = (int(v) for v in item.LUTDescriptor)
    except (AttributeError, TypeError, ValueError):
        raise DicomReadError(f"{where}: {name} item has no valid LUT Descriptor (0028,3002)") from None
    n_entries = n_entries or 65536
    if "LUTData" not in item:
        raise DicomReadError(f"{where}: {name} item has no LUT Data (0028,3006)")
    elem = item["LUTData"]
    if isinstance(elem.value, (bytes, bytearray)):
        little = True
        meta = getattr(ds, "file_meta", None)
        ts = meta.get("TransferSyntaxUID") if meta is not None else None
        if ts is not None and UID(str(ts)) == UID("1.2.840.10008.1.2.2"):
            little = False
        fmt = ("<" if little else ">") + ("H" if bits > 8 or len(elem.value) >= 2 * n_entries else "B")
        count = min(n_entries, len(elem.value) // (2 if fmt[1] == "H" else 1))
        values = np.asarray(unpack_from(f"{fmt[0]}{count}{fmt[1]}", elem.value), dtype=np.float32)
    else:
        raw = elem.value if isinstance(elem.value, (list, tuple)) or hasattr(elem.value, "__len__") else [elem.value]
        values = np.asarray(list(raw), dtype=np.float32)
    if values.size == 0:
        raise DicomReadError(f"{where}: {name} item has empty LUT Data")
    if first_map >= 32768 and int(ds.get("PixelRepresentation", 0) or 0) == 1:
        first_map -= 65536   # US-encoded negative first mapped value for signed data
    return values[:n_entries], first_map, bits


def _apply_table(x: np.ndarray, table: np.ndarray, first_map: int) -> np.ndarray:
    idx = np.rint(x - first_map)
    np.clip(idx, 0, table.size - 1, out=idx)
    return table[idx.astype(np.int64)]


def modality_values(stored: np.ndarray, ds: Dataset, where: str) -> np.ndarray:
    """Step 2: Modality LUT Sequence or Rescale Slope/Intercept, as float32."""
    seq = ds.get("ModalityLUTSequence")
    if seq:
        table, first_map, _ = _lut_table(seq[0], ds, where, "Modality LUT Sequence")
        return _apply_table(stored.astype(np.float32), table, first_map)
    out = stored.astype(np.float32)
    try:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    except (TypeError, ValueError):
        raise DicomReadError(f"{where}: Rescale Slope/Intercept are not numbers") from None
    if slope != 1.0:
        out *= np.float32(slope)
    if intercept != 0.0:
        out += np.float32(intercept)
    return out


def window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """VOI window of PS3.3 C.11.2.1.2 (LINEAR, LINEAR_EXACT) / C.11.2.1.3 (SIGMOID) with output
    range [0, 1]. Raises ValueError for a width the function does not allow."""
    function = (function or "LINEAR").strip().upper()
    if function == "LINEAR":
        if width < 1:
            raise ValueError(f"LINEAR window width {width} < 1")
        if width == 1:
            return (x > center - 0.5).astype(np.float32)
        y = (x - np.float32(center - 0.5)) / np.float32(width - 1) + np.float32(0.5)
    elif function == "LINEAR_EXACT":
        if width <= 0:
            raise ValueError(f"LINEAR_EXACT window width {width} <= 0")
        y = (x - np.float32(center)) / np.float32(width) + np.float32(0.5)
    elif function == "SIGMOID":
        if width <= 0:
            raise ValueError(f"SIGMOID window width {width} <= 0")
        return (1.0 / (1.0 + np.exp(-4.0 * (x - np.float32(center)) / np.float32(width)))).astype(np.float32)
    else:
        raise ValueError(f"VOI LUT Function {function!r} is not LINEAR, LINEAR_EXACT or SIGMOID")
    return np.clip(y, 0.0, 1.0, out=y).astype(np.float32, copy=False)


def _multi(ds: Dataset, keyword: str) -> list[float]:
    value = ds.get(keyword)
    if value is None or value == "":
        return []
    values = value if isinstance(value, (list, tuple)) or hasattr(value, "__iter__") and not isinstance(value, str) \
        else [value]
    return [float(v) for v in values]


def padding_mask(stored: np.ndarray, ds: Dataset) -> np.ndarray | None:
    """True where the stored value is Pixel Padding Value (0028,0120), or within it and Pixel
    Padding Range Limit (0028,0121) when that is present (PS3.3 C.7.5.1.1.2); None without padding."""
    value = ds.get("PixelPaddingValue")
    if value is None or value == "":
        return None
    value = int(value)
    limit = ds.get("PixelPaddingRangeLimit")
    if int(ds.get("PixelRepresentation", 0) or 0) == 1:
        bits = int(ds.get("BitsStored", 16) or 16)
        value = value - (1 << bits) if value >= (1 << (bits - 1)) else value
        if limit not in (None, ""):
            limit = int(limit) - (1 << bits) if int(limit) >= (1 << (bits - 1)) else int(limit)
    if limit in (None, ""):
        mask = stored == value
    else:
        lo, hi = sorted((value, int(limit)))
        mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def _minmax(x: np.ndarray, exclude: np.ndarray | None = None) -> np.ndarray:
    sample = x[~exclude] if exclude is not None and not exclude.all() else x
    lo, hi = float(sample.min()), float(sample.max())
    if hi <= lo:
        return np.zeros(x.shape, dtype=np.float32)
    return ((x - np.float32(lo)) / np.float32(hi - lo)).astype(np.float32, copy=False)


def voi_values(x: np.ndarray, ds: Dataset, where: str, *, index: int = 0, prefer_voi_lut: bool = False,
               padding: np.ndarray | None = None) -> np.ndarray:
    """Step 3: window / VOI LUT Sequence / min-max onto [0, 1] (see the module docstring)."""
    try:
        centers, widths = _multi(ds, "WindowCenter"), _multi(ds, "WindowWidth")
    except (TypeError, ValueError):
        log.warning("%s: Window Center/Width are not numbers; ignored", where)
        centers, widths = [], []
    luts = ds.get("VOILUTSequence") or []
    n_windows = min(len(centers), len(widths))
    if index < 0:
        raise DicomReadError(f"{where}: VOI index {index} is negative")

    def from_window() -> np.ndarray | None:
        if n_windows == 0:
            return None
        if index >= n_windows:
            raise DicomReadError(f"{where}: VOI window index {index} out of range ({n_windows} window(s))")
        functions = ds.get("VOILUTFunction", "LINEAR") or "LINEAR"
        try:
            return window(x, centers[index], widths[index], str(functions))
        except ValueError as exc:
            log.warning("%s: window %d ignored: %s", where, index, exc)
            return None

    def from_lut() -> np.ndarray | None:
        if not luts:
            return None
        if index >= len(luts):
            raise DicomReadError(f"{where}: VOI LUT index {index} out of range ({len(luts)} VOI LUT item(s))")
        table, first_map, bits = _lut_table(luts[index], ds, where, "VOI LUT Sequence")
        bits = bits if bits in range(8, 17) else 16
        y = _apply_table(x, table, first_map) / np.float32(2 ** bits - 1)
        return np.clip(y, 0.0, 1.0, out=y).astype(np.float32, copy=False)

    order = (from_lut, from_window) if prefer_voi_lut else (from_window, from_lut)
    for source in order:
        y = source()
        if y is not None:
            return y
    return np.clip(_minmax(x, padding), 0.0, 1.0)


def needs_inversion(ds: Dataset) -> bool:
    """Step 4: True for MONOCHROME1, or MONOCHROME2 with Presentation LUT Shape INVERSE."""
    photometric = str(ds.get("PhotometricInterpretation", "") or "").strip().upper()
    if photometric == "MONOCHROME1":
        return True
    shape = str(ds.get("PresentationLUTShape", "") or "").strip().upper()
    return shape == "INVERSE"


def presentation_values(ds: Dataset, where: str, *, index: int = 0, prefer_voi_lut: bool = False,
                        limits: DecodeLimits = DEFAULT_LIMITS) -> np.ndarray:
    """Steps 1-4: float32 (Rows, Columns) in [0, 1], higher = brighter (decode bounded by ``limits``)."""
    stored = decode_stored_values(ds, where, limits)
    padding = padding_mask(stored, ds)
    x = modality_values(stored, ds, where)
    del stored
    y = voi_values(x, ds, where, index=index, prefer_voi_lut=prefer_voi_lut, padding=padding)
    if needs_inversion(ds):
        np.subtract(np.float32(1.0), y, out=y)
    if padding is not None:
        y[padding] = 0.0
    return np.ascontiguousarray(y, dtype=np.float32)
