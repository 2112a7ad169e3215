"""Overlay rendering: normalisation, blending, colour maps, page layout, display flips."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from mammoxai.dicom_io import render
from mammoxai.dicom_io.results import MethodMap
from mammoxai.dicom_io.write_errors import DicomWriteError


def test_normalise_map_unsigned_and_signed():
    hm = np.array([[-2.0, 0.0], [1.0, 4.0]], np.float32)
    assert np.allclose(render.normalise_map(hm, signed=False), [[0, 0], [0.25, 1.0]])
    assert np.allclose(render.normalise_map(hm, signed=True), [[-0.5, 0], [0.25, 1.0]])
    assert not render.normalise_map(np.zeros((3, 3)), signed=False).any()
    assert np.isfinite(render.normalise_map(np.array([[np.nan, 1.0]]), signed=True)).all()


def test_blend_keeps_cold_pixels_grey_and_colours_hot_ones():
    gray = np.full((2, 2), 0.5, np.float32)
    norm = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)
    lut = render.colormap_lut("inferno")
    out = render.blend(gray, norm, signed=False, lut=lut)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert tuple(out[0, 0]) == (128, 128, 128)                         # zero attribution: untouched
    expected = (0.4 * 127.5 + 0.6 * lut[255].astype(float) + 0.5).astype(np.uint8)
    assert np.array_equal(out[0, 1], expected)
    signed = render.blend(gray, np.array([[-1.0, 1.0], [0, 0]], np.float32), signed=True,
                          lut=render.colormap_lut(render.SIGNED_COLORMAP))
    assert signed[0, 0, 2] > signed[0, 0, 0] and signed[0, 1, 0] > signed[0, 1, 2]   # blue vs red
    with pytest.raises(ValueError):
        render.blend(gray, np.zeros((3, 3), np.float32), signed=False, lut=lut)


def test_unknown_colormap_is_a_typed_error():
    with pytest.raises(DicomWriteError, match="not-a-map"):
        render.colormap_lut("not-a-map")


def test_resize_area_average():
    a = np.arange(16, dtype=np.float32).reshape(4, 4)
    small = render.resize(a, (2, 2))
    assert np.allclose(small, [[2.5, 4.5], [10.5, 12.5]])
    assert render.resize(a, (4, 4)) is not None and render.resize(a, (8, 8)).shape == (8, 8)


def test_overlay_page_layout_flip_and_disclaimer(phantom_l_cc, dw):
    rows, cols = phantom_l_cc.pixels.shape
    hm = np.zeros((rows, cols), np.float32)
    hm[100:140, 20:60] = 1.0                                   # near the stored left edge
    mm = MethodMap(method="gradcam", display_name="Grad-CAM", heatmap=hm, signed=False)
    result = dw.make_result((rows, cols), methods=("gradcam",))
    page = render.render_overlay(phantom_l_cc, mm, result, max_size=2048)
    header, footer, strip = render._margins(max(rows, cols))
    assert page.shape == (header + rows + footer, cols + strip, 3) and page.dtype == np.uint8
    image = page[header:header + rows, :cols].astype(int)
    hot = image[:, :, 0] - image[:, :, 2] > 40                 # inferno's hot colours are red/yellow
    assert hot[100:140, 20:60].mean() > 0.9 and hot.mean() < 0.05
    flipped = dataclasses.replace(phantom_l_cc, flip_horizontal=True)
    image = render.render_overlay(flipped, mm, result)[header:header + rows, :cols].astype(int)
    hot = image[:, :, 0] - image[:, :, 2] > 40
    assert hot[100:140, cols - 60:cols - 20].mean() > 0.9      # shown mirrored, like the mammogram
    footer_band = page[-footer:, : cols // 2]
    yellow = (footer_band[:, :, 0] > 200) & (footer_band[:, :, 1] > 150) & (footer_band[:, :, 2] < 80)
    assert yellow.sum() > 50                                   # NOT FOR DIAGNOSTIC USE burned in


def test_overlay_respects_max_size_and_montage_has_all_panels(real_lcc, dw):
    result = dw.make_result(real_lcc.pixels.shape)
    page = render.render_overlay(real_lcc, result.maps[0], result, max_size=1024)
    assert max(page.shape[:2]) <= 1024
    montage = render.render_montage(real_lcc, result, max_size=1024)
    assert max(montage.shape[:2]) <= 1024 and montage.shape[2] == 3
    with pytest.raises(DicomWriteError, match="shape"):
        bad = dataclasses.replace(result.maps[0], heatmap=np.zeros((5, 5), np.float32))
        render.render_overlay(real_lcc, bad, result)
    with pytest.raises(DicomWriteError, match="no maps"):
        render.render_montage(real_lcc, dataclasses.replace(result, maps=()))


def test_montage_of_a_small_source_is_no_larger_than_the_source(phantom_l_cc, dw):
    rows, cols = phantom_l_cc.pixels.shape
    assert max(rows, cols) < 2048
    result = dw.make_result((rows, cols))
    montage = render.render_montage(phantom_l_cc, result, max_size=2048)
    assert max(montage.shape[:2]) <= max(rows, cols)           # the PACS pays no more than the source's size
    assert max(render.render_montage(phantom_l_cc, result, max_size="original").shape[:2]) > max(rows, cols)


def test_a_caution_is_burned_into_the_footer(phantom_l_cc, dw):
    rows, cols = phantom_l_cc.pixels.shape
    result = dw.make_result((rows, cols), methods=("gradcam",))
    plain = result.maps[0]
    cautioned = dataclasses.replace(plain, caution="map fails model-randomisation check")
    footer = render._margins(max(rows, cols))[1]

    def warning_pixels(page):
        """How far right the yellow footer text reaches (the caution follows the disclaimer)."""
        band = page[-max(page.shape[0] * 6 // 100, 1):]
        columns = np.flatnonzero(((band[:, :, 0] > 200) & (band[:, :, 1] > 150) & (band[:, :, 2] < 80)).any(axis=0))
        return int(columns.max())

    a = render.render_overlay(phantom_l_cc, plain, result)
    b = render.render_overlay(phantom_l_cc, cautioned, result)
    assert np.array_equal(a[:-footer], b[:-footer])             # only the footer differs
    assert warning_pixels(b) > 1.5 * warning_pixels(a)
    montage_plain = render.render_montage(phantom_l_cc, dataclasses.replace(result, maps=(plain, plain)))
    montage_marked = render.render_montage(phantom_l_cc, dataclasses.replace(result, maps=(plain, cautioned)))
    assert warning_pixels(montage_marked) > 1.3 * warning_pixels(montage_plain)
