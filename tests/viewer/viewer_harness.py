"""A real Orthanc + DICOMweb, the OHIF 3.x build from npm and Debian's Chromium, for the viewer tests.

* :class:`Orthanc`: Debian's ``/usr/sbin/Orthanc`` with its DICOMweb, Web Viewer and GDCM plugins on free
  loopback ports, no authentication (loopback only), storage in a temp folder, stopped by PID.
* :class:`OhifServer`: serves ``@ohif/app``'s built ``dist`` at the root of an origin (the build hard-codes
  PUBLIC_URL "/"; unknown paths fall back to ``index.html``), replaces ``/app-config.js`` with one DICOMweb
  data source, and forwards ``/dicom-web`` and ``/wado`` to Orthanc, so the page has one origin and no CORS.
* :class:`OhifPage`: a Playwright page on that origin, with helpers that wait on page conditions (never on
  fixed sleeps) and a record of every console error and uncaught exception.

The OHIF build is found in ``$MAMMOXAI_OHIF_DIST`` or ``.cache/ohif-<version>/package/dist`` (``make
ohif`` puts it there with ``npm pack``).
"""

from __future__ import annotations

import http.server
import io
import json
import mimetypes
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom

REPO = Path(__file__).resolve().parents[2]
OHIF_VERSION = "3.13.2"
CHROMIUM = "/usr/bin/chromium"
ORTHANC = "/usr/sbin/Orthanc"
PLUGINS = Path("/usr/share/orthanc/plugins")

#: Chromium flags: WebGL 2 through SwiftShader (cornerstone3D needs it; no GPU here), nothing phoning home.
CHROMIUM_ARGS = [
    "--no-sandbox", "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--ignore-gpu-blocklist",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run",
    "--disable-default-apps", "--disable-extensions",
]


def ohif_dist() -> Path:
    """The unpacked ``@ohif/app`` build (``dist`` with ``index.html``)."""
    env = os.environ.get("MAMMOXAI_OHIF_DIST")
    dist = Path(env) if env else REPO / ".cache" / f"ohif-{OHIF_VERSION}" / "package" / "dist"
    if not (dist / "index.html").is_file():
        raise FileNotFoundError(f"no OHIF build at {dist}: run `make ohif` (npm pack @ohif/app@{OHIF_VERSION}) "
                                f"or set MAMMOXAI_OHIF_DIST")
    return dist


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(condition: Any, timeout_s: float, what: str) -> None:
    """Poll ``condition()`` (a process that answers) until true; raise TimeoutError after ``timeout_s``."""
    end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > end:
            raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(0.1)


# --- Orthanc ---------------------------------------------------------------------------------------

@dataclass
class Orthanc:
    """A real Orthanc with DICOMweb on loopback; ``start()`` / ``stop()`` (SIGTERM by PID)."""

    root: Path
    # GDCM: Orthanc 1.10's own codecs cannot transcode JPEG 2000, which OHIF's whole-instance fetch of a SEG
    # needs (HTTP 500 otherwise); sites run Orthanc with it (docs/viewer.md says so).
    plugins: tuple[str, ...] = ("libOrthancDicomWeb.so", "libOrthancWebViewer.so", "libOrthancGdcm.so")
    http_port: int = field(default_factory=free_port)
    dicom_port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        storage = self.root / "storage"
        storage.mkdir(parents=True, exist_ok=True)
        config = {
            "Name": "mammoxai-viewer-test", "StorageDirectory": str(storage), "IndexDirectory": str(storage),
            "HttpPort": self.http_port, "DicomPort": self.dicom_port, "DicomAet": "ORTHANC",
            "RemoteAccessAllowed": False, "AuthenticationEnabled": False, "DicomCheckCalledAet": False,
            "DicomAlwaysAllowStore": True, "DicomModalities": {},
            "Plugins": [str(PLUGINS / p) for p in self.plugins],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True},
            "WebViewer": {"CachePath": str(storage / "webviewer-cache")},
        }
        path = self.root / "orthanc.json"
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        log = (self.root / "orthanc.log").open("ab")
        from mammoxai.node.orthanc import orthanc_environment

        self.proc = subprocess.Popen([ORTHANC, str(path)], stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                     env=orthanc_environment())

        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited: {(self.root / 'orthanc.log').read_text()[-2000:]}")
            try:
                plugins = self.get("/plugins")
            except OSError:
                return False
            return "dicom-web" in plugins

        wait_until(ready, 60, f"Orthanc on port {self.http_port}")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def series_id(self, series_instance_uid: str) -> str:
        """Orthanc's own identifier of a series, from its Series Instance UID."""
        request = urllib.request.Request(self.url + "/tools/lookup", data=series_instance_uid.encode(), method="POST")
        with urllib.request.urlopen(request, timeout=30) as response:
            found = [r["ID"] for r in json.loads(response.read()) if r["Type"] == "Series"]
        if not found:
            raise LookupError(f"Orthanc has no series {series_instance_uid}")
        return found[0]

    def upload(self, file: Path) -> dict[str, Any]:
        request = urllib.request.Request(self.url + "/instances", data=Path(file).read_bytes(), method="POST",
                                         headers={"Content-Type": "application/dicom"})
        with urllib.request.urlopen(request, timeout=60) as response:
            answer = json.loads(response.read())
        if answer.get("Status") not in ("Success", "AlreadyStored"):
            raise RuntimeError(f"Orthanc refused {file}: {answer}")
        return answer


@dataclass(frozen=True)
class Study:
    """A source MG and the result objects the pipeline wrote for it, all stored in the test's Orthanc."""

    study_uid: str
    source: Path
    results: tuple[Path, ...]
    methods: tuple[str, ...]          # display names of the methods, as the pipeline's report gives them
    report: dict

    def result_files(self, modality: str) -> list[Path]:
        return [p for p in self.results if pydicom.dcmread(p, stop_before_pixels=True).Modality == modality]


# --- OHIF, served with Orthanc's DICOMweb on one origin -------------------------------------------

OHIF_CONFIG = """window.config = {
  routerBasename: '/', extensions: [], modes: [], customizationService: {},
  showStudyList: true, maxNumberOfWebWorkers: 2, showWarningMessageForCrossOrigin: false,
  showCPUFallbackMessage: false, showLoadingIndicator: true, strictZSpacingForVolumeViewport: false,
  investigationalUseDialog: { option: 'never' },
  defaultDataSourceName: 'orthanc',
  dataSources: [{
    namespace: '@ohif/extension-default.dataSourcesModule.dicomweb',
    sourceName: 'orthanc',
    configuration: {
      friendlyName: 'Orthanc (mammoxai test)', name: 'orthanc',
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


class OhifServer:
    """OHIF's ``dist`` at ``http://127.0.0.1:<port>/``, ``/dicom-web`` and ``/wado`` forwarded to Orthanc."""

    def __init__(self, dist: Path, orthanc_url: str) -> None:
        self.dist = dist.resolve()
        self.orthanc_url = orthanc_url
        self.failures: list[str] = []      # 5xx answers forwarded from (or instead of) Orthanc
        mimetypes.add_type("application/wasm", ".wasm")
        mimetypes.add_type("text/javascript", ".js")
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, status: int, body: bytes, content_type: str) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                # cross-origin isolation: cornerstone3D's workers use SharedArrayBuffer
                self.send_header("Cross-Origin-Opener-Policy", "same-origin")
                self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
                self.send_header("Cross-Origin-Resource-Policy", "same-origin")
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                path = self.path.split("?", 1)[0]
                if path.startswith(("/dicom-web/", "/wado")):
                    request = urllib.request.Request(server.orthanc_url + self.path,
                                                     headers={"Accept": self.headers.get("Accept", "*/*")})
                    try:
                        with urllib.request.urlopen(request, timeout=120) as response:
                            status, body = response.status, response.read()
                            kind = response.headers.get("Content-Type", "application/octet-stream")
                    except urllib.error.HTTPError as exc:
                        status, body, kind = exc.code, exc.read(), exc.headers.get("Content-Type", "text/plain")
                    except OSError as exc:       # Orthanc did not answer: say so instead of dropping the socket
                        status, body, kind = 502, f"proxy: {exc}".encode(), "text/plain"
                    if status >= 500:
                        server.failures.append(f"{status} GET {self.path}: {body[:200]!r}")
                    self._send(status, body, kind)
                    return
                if path == "/app-config.js":
                    self._send(200, OHIF_CONFIG.encode(), "text/javascript")
                    return
                file = (server.dist / path.lstrip("/")).resolve()
                if not file.is_file() or server.dist not in file.parents:
                    file = server.dist / "index.html"
                self._send(200, file.read_bytes(), mimetypes.guess_type(file.name)[0] or "application/octet-stream")

        class Server(http.server.ThreadingHTTPServer):
            # the default listen backlog (5) refuses connections when Chromium opens many at once on a busy
            # machine: OHIF then reports XMLHttpRequest / IMAGE_LOAD_ERROR failures that are not ours
            request_queue_size = 128
            daemon_threads = True

        self.httpd = Server(("127.0.0.1", 0), Handler)
        self.port = int(self.httpd.server_address[1])
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


# --- the page --------------------------------------------------------------------------------------

_JS_CLICK_TEXT = """(text) => { for (const el of document.querySelectorAll('button, [role=button], a')) {
  if ((el.textContent || '').trim() === text) { el.click(); return true; } } return false; }"""


@dataclass
class ConsoleEntry:
    kind: str
    text: str

    def __str__(self) -> str:
        return f"[{self.kind}] {self.text[:400]}"


class OhifPage:
    """One OHIF tab; ``errors`` holds every console error and uncaught exception since it opened."""

    def __init__(self, browser: Any, base_url: str, size: tuple[int, int] = (1400, 900)) -> None:
        self.context = browser.new_context(viewport={"width": size[0], "height": size[1]})
        self.page = self.context.new_page()
        self.base_url = base_url
        self.console: list[ConsoleEntry] = []
        self.page.on("console", lambda m: self.console.append(ConsoleEntry(m.type, m.text)))
        self.page.on("pageerror", lambda e: self.console.append(ConsoleEntry("pageerror", f"{e.name}: {e.message}")))
        self.page.on("requestfailed", lambda r: self.console.append(
            ConsoleEntry("http", f"failed {r.method} {r.url}: {r.failure}")))
        self.page.on("response", lambda r: r.status >= 400 and self.console.append(
            ConsoleEntry("http", f"{r.status} {r.request.method} {r.url} (Accept: {r.request.headers.get('accept')})")
        ))

    @property
    def errors(self) -> list[ConsoleEntry]:
        return [e for e in self.console if e.kind in ("error", "pageerror")]

    def close(self) -> None:
        self.context.close()

    def open_study(self, study_uid: str, timeout_ms: int = 90_000) -> None:
        """Open the viewer on a study; wait for the first drawn viewport and dismiss the tour and banner."""
        self.page.goto(f"{self.base_url}/viewer?StudyInstanceUIDs={study_uid}")
        self.page.wait_for_selector("[data-cy=viewport-pane] canvas", timeout=timeout_ms)
        self.page.wait_for_selector("[data-cy^=study-browser-thumbnail]", timeout=timeout_ms)
        for text in ("Skip all", "Confirm and hide"):
            self.page.evaluate(_JS_CLICK_TEXT, text)
        self.page.evaluate("() => { const b = document.querySelector('[data-cy=confirm-and-hide-button]');"
                           " if (b) b.click(); }")

    def thumbnails(self) -> list[str]:
        return self.page.evaluate("""() => Array.from(document.querySelectorAll('[data-cy^=study-browser-thumbnail]'))
            .map(el => (el.querySelector('[data-cy=series-description-label]') || el).textContent.trim())""")

    def open_series(self, description: str, timeout_ms: int = 60_000) -> None:
        """Double-click the study browser's thumbnail whose description contains ``description``."""
        thumb = self.page.locator("[data-cy^=study-browser-thumbnail]", has_text=description).first
        thumb.wait_for(timeout=timeout_ms)
        thumb.dblclick()

    def viewport_text(self) -> str:
        return self.page.evaluate("() => Array.from(document.querySelectorAll('[data-cy=viewport-pane]'))"
                                  ".map(e => e.innerText).join('\\n')")

    def panel_text(self) -> str:
        """The text of the side panels (study browser excluded): measurement and segmentation lists."""
        return self.page.evaluate("""() => Array.from(document.querySelectorAll('[data-cy$=-panel], .ohif-scrollbar'))
            .map(e => e.innerText).join('\\n')""")

    def wait_viewport_settled(self, index: int = 0, timeout_s: float = 60) -> np.ndarray:
        """Poll the viewport's pixels until two looks 0.5 s apart are equal and something is lit."""
        end = time.monotonic() + timeout_s
        previous = None
        while time.monotonic() < end:
            rgb = self.viewport_rgb(index)
            if previous is not None and np.array_equal(previous, rgb) and lit_fraction(rgb) > 0.02:
                return rgb
            previous = rgb
            self.page.wait_for_timeout(500)
        raise TimeoutError(f"viewport {index} did not settle within {timeout_s:.0f} s")

    def viewport_rgb(self, index: int = 0) -> np.ndarray:
        """The pixels the user sees in viewport ``index`` (canvas plus SVG annotation layer), as RGB."""
        from PIL import Image

        pane = self.page.locator("[data-cy=viewport-pane]").nth(index)
        return np.asarray(Image.open(io.BytesIO(pane.screenshot())).convert("RGB"))

    def page_rgb(self) -> np.ndarray:
        """The whole tab as the user sees it, as RGB (CSS pixels: the context has device scale 1)."""
        from PIL import Image

        return np.asarray(Image.open(io.BytesIO(self.page.screenshot())).convert("RGB"))

    def wait_for_pixels(self, predicate: Any, timeout_s: float, what: str, grab: Any = None) -> np.ndarray:
        """Poll ``grab()`` (default: the first viewport's inside) until ``predicate(rgb)`` holds; the last look.

        Rendering is asynchronous (WebGL, web workers): this waits on what the user would see.
        """
        grab = grab or self.viewport_inside
        end = time.monotonic() + timeout_s
        while True:
            rgb = grab()
            if predicate(rgb):
                return rgb
            if time.monotonic() > end:
                raise TimeoutError(f"timed out after {timeout_s:.0f} s waiting for {what}")
            self.page.wait_for_timeout(250)

    def click_if_present(self, selector: str) -> bool:
        """Click the element if the page shows it (OHIF's optional prompts); True if clicked."""
        element = self.page.query_selector(selector)
        if element is None or not element.is_visible():
            return False
        element.click()
        return True

    def viewport_inside(self, index: int = 0, inset: int = 4) -> np.ndarray:
        """:meth:`viewport_rgb` without its outline (OHIF draws the active viewport's border in blue)."""
        return self.viewport_rgb(index)[inset:-inset, inset:-inset]

    def keep_screenshot(self, path: Path, max_width: int = 1000) -> Path:
        """A screenshot for the docs: the tab scaled to at most ``max_width`` pixels wide, RGB PNG.

        (A 256-colour palette would halve the bytes but shifts the MG's greys towards the overlay colours.)
        """
        from PIL import Image

        image = Image.open(io.BytesIO(self.page.screenshot())).convert("RGB")
        if image.width > max_width:
            image = image.resize((max_width, round(image.height * max_width / image.width)), Image.LANCZOS)
        path.parent.mkdir(parents=True, exist_ok=True)
        image.save(path, optimize=True)
        return path

    def screenshot(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(path))
        return path


def write_phantom_mg(path: Path, *, seed: int = 11, finding: str = "malignant_mass", laterality: str = "L",
                     view: str = "CC", shape: tuple[int, int] = (512, 416)) -> Path:
    """A phantom MG For Presentation without VOI LUT Function (0028,1056), which OHIF 3.13 cannot read."""
    from mammoxai.dicom_io import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    p = generate_phantom(seed, finding=finding, laterality=laterality, view=view, shape=shape)
    write_phantom_dicom(p.image, laterality=p.laterality, view=p.view, bits_stored=p.bits_stored, path=path,
                        voi_function=None)
    return path


def coloured_fraction(rgb: np.ndarray, min_chroma: int = 60) -> float:
    """Fraction of pixels whose max-min channel spread is at least ``min_chroma`` (grey MG pixels have 0)."""
    spread = rgb.max(axis=2).astype(int) - rgb.min(axis=2).astype(int)
    return float((spread >= min_chroma).mean())


def pixels_like(rgb: np.ndarray, colour: tuple[int, int, int], min_chroma: int = 40) -> int:
    """How many pixels are tinted towards ``colour`` (same hue direction; grey pixels never count).

    A segment blended over a grey MG moves each pixel along (colour - grey): compare the direction of
    each pixel's chroma vector (rgb minus its mean) with the colour's.
    """
    pixel = rgb.astype(float)
    chroma = pixel - pixel.mean(axis=2, keepdims=True)
    target = np.asarray(colour[:3], float)
    target = target - target.mean()
    norm = np.linalg.norm(chroma, axis=2) * (np.linalg.norm(target) or 1.0)
    cosine = (chroma @ target) / np.where(norm == 0, 1.0, norm)
    spread = rgb.max(axis=2).astype(int) - rgb.min(axis=2).astype(int)
    return int(((cosine > 0.9) & (spread >= min_chroma)).sum())


def lit_fraction(rgb: np.ndarray, level: int = 40) -> float:
    """Fraction of pixels brighter than ``level`` (an MG drawn in a viewport lights a good part of it)."""
    return float((rgb.mean(axis=2) > level).mean())
