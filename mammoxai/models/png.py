"""Read a grayscale PNG mammogram (8- or 16-bit) for offline use (``mammoxai explain file.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import MammoxaiError


class ImageLoadError(MammoxaiError, ValueError):
    """An image file cannot be used as a mammogram; the message names the file and the problem."""


def load_png(path: str | Path) -> np.ndarray:
    """Return the PNG's pixels as a 2-D array: uint8 for 8-bit, uint16 for 16-bit grayscale.

    The values are taken as MONOCHROME2 (bright = dense). Rejects, with
    :class:`ImageLoadError`, a missing or unreadable file, colour or
    grayscale+alpha images, and bit depths other than 8 or 16 (1/2/4-bit, palette).
    """
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise ImageLoadError(f"{path}: file not found")
    try:
        with Image.open(path) as img:
            if img.format != "PNG":
                raise ImageLoadError(f"{path}: not a PNG file (format {img.format})")
            mode = img.mode
            bit_depth = _png_bit_depth(path)
            if mode in ("RGB", "RGBA", "LA", "P", "PA", "CMYK", "YCbCr"):
                raise ImageLoadError(f"{path}: {mode} PNG; a mammogram must be single-channel grayscale (8 or 16 bit)")
            if bit_depth not in (8, 16):
                raise ImageLoadError(f"{path}: {bit_depth}-bit grayscale PNG; only 8- or 16-bit grayscale is accepted")
            arr = np.array(img)
    except UnidentifiedImageError:
        raise ImageLoadError(f"{path}: not a readable image file") from None
    except OSError as exc:
        raise ImageLoadError(f"{path}: cannot read PNG: {exc}") from None
    if arr.ndim != 2:
        raise ImageLoadError(f"{path}: expected a 2-D grayscale image, got shape {arr.shape}")
    return arr.astype(np.uint16 if bit_depth == 16 else np.uint8, copy=False)


def _png_bit_depth(path: Path) -> int:
    """Bit depth from the PNG IHDR chunk (byte 24 of the file)."""
    with open(path, "rb") as fh:
        header = fh.read(26)
    if len(header) < 26 or header[:8] != b"\x89PNG\r\n\x1a\n" or header[12:16] != b"IHDR":
        raise ImageLoadError(f"{path}: not a PNG file (bad signature)")
    return int(header[24])
