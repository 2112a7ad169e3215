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

    Non-finite values count as 0; an all-zero map stays all zero.
    """
    h = np.nan_to_num(np.asarray(heatmap, dtype=np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    if signed:
        scale = float(np.abs(h).max()) if h.size else 0.0
        return (h / scale).astype(np.float32) if scale > 0 else np.zeros_like(h)
    h = np.maximum(h, 0.0)
    scale = float(h.max()) if h.size else 0.0
    return (h / scale).astype(np.float32) if scale > 0 else np.zeros_like(h)


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


def blend(gray: np.ndarray, normalised: np.ndarray, *, signed: bool, lut: np.ndarray,
          alpha_max: float = ALPHA_MAX) -> np.ndarray:
    """RGB uint8 of a grey image in [0, 1] with a normalised map blended in (see the module docstring)."""
    if gray.shape != normalised.shape:
        raise ValueError(f"image {gray.shape} and map {normalised.shape} differ in shape")
    if signed:
        index = np.clip((normalised + 1.0) * 127.5, 0, 255).astype(np.uint8)
        alpha = alpha_max * np.abs(normalised)
    else:
        index = np.clip(normalised * 255.0, 0, 255).astype(np.uint8)
        alpha = alpha_max * np.clip(normalised, 0.0, 1.0)
    colour = lut[index].astype(np.float32)
    alpha = alpha[..., None].astype(np.float32)
    grey = (np.clip(gray, 0.0, 1.0) * 255.0).astype(np.float32)[..., None]
    return (grey * (1.0 - alpha) + colour * alpha + 0.5).astype(np.uint8)


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
    page = np.zeros((header + rows + footer, cols + strip, 3), dtype=np.uint8)
    page[:] = _BACKGROUND
    page[header:header + rows, :cols] = blend(gray, norm, signed=method_map.signed, lut=lut)
    bar_box = (cols + 8, header + 4, cols + strip - 4, header + int(rows * 0.6))
    font_size = max(9, int(strip * 0.13))
    _paint_bar(page, bar_box, lut=lut, font_size=font_size)
    image = Image.fromarray(page)
    draw = ImageDraw.Draw(image)
    title = f"mammoxai  {method_map.display_name}"
    view = _view_label(mammogram)
    if view:
        title += f"  ({view})"
    if "stability" in method_map.quality:   # split-half stability of a sampled map (1 = same map every run)
        title += f"  stability {method_map.quality['stability']:.2f}"
    _text(draw, (6, header * 0.08), title, int(header * 0.42), page.shape[1] - 12, bold=True)
    _draw_prediction(draw, result, header, page.shape[1] - 12)
    _label_bar(draw, bar_box, signed=method_map.signed, font_size=font_size)
    _footer(draw, page.shape[1], page.shape[0], footer, method_map.caution)
    return np.asarray(image)


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
    page = np.zeros((page_h, page_w, 3), dtype=np.uint8)
    gray = display_image(mammogram, (ph, pw))
    titles = []
    for i, m in enumerate(maps):
        r, c = divmod(i, ncols)
        y = header + r * (title_h + ph + gap) + title_h
        x = gap + c * (pw + gap)
        lut = colormap_lut(SIGNED_COLORMAP if m.signed else colormap)
        norm = normalise_map(resize(to_display(m.heatmap, mammogram), (ph, pw)), m.signed)
        page[y:y + ph, x:x + pw] = blend(gray, norm, signed=m.signed, lut=lut)
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
    image = Image.fromarray(page)
    draw = ImageDraw.Draw(image)
    for signed, box in boxes:
        _label_bar(draw, box, signed=signed, font_size=font_size)
    for x, y, title in titles:
        _text(draw, (x + 2, y + title_h * 0.1), title, int(title_h * 0.75), pw - 4, bold=True)
    title = "mammoxai  all explanations"
    view = _view_label(mammogram)
    if view:
        title += f"  ({view})"
    _text(draw, (6, header * 0.08), title, int(header * 0.42), page_w - 12, bold=True)
    _draw_prediction(draw, result, header, page_w - 12)
    cautions = sorted({m.caution for m in maps if m.caution})
    _footer(draw, page_w, page_h, footer, "* " + "; ".join(cautions) if cautions else "")
    return np.asarray(image)
