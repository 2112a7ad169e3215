"""Rendering of explanation overlays for Secondary Capture: numpy blending, matplotlib colour maps, Pillow text.

No torch, no matplotlib figures: colour maps are read as 256-entry lookup
tables and everything is vectorised, so a 2048-pixel page of a 2600 × 4700
mammogram renders in a fraction of a second. The mammogram and its maps are
shown in *display* orientation (the :class:`Mammogram`'s flips applied).

Blending: an unsigned map is normalised by its positive maximum to [0, 1],
coloured with ``colormap`` (inferno by default) and blended with opacity
``ALPHA_MAX × value`` (cold parts stay transparent). A signed map is
normalised by its largest magnitude to [-1, 1], coloured with the diverging
:data:`SIGNED_COLORMAP` centred at 0 (red = evidence for the predicted
class, blue = against) with opacity ``ALPHA_MAX × |value|``. Every page has a
colour bar with its legend, the method name, the prediction and
:data:`DISCLAIMER` burned in (bottom-left corner).
"""

from __future__ import annotations

import functools
import math
import os
import weakref

import matplotlib
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .mammogram import Mammogram
from .results import ImageResult, MethodMap
from .write_errors import DicomWriteError

DISCLAIMER = "NOT FOR DIAGNOSTIC USE"
#: burned in where the prediction is shown when the image is outside the checkpoint's domain record
OUT_OF_DOMAIN = "OUTSIDE THE MODEL'S VALIDATED DOMAIN"
SIGNED_COLORMAP = "RdBu_r"
ALPHA_MAX = 0.6
_BACKGROUND = (0, 0, 0)
_TEXT = (255, 255, 255)
_WARN = (255, 210, 0)


@functools.lru_cache(maxsize=16)
def colormap_lut(name: str) -> np.ndarray:
    """The ``(256, 3)`` uint8 RGB lookup table of a matplotlib colour map; unknown name → DicomWriteError."""
    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise DicomWriteError(f"output.colormap: {name!r} is not a matplotlib colour map") from None
    lut = (cmap(np.linspace(0.0, 1.0, 256))[:, :3] * 255.0).round().astype(np.uint8)
    lut.setflags(write=False)
    return lut


def normalise_map(heatmap: np.ndarray, signed: bool) -> np.ndarray:
    """float32 map in [0, 1] (unsigned: positive part / positive max) or [-1, 1] (signed: / max |value|).

    Non-finite values count as 0; an all-zero map stays all zero. The result is a new array.
    """
    h = np.asarray(heatmap, dtype=np.float32)
    if h.size == 0:
        return np.zeros_like(h)
    low, high = float(h.min()), float(h.max())
    if not (math.isfinite(low) and math.isfinite(high)):   # a NaN or an infinity somewhere: they count as 0
        h = np.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)
        low, high = float(h.min()), float(h.max())
    if signed:
        scale = max(-low, high)                          # the largest magnitude
        return h / scale if scale > 0 else np.zeros_like(h)
    if high <= 0:
        return np.zeros_like(h)
    out = np.maximum(h, 0.0)
    out /= high
    return out


def to_display(array: np.ndarray, mammogram: Mammogram) -> np.ndarray:
    """A stored-grid array flipped like :meth:`Mammogram.display_pixels`."""
    out = array
    if mammogram.flip_horizontal:
        out = out[:, ::-1]
    if mammogram.flip_vertical:
        out = out[::-1, :]
    return np.ascontiguousarray(out)


def resize(array: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """A 2-D float array resized to ``(rows, columns)``: area averaging when shrinking, bilinear when growing."""
    if array.shape == tuple(shape):
        return np.asarray(array, dtype=np.float32)
    rows, cols = shape
    method = Image.Resampling.BOX if rows <= array.shape[0] and cols <= array.shape[1] else Image.Resampling.BILINEAR
    img = Image.fromarray(np.ascontiguousarray(array, dtype=np.float32), mode="F")
    return np.asarray(img.resize((cols, rows), method), dtype=np.float32)


#: Rows blended at a time: a band's float32 temporaries (a few hundred kB) stay in the CPU cache.
_BLEND_ROWS = 64


def blend(gray: np.ndarray, normalised: np.ndarray, *, signed: bool, lut: np.ndarray,
          alpha_max: float = ALPHA_MAX, out: np.ndarray | None = None) -> np.ndarray:
    """RGB uint8 of a grey image in [0, 1] with a normalised map blended in (see the module docstring).

    Each channel is ``uint8(grey · (1 − α) + colour · α + 0.5)`` in float32, with grey = 255 · clip(gray, 0, 1),
    colour the LUT entry of the map value and α = ``alpha_max`` × its (positive or absolute) value. Computed
    in bands of :data:`_BLEND_ROWS` rows, one channel at a time, so that the temporaries stay in the cache
    (about 5 × faster than on whole arrays on a 2048-pixel page); every float operation is the one the
    whole-array formula does, so the pixels are the same to the bit
    (tests/dicom_write/test_write_speed_equivalence.py).
    ``out``: an ``(rows, columns, 3)`` uint8 array (e.g. a view into a page) to write into; returned.
    """
    if gray.shape != normalised.shape:
        raise ValueError(f"image {gray.shape} and map {normalised.shape} differ in shape")
    gray = np.asarray(gray, dtype=np.float32)
    normalised = np.asarray(normalised, dtype=np.float32)
    rows = gray.shape[0]
    if out is None:
        out = np.empty(gray.shape + (3,), dtype=np.uint8)
    elif out.shape != gray.shape + (3,) or out.dtype != np.uint8:
        raise ValueError(f"out must be uint8 {gray.shape + (3,)}, got {out.dtype} {out.shape}")
    channels = [np.ascontiguousarray(lut[:, c], dtype=np.float32) for c in range(3)]
    for r0 in range(0, rows, _BLEND_ROWS):
        band = normalised[r0:r0 + _BLEND_ROWS]
        if signed:
            position = band + 1.0
            position *= 127.5
            alpha = np.abs(band)
        else:
            position = band * 255.0
            alpha = np.clip(band, 0.0, 1.0)
        alpha *= alpha_max
        np.clip(position, 0, 255, out=position)
        index = position.astype(np.uint8)
        grey_part = 1.0 - alpha
        grey_part *= np.clip(gray[r0:r0 + _BLEND_ROWS], 0.0, 1.0) * 255.0
        for c, channel in enumerate(channels):
            value = np.take(channel, index)
            value *= alpha
            value += grey_part
            value += 0.5
            out[r0:r0 + _BLEND_ROWS, :, c] = value          # float32 -> uint8 truncates, like astype
    return out


#: (id of the pixel array, flips, shape) -> (weak reference to the array, its resized display image): the
#: overlays and the montage of one mammogram share it; the source array is not kept alive by the cache
_DISPLAY_CACHE: dict[tuple[int, bool, bool, tuple[int, int]], tuple[weakref.ref, np.ndarray]] = {}
_DISPLAY_CACHE_SIZE = 4


def display_image(mammogram: Mammogram, shape: tuple[int, int]) -> np.ndarray:
    """The mammogram in display orientation resized to ``shape`` (float32 in [0, 1], read-only), made once.

    An entry is reused only while its very pixel array is alive (checked by a weak reference).
    """
    key = (id(mammogram.pixels), bool(mammogram.flip_horizontal), bool(mammogram.flip_vertical), tuple(shape))
    hit = _DISPLAY_CACHE.get(key)
    if hit is not None and hit[0]() is mammogram.pixels:
        return hit[1]
    image = resize(mammogram.display_pixels(), shape)
    image.setflags(write=False)
    while len(_DISPLAY_CACHE) >= _DISPLAY_CACHE_SIZE:
        _DISPLAY_CACHE.pop(next(iter(_DISPLAY_CACHE)))
    _DISPLAY_CACHE[key] = (weakref.ref(mammogram.pixels), image)
    return image


# --- text --------------------------------------------------------------------------------------

def _font_path(bold: bool) -> str:
    name = "DejaVuSans-Bold.ttf" if bold else "DejaVuSans.ttf"
    return os.path.join(matplotlib.get_data_path(), "fonts", "ttf", name)


@functools.lru_cache(maxsize=64)
def _font(size: int, bold: bool = False) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    size = max(8, int(size))
    try:
        return ImageFont.truetype(_font_path(bold), size)
    except OSError:  # pragma: no cover - matplotlib always ships DejaVu
        return ImageFont.load_default(size)


def _fit_font(draw: ImageDraw.ImageDraw, text: str, size: int, max_width: int, bold: bool = False):
    font = _font(size, bold)
    while size > 8 and draw.textlength(text, font=font) > max_width:
        size -= 1
        font = _font(size, bold)
    return font


def _text(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int, max_width: int,
          fill=_TEXT, bold: bool = False, anchor: str = "la") -> None:
    draw.text(xy, text, font=_fit_font(draw, text, size, max(8, max_width), bold), fill=fill, anchor=anchor)


def _blank_page(height: int, width: int) -> np.ndarray:
    """An RGB uint8 page of :data:`_BACKGROUND`: one row painted, then copied down (assigning the colour
    tuple to the whole page broadcasts pixel by pixel, 20 ms on a 2048-pixel page)."""
    page = np.empty((height, width, 3), dtype=np.uint8)
    page[0] = _BACKGROUND
    page[1:] = page[0]
    return page


def _bar_geometry(box: tuple[int, int, int, int], font_size: int) -> tuple[int, int, int]:
    left, top, right, bottom = box
    return max(6, (right - left) // 4), top + int(font_size * 3.2), bottom


def _paint_bar(page: np.ndarray, box: tuple[int, int, int, int], *, lut: np.ndarray, font_size: int) -> None:
    """Paint a vertical colour ramp (maximum at the top) into ``page`` inside ``box`` = (l, t, r, b)."""
    bar_w, bar_top, bar_bottom = _bar_geometry(box, font_size)
    if bar_bottom - bar_top < 10:
        return
    ramp = np.linspace(255, 0, bar_bottom - bar_top).round().astype(np.uint8)
    page[bar_top:bar_bottom, box[0]:box[0] + bar_w] = lut[ramp][:, None, :]


def _label_bar(draw: ImageDraw.ImageDraw, box: tuple[int, int, int, int], *, signed: bool,
               font_size: int) -> None:
    """The legend above a colour bar and its tick labels."""
    left, top, right, _ = box
    width = right - left
    bar_w, bar_top, bar_bottom = _bar_geometry(box, font_size)
    if bar_bottom - bar_top < 10:
        return
    lines = ("signed", "attribution") if signed else ("relative", "attribution")
    for i, line in enumerate(lines):
        _text(draw, (left, top + i * font_size * 1.2), line, font_size, width)
    ticks = ("+max", "0", "-max") if signed else ("max", "0.5", "0")
    for label, frac in zip(ticks, (0.0, 0.5, 1.0)):
        y = bar_top + frac * (bar_bottom - bar_top - 1)
        draw.line([(left + bar_w, y), (left + bar_w + 4, y)], fill=_TEXT, width=1)
        _text(draw, (left + bar_w + 6, y), label, font_size, width - bar_w - 6, anchor="lm")


def _layout(rows: int, cols: int, max_size: int | str) -> tuple[int, int, int]:
    """(base, rows scaled, cols scaled): ``base`` sizes the margins; the page's long side stays ≤ max_size."""
    long_side = max(rows, cols)
    base = long_side if max_size == "original" else min(int(max_size), long_side)
    header, footer, strip = _margins(base)
    if max_size == "original":
        scale = 1.0
    else:
        limit = int(max_size)
        scale = min(1.0, (limit - header - footer) / rows, (limit - strip) / cols)
    return base, max(1, int(rows * scale)), max(1, int(cols * scale))


def _margins(base: int) -> tuple[int, int, int]:
    return max(36, round(base * 0.055)), max(18, round(base * 0.028)), max(70, round(base * 0.11))


def _prediction_line(result: ImageResult) -> str:
    return (f"Prediction: {result.predicted_class}    "
            f"P({result.positive_class}) = {result.malignancy_probability:.2f}"
            + (" (calibrated)" if result.calibrated else ""))


def prediction_text(result: ImageResult) -> tuple[str, bool]:
    """The header's prediction line and whether it is a caution (drawn bold, in the warning colour).

    An image outside the checkpoint's domain (``result.domain.in_domain`` False) gets
    :data:`OUT_OF_DOMAIN` in front of the prediction, or instead of it when the prediction is withheld.
    """
    out = result.domain is not None and not result.domain.in_domain
    if result.prediction_withheld:
        return f"{OUT_OF_DOMAIN}  -  prediction withheld", True
    if out:
        return f"{OUT_OF_DOMAIN}  -  {_prediction_line(result)}", True
    return _prediction_line(result), False


def _draw_prediction(draw: ImageDraw.ImageDraw, result: ImageResult, header: int, width: int) -> None:
    text, caution = prediction_text(result)
    _text(draw, (6, header * 0.55), text, int(header * 0.32), width, fill=_WARN if caution else _TEXT, bold=caution)


def _view_label(mammogram: Mammogram) -> str:
    return " ".join(v for v in (mammogram.laterality, mammogram.view) if v)


def _footer(draw: ImageDraw.ImageDraw, width: int, height: int, footer: int, caution: str = "") -> None:
    text = DISCLAIMER + (f"  -  {caution.upper()}" if caution else "")
    _text(draw, (6, height - footer / 2), text, int(footer * 0.7), width - 12, fill=_WARN, bold=True,
          anchor="lm")


class _OutsideBands(Exception):
    """A text or line would not lie inside one margin band: draw on the whole page instead."""


class _BandDraw:
    """The drawing calls the page helpers make (``text``, ``textlength``, ``line``), in page coordinates,
    done on copies of the page's margin bands only (header, footer, colour-bar strip, ...).

    Copying a whole page into Pillow and back costs two 11 MB copies (14 ms on a 2048-pixel page) for text
    that covers a few per cent of it. Each call is routed to the band that contains its bounding box
    (``textbbox``; a line's end points) whole, translated by the band's integer origin: Pillow draws the same
    pixels there (it positions a glyph by the integer and fractional parts of its anchor, which an integer
    shift of non-negative coordinates keeps). Anything not inside one band raises :class:`_OutsideBands`,
    and :func:`_annotate` draws the page the plain way.
    """

    def __init__(self, page: np.ndarray, boxes: list[tuple[int, int, int, int]]) -> None:
        self.page = page
        self.boxes = [b for b in boxes if b[2] > b[0] and b[3] > b[1]]
        self.images = [Image.fromarray(page[t:b, l:r]) for l, t, r, b in self.boxes]
        self.draws = [ImageDraw.Draw(image) for image in self.images]
        self.metrics = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def _band(self, left: float, top: float, right: float, bottom: float) -> int:
        """The band holding the box; a band side on the page's edge holds whatever lies beyond it (Pillow
        clips there on the whole page as on the band)."""
        height, width = self.page.shape[:2]
        for i, (l, t, r, b) in enumerate(self.boxes):
            if ((l == 0 or l <= left) and (t == 0 or t <= top) and (r == width or right <= r)
                    and (b == height or bottom <= b)):
                return i
        raise _OutsideBands

    def textlength(self, text: str, font) -> float:
        return self.metrics.textlength(text, font=font)

    def text(self, xy: tuple[float, float], text: str, *, font, fill, anchor: str = "la") -> None:
        if "\n" in text:                    # Pillow places the lines of a multi-line text by float arithmetic
            raise _OutsideBands
        i = self._band(*self.metrics.textbbox(xy, text, font=font, anchor=anchor))
        l, t = self.boxes[i][:2]
        if xy[0] < l or xy[1] < t:          # a negative shifted anchor would be truncated the other way
            raise _OutsideBands
        self.draws[i].text((xy[0] - l, xy[1] - t), text, font=font, fill=fill, anchor=anchor)

    def line(self, points: list[tuple[float, float]], *, fill, width: int = 1) -> None:
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        pad = width // 2                    # Pillow rounds the end points to pixels, then widens the line
        i = self._band(math.floor(min(xs)) - pad, math.floor(min(ys)) - pad,
                       math.ceil(max(xs)) + 1 + pad, math.ceil(max(ys)) + 1 + pad)
        l, t = self.boxes[i][:2]
        if min(xs) < l or min(ys) < t:
            raise _OutsideBands
        self.draws[i].line([(x - l, y - t) for x, y in points], fill=fill, width=width)

    def commit(self) -> None:
        for (l, t, r, b), image in zip(self.boxes, self.images):
            self.page[t:b, l:r] = np.asarray(image)


def _annotate(page: np.ndarray, bands: list[tuple[int, int, int, int]], paint) -> np.ndarray:
    """``paint(draw)`` (the page's text and lines) applied to ``page``: on its margin ``bands``
    ((left, top, right, bottom), disjoint) when everything lies inside them, else on the whole page
    (the same pixels either way; see :class:`_BandDraw`). Returns the page."""
    try:
        draw = _BandDraw(page, bands)
        paint(draw)
    except _OutsideBands:
        image = Image.fromarray(page)
        paint(ImageDraw.Draw(image))
        return np.asarray(image)
    draw.commit()
    return page


def render_overlay(mammogram: Mammogram, method_map: MethodMap, result: ImageResult, *,
                   colormap: str = "inferno", max_size: int | str = 2048) -> np.ndarray:
    """The SC page of one method: RGB uint8 ``(rows, columns, 3)``, long side ≤ ``max_size`` (or original).

    Layout: header (method, laterality/view, prediction), the blended image in
    display orientation, a colour bar strip on the right, and
    :data:`DISCLAIMER` in the bottom-left corner.
    """
    pixels = mammogram.pixels
    if method_map.heatmap.shape != pixels.shape:
        raise DicomWriteError(
            f"{mammogram.sop_instance_uid}: {method_map.method} map has shape {method_map.heatmap.shape}, "
            f"image has {pixels.shape}")
    base, rows, cols = _layout(*pixels.shape, max_size)
    header, footer, strip = _margins(base)
    gray = display_image(mammogram, (rows, cols))
    norm = normalise_map(resize(to_display(method_map.heatmap, mammogram), (rows, cols)), method_map.signed)
    lut = colormap_lut(SIGNED_COLORMAP if method_map.signed else colormap)
    page = _blank_page(header + rows + footer, cols + strip)
    blend(gray, norm, signed=method_map.signed, lut=lut, out=page[header:header + rows, :cols])
    bar_box = (cols + 8, header + 4, cols + strip - 4, header + int(rows * 0.6))
    font_size = max(9, int(strip * 0.13))
    _paint_bar(page, bar_box, lut=lut, font_size=font_size)
    title = f"mammoxai  {method_map.display_name}"
    view = _view_label(mammogram)
    if view:
        title += f"  ({view})"
    if "stability" in method_map.quality:   # split-half stability of a sampled map (1 = same map every run)
        title += f"  stability {method_map.quality['stability']:.2f}"
    height, width = page.shape[:2]

    def paint(draw) -> None:
        _text(draw, (6, header * 0.08), title, int(header * 0.42), width - 12, bold=True)
        _draw_prediction(draw, result, header, width - 12)
        _label_bar(draw, bar_box, signed=method_map.signed, font_size=font_size)
        _footer(draw, width, height, footer, method_map.caution)

    bands = [(0, 0, width, header), (cols, header, width, header + rows), (0, header + rows, width, height)]
    return _annotate(page, bands, paint)


def _grid(n: int, rows: int, cols: int) -> tuple[int, int]:
    """(grid rows, grid columns) whose page aspect is closest to 4:3 landscape."""
    best = (1, n)
    best_score = math.inf
    for ncols in range(1, n + 1):
        nrows = -(-n // ncols)
        aspect = (ncols * cols) / (nrows * rows)
        score = abs(math.log(aspect / (4 / 3))) + 0.15 * (nrows * ncols - n)
        if score < best_score:
            best, best_score = (nrows, ncols), score
    return best


def render_montage(mammogram: Mammogram, result: ImageResult, *, colormap: str = "inferno",
                   max_size: int | str = 2048) -> np.ndarray:
    """One page with a small panel (title + blended image) per map of ``result``; RGB uint8.

    Each panel is normalised on its own; the strip on the right holds the
    unsigned colour bar and, when a signed map is present, the diverging one.
    """
    maps = list(result.maps)
    if not maps:
        raise DicomWriteError(f"{mammogram.sop_instance_uid}: no maps to put in a montage")
    for m in maps:
        if m.heatmap.shape != mammogram.pixels.shape:
            raise DicomWriteError(f"{mammogram.sop_instance_uid}: {m.method} map has shape {m.heatmap.shape}, "
                                  f"image has {mammogram.pixels.shape}")
    h, w = mammogram.pixels.shape
    nrows, ncols = _grid(len(maps), h, w)
    # a page no larger than the source's long side: a small source's montage must not outweigh the source
    limit = (max(h, w) * max(nrows, ncols)) if max_size == "original" else min(int(max_size), max(h, w))
    base = limit
    header, footer, strip = _margins(base)
    gap = max(2, base // 400)
    title_h = max(14, round(base * 0.025))
    scale = min(1.0,
                (limit - strip - gap * (ncols + 1)) / (ncols * w),
                (limit - header - footer - nrows * (title_h + gap)) / (nrows * h))
    ph, pw = max(1, int(h * scale)), max(1, int(w * scale))
    page_h = header + nrows * (title_h + ph + gap) + footer
    page_w = ncols * (pw + gap) + gap + strip
    page = _blank_page(page_h, page_w)
    gray = display_image(mammogram, (ph, pw))
    titles = []
    for i, m in enumerate(maps):
        r, c = divmod(i, ncols)
        y = header + r * (title_h + ph + gap) + title_h
        x = gap + c * (pw + gap)
        lut = colormap_lut(SIGNED_COLORMAP if m.signed else colormap)
        norm = normalise_map(resize(to_display(m.heatmap, mammogram), (ph, pw)), m.signed)
        blend(gray, norm, signed=m.signed, lut=lut, out=page[y:y + ph, x:x + pw])
        titles.append((x, y - title_h, m.display_name + (" *" if m.caution else "")))
    font_size = max(9, int(strip * 0.13))
    bar_h = int((page_h - header - footer) * (0.45 if any(m.signed for m in maps) else 0.6))
    bars = [(False, header + 4)]
    if any(m.signed for m in maps):
        bars.append((True, header + 4 + bar_h + int(font_size * 2)))
    bar_left = page_w - strip + 8
    boxes = [(signed, (bar_left, top, page_w - 4, top + bar_h)) for signed, top in bars]
    for signed, box in boxes:
        _paint_bar(page, box, lut=colormap_lut(SIGNED_COLORMAP if signed else colormap), font_size=font_size)
    title = "mammoxai  all explanations"
    view = _view_label(mammogram)
    if view:
        title += f"  ({view})"
    cautions = sorted({m.caution for m in maps if m.caution})

    def paint(draw) -> None:
        for signed, box in boxes:
            _label_bar(draw, box, signed=signed, font_size=font_size)
        for x, y, panel_title in titles:
            _text(draw, (x + 2, y + title_h * 0.1), panel_title, int(title_h * 0.75), pw - 4, bold=True)
        _text(draw, (6, header * 0.08), title, int(header * 0.42), page_w - 12, bold=True)
        _draw_prediction(draw, result, header, page_w - 12)
        _footer(draw, page_w, page_h, footer, "* " + "; ".join(cautions) if cautions else "")

    title_rows = [header + r * (title_h + ph + gap) for r in range(nrows)]
    bands = ([(0, 0, page_w, header), (page_w - strip, header, page_w, page_h - footer),
              (0, page_h - footer, page_w, page_h)]
             + [(0, top, page_w - strip, top + title_h) for top in title_rows])
    return _annotate(page, bands, paint)
