"""The Storage SCP: C-ECHO and C-STORE of every storage SOP class, streamed to the spool.

Each C-STORE is answered only after the instance is durable (fsync + atomic
rename into the spool, job committed to the queue):

- ``0x0000`` Success: stored and queued (or recorded as ignored: not a
  mammogram, or one of our own results — see :mod:`mammoxai.node.loop`);
- ``0xA700`` Refused, out of resources: free space on the spool below
  ``node.disk_free_watermark_mb``, or the dataset larger than ``node.max_dataset_mb``;
- ``0xC000`` Cannot understand: the data set cannot be parsed;
- ``0x0110`` Processing failure: anything else (logged; never a crash).

Security: allowed calling AE titles (A-ASSOCIATE-RJ "calling AE title not
recognised"), allowed source addresses (the TCP connection is closed before
any association; logged), optional DICOM TLS, ``node.max_associations``
(A-ASSOCIATE-RJ "local limit exceeded"), ``node.max_pdu_size``. Logs carry UIDs
only, unless ``node.log_phi``.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import AllTransferSyntaxes, UID
from pynetdicom import AE, _config, evt
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import ThreadedAssociationServer

from ..config import Settings
from ..dicom_io import MAMMOGRAM_CARRIER_SOP_CLASSES
from .loop import triage
from .queue import JobQueue
from .security import AddressFilter, server_context
from .spool import Spool

log = logging.getLogger(__name__)

# Stream every received data set to a temporary file instead of memory (pynetdicom >= 2.0).
_config.STORE_RECV_CHUNKED_DATASET = True

STATUS_SUCCESS = 0x0000
STATUS_OUT_OF_RESOURCES = 0xA700
STATUS_CANNOT_UNDERSTAND = 0xC000
STATUS_PROCESSING_FAILURE = 0x0110


def decodable_transfer_syntaxes() -> list[UID]:
    """Transfer syntaxes whose pixel data this installation can decode (pydicom + pylibjpeg plugins)."""
    from pydicom.pixels import get_decoder

    out = []
    for ts in AllTransferSyntaxes:
        try:
            if get_decoder(ts).is_available:
                out.append(UID(ts))
        except NotImplementedError:
            continue
    return sorted(out, key=_preference)


#: lossless compressed first (the file travels as stored, no conversion by the SCU), then uncompressed,
#: then lossy (accepted only when the SCU offers nothing else: the image is lossy already)
_LOSSLESS = ["1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.57",
             "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.201", "1.2.840.10008.1.2.4.202",
             "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99"]
_UNCOMPRESSED = ["1.2.840.10008.1.2.1", "1.2.840.10008.1.2", "1.2.840.10008.1.2.2"]


def _preference(uid: str) -> tuple[int, int]:
    if uid in _LOSSLESS:
        return 0, _LOSSLESS.index(uid)
    if uid in _UNCOMPRESSED:
        return 1, _UNCOMPRESSED.index(uid)
    return 2, 0


def storage_contexts() -> list[tuple[UID, list[UID]]]:
    """(SOP class, transfer syntaxes) the SCP accepts.

    Classes that may carry a mammogram accept the transfer syntaxes we can
    decode (an SCU then converts to one of them); every other storage class
    accepts every transfer syntax, since it is only recorded and ignored.
    """
    decodable = decodable_transfer_syntaxes()
    every = sorted((UID(ts) for ts in AllTransferSyntaxes), key=_preference)
    out = []
    for cx in AllStoragePresentationContexts:
        sop = UID(cx.abstract_syntax)
        mammo = sop in MAMMOGRAM_CARRIER_SOP_CLASSES
        out.append((sop, decodable if mammo else every))
    return out


class _FilteredServer(ThreadedAssociationServer):
    """The association server, closing connections from source addresses that are not allowed."""

    def __init__(self, *args: Any, address_filter: AddressFilter, **kwargs: Any) -> None:
        self.address_filter = address_filter
        super().__init__(*args, **kwargs)

    def verify_request(self, request: Any, client_address: Any) -> bool:  # socketserver hook
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if self.address_filter.allows(host):
            return True
        log.warning("rejected connection from %s: source address not in node.allowed_addresses", host)
        return False


class StorageSCP:
    """The node's Storage SCP; call :meth:`start` then :meth:`stop`.

    ``on_stored(job_id)`` is called after each instance queued for processing
    (the node wakes its workers with it).
    """

    def __init__(self, settings: Settings, spool: Spool, queue: JobQueue,
                 on_stored: Callable[[int], None] | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.node = settings.node
        self.spool = spool
        self.queue = queue
        self.on_stored = on_stored
        self.on_event = on_event or (lambda name: None)
        self._server: _FilteredServer | None = None
        self._thread: threading.Thread | None = None
        self.ae = AE(ae_title=self.node.ae_title)
        self.ae.maximum_associations = self.node.max_associations
        self.ae.maximum_pdu_size = self.node.max_pdu_size
        self.ae.require_calling_aet = list(self.node.allowed_calling_aes)
        self.ae.network_timeout = 120
        self.ae.dimse_timeout = 120
        self.ae.add_supported_context(Verification)
        for sop, syntaxes in storage_contexts():
            self.ae.add_supported_context(sop, syntaxes)

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> tuple[str, int]:
        """Bind ``node.host``:``node.port`` (0: a free port) and serve in a thread; returns the bound address."""
        handlers = [
            (evt.EVT_C_ECHO, self._on_echo),
            (evt.EVT_C_STORE, self._on_store),
            (evt.EVT_REJECTED, self._on_rejected),
            (evt.EVT_ACCEPTED, self._on_accepted),
        ]
        server = self.ae.make_server(
            (self.node.host, self.node.port), ssl_context=server_context(self.node.tls),
            evt_handlers=handlers, server_class=_FilteredServer,
            address_filter=AddressFilter(self.node.allowed_addresses))
        self.ae._servers.append(server)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="mammoxai-scp", daemon=True)
        self._thread.start()
        host, port = server.server_address[:2]
        log.info("storage SCP %s listening on %s:%s%s", self.node.ae_title, host, port,
                 " (TLS)" if self.node.tls.enabled else "")
        return host, port

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return int(self._server.server_address[1])

    def stop(self, timeout: float = 30.0) -> None:
        """Stop accepting associations, close the listening socket, and let those in progress finish.

        Associations still open after ``timeout`` seconds are aborted (their
        SCU sees no Success for the instance in transfer and sends it again).
        """
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        deadline = time.monotonic() + timeout
        for assoc in list(self.ae.active_associations):
            assoc.join(max(0.0, deadline - time.monotonic()))
            if assoc.is_alive():
                log.warning("aborting the association with %s at shutdown", assoc.requestor.ae_title)
                assoc.abort()
        if self._server in self.ae._servers:
            self.ae._servers.remove(self._server)
        self._server = None

    # -- handlers -------------------------------------------------------------------------------
    def _peer(self, event: evt.Event) -> str:
        r = event.assoc.requestor
        return f"{r.ae_title}@{r.address}"

    def _on_accepted(self, event: evt.Event) -> None:
        log.debug("association accepted from %s", self._peer(event))

    def _on_rejected(self, event: evt.Event) -> None:
        log.warning("association rejected from %s (calling AE not allowed or too many associations)",
                    self._peer(event))
        self.on_event("rejected")

    def _on_echo(self, event: evt.Event) -> int:
        log.info("C-ECHO from %s", self._peer(event))
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> int:
        started = time.perf_counter()
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        try:
            return self._store(event, uid, started)
        except Exception:
            log.exception("C-STORE of %s from %s failed", uid, self._peer(event))
            self.on_event("store_failed")
            return STATUS_PROCESSING_FAILURE

    def _store(self, event: evt.Event, uid: str, started: float) -> int:
        peer = self._peer(event)
        try:
            received = Path(event.dataset_path)
        except AttributeError:  # chunked receiving switched off elsewhere: write the bytes ourselves
            received = self.spool.write_bytes(self.spool.temp_path(".dcm"), event.encoded_dataset())
        size_mb = received.stat().st_size / (1024 * 1024)
        if size_mb > self.node.max_dataset_mb:
            log.warning("refused %s from %s: %.1f MB exceeds node.max_dataset_mb %.1f (A700)",
                        uid, peer, size_mb, self.node.max_dataset_mb)
            self.on_event("refused")
            return STATUS_OUT_OF_RESOURCES
        free = self.spool.free_mb()
        if free - size_mb < self.node.disk_free_watermark_mb:
            log.error("refused %s from %s: %.0f MB free on the spool, watermark %.0f MB (A700)",
                      uid, peer, free, self.node.disk_free_watermark_mb)
            self.on_event("refused")
            return STATUS_OUT_OF_RESOURCES
        try:
            header = pydicom.dcmread(received, stop_before_pixels=True)
            study = str(header.StudyInstanceUID)
            series = str(header.get("SeriesInstanceUID", ""))
            sop_class = str(header.SOPClassUID)
            if str(header.SOPInstanceUID) != uid:
                log.warning("%s: SOP Instance UID in the data set differs from the request's (%s)",
                            uid, header.SOPInstanceUID)
        except (InvalidDicomError, AttributeError, ValueError, KeyError, EOFError, OSError) as exc:
            log.error("cannot understand %s from %s: %s (C000)", uid, peer, exc)
            self.on_event("store_failed")
            return STATUS_CANNOT_UNDERSTAND
        phi = ""
        if self.node.log_phi:
            phi = f" patient={header.get('PatientID', '')}^{header.get('PatientName', '')}"
        calling = event.assoc.requestor.ae_title
        reason = triage(header, self.settings.output)
        elapsed = time.perf_counter() - started
        if reason is not None:
            job_id = self.queue.add_received(uid, sop_class, study, series, "", calling, elapsed,
                                             state="ignored", error=reason)
            log.info("job %d ignored: sop=%s study=%s from %s: %s%s", job_id, uid, study, peer, reason, phi)
            self.on_event("ignored")
            return STATUS_SUCCESS
        destination = self.spool.commit_file(received, self.spool.instance_path(uid))
        elapsed = time.perf_counter() - started
        job_id = self.queue.add_received(uid, sop_class, study, series, destination, calling, elapsed)
        log.info("job %d received: sop=%s study=%s class=%s from %s (%.1f MB, %.3f s)%s",
                 job_id, uid, study, UID(sop_class).name or sop_class, peer, size_mb, elapsed, phi)
        self.on_event("received")
        if self.on_stored is not None:
            self.on_stored(job_id)
        return STATUS_SUCCESS


def adopt_orphans(spool: Spool, queue: JobQueue) -> int:
    """Queue spooled instances that have no job (a crash between the file commit and the job commit).

    Their SCU got no Success and will send them again; adopting them means
    nothing durable is ever left behind either way. Returns how many were queued.
    """
    adopted = 0
    for path in sorted(spool.instances.glob("*.dcm")):
        uid = path.stem
        if queue.find(uid) is not None:
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
            queue.add_received(uid, str(header.SOPClassUID), str(header.StudyInstanceUID),
                               str(header.get("SeriesInstanceUID", "")), path, "", 0.0)
            adopted += 1
        except Exception as exc:  # noqa: BLE001 - an unreadable leftover is logged and kept for inspection
            log.error("cannot adopt %s left in the spool: %s", path.name, exc)
    return adopted
