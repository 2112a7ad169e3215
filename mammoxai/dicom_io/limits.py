"""Bounds checked on a data set's header before any pixel decode or inflation, and the cheap validity checks.

One home for "what the node can decode without running out of memory", used twice: by the Storage SCP
before it answers Success (so that what it accepts is what the worker can process) and by the reader
before it decodes (so that a file that reached the spool another way is bounded too).

* :class:`DecodeLimits`: the decoded image cap (Rows x Columns x Samples per Pixel x Bits Allocated / 8
  x Number of Frames) and the inflated-size cap of Deflated Explicit VR Little Endian (PS3.5 A.5).
* :func:`inflate_bounded`: inflates a deflated data set in 1 MiB steps and stops at the cap, so a
  3 MB "deflate bomb" never becomes gigabytes of memory.
* :func:`read_header`: the header of a Part 10 file (values over 64 KiB left on disk), where its Pixel
  Data starts, its length, and the first fragment of encapsulated Pixel Data.
* :func:`check_image`: Rows/Columns/Bits Allocated present, the decoded size within the cap, a decoder
  installed for the transfer syntax, native Pixel Data long enough, and for encapsulated Pixel Data
  the first frame's own header (RLE segment table, JPEG SOF, JPEG 2000 SIZ) agreeing with the data set.

What these checks do not see (found only when the worker decodes, reported as a failed job): a corrupt
entropy-coded body behind a valid JPEG/JPEG 2000/RLE header, and frames after the first.
"""

from __future__ import annotations

import os
import struct
import tempfile
import zlib
from dataclasses import dataclass
from typing import IO, Any, BinaryIO

from pydicom.dataset import Dataset, FileDataset
from pydicom.filereader import _read_file_meta_info, read_dataset, read_preamble
from pydicom.tag import BaseTag
from pydicom.uid import UID, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian

from .errors import DicomReadError, UnsupportedTransferSyntaxError

MIB = 1024 * 1024
#: values longer than this stay on disk when a header is read (huge private tags cost no memory)
DEFER_BYTES = 64 * 1024
#: bytes of the first fragment read to check its codestream header
_FIRST_FRAGMENT_BYTES = 1 * MIB

_PIXEL_TAGS = {0x7FE00010, 0x7FE00008, 0x7FE00009}
_RLE = UID("1.2.840.10008.1.2.5")
_JPEG = {UID(u) for u in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.57",
                           "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81")}
_J2K = {UID(u) for u in ("1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.201",
                          "1.2.840.10008.1.2.4.202", "1.2.840.10008.1.2.4.203")}


class ImageTooLargeError(DicomReadError):
    """The header declares an image (or an inflated data set) larger than the configured cap."""


@dataclass(frozen=True)
class DecodeLimits:
    """Caps on what a data set may make the node allocate; checked on the header, before decoding."""

    max_pixel_bytes: int = 128 * MIB
    max_inflated_bytes: int = 512 * MIB

    @classmethod
    def from_settings(cls, node: Any) -> "DecodeLimits":
        """From ``node.max_pixel_data_mb`` / ``node.max_inflated_mb`` (a :class:`NodeSettings`)."""
        return cls(int(node.max_pixel_data_mb * MIB), int(node.max_inflated_mb * MIB))


DEFAULT_LIMITS = DecodeLimits()


def _int(ds: Dataset, keyword: str, default: int | None = None) -> int | None:
    value = ds.get(keyword, default)
    if value in (None, ""):
        return default
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def decoded_size(ds: Dataset) -> int:
    """Bytes the decoded Pixel Data takes: Rows x Columns x Samples x ceil(Bits Allocated / 8) x Frames."""
    rows, cols = _int(ds, "Rows", 0) or 0, _int(ds, "Columns", 0) or 0
    spp = _int(ds, "SamplesPerPixel", 1) or 1
    bits = _int(ds, "BitsAllocated", 0) or 0
    frames = _int(ds, "NumberOfFrames", 1) or 1
    return rows * cols * spp * max(1, -(-bits // 8)) * max(1, frames)


def native_length(ds: Dataset) -> int:
    """Bytes native (uncompressed) Pixel Data must hold (PS3.5 8.1.1; 1-bit data packed)."""
    rows, cols = _int(ds, "Rows", 0) or 0, _int(ds, "Columns", 0) or 0
    spp = _int(ds, "SamplesPerPixel", 1) or 1
    bits = _int(ds, "BitsAllocated", 0) or 0
    frames = max(1, _int(ds, "NumberOfFrames", 1) or 1)
    return -(-(rows * cols * spp * bits * frames) // 8)


def check_size(ds: Dataset, where: str, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Rows, Columns and Bits Allocated present and positive; the decoded size within ``limits``."""
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        value = _int(ds, keyword)
        if value is None or value <= 0:
            raise DicomReadError(f"{where}: {keyword} is missing, zero or not a number")
    frames = _int(ds, "NumberOfFrames", 1)
    if frames is None or frames < 0:
        raise DicomReadError(f"{where}: Number of Frames is not a positive number")
    size = decoded_size(ds)
    if size > limits.max_pixel_bytes:
        raise ImageTooLargeError(
            f"{where}: over node.max_pixel_data_mb ({limits.max_pixel_bytes / MIB:.0f} MiB): image of {ds.Rows} x "
            f"{ds.Columns} x {_int(ds, 'SamplesPerPixel', 1)} sample(s) x {ds.BitsAllocated} bit x {frames or 1} "
            f"frame(s) = {size / MIB:.0f} MiB decoded")


def inflate_bounded(src: IO[bytes], dst: IO[bytes], max_bytes: int, where: str, chunk: int = MIB) -> int:
    """Inflate the raw deflate stream ``src`` (PS3.5 A.5) into ``dst``; at most ``max_bytes``.

    Works in ``chunk``-sized steps, so memory stays bounded whatever the compression ratio.
    :class:`ImageTooLargeError` beyond ``max_bytes``; :class:`DicomReadError` for a corrupt stream.
    Returns the inflated size.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    try:
        while not inflater.eof:
            data = src.read(chunk)
            if not data:
                break
            while data:
                out = inflater.decompress(data, chunk)
                total += len(out)
                if total > max_bytes:
                    raise ImageTooLargeError(
                        f"{where}: over node.max_inflated_mb ({max_bytes / MIB:.0f} MiB): the deflated data set "
                        "inflates to more")
                dst.write(out)
                data = inflater.unconsumed_tail
                if inflater.eof:
                    break
        out = inflater.flush()
    except zlib.error as exc:
        raise DicomReadError(f"{where}: corrupt deflated data set ({exc})") from None
    total += len(out)
    if total > max_bytes:
        raise ImageTooLargeError(f"{where}: over node.max_inflated_mb ({max_bytes / MIB:.0f} MiB): the deflated data set "
                                 "inflates to more")
    dst.write(out)
    return total


@dataclass
class Header:
    """What :func:`read_header` found: the data set without Pixel Data, and where its Pixel Data is."""

    dataset: FileDataset
    pixel_length: int | None      # None: no Pixel Data; 0xFFFFFFFF: encapsulated
    pixel_bytes_available: int    # bytes in the file after the Pixel Data element header
    first_fragment: bytes | None  # encapsulated: the start of the first fragment after the offset table

    @property
    def encapsulated(self) -> bool:
        return self.pixel_length == 0xFFFFFFFF


def _stop_at_pixels(tag: BaseTag, vr: str | None, length: int) -> bool:
    return int(tag) in _PIXEL_TAGS


def _explicit_le(ts: UID | None) -> tuple[bool, bool]:
    """(is_implicit_VR, is_little_endian) of a data set's transfer syntax."""
    if ts is None or ts == UID("1.2.840.10008.1.2"):
        return True, True
    if ts == UID("1.2.840.10008.1.2.2"):
        return False, False
    return False, True


def _pixel_element(fp: BinaryIO, implicit: bool, little: bool) -> tuple[int | None, int]:
    """At the Pixel Data element (or end of file): (value length, offset of the value)."""
    start = fp.tell()
    head = fp.read(8)
    if len(head) < 8:
        return None, start
    endian = "<" if little else ">"
    if implicit:
        length = struct.unpack(endian + "L", head[4:8])[0]
        return length, start + 8
    vr = head[4:6]
    if vr in (b"OB", b"OW", b"OF", b"OD", b"OL", b"UN", b"OV", b"SQ", b"UT", b"UC", b"UR"):
        extra = fp.read(4)
        if len(extra) < 4:
            return None, start
        return struct.unpack(endian + "L", extra)[0], start + 12
    return struct.unpack(endian + "H", head[6:8])[0], start + 8


def first_fragment(fp: BinaryIO) -> bytes | None:
    """The start of the first fragment after the Basic Offset Table item (None when malformed)."""
    def item() -> int | None:
        raw = fp.read(8)
        if len(raw) < 8:
            return None
        if struct.unpack("<HH", raw[:4]) != (0xFFFE, 0xE000):
            return None
        return struct.unpack("<L", raw[4:8])[0]

    bot = item()
    if bot is None or bot == 0xFFFFFFFF:
        return None
    fp.seek(bot, os.SEEK_CUR)
    length = item()
    if length is None or length == 0xFFFFFFFF:
        return None
    return fp.read(min(length, _FIRST_FRAGMENT_BYTES))


def read_header(path: str | os.PathLike[str], where: str, limits: DecodeLimits = DEFAULT_LIMITS,
                scratch_dir: str | os.PathLike[str] | None = None) -> Header:
    """Read a Part 10 file's header, bounded: values over 64 KiB are left on disk, Pixel Data is not read.

    A Deflated Explicit VR Little Endian file is inflated in bounded steps into a temporary file in
    ``scratch_dir`` (deleted before returning), at most ``limits.max_inflated_bytes``.
    Raises :class:`DicomReadError` (or :class:`ImageTooLargeError`) for what cannot be parsed.
    """
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as raw:
            preamble = read_preamble(raw, False)
            meta = _read_file_meta_info(raw)
            ts = meta.get("TransferSyntaxUID")
            ts = UID(str(ts)) if ts else None
            if ts == DeflatedExplicitVRLittleEndian:
                with tempfile.TemporaryFile(dir=scratch_dir) as inflated:
                    size = inflate_bounded(raw, inflated, limits.max_inflated_bytes, where)
                    inflated.seek(0)
                    return _parse(inflated, size, preamble, meta, ts, False, True, str(path))
            implicit, little = _explicit_le(ts)
            start = raw.tell()
            size = os.fstat(raw.fileno()).st_size - start
            return _parse(raw, size + start, preamble, meta, ts, implicit, little, str(path))
    except DicomReadError:
        raise
    except InvalidDicomError as exc:
        raise DicomReadError(f"{where}: not a DICOM file ({str(exc).splitlines()[0]})") from None
    except (EOFError, OSError, ValueError, KeyError, TypeError, OverflowError, struct.error, NotImplementedError) as exc:
        raise DicomReadError(f"{where}: unreadable or truncated DICOM file ({type(exc).__name__}: "
                             f"{(str(exc).splitlines() or [''])[0]})") from None


def _parse(fp: BinaryIO, size: int, preamble: bytes | None, meta: Any, ts: UID | None, implicit: bool,
           little: bool, filename: str) -> Header:
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")   # pydicom warns about a truncated file; here that is an error
        try:
            # deferred values are read back from the file by name: only possible for an undeflated original
            defer = None if ts == DeflatedExplicitVRLittleEndian else DEFER_BYTES
            ds = read_dataset(fp, implicit, little, stop_when=_stop_at_pixels, defer_size=defer)
        except UserWarning as exc:
            raise DicomReadError(f"file {filename}: {str(exc).splitlines()[0]}") from None
    file_ds = FileDataset(filename, ds, preamble, meta, implicit, little)
    file_ds.set_original_encoding(implicit, little, ds._character_set)
    length, value_at = _pixel_element(fp, implicit, little)
    available = max(0, size - value_at) if length is not None else 0
    first = None
    if length == 0xFFFFFFFF:
        fp.seek(value_at)
        first = first_fragment(fp)
    return Header(file_ds, length, available, first)


def decoder_available(ts: UID) -> bool:
    """True when pydicom (with the installed plugins) can decode Pixel Data in ``ts``."""
    from pydicom.pixels import get_decoder

    try:
        return bool(get_decoder(ts).is_available)
    except NotImplementedError:
        return False


def check_transfer_syntax(ts: UID, where: str) -> None:
    """:class:`UnsupportedTransferSyntaxError` when no installed decoder reads Pixel Data in ``ts``."""
    ts = UID(str(ts))
    if not decoder_available(ts):
        name = f" ({ts.name})" if ts.is_valid and ts.name != str(ts) else ""
        raise UnsupportedTransferSyntaxError(f"{where}: no Pixel Data decoder installed for transfer syntax "
                                             f"{ts}{name}")


def check_first_frame(fragment: bytes | None, ts: UID, ds: Dataset, where: str) -> None:
    """The first frame's own header agrees with the data set (RLE segments, JPEG SOF, JPEG 2000 SIZ)."""
    ts = UID(str(ts))
    if fragment is None:
        raise DicomReadError(f"{where}: encapsulated Pixel Data without a readable first fragment")
    rows, cols = int(ds.Rows), int(ds.Columns)
    spp = _int(ds, "SamplesPerPixel", 1) or 1
    bits = int(ds.BitsAllocated)
    if ts == _RLE:
        if len(fragment) < 64:
            raise DicomReadError(f"{where}: RLE frame shorter than its 64-byte header")
        header = struct.unpack("<16L", fragment[:64])
        segments = header[0]
        expected = spp * max(1, -(-bits // 8))
        offsets = header[1:1 + segments]
        if segments != expected or any(o < 64 for o in offsets) or list(offsets) != sorted(offsets):
            raise DicomReadError(f"{where}: RLE header declares {segments} segment(s) at {list(offsets)}; "
                                 f"{spp} sample(s) of {bits} bit need {expected}")
    elif ts in _JPEG:
        from pydicom.pixels.utils import _get_jpg_parameters

        info = _get_jpg_parameters(fragment)
        if not info:
            raise DicomReadError(f"{where}: first frame is not a JPEG codestream (no SOI/SOF marker)")
        if (info["height"], info["width"]) != (rows, cols) or info["components"] != spp \
                or info["precision"] > bits:
            raise DicomReadError(
                f"{where}: JPEG frame is {info['height']} x {info['width']} x {info['components']}, "
                f"{info['precision']} bit; the data set says {rows} x {cols} x {spp}, {bits} bit allocated")
    elif ts in _J2K:
        offset = 0
        if fragment.startswith(b"\x00\x00\x00\x0C\x6A\x50\x20\x20"):
            raise DicomReadError(f"{where}: JP2 file format in Pixel Data (a raw JPEG 2000 codestream is required)")
        if fragment[offset:offset + 4] != b"\xff\x4f\xff\x51" or len(fragment) < 43:
            raise DicomReadError(f"{where}: first frame is not a JPEG 2000 codestream (no SOC/SIZ marker)")
        xsiz, ysiz, xo, yo = struct.unpack(">4L", fragment[8:24])
        csiz = struct.unpack(">H", fragment[40:42])[0]
        precision = (fragment[42] & 0x7F) + 1
        if (ysiz - yo, xsiz - xo) != (rows, cols) or csiz != spp or precision > bits:
            raise DicomReadError(
                f"{where}: JPEG 2000 frame is {ysiz - yo} x {xsiz - xo} x {csiz}, {precision} bit; the data set "
                f"says {rows} x {cols} x {spp}, {bits} bit allocated")


def check_values(ds: Dataset, where: str) -> None:
    """Every element value converts, and every DS/IS value is a number (pydicom keeps "abc" as text, and
    raises when it is converted later, e.g. to DICOM JSON); bulk values left on disk by
    :func:`read_header` are skipped. :class:`DicomReadError` names the element."""
    from pydicom.dataelem import RawDataElement

    for tag in list(ds.keys()):
        raw = ds.get_item(tag, keep_deferred=True)
        if isinstance(raw, RawDataElement) and raw.value is None and raw.length:
            continue    # deferred: longer than DEFER_BYTES, not converted here
        try:
            elem = ds[tag]
            value = elem.value
        except Exception as exc:  # noqa: BLE001 - any conversion failure is an invalid value
            raise DicomReadError(f"{where}: invalid value in {BaseTag(tag)}: {(str(exc).splitlines() or [''])[0]}") \
                from None
        if elem.VR in ("DS", "IS") and value not in (None, ""):
            # pydicom keeps an unparsable number as text; converting it later (e.g. to DICOM JSON) raises
            values = value if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue" else [value]
            bad = [v for v in values if v not in (None, "") and not isinstance(v, (int, float))]
            if bad:
                raise DicomReadError(f"{where}: invalid {elem.VR} value {str(bad[0])[:16]!r} in {BaseTag(tag)} "
                                     f"{elem.keyword}")
        if elem.VR == "SQ":
            for item in value or []:
                check_values(item, where)


def check_image(header: Header, where: str, limits: DecodeLimits = DEFAULT_LIMITS) -> None:
    """Every header-level check before the node answers Success for an image it will decode.

    Raises :class:`ImageTooLargeError` (over a cap), :class:`UnsupportedTransferSyntaxError` (no decoder)
    or :class:`DicomReadError` (missing/short/inconsistent Pixel Data).
    """
    ds = header.dataset
    check_values(ds, where)
    check_size(ds, where, limits)
    bits = int(ds.BitsAllocated)
    if bits not in (8, 16, 32):
        raise DicomReadError(f"{where}: Bits Allocated {bits} is not supported (8, 16, 32)")
    stored = _int(ds, "BitsStored", bits)
    if stored is None or not 1 <= stored <= bits:
        raise DicomReadError(f"{where}: Bits Stored {ds.get('BitsStored')} is not within 1..Bits Allocated {bits}")
    meta = getattr(ds, "file_meta", None)
    ts = UID(str(meta.TransferSyntaxUID)) if meta is not None and "TransferSyntaxUID" in meta \
        else ExplicitVRLittleEndian
    check_transfer_syntax(ts, where)
    if header.pixel_length is None:
        raise DicomReadError(f"{where}: no Pixel Data (7FE0,0010)")
    if header.encapsulated != ts.is_encapsulated:
        raise DicomReadError(f"{where}: Pixel Data is {'encapsulated' if header.encapsulated else 'native'} "
                             f"but the transfer syntax {ts.name} is {'encapsulated' if ts.is_encapsulated else 'native'}")
    if header.encapsulated:
        check_first_frame(header.first_fragment, ts, ds, where)
        return
    if header.pixel_length > header.pixel_bytes_available:
        raise DicomReadError(f"{where}: Pixel Data declares {header.pixel_length} bytes but the file holds "
                             f"{header.pixel_bytes_available} after it (truncated)")
    need = native_length(ds)
    have = header.pixel_length
    if have < need:
        raise DicomReadError(
            f"{where}: Pixel Data holds {have} bytes (declared {header.pixel_length}) but Rows {ds.Rows} x Columns "
            f"{ds.Columns} x Samples {_int(ds, 'SamplesPerPixel', 1)} x Bits Allocated {ds.BitsAllocated} x "
            f"Frames {_int(ds, 'NumberOfFrames', 1) or 1} need {need}")


__all__ = ["DEFAULT_LIMITS", "DecodeLimits", "Header", "ImageTooLargeError", "check_first_frame", "check_image",
           "check_size", "check_transfer_syntax", "check_values", "decoded_size", "first_fragment", "inflate_bounded",
           "native_length", "read_header"]
