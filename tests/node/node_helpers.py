"""Helpers for the node tests: synthetic images, free ports, polling, an in-process node, a real Orthanc."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from node_standin import StandInPipeline

from mammoxai.config import Settings
from mammoxai.node.orthanc import orthanc_environment

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

MG_PRESENTATION = "1.2.840.10008.5.1.4.1.1.1.2"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def free_port() -> int:
    """A TCP port free on loopback right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll(condition: Callable[[], Any], timeout: float = 30.0, interval: float = 0.05, what: str = "") -> Any:
    """Call ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what or condition}")
        time.sleep(interval)


def make_image(path: Path, study_uid: str | None = None, modality: str = "MG", sop_class: str = MG_PRESENTATION,
               size: int = 64, seed: int = 0, patient_id: str = "PID-SECRET-1") -> Dataset:
    """Write a small synthetic image (16-bit, MONOCHROME2, explicit VR LE) and return it."""
    rng = np.random.default_rng(seed)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientName = "Secret^Patient"
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19600101"
    ds.PatientSex = "F"
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = "A1"
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.Modality = modality
    ds.Manufacturer = "TestVendor"
    ds.Laterality = "L"
    ds.ImageLaterality = "L"
    ds.ViewPosition = "CC"
    ds.PatientOrientation = ["A", "R"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = ds.Columns = size
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = rng.integers(0, 4096, (size, size), dtype=np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return ds


def node_settings(tmp_path: Path, destination: dict[str, Any] | None = None, **node: Any) -> Settings:
    """Settings for a node on a free loopback port, spooling in ``tmp_path``, metrics off unless asked."""
    node = {"spool_dir": tmp_path / "spool", "port": free_port(), "http_port": 0,
            "disk_free_watermark_mb": 0, "study_quiet_seconds": 0.3, **node}
    dest = {"kind": "folder", "folder": tmp_path / "out", "backoff_initial_s": 0.2, "backoff_max_s": 1.0,
            "timeout_s": 10, **(destination or {})}
    return Settings(node=node, destination=dest)


@contextlib.contextmanager
def running_node(settings: Settings, pipeline: Any = None, **kwargs: Any) -> Iterator[Any]:
    """A started :class:`~mammoxai.node.server.Node` with the stand-in pipeline; stopped on exit."""
    from mammoxai.node.server import Node

    pipe = pipeline or StandInPipeline(settings)
    node = Node(settings, pipeline_factory=lambda s: pipe, **kwargs)
    node.start()
    try:
        yield node
    finally:
        node.stop(timeout=30)


# -- Orthanc -------------------------------------------------------------------------------------------
class OrthancServer:
    """A real Orthanc (Debian's /usr/sbin/Orthanc) on free loopback ports, configured by the shared template."""

    USER, PASSWORD = "mammoxai", "test-password"

    DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"

    def __init__(self, root: Path, node_port: int, node_ae: str = "MAMMOXAI", plugins: list[str] | None = None):
        from mammoxai.node.orthanc import write_orthanc_config

        self.root = root
        self.http_port = free_port()
        self.dicom_port = free_port()
        self.node_port = node_port
        self.node_ae = node_ae
        root.mkdir(parents=True, exist_ok=True)
        self.config_path = write_orthanc_config(
            root / "orthanc.json", storage_dir=root / "db", http_port=self.http_port, dicom_port=self.dicom_port,
            node_ae=node_ae, node_host="127.0.0.1", node_port=node_port,
            plugins=[self.DICOMWEB_PLUGIN] if plugins is None else plugins, stable_age=2,
            users={self.USER: self.PASSWORD})
        self.proc: subprocess.Popen | None = None
        self.log_path = root / "orthanc.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def start(self) -> None:
        import httpx

        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(["/usr/sbin/Orthanc", str(self.config_path)], stdout=log, stderr=log,
                                     env=orthanc_environment())

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"Orthanc exited: {self.log_path.read_text()[-2000:]}")
            try:
                return httpx.get(self.url + "/system", auth=(self.USER, self.PASSWORD), timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        poll(ready, 30, 0.1, "Orthanc to answer /system")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
        self.proc = None

    def client(self):
        import pyorthanc

        return pyorthanc.Orthanc(self.url, username=self.USER, password=self.PASSWORD)

    def clear(self) -> None:
        client = self.client()
        for pid in client.get_patients():
            client.delete_patients_id(pid)

    def upload(self, path: Path) -> str:
        """POST a file to /instances; returns the Orthanc instance id."""
        return self.client().post_instances(path.read_bytes())["ID"]

    def study_instances(self, study_uid: str) -> list[dict[str, Any]]:
        """Simplified tags of every instance of the study (empty when the study is unknown)."""
        client = self.client()
        found = client.post_tools_find({"Level": "Study", "Query": {"StudyInstanceUID": study_uid}})
        if not found:
            return []
        return [client.get_instances_id_simplified_tags(i["ID"]) for i in client.get_studies_id_instances(found[0])]


def orthanc_dest(orthanc: OrthancServer) -> dict[str, Any]:
    return {"kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port}


def write_toml(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    """A minimal TOML writer for flat settings sections (str, int, float, bool, list of str)."""
    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return json.dumps(str(v))
    lines = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{k} = {value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def node_process(config: Path, log_path: Path, delay_s: float = 0.0, extra_env: dict[str, str] | None = None,
                 args: list[str] | None = None) -> subprocess.Popen:
    """``python -m mammoxai.cli --config CONFIG serve`` with the stand-in pipeline, as a real subprocess."""
    env = dict(os.environ)
    env.update({"MAMMOXAI_PIPELINE_FACTORY": "node_standin:make_pipeline", "STANDIN_DELAY_S": str(delay_s),
                "PYTHONPATH": os.pathsep.join([str(HERE), str(REPO)])})
    env.update(extra_env or {})
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "mammoxai.cli", "--config", str(config), "serve", *(args or [])],
                            stdout=log, stderr=log, env=env, cwd=REPO)


def echo_ok(port: int, ae: str = "MAMMOXAI") -> bool:
    """True when a C-ECHO to 127.0.0.1:port succeeds (dcmtk echoscu)."""
    r = subprocess.run(["echoscu", "-to", "2", "-aec", ae, "127.0.0.1", str(port)], capture_output=True, timeout=20)
    return r.returncode == 0


def storescu_file(port: int, *files: Path, aet: str = "STORESCU", ae: str = "MAMMOXAI") -> subprocess.CompletedProcess:
    """dcmtk storescu of uncompressed files to 127.0.0.1:port."""
    return subprocess.run(["storescu", "-R", "-aet", aet, "-aec", ae, "127.0.0.1", str(port), *map(str, files)],
                          capture_output=True, text=True, timeout=60)
