"""Look at a study in OHIF by hand: what the viewer tests see, as screenshots and console lines.

    .venv/bin/python tests/viewer/ohif_look.py --phantom --open SR --open SEG --shots /tmp/ohif-look
    .venv/bin/python tests/viewer/ohif_look.py --source MG.dcm --results DIR --open "Grad-CAM"

``--phantom`` writes a phantom MG (without VOI LUT Function, see cornerstone3D #2844) and runs
``mammoxai explain --dicom`` on it; ``--source``/``--results`` upload existing files instead (every
``*.dcm`` under DIR). Each ``--open TEXT`` double-clicks the thumbnail whose description contains TEXT,
waits until the viewport stops changing, saves a screenshot and prints the viewport's text. At the end,
every distinct console error and warning is printed.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import pydicom  # noqa: E402

from viewer_harness import (CHROMIUM, CHROMIUM_ARGS, OhifPage, OhifServer, Orthanc, ohif_dist,  # noqa: E402
                            write_phantom_mg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--phantom", action="store_true", help="make a phantom and run explain --dicom on it")
    parser.add_argument("--explainers", default="gradcam,integrated_gradients")
    parser.add_argument("--source", type=Path)
    parser.add_argument("--results", type=Path)
    parser.add_argument("--open", action="append", default=[], metavar="TEXT")
    parser.add_argument("--shots", type=Path, default=Path(tempfile.gettempdir()) / "ohif-look")
    args = parser.parse_args(argv)
    from playwright.sync_api import sync_playwright

    work = Path(tempfile.mkdtemp(prefix="ohif-look-"))
    if args.phantom:
        args.source = write_phantom_mg(work / "phantom.dcm")
        subprocess.run([sys.executable, "-m", "mammoxai.cli", "explain", str(args.source), "--dicom",
                        "--explainers", args.explainers, "--out", str(work / "out")], check=True)
        args.results = work / "out"
    if args.source is None:
        parser.error("give --phantom or --source (and --results)")
    files = [args.source] + (sorted(args.results.rglob("*.dcm")) if args.results else [])
    orthanc = Orthanc(work / "orthanc")
    orthanc.start()
    try:
        for file in files:
            orthanc.upload(file)
        study = pydicom.dcmread(args.source, stop_before_pixels=True).StudyInstanceUID
        ohif = OhifServer(ohif_dist(), orthanc.url)
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
                page = OhifPage(browser, ohif.url)
                page.open_study(study)
                print("thumbnails:", page.thumbnails())
                print("saved", page.screenshot(args.shots / "0-opened.png"))
                for i, text in enumerate(args.open, 1):
                    page.open_series(text)
                    try:
                        page.wait_viewport_settled()
                    except Exception as exc:  # noqa: BLE001 - a look by hand reports and goes on
                        print(f"{text}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
                    print("saved", page.screenshot(args.shots / f"{i}-{text.replace(' ', '_')}.png"))
                    print(f"{text}: viewport text: {page.viewport_text()!r}")
                    print(f"{text}: panels: {page.panel_text()!r}"[:2000])
                seen: set[str] = set()
                for entry in page.console:
                    if entry.kind in ("error", "pageerror", "warning", "http") and str(entry) not in seen:
                        seen.add(str(entry))
                        print(entry)
                browser.close()
        finally:
            ohif.close()
    finally:
        orthanc.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
