"""The Storage SCP: C-ECHO and C-STORE of every storage SOP class, streamed to the spool.

Each C-STORE is answered only after the instance is durable (fsync + atomic
rename into the spool, job committed to the queue):

- ``0x0000`` Success: stored and queued (or recorded as ignored: not a
  mammogram, or one of our own results — see :mod:`mammoxai.dicom_io.triage`). An image
  that will be processed passes :func:`mammoxai.dicom_io.limits.check_image` first
  (decoded size within ``node.max_pixel_data_mb``, a decoder for its transfer
  syntax, native Pixel Data long enough, the first frame's RLE/JPEG/JPEG 2000
  header agreeing with the data set), so Success means the worker can decode it;
- ``0xA700`` Refused, out of resources (with an Error Comment naming the limit): the
  data set over ``node.max_dataset_mb`` (counted while it arrives; the rest is
  discarded), the image over ``node.max_pixel_data_mb``, a deflated data set
  inflating past ``node.max_inflated_mb``, or the spool below
  ``node.disk_free_watermark_mb``;
- ``0xC000`` Cannot understand (with an Error Comment): the header cannot be parsed,
  Pixel Data missing, short or inconsistent with the header, no decoder;
- ``0x0110`` Processing failure: anything else (logged; never a crash).

Connections (:class:`NodeAssociationServer`): the source address
(``node.allowed_addresses``) and ``node.max_connections_per_peer`` are checked in
the accept loop; the TLS handshake and the wait for the A-ASSOCIATE-RQ run in the
connection's own thread, closed after ``node.connect_timeout_s`` (logged), so an
idle or slow client never blocks others nor takes one of ``node.max_associations``.
Associations: allowed calling AE titles, the called AE title must be
``node.ae_title`` (unless ``node.check_called_ae`` is false), both answered with
A-ASSOCIATE-RJ; a PDU longer than ``node.max_pdu_size`` gets an A-ABORT before its
body is read. Received data sets stream into the spool's ``tmp/`` (removed when an
association ends mid-transfer, and at start), never ``$TMPDIR``. Logs carry UIDs
only, unless ``node.log_phi``.
"""

from __future__ import annotations

import logging
import select
import socket
import ssl
import struct
import threading
import time
from copy import deepcopy
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, cast

import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.uid import AllTransferSyntaxes, UID
from pynetdicom import AE, _config, dimse_messages, evt
from pynetdicom._globals import MODE_ACCEPTOR
from pynetdicom.presentation import AllStoragePresentationContexts
from pynetdicom.sop_class import Verification
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from ..config import Settings
from ..dicom_io import MAMMOGRAM_CARRIER_SOP_CLASSES
from ..dicom_io.errors import DicomReadError
from ..dicom_io.limits import DecodeLimits, ImageTooLargeError, check_image, read_header
from ..dicom_io.triage import triage
from .jobstore import JobStore
from .security import AddressFilter, server_context
from .sockets import no_delay
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


#: PDUs other than P-DATA-TF (A-ASSOCIATE-RQ with many contexts is the largest real one) are capped at this
OTHER_PDU_BYTES = 1024 * 1024
#: P-DATA-TF cap when node.max_pdu_size is 0 ("unlimited" as advertised, never unbounded in memory)
UNLIMITED_PDU_BYTES = 64 * 1024 * 1024
#: A-ABORT PDU: source 2 (service provider), reason 6 (invalid PDU parameter value), PS3.8 9.3.8
_A_ABORT_INVALID_PDU = bytes([0x07, 0, 0, 0, 0, 4, 0, 0, 2, 6])


class _BoundedSocket(AssociationSocket):
    """The association's socket, refusing a PDU longer than the cap before reading its body.

    pynetdicom reads each PDU as a 6-byte header then ``recv(length)`` into memory, so a
    peer declaring a 4 GiB PDU would be buffered whole; here the header is checked first
    and the peer gets an A-ABORT (invalid PDU parameter value).
    """

    max_pdata_bytes = UNLIMITED_PDU_BYTES
    _expect_header = True

    def recv(self, nr_bytes: int) -> bytearray:
        if not self._expect_header:
            self._expect_header = True
            return super().recv(nr_bytes)
        data = super().recv(nr_bytes)
        if nr_bytes == 6 and len(data) == 6:
            self._expect_header = False
            pdu_type, length = data[0], struct.unpack(">L", bytes(data[2:6]))[0]
            cap = self.max_pdata_bytes if pdu_type == 0x04 else OTHER_PDU_BYTES
            if length > cap:
                peer = self.assoc.requestor
                log.warning("aborted the association with %s@%s: PDU type 0x%02X of %d bytes exceeds %d "
                            "(node.max_pdu_size)", peer.ae_title, peer.address, pdu_type, length, cap)
                raw = cast(socket.socket, self.socket)
                try:
                    raw.sendall(_A_ABORT_INVALID_PDU)
                    raw.shutdown(socket.SHUT_RDWR)   # nothing more is read from this peer
                except OSError:
                    pass
                if not self.assoc.is_established:
                    # the acceptor waits for an A-ASSOCIATE-RQ primitive that will never come: end the wait
                    self.assoc.dul.to_user_queue.put(None)
                self._expect_header = True
                return bytearray()   # the DUL sees "connection closed" (Evt17), its body is never read
        return data


class ReceivedFile:
    """Where pynetdicom streams a C-STORE's data set: a file in the spool's ``tmp/``, at most ``limit`` bytes.

    Past the limit the file is emptied and the rest of the data set is counted and discarded
    (the C-STORE is then refused with A700), so neither disk nor memory grows with it.
    Stands in for the ``NamedTemporaryFile`` pynetdicom would create in ``$TMPDIR``.
    """

    def __init__(self, path: Path, limit: int) -> None:
        self.name = str(path)
        self.limit = limit
        self.received = 0
        self.overflow = False
        self._fh = open(path, "wb")
        self.file = self

    def write(self, data: bytes) -> int:
        self.received += len(data)
        if not self.overflow and self.received > self.limit:
            self.overflow = True
            self._fh.truncate(0)
        if not self.overflow:
            self._fh.write(data)
        return len(data)

    def flush(self) -> None:
        if not self._fh.closed:
            self._fh.flush()

    def tell(self) -> int:
        return self.received

    def close(self) -> None:
        self._fh.close()


_pynetdicom_temp_file = dimse_messages.NamedTemporaryFile


def _received_file(*args: Any, **kwargs: Any) -> Any:
    """pynetdicom's temporary file for a received data set: ours (in the spool) on the node's associations."""
    dul = threading.current_thread()
    assoc = getattr(dul, "assoc", None)
    server = getattr(assoc, "_server", None)
    if isinstance(server, NodeAssociationServer):
        return server.open_received_file(assoc)
    return _pynetdicom_temp_file(*args, **kwargs)


dimse_messages.NamedTemporaryFile = _received_file


class _NodeRequestHandler(RequestHandler):
    """One TCP connection: TLS handshake and the wait for A-ASSOCIATE-RQ here, with a deadline, off the accept loop.

    Only a connection that has sent something becomes an association, so idle
    sockets never count towards ``node.max_associations``.
    """

    server: "NodeAssociationServer"

    def handle(self) -> None:
        server = self.server
        host = self.client_address[0]
        deadline = time.monotonic() + server.connect_timeout_s
        sock: socket.socket = self.request
        no_delay(sock)   # each C-STORE-RSP goes out at once (mammoxai.node.sockets)
        try:
            if server.tls_context is not None:
                sock.settimeout(server.connect_timeout_s)
                try:
                    sock = server.tls_context.wrap_socket(sock, server_side=True)
                except (OSError, ssl.SSLError) as exc:
                    reason = "timed out" if isinstance(exc, TimeoutError) else str(exc) or type(exc).__name__
                    log.warning("TLS handshake with %s failed: %s", host, reason)
                    server.on_event("tls_failed")
                    _close(sock)
                    return
                self.request = sock
            if not _wait_readable(sock, deadline - time.monotonic()):
                log.info("closed the connection from %s: no A-ASSOCIATE-RQ within %.0f s (node.connect_timeout_s)",
                         host, server.connect_timeout_s)
                server.on_event("idle_closed")
                _close(sock)
                return
            if not isinstance(sock, ssl.SSLSocket) and not _peek(sock):
                _close(sock)     # closed by the peer before sending anything: no association to wait for
                return
            sock.settimeout(server.ae.network_timeout)   # a peer stalling mid-PDU cannot hold a thread forever
            assoc = self._create_association()
            evt.trigger(assoc, evt.EVT_CONN_OPEN, {"address": self.client_address})
            assoc.start()
            assoc.join()
        finally:
            server.connection_closed(host)

    def _create_association(self) -> Any:
        from pynetdicom.association import Association

        assoc = Association(self.ae, MODE_ACCEPTOR)
        assoc._server = self.server
        assoc.name = f"AcceptorThread@{datetime.now():%Y%m%d%H%M%S}"
        sock = _BoundedSocket(assoc, client_socket=self.request)
        sock.max_pdata_bytes = self.server.max_pdata_bytes
        assoc.set_socket(sock)
        assoc.acceptor.maximum_length = self.ae.maximum_pdu_size
        assoc.acceptor.ae_title = self.server.ae_title
        assoc.acceptor.address_info = self.local
        assoc.acceptor.implementation_class_uid = self.ae.implementation_class_uid
        assoc.acceptor.implementation_version_name = self.ae.implementation_version_name
        assoc.acceptor.supported_contexts = deepcopy(self.server.contexts)
        assoc.requestor.address_info = self.remote
        for event, handlers in self.server._handlers.items():
            if event.is_intervention and handlers:
                assoc.bind(event, *handlers)
            elif isinstance(event, evt.NotificationEvent):
                for handler in handlers:
                    assoc.bind(event, handler[0], handler[1])
        return assoc


def _wait_readable(sock: socket.socket, timeout: float) -> bool:
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return True
    try:
        ready, _, _ = select.select([sock], [], [], max(0.0, timeout))
    except (OSError, ValueError):
        return False
    return bool(ready)


def _peek(sock: socket.socket) -> bool:
    """True when the peer has sent data (False: it closed or reset the connection)."""
    try:
        return sock.recv(1, socket.MSG_PEEK) != b""
    except OSError:
        return False


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


class NodeAssociationServer(ThreadedAssociationServer):
    """pynetdicom's association server, hardened for a node on a hospital network.

    In the accept loop only cheap checks: the source address (``node.allowed_addresses``)
    and ``node.max_connections_per_peer`` (connections from one address, associated or
    not). Everything that can wait on the peer (TLS handshake, the A-ASSOCIATE-RQ) runs in
    the connection's own thread with ``node.connect_timeout_s`` as its deadline.
    """

    daemon_threads = True

    def __init__(self, *args: Any, address_filter: AddressFilter, connect_timeout_s: float,
                 max_connections_per_peer: int, max_pdata_bytes: int, spool: Spool, max_dataset_bytes: int,
                 on_event: Callable[[str], None], **kwargs: Any) -> None:
        self.address_filter = address_filter
        self.connect_timeout_s = connect_timeout_s
        self.max_connections_per_peer = max_connections_per_peer
        self.max_pdata_bytes = max_pdata_bytes
        self.spool = spool
        self.max_dataset_bytes = max_dataset_bytes
        self.on_event = on_event
        self._open: dict[str, int] = {}
        self._files: dict[int, list[ReceivedFile]] = {}
        self._lock = threading.Lock()
        kwargs["request_handler"] = _NodeRequestHandler
        super().__init__(*args, **kwargs)
        # pynetdicom would wrap each socket in the accept loop; the handshake happens in the handler instead
        self.tls_context: ssl.SSLContext | None = self.ssl_context
        self.ssl_context = None

    def get_request(self) -> tuple[socket.socket, Any]:
        client, address = cast(socket.socket, self.socket).accept()
        client.settimeout(self.connect_timeout_s)
        return client, address

    def verify_request(self, request: Any, client_address: Any) -> bool:  # socketserver hook, accept loop
        host = client_address[0] if isinstance(client_address, tuple) else str(client_address)
        if not self.address_filter.allows(host):
            log.warning("rejected connection from %s: source address not in node.allowed_addresses", host)
            self.on_event("address_rejected")
            return False
        with self._lock:
            count = self._open.get(host, 0)
            if count >= self.max_connections_per_peer:
                log.warning("rejected connection from %s: %d connection(s) open from it already "
                            "(node.max_connections_per_peer)", host, count)
                self.on_event("peer_limit")
                return False
            self._open[host] = count + 1
        return True

    def connection_closed(self, host: str) -> None:
        """A connection accepted by :meth:`verify_request` is over."""
        with self._lock:
            left = self._open.get(host, 1) - 1
            if left > 0:
                self._open[host] = left
            else:
                self._open.pop(host, None)

    def open_connections(self, host: str) -> int:
        """Connections from ``host`` now open (waiting for an association or associated)."""
        with self._lock:
            return self._open.get(host, 0)

    def open_received_file(self, assoc: Any) -> ReceivedFile:
        """A new file in the spool's ``tmp/`` for a data set arriving on ``assoc`` (see :class:`ReceivedFile`)."""
        f = ReceivedFile(self.spool.temp_path(".dcm"), self.max_dataset_bytes)
        with self._lock:
            self._files.setdefault(id(assoc), []).append(f)
        return f

    def received_file(self, assoc: Any, path: str) -> ReceivedFile | None:
        """The :class:`ReceivedFile` of ``path`` (forgotten: the C-STORE handler owns it now)."""
        with self._lock:
            files = self._files.get(id(assoc), [])
            for f in files:
                if f.name == path:
                    files.remove(f)
                    return f
        return None

    def discard_partial_files(self, assoc: Any) -> int:
        """Delete what an association left half-received (aborted mid-transfer); returns how many."""
        with self._lock:
            files = self._files.pop(id(assoc), [])
        for f in files:
            f.close()
            Path(f.name).unlink(missing_ok=True)
        return len(files)


def _status(code: int, comment: str = "") -> Dataset | int:
    """A C-STORE response status, with an Error Comment (0000,0902; LO, 64 characters) when given."""
    if not comment:
        return code
    ds = Dataset()
    ds.Status = code
    ds.ErrorComment = comment[:64]
    return ds


class StorageSCP:
    """The node's Storage SCP; call :meth:`start` then :meth:`stop`.

    ``on_stored(job_id)`` is called after each instance queued for processing
    (the node wakes its workers with it).
    """

    def __init__(self, settings: Settings, spool: Spool, queue: JobStore,
                 on_stored: Callable[[int], None] | None = None,
                 on_event: Callable[[str], None] | None = None) -> None:
        self.settings = settings
        self.node = settings.node
        self.spool = spool
        self.queue = queue
        self.on_stored = on_stored
        self.on_event = on_event or (lambda name: None)
        self.limits = DecodeLimits.from_settings(self.node)
        self._server: NodeAssociationServer | None = None
        self._thread: threading.Thread | None = None
        self.ae = AE(ae_title=self.node.ae_title)
        self.ae.maximum_associations = self.node.max_associations
        self.ae.maximum_pdu_size = self.node.max_pdu_size
        self.ae.require_calling_aet = list(self.node.allowed_calling_aes)
        self.ae.require_called_aet = self.node.check_called_ae
        self.ae.acse_timeout = self.node.connect_timeout_s    # ARTIM: the rest of the A-ASSOCIATE-RQ
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
            (evt.EVT_CONN_CLOSE, self._on_closed),
        ]
        node = self.node
        server = self.ae.make_server(
            (node.host, node.port), ssl_context=server_context(node.tls),
            evt_handlers=handlers, server_class=NodeAssociationServer,
            address_filter=AddressFilter(node.allowed_addresses), connect_timeout_s=node.connect_timeout_s,
            max_connections_per_peer=node.max_connections_per_peer,
            max_pdata_bytes=node.max_pdu_size + 6 if node.max_pdu_size else UNLIMITED_PDU_BYTES,
            spool=self.spool, max_dataset_bytes=int(node.max_dataset_mb * 1024 * 1024), on_event=self.on_event)
        self.ae._servers.append(server)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="mammoxai-scp", daemon=True)
        self._thread.start()
        host, port = server.server_address[:2]
        log.info("storage SCP %s listening on %s:%s%s", node.ae_title, host, port,
                 " (TLS)" if node.tls.enabled else "")
        return host, port

    @property
    def port(self) -> int:
        """The bound TCP port (after :meth:`start`)."""
        if self._server is None:
            raise RuntimeError("the SCP is not started")
        return int(self._server.server_address[1])

    @property
    def server(self) -> NodeAssociationServer | None:
        """The association server while started."""
        return self._server

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
        rq = event.assoc.requestor
        called = getattr(getattr(rq, "primitive", None), "called_ae_title", "")
        rj = getattr(event.assoc.acceptor, "primitive", None)
        diagnostic = getattr(rj, "diagnostic", None) if rj is not None else None
        why = {1: "no reason given", 2: "application context name not supported",
               3: "calling AE title not recognised (node.allowed_calling_aes)",
               7: "called AE title not recognised (node.ae_title; node.check_called_ae)",
               }.get(diagnostic or 0, "too many associations (node.max_associations)"
                     if (getattr(rj, "result_source", None) == 3 and diagnostic == 2) else f"diagnostic {diagnostic}")
        log.warning("association rejected from %s (called AE %r): %s", self._peer(event),
                    str(called).strip(), why)
        self.on_event("rejected")

    def _on_closed(self, event: evt.Event) -> None:
        server = self._server
        if server is not None:
            removed = server.discard_partial_files(event.assoc)
            if removed:
                log.warning("removed %d partially received data set(s) from %s (association ended mid-transfer)",
                            removed, self._peer(event))

    def _on_echo(self, event: evt.Event) -> int:
        log.info("C-ECHO from %s", self._peer(event))
        return STATUS_SUCCESS

    def _on_store(self, event: evt.Event) -> Any:
        started = time.perf_counter()
        request = event.request
        uid = str(request.AffectedSOPInstanceUID)
        try:
            return self._store(event, uid, started)
        except Exception:
            log.exception("C-STORE of %s from %s failed", uid, self._peer(event))
            self.on_event("store_failed")
            return _status(STATUS_PROCESSING_FAILURE, "internal error; see the node's log")

    def _refuse(self, event: evt.Event, uid: str, code: int, reason: str, counter: str = "refused") -> Dataset | int:
        log.warning("refused %s from %s (0x%04X): %s", uid, self._peer(event), code, reason)
        self.on_event(counter)
        return _status(code, reason)

    def _store(self, event: evt.Event, uid: str, started: float) -> Any:
        peer = self._peer(event)
        try:
            received = Path(event.dataset_path)
        except AttributeError:  # chunked receiving switched off elsewhere: write the bytes ourselves
            received = self.spool.write_bytes(self.spool.temp_path(".dcm"), event.encoded_dataset())
        tracked = self._server.received_file(event.assoc, str(received)) if self._server else None
        if tracked is not None and tracked.overflow:
            return self._refuse(event, uid, STATUS_OUT_OF_RESOURCES,
                                f"data set over node.max_dataset_mb {self.node.max_dataset_mb:g} MB")
        size_mb = received.stat().st_size / (1024 * 1024)
        if size_mb > self.node.max_dataset_mb:
            return self._refuse(event, uid, STATUS_OUT_OF_RESOURCES,
                                f"data set of {size_mb:.1f} MB over node.max_dataset_mb {self.node.max_dataset_mb:g}")
        free = self.spool.free_mb()
        if free - size_mb < self.node.disk_free_watermark_mb:
            log.error("spool below its watermark: %.0f MB free, node.disk_free_watermark_mb %.0f MB",
                      free, self.node.disk_free_watermark_mb)
            return self._refuse(event, uid, STATUS_OUT_OF_RESOURCES, "spool disk full (below its watermark)")
        where = f"SOP Instance UID {uid}"
        try:
            info = read_header(received, where, self.limits, scratch_dir=self.spool.tmp)
            header = info.dataset
            study = str(header.StudyInstanceUID)
            series = str(header.get("SeriesInstanceUID", ""))
            sop_class = str(header.SOPClassUID)
            if str(header.SOPInstanceUID) != uid:
                log.warning("%s: SOP Instance UID in the data set differs from the request's (%s)",
                            uid, header.SOPInstanceUID)
        except ImageTooLargeError as exc:
            return self._refuse(event, uid, STATUS_OUT_OF_RESOURCES, _short(exc, where))
        except (DicomReadError, InvalidDicomError, AttributeError, ValueError, KeyError, EOFError, OSError) as exc:
            return self._refuse(event, uid, STATUS_CANNOT_UNDERSTAND, _short(exc, where) or type(exc).__name__,
                                "store_failed")
        phi = ""
        if self.node.log_phi:
            phi = f" patient={header.get('PatientID', '')}^{header.get('PatientName', '')}"
        calling = event.assoc.requestor.ae_title
        reason = triage(header, self.settings.output)
        if reason is None:
            # it will be decoded: answer Success only for what the worker can decode within the caps
            try:
                check_image(info, where, self.limits)
            except ImageTooLargeError as exc:
                return self._refuse(event, uid, STATUS_OUT_OF_RESOURCES, _short(exc, where))
            except DicomReadError as exc:
                return self._refuse(event, uid, STATUS_CANNOT_UNDERSTAND, _short(exc, where), "store_failed")
        elapsed = time.perf_counter() - started
        if reason is not None:
            job_id = self.queue.add_received(uid, sop_class, study, series, "", calling, elapsed,
                                             state="ignored", error=reason)
            log.info("job %d ignored: sop=%s study=%s from %s: %s%s", job_id, uid, study, peer, reason, phi)
            self.on_event("ignored")
            return STATUS_SUCCESS
        with self.spool.reception:
            destination = self.spool.commit_file(received, self.spool.instance_path(uid))
            elapsed = time.perf_counter() - started
            job_id = self.queue.add_received(uid, sop_class, study, series, destination, calling, elapsed)
        log.info("job %d received: sop=%s study=%s class=%s from %s (%.1f MB, %.3f s)%s",
                 job_id, uid, study, UID(sop_class).name or sop_class, peer, size_mb, elapsed, phi)
        self.on_event("received")
        if self.on_stored is not None:
            self.on_stored(job_id)
        return STATUS_SUCCESS


def _short(exc: BaseException, where: str) -> str:
    """The reason of a read error without the 'SOP Instance UID ...:' prefix (for the Error Comment)."""
    text = (str(exc).splitlines() or [""])[0]
    return text[len(where) + 2:] if text.startswith(where + ": ") else text


def adopt_orphans(spool: Spool, queue: JobStore) -> int:
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
