"""The fast paths of the write stage (issue 14) give what the straightforward code gave, to the bit.

Each faster function is compared with the plain formula or library call it replaces: the blend with the
whole-array float32 formula, the block sums with ``np.add.reduceat``, the polygon simplification with
scikit-image's, the SR with the one highdicom's constructor makes from the whole report, the FRACTIONAL
SEG frame with the levels highdicom stores. A change of numpy, highdicom or scikit-image that breaks one
of these equalities fails here.
"""

from __future__ import annotations

import subprocess
import sys

import highdicom as hd
import numpy as np
import pydicom
import pytest

from mammoxai.config.settings import OutputSettings
from mammoxai.dicom_io import identity as ids
from mammoxai.dicom_io import regions, render, seg, sr
from mammoxai.dicom_io.provenance import contributing_equipment
from mammoxai.dicom_io.write_errors import DicomWriteError
from mammoxai.dicom_io.writers import hot_regions

RNG_SEED = 20261204


def reference_blend(gray, normalised, *, signed, lut, alpha_max=render.ALPHA_MAX):
    """The blend formula on whole arrays (render.blend before issue 14)."""
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


@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("shape", [(1, 1), (63, 17), (64, 5), (200, 131)])   # bands of 64 rows: edges
def test_blend_equals_the_whole_array_formula(signed, shape):
    rng = np.random.default_rng(RNG_SEED)
    gray = rng.uniform(-0.1, 1.1, shape).astype(np.float32)            # clipped to [0, 1] by both
    norm = rng.uniform(-1.0 if signed else -0.2, 1.0, shape).astype(np.float32)
    norm.flat[: min(norm.size, 4)] = [0.0, 1.0, -1.0, 0.5][: min(norm.size, 4)]
    lut = render.colormap_lut(render.SIGNED_COLORMAP if signed else "inferno")
    expected = reference_blend(gray, norm, signed=signed, lut=lut)
    assert np.array_equal(render.blend(gray, norm, signed=signed, lut=lut), expected)
    page = np.full((shape[0] + 4, shape[1] + 6, 3), 7, np.uint8)
    render.blend(gray, norm, signed=signed, lut=lut, out=page[2:-2, 3:-3])   # into a view of a page
    assert np.array_equal(page[2:-2, 3:-3], expected) and (page[:2] == 7).all() and (page[:, :3] == 7).all()
    with pytest.raises(ValueError, match="out must be"):
        render.blend(gray, norm, signed=signed, lut=lut, out=np.zeros(shape + (4,), np.uint8))


def test_normalise_map_equals_the_nan_to_num_formula():
    rng = np.random.default_rng(RNG_SEED)
    hm = rng.standard_normal((50, 40)).astype(np.float32)
    hm[3, 4], hm[5, 6], hm[7, 8] = np.nan, np.inf, -np.inf
    for h in (hm, np.nan_to_num(hm), -np.abs(np.nan_to_num(hm))):
        clean = np.nan_to_num(h, nan=0.0, posinf=0.0, neginf=0.0)
        signed = clean / np.abs(clean).max()
        positive = np.maximum(clean, 0.0)
        unsigned = positive / positive.max() if positive.max() > 0 else np.zeros_like(positive)
        assert np.array_equal(render.normalise_map(h, signed=True), signed)
        assert np.array_equal(render.normalise_map(h, signed=False), unsigned)
    assert render.normalise_map(hm, signed=False) is not hm


def test_block_sums_equal_numpy_reduceat():
    """Numbers of every size (sums that are not exact in float64) and block sizes on both sides of 8, where
    numpy's pairwise summation changes its order."""
    rng = np.random.default_rng(RNG_SEED)
    for trial in range(150):
        factor = int(rng.integers(2, 24))
        h, w = int(rng.integers(1, 160)), int(rng.integers(1, 160))
        if trial % 3 == 0:
            arr = np.exp(rng.uniform(-80, 20, (h, w))).astype(np.float32)
        elif trial % 3 == 1:
            arr = np.maximum(rng.standard_normal((h, w)), 0).astype(np.float32) * np.float32(10) ** rng.integers(
                -30, 30, (h, w)).astype(np.float32)
        else:
            arr = rng.random((h, w), dtype=np.float32)
        expected = np.add.reduceat(np.add.reduceat(arr, np.arange(0, h, factor), axis=0, dtype=np.float64),
                                   np.arange(0, w, factor), axis=1)
        got = regions._block_sums(regions._block_sums(arr, factor, 0), factor, 1)
        assert got.dtype == np.float64 and np.array_equal(got, expected), (factor, h, w)


def test_approximate_polygon_is_scikit_images():
    from skimage.measure import approximate_polygon, find_contours

    rng = np.random.default_rng(RNG_SEED)
    for _ in range(20):
        blob = rng.random((40, 40)) > 0.55
        for contour in find_contours(np.pad(blob, 1).astype(np.float32), 0.5):
            for tolerance in (0.0, 0.5, 2.0):
                assert np.array_equal(regions.approximate_polygon(contour, tolerance),
                                      approximate_polygon(contour, tolerance))


def test_hot_regions_do_not_import_scipy_signal():
    """scikit-image's polygon module imports scipy.signal (1-2 s at the first image of a process)."""
    code = ("import sys, numpy as np; from mammoxai.dicom_io.regions import find_hot_regions; "
            "h = np.zeros((600, 500), np.float32); h[100:200, 50:90] = 1; "
            "assert len(find_hot_regions(h)) == 1; print('scipy.signal' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"


def test_fractional_frame_is_on_the_stored_levels(phantom_l_cc, dw):
    levels = np.arange(256, dtype=np.float32)
    snapped = levels / np.float32(255)
    assert np.array_equal(np.around(snapped * 255.0), levels)      # highdicom's cast gives each level back
    result = dw.make_result(phantom_l_cc.pixels.shape)
    for method_map in result.maps:
        frame = seg.fractional_map(method_map)
        exact = np.clip(render.normalise_map(method_map.heatmap, signed=False), 0.0, 1.0)
        assert frame.dtype == np.float32 and len(np.unique(frame)) <= 256
        assert np.array_equal(np.around(frame * 255.0), np.around(exact * 255.0))
    method_map = result.maps[0]
    written = seg.write_seg(phantom_l_cc, method_map, result, OutputSettings(),
                            identity=ids.image_output_identity(phantom_l_cc, "seg", 9100, method=method_map.method))
    stored = pydicom.dcmread(pydicom.filebase.DicomBytesIO(_encoded(written))).pixel_array
    exact = np.clip(render.normalise_map(method_map.heatmap, signed=False), 0.0, 1.0)
    assert np.array_equal(stored, np.around(exact * 255.0).astype(np.uint8))


def _encoded(ds) -> bytes:
    buffer = pydicom.filebase.DicomBytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _differences(a, b, path=""):
    """Element paths whose values differ (dates and times, which are 'now', are not compared)."""
    out = []
    for tag in sorted(set(a.keys()) ^ set(b.keys())):
        out.append(f"{path}{tag} in one only")
    for tag in sorted(set(a.keys()) & set(b.keys())):
        x, y = a[tag], b[tag]
        if x.VR in ("DA", "TM", "DT"):
            continue
        if x.VR == "SQ":
            if len(x.value) != len(y.value):
                out.append(f"{path}{x.keyword} length")
            else:
                for i, (p, q) in enumerate(zip(x.value, y.value)):
                    out += _differences(p, q, f"{path}{x.keyword}[{i}].")
        elif x.value != y.value or x.VR != y.VR:
            out.append(f"{path}{x.keyword}")
    return out


def test_sr_is_the_one_highdicoms_constructor_makes(phantom_l_cc, dw):
    result = dw.make_result(phantom_l_cc.pixels.shape, failures={"rise": "timed out"})
    output = OutputSettings()
    identity = ids.image_output_identity(phantom_l_cc, "sr", output.series_number_base)
    document = sr.write_sr(phantom_l_cc, result, output, hot_regions(result, output), identity=identity)
    report = document.content
    assert isinstance(report, hd.sr.MeasurementReport)
    assert report[0].ContentSequence is document.ContentSequence                    # one tree, not a copy
    assert len(report.get_planar_roi_measurement_groups()) > len(result.maps)
    reference = hd.sr.ComprehensiveSR(
        evidence=[phantom_l_cc.dataset], content=report, series_instance_uid=identity.series_instance_uid,
        series_number=identity.series_number, sop_instance_uid=identity.sop_instance_uid,
        instance_number=identity.instance_number, manufacturer=output.manufacturer, is_complete=True,
        is_final=False, is_verified=False, institution_name=output.institution_name,
        contributing_equipment=[contributing_equipment(result.algorithm, output.manufacturer,
                                                       output.institution_name)],
        series_description=identity.series_description)
    sr.finish(reference, phantom_l_cc.dataset, private_scheme=True)
    assert _differences(reference, document) == []
    assert _differences(reference.file_meta, document.file_meta) == []
    again = hd.sr.srread(pydicom.filebase.DicomBytesIO(_encoded(document)))
    assert len(again.content.get_planar_roi_measurement_groups()) == len(report.get_planar_roi_measurement_groups())


def test_sr_refuses_a_reference_outside_its_evidence(phantom_l_cc, dw):
    result = dw.make_result(phantom_l_cc.pixels.shape)
    output = OutputSettings()
    identity = ids.image_output_identity(phantom_l_cc, "sr", output.series_number_base)
    document = sr.write_sr(phantom_l_cc, result, output, hot_regions(result, output), identity=identity)
    sr._check_references(document.ContentSequence, {phantom_l_cc.sop_instance_uid})
    with pytest.raises(DicomWriteError, match="not one of its evidence"):
        sr._check_references(document.ContentSequence, {"1.2.3.4"})


def _pages(mammogram, result, max_size):
    pages = [render.render_overlay(mammogram, m, result, max_size=max_size) for m in result.maps]
    return pages + [render.render_montage(mammogram, result, max_size=max_size)]


@pytest.mark.parametrize("max_size", [2048, 300])
def test_text_on_margin_bands_equals_text_on_the_whole_page(phantom_l_cc, dw, monkeypatch, max_size):
    """Pages whose text is drawn on their margin bands (render._BandDraw) against the same pages drawn the
    plain way (whole page through Pillow), with a caution wider than the page, a withheld prediction and
    small pages (where some labels cross from one band into another: those pages are drawn the plain way)."""
    import dataclasses

    result = dw.make_result(phantom_l_cc.pixels.shape, methods=("gradcam", "saliency", "lrp"))
    result = dataclasses.replace(result, prediction_withheld=True, maps=(
        dataclasses.replace(result.maps[0], caution="a very long caution " * 6),) + result.maps[1:])
    banded = _pages(phantom_l_cc, result, max_size)

    def no_bands(self, page, boxes):
        raise render._OutsideBands

    monkeypatch.setattr(render._BandDraw, "__init__", no_bands)
    plain = _pages(phantom_l_cc, result, max_size)
    for a, b in zip(banded, plain):
        assert a.shape == b.shape and np.array_equal(a, b)


def test_full_size_pages_draw_their_text_on_the_margin_bands(dw, monkeypatch):
    mammogram = dw.mammogram_from_dataset(dw.phantom_dataset(1600, 1200), laterality="L", view="CC")
    result = dw.make_result(mammogram.pixels.shape, methods=("gradcam", "saliency", "lrp"))
    drawn_in_bands = []
    original_commit = render._BandDraw.commit
    monkeypatch.setattr(render._BandDraw, "commit", lambda self: (drawn_in_bands.append(1), original_commit(self)))
    pages = _pages(mammogram, result, 2048)
    assert len(drawn_in_bands) == len(pages) == 4
    monkeypatch.setattr(render._BandDraw, "__init__", lambda self, page, boxes: (_ for _ in ()).throw(
        render._OutsideBands()))
    for banded, plain in zip(pages, _pages(mammogram, result, 2048)):
        assert np.array_equal(banded, plain)
