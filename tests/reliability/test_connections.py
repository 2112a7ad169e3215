"""Slow and idle peers, the per-peer limit and the called AE title (issue 16, faults 1, 5 and 10)."""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from mammoxai.config import TlsSettings
from mammoxai.node.scu import Peer, SendError, c_echo, c_store
from node_helpers import make_image, poll, running_node, storescu_file
from test_scu_cli import _certificates


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _certificates(tmp_path_factory.mktemp("certs"))


def _open_idle(port: int, n: int) -> list[socket.socket]:
    """``n`` TCP connections that send nothing."""
    return [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(n)]


def _closed_by_peer(s: socket.socket, timeout: float) -> bool:
    s.settimeout(timeout)
    try:
        return s.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def test_idle_tcp_and_slow_handshake_do_not_block_a_tls_client(tmp_path, make_node_settings, certs, caplog):
    caplog.set_level(logging.INFO)
    tls = {"enabled": True, "cert_file": certs["server"], "key_file": certs["server_key"]}
    settings = make_node_settings(tls=tls, connect_timeout_s=3)
    client = TlsSettings(enabled=True, cert_file=certs["client"], key_file=certs["client_key"], ca_file=certs["ca"])
    mg = tmp_path / "mg.dcm"
    make_image(mg)
    with running_node(settings) as node:
        peer = Peer("MAMMOXAI", "127.0.0.1", node.scp.port)
        idle = _open_idle(node.scp.port, 1)[0]                    # opens the port, sends nothing
        slow = socket.create_connection(("127.0.0.1", node.scp.port), timeout=5)
        slow.sendall(b"\x16\x03\x01\x00\xc8\x01")                # the first bytes of a ClientHello, then silence
        started = time.monotonic()
        assert c_echo(peer, "TLSCLIENT", client, timeout_s=5) == 0
        assert c_store([mg], peer, "TLSCLIENT", client, timeout_s=5) == [(mg, 0)]
        assert time.monotonic() - started < 3                     # served while both are still hanging
        # both are closed after node.connect_timeout_s, and the failed handshake is logged
        assert _closed_by_peer(idle, 10) and _closed_by_peer(slow, 10)
        idle.close()
        slow.close()
        plain = socket.create_connection(("127.0.0.1", node.scp.port), timeout=5)
        plain.sendall(b"\x01\x00\x00\x00\x00\x10" + b"\0" * 16)  # an A-ASSOCIATE-RQ without TLS
        assert _closed_by_peer(plain, 10)
        plain.close()
        poll(lambda: caplog.text.count("TLS handshake with 127.0.0.1 failed") >= 3, 10, what="3 failures logged")
        assert c_echo(peer, "TLSCLIENT", client, timeout_s=5) == 0
        assert node.metrics.counter("instances", event="tls_failed") >= 3


def test_idle_sockets_do_not_lock_out_a_real_c_store(tmp_path, make_node_settings):
    mg = tmp_path / "mg.dcm"
    make_image(mg)
    settings = make_node_settings(max_associations=8, max_connections_per_peer=16, connect_timeout_s=30)
    with running_node(settings) as node:
        idle = _open_idle(node.scp.port, 8)                       # as many as node.max_associations
        try:
            started = time.monotonic()
            sent = storescu_file(node.scp.port, mg)               # dcmtk storescu, a real SCU
            assert sent.returncode == 0, sent.stdout + sent.stderr
            assert time.monotonic() - started < 10                 # not after the idle ones timed out (30 s)
            poll(node.idle, 30, what="the job done")
            assert [j.state for j in node.queue.list()] == ["done"]
        finally:
            for s in idle:
                s.close()


def test_per_peer_connection_limit_and_idle_timeout(tmp_path, make_node_settings, caplog):
    caplog.set_level(logging.INFO)
    mg = tmp_path / "mg.dcm"
    make_image(mg)
    settings = make_node_settings(max_connections_per_peer=2, connect_timeout_s=1)
    with running_node(settings) as node:
        idle = _open_idle(node.scp.port, 2)
        third = socket.create_connection(("127.0.0.1", node.scp.port), timeout=5)
        assert _closed_by_peer(third, 5)                           # closed at accept: over the limit
        third.close()
        assert "node.max_connections_per_peer" in caplog.text
        # the idle ones are closed after node.connect_timeout_s, and the peer can send again
        assert all(_closed_by_peer(s, 10) for s in idle)
        for s in idle:
            s.close()
        poll(lambda: node.scp.server.open_connections("127.0.0.1") == 0, 10, what="connections released")
        sent = storescu_file(node.scp.port, mg)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "no A-ASSOCIATE-RQ within" in caplog.text
        assert node.metrics.counter("instances", event="peer_limit") == 1


def test_called_ae_title_is_checked(tmp_path, make_node_settings, caplog):
    caplog.set_level(logging.INFO)
    with running_node(make_node_settings()) as node:
        ae = AE(ae_title="ANYSCU")
        ae.add_requested_context(Verification)
        wrong = ae.associate("127.0.0.1", node.scp.port, ae_title="NOTTHENODE")
        assert wrong.is_rejected
        assert "called AE title not recognised" in caplog.text
        right = ae.associate("127.0.0.1", node.scp.port, ae_title="MAMMOXAI")
        assert right.is_established
        right.release()
    with running_node(make_node_settings(check_called_ae=False, spool_dir=tmp_path / "any")) as node:
        ae = AE(ae_title="ANYSCU")
        ae.add_requested_context(Verification)
        anything = ae.associate("127.0.0.1", node.scp.port, ae_title="WHATEVER")
        assert anything.is_established
        anything.release()


def test_send_error_for_a_node_that_refuses_plain_connections(tmp_path, make_node_settings, certs):
    """A plain client on a TLS port gets a clear SendError, not a hang (the handshake times out)."""
    tls = {"enabled": True, "cert_file": certs["server"], "key_file": certs["server_key"]}
    with running_node(make_node_settings(tls=tls, connect_timeout_s=2)) as node:
        with pytest.raises(SendError):
            c_echo(Peer("MAMMOXAI", "127.0.0.1", node.scp.port), "PLAIN", TlsSettings(), timeout_s=5)
