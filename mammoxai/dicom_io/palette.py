"""The one palette of per-method colours: SEG segments (Recommended Display CIELab Value) and GSPS layers.

A method's colour is the entry at its place among the *drawn* maps of an image
(``result.maps`` after :func:`mammoxai.dicom_io.writers.drawable_maps`), so the
methods of one image get distinct colours and the SEG segment and GSPS layer of
one method agree. The SC overlays colour the *map values* with one colour map
for every method (``output.colormap``), so they take no entry from here.
Colours are stored as CIELab in DICOM (PS3.3 C.10.7.1.1); RGB here.
"""

from __future__ import annotations

import highdicom as hd

#: Yellow, cyan, magenta, green, orange, violet, red, lime: bright on a grey mammogram, distinct from each other.
METHOD_RGB: tuple[tuple[int, int, int], ...] = (
    (255, 220, 0), (0, 220, 255), (255, 0, 220), (0, 255, 80), (255, 140, 0), (160, 120, 255),
    (255, 80, 80), (200, 255, 120))


def method_rgb(order: int) -> tuple[int, int, int]:
    """The RGB colour of the drawn method at ``order`` (0-based; the palette repeats after 8)."""
    if order < 0:
        raise ValueError(f"method order must be >= 0, got {order}")
    return METHOD_RGB[order % len(METHOD_RGB)]


def method_cielab(order: int) -> hd.color.CIELabColor:
    """:func:`method_rgb` as the CIELab value DICOM stores (Recommended Display CIELab Value, Graphic Layer)."""
    return hd.color.CIELabColor.from_rgb(*method_rgb(order))
