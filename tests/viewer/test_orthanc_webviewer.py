"""What the Orthanc Web Viewer 2.8 (Debian's orthanc-webviewer, a plugin of the test's Orthanc) shows.

It is an image viewer: it draws the source MG and the Secondary Captures, and nothing of the SR,
the SEG or the GSPS (it has no code for them). Asserted from the page's pixels, per series.
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydicom
import pytest
from viewer_harness import Orthanc, Study, coloured_fraction, lit_fraction

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]


@pytest.fixture
def tab(browser: object) -> Iterator[object]:
    context = browser.new_context(viewport={"width": 1000, "height": 800})
    page = context.new_page()
    yield page
    context.close()


def _rgb(tab) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(tab.screenshot())).convert("RGB"))


def _show_series(tab, orthanc: Orthanc, path: Path) -> np.ndarray:
    """Open the viewer on the series of ``path``; wait until it has loaded (network idle); its pixels."""
    header = pydicom.dcmread(path, stop_before_pixels=True)
    series = orthanc.series_id(str(header.SeriesInstanceUID))
    with tab.expect_console_message(lambda m: f"Displaying series: {series}" in m.text, timeout=60_000):
        tab.goto(f"{orthanc.url}/web-viewer/app/viewer.html?series={series}")
    tab.wait_for_load_state("networkidle", timeout=60_000)
    return _rgb(tab)


def _wait_drawn(tab, orthanc: Orthanc, path: Path, predicate, timeout_s: float = 30) -> np.ndarray:
    """:func:`_show_series`, then poll the pixels until ``predicate`` holds (drawing is asynchronous)."""
    rgb = _show_series(tab, orthanc, path)
    end = time.monotonic() + timeout_s
    while not predicate(rgb) and time.monotonic() < end:
        tab.wait_for_timeout(250)
        rgb = _rgb(tab)
    return rgb


def test_webviewer_draws_the_mg_and_every_sc(phantom_study: Study, orthanc_dicomweb: Orthanc, tab):
    mg = _wait_drawn(tab, orthanc_dicomweb, phantom_study.source, lambda rgb: lit_fraction(rgb) > 0.1)
    assert lit_fraction(mg) > 0.1 and coloured_fraction(mg) < 0.005, "the MG is not drawn (grey)"
    for sc in phantom_study.result_files("OT"):
        rgb = _wait_drawn(tab, orthanc_dicomweb, sc, lambda rgb: coloured_fraction(rgb) > 0.005)
        assert lit_fraction(rgb) > 0.1 and coloured_fraction(rgb) > 0.005, f"{sc.name}: the SC is not drawn"


@pytest.mark.parametrize("modality", ["SR", "SEG", "PR"])
def test_webviewer_shows_nothing_of_sr_seg_gsps(phantom_study: Study, orthanc_dicomweb: Orthanc, tab, modality):
    files = phantom_study.result_files(modality)
    assert files, f"the pipeline wrote no {modality}"
    rgb = _show_series(tab, orthanc_dicomweb, files[0])
    assert lit_fraction(rgb) < 0.05, f"the Orthanc Web Viewer now draws something for {modality}: update docs/viewer.md"
