"""Sending results: C-STORE SCU, DICOMweb STOW-RS or a folder (and the C-STORE / C-ECHO under ``mammoxai send`` /
``echo``, :mod:`mammoxai.commands`)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import threading
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

import pydicom
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from ..config import DestinationSettings, Settings, TlsSettings
from ..errors import MammoxaiError
from .security import client_context
from .sockets import REQUESTOR_HANDLERS

log = logging.getLogger(__name__)

_ADDRESS = re.compile(r"^(?P<ae>[^@]{1,16})@(?P<host>[^:@]+|\[[0-9a-fA-F:]+\]):(?P<port>\d{1,5})$")
_UNCOMPRESSED = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


class SendError(MammoxaiError):
    """Results could not be delivered (destination down, refused, or a non-success status)."""


@dataclass(frozen=True)
class Peer:
    """A DICOM application entity: AE title, host, port."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


def parse_peer(text: str) -> Peer:
    """Parse ``AE@HOST:PORT`` (IPv6 hosts in brackets); :class:`SendError` names the problem."""
    m = _ADDRESS.match(text.strip())
    if not m or not (1 <= int(m["port"]) <= 65535):
        raise SendError(f"{text!r}: expected AE@HOST:PORT, e.g. ORTHANC@127.0.0.1:4242")
    return Peer(m["ae"].strip(), m["host"].strip("[]"), int(m["port"]))


def _dicom_files(paths: Iterable[Path]) -> list[Path]:
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out += sorted(p for p in path.rglob("*") if p.is_file())
        elif path.is_file():
            out.append(path)
        else:
            raise SendError(f"{path}: no such file or folder")
    return out


def c_store(files: Sequence[Path], peer: Peer, calling_ae: str, tls: TlsSettings | None = None,
            timeout_s: float = 30.0, skip_non_dicom: bool = False) -> list[tuple[Path, int]]:
    """C-STORE ``files`` to ``peer`` over one association; returns (file, status) for each file sent.

    Each file is offered in its own transfer syntax plus the uncompressed ones,
    so compressed and deflated files go as they are when the peer accepts it.
    A peer that refuses the file's syntax gets it re-encoded, with its SOP
    Instance UID kept: a compressed file decompressed, a Deflated Explicit VR
    Little Endian file (mammoxai's hot-region SEG) in Explicit VR Little
    Endian (the same data set, only not deflated). Raises
    :class:`SendError` when the association cannot be made; a file that is not
    DICOM raises too unless ``skip_non_dicom``.
    """
    headers: list[tuple[Path, pydicom.Dataset]] = []
    for path in files:
        try:
            headers.append((path, pydicom.dcmread(path, stop_before_pixels=True)))
        except Exception as exc:
            if not skip_non_dicom:
                raise SendError(f"{path}: not a DICOM file: {exc}") from None
            log.warning("skipping %s: not a DICOM file", path)
    if not headers:
        return []
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    contexts: dict[tuple[str, str], None] = {}
    for _, ds in headers:
        sop = str(ds.SOPClassUID)
        ts = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
        for syntax in [ts] + [str(u) for u in _UNCOMPRESSED]:
            contexts.setdefault((sop, syntax), None)
    if len(contexts) > 128:
        raise SendError(f"{len(headers)} files need {len(contexts)} presentation contexts (at most 128); send fewer")
    for sop, syntax in contexts:
        ae.add_requested_context(sop, syntax)
    tls_args = None
    if tls is not None and tls.enabled:
        tls_args = (client_context(tls), None)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args,
                         evt_handlers=REQUESTOR_HANDLERS)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no connection"
        raise SendError(f"cannot associate with {peer}: {reason}")
    results: list[tuple[Path, int]] = []
    try:
        accepted = {(str(cx.abstract_syntax), str(cx.transfer_syntax[0])) for cx in assoc.accepted_contexts}
        for path, header in headers:
            ds = pydicom.dcmread(path)
            ts = str(ds.file_meta.get("TransferSyntaxUID", ExplicitVRLittleEndian))
            sop = str(header.SOPClassUID)
            if (sop, ts) not in accepted:
                if not any(a == sop for a, _ in accepted):
                    raise SendError(f"{path.name}: {peer} accepts no context for SOP class {UID(sop).name or sop}")
                if UID(ts).is_deflated:
                    # the data set was inflated on reading; sent in Explicit VR Little Endian as it is
                    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
                elif UID(ts).is_compressed:
                    try:
                        # the peer takes it uncompressed only; keep the SOP Instance UID (pydicom would
                        # mint a new one by default, and the archive would keep one copy per retry)
                        ds.decompress(generate_instance_uid=False)
                    except Exception as exc:
                        raise SendError(f"{path.name}: cannot decompress {UID(ts).name} for {peer}: {exc}") from None
            try:
                rsp = assoc.send_c_store(ds)
            except ValueError as exc:
                raise SendError(f"{path.name} to {peer}: {exc}") from None
            if not rsp or "Status" not in rsp:
                raise SendError(f"{path.name} to {peer}: no response (association aborted or timed out)")
            results.append((path, int(rsp.Status)))
    finally:
        if assoc.is_established:
            assoc.release()
    return results


def c_echo(peer: Peer, calling_ae: str, tls: TlsSettings | None = None, timeout_s: float = 10.0) -> int:
    """C-ECHO ``peer``; returns the status (0 is success). :class:`SendError` when no association."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = timeout_s
    ae.add_requested_context(Verification)
    tls_args = (client_context(tls), None) if tls is not None and tls.enabled else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args,
                         evt_handlers=REQUESTOR_HANDLERS)
    if not assoc.is_established:
        raise SendError(f"cannot associate with {peer}: {'rejected' if assoc.is_rejected else 'no connection'}")
    try:
        rsp = assoc.send_c_echo()
        if not rsp or "Status" not in rsp:
            raise SendError(f"C-ECHO {peer}: no response")
        return int(rsp.Status)
    finally:
        if assoc.is_established:
            assoc.release()


# -- destinations ---------------------------------------------------------------------------------
class Destination:
    """Where the node's results go; :meth:`send` delivers all files or raises :class:`SendError`."""

    def send(self, files: Sequence[Path]) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    def describe(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError


class TrackedDestination(Destination):
    """A destination that remembers since when its deliveries fail (for ``/healthz``).

    ``failing_since`` is the time of the first failed :meth:`send` after the last
    success (``None`` while the last send succeeded or none was tried yet).
    """

    def __init__(self, inner: Destination) -> None:
        self.inner = inner
        self.failing_since: float | None = None
        self.last_error = ""
        self._lock = threading.Lock()

    def send(self, files: Sequence[Path]) -> None:
        try:
            self.inner.send(files)
        except Exception as exc:
            with self._lock:
                if self.failing_since is None:
                    self.failing_since = time.time()
                self.last_error = str(exc)
            raise
        with self._lock:
            self.failing_since, self.last_error = None, ""

    def failing_for(self, now: float | None = None) -> float:
        """Seconds the destination has been failing (0 when it is not)."""
        with self._lock:
            since = self.failing_since
        return 0.0 if since is None else max(0.0, (time.time() if now is None else now) - since)

    def describe(self) -> str:
        return self.inner.describe()


class DicomDestination(Destination):
    """C-STORE SCU to ``destination.ae_title@host:port`` (TLS per ``destination.tls``)."""

    def __init__(self, destination: DestinationSettings, calling_ae: str) -> None:
        self.peer = Peer(destination.ae_title, destination.host, destination.port)
        self.calling_ae = destination.calling_ae_title or calling_ae
        self.tls = destination.tls
        self.timeout_s = destination.timeout_s

    def send(self, files: Sequence[Path]) -> None:
        results = c_store(files, self.peer, self.calling_ae, self.tls, self.timeout_s)
        bad = [(p.name, s) for p, s in results if s not in (0x0000, 0xB000, 0xB007, 0xB006)]
        if bad:
            raise SendError(f"{self.peer} refused {len(bad)} of {len(results)}: "
                            + ", ".join(f"{n} status 0x{s:04X}" for n, s in bad))

    def describe(self) -> str:
        return f"C-STORE {self.peer}"


class FolderDestination(Destination):
    """A folder: ``FOLDER/StudyInstanceUID/SeriesInstanceUID/SOPInstanceUID.dcm``, each file written atomically."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    def send(self, files: Sequence[Path]) -> None:
        try:
            for path in files:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
                target = self.folder / str(ds.StudyInstanceUID) / str(ds.SeriesInstanceUID)
                target.mkdir(parents=True, exist_ok=True)
                part = target / f".{uuid.uuid4().hex}.part"
                shutil.copyfile(path, part)
                with open(part, "rb") as fh:
                    os.fsync(fh.fileno())
                os.replace(part, target / f"{ds.SOPInstanceUID}.dcm")
        except OSError as exc:
            raise SendError(f"cannot write to {self.folder}: {exc}") from None

    def describe(self) -> str:
        return f"folder {self.folder}"


class DicomWebDestination(Destination):
    """DICOMweb STOW-RS to ``destination.url`` (dicomweb-client).

    HTTP basic credentials may be given in the URL (``http://user:password@host/dicom-web``);
    they are sent as an Authorization header and never logged.
    """

    def __init__(self, url: str, timeout_s: float = 30.0) -> None:
        parts = urlsplit(url.rstrip("/"))
        self.auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
        self.url = urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))
        self.timeout_s = timeout_s

    def send(self, files: Sequence[Path]) -> None:
        try:
            import requests
            from dicomweb_client.api import DICOMwebClient
        except ImportError:
            raise SendError("destination.kind = 'dicomweb' needs the dicomweb-client package") from None
        session = requests.Session()
        session.auth = self.auth
        try:
            client = DICOMwebClient(url=self.url, session=session, timeout=self.timeout_s)
            response = client.store_instances([pydicom.dcmread(p) for p in files])
        except Exception as exc:  # requests errors, HTTP errors
            raise SendError(f"STOW-RS to {self.url} failed: {type(exc).__name__}: {exc}") from None
        failed = response.get("FailedSOPSequence", None) if response is not None else None
        if failed:
            raise SendError(f"STOW-RS to {self.url}: {len(failed)} of {len(files)} instances failed")

    def describe(self) -> str:
        return f"STOW-RS {self.url}"


def make_destination(settings: Settings) -> Destination:
    """The destination configured in ``settings.destination``."""
    d = settings.destination
    if d.kind == "dicom":
        return DicomDestination(d, settings.node.ae_title)
    if d.kind == "dicomweb":
        return DicomWebDestination(str(d.url), d.timeout_s)
    return FolderDestination(d.folder)
