"""TCP options of the node's DICOM connections: Nagle's algorithm off on every one it makes or accepts.

A DIMSE exchange is a request and a short response, each written as several small segments
(PDU header, command, data set). With Nagle's algorithm on, the second small segment waits for
the peer's acknowledgement of the first, which the peer's TCP delays by up to 40 ms: a stall per
message. Measured here, pynetdicom to dcmtk's ``storescp`` on loopback: a C-ECHO round trip
took 48 ms with Nagle on at either end and 3 ms with it off at both; eleven result objects to
Orthanc 0.93 s against 0.14 s (``benchmarks/bench_send.py``, BENCHMARKS.md). dcmtk-based peers (Orthanc, ``storescp``) turn it
off when started with ``TCP_NODELAY=1`` in their environment
(:data:`mammoxai.node.orthanc.ORTHANC_ENVIRONMENT`).
"""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom import evt


def no_delay(sock: socket.socket) -> None:
    """Set ``TCP_NODELAY`` on ``sock`` (a TCP socket, TLS-wrapped or not); other sockets are left as they are."""
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:   # not a TCP socket (e.g. a socketpair in a test)
        pass


def _on_connection_open(event: evt.Event) -> None:
    no_delay(event.assoc.dul.socket.socket)


#: ``evt_handlers`` for :meth:`pynetdicom.AE.associate`: Nagle off as soon as the connection is open,
#: before the A-ASSOCIATE-RQ is written
REQUESTOR_HANDLERS: list[tuple[Any, Any]] = [(evt.EVT_CONN_OPEN, _on_connection_open)]
