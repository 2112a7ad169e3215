"""Nagle's algorithm is off on every DICOM connection the node makes (C-STORE/C-ECHO SCU) or accepts (its SCP),
and on the Orthanc the project deploys and tests against (dcmtk reads ``TCP_NODELAY=1``). Real peers: dcmtk's
storescp and the node's own SCP."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from pathlib import Path

import pytest
from pynetdicom import AE, evt
from pynetdicom.sop_class import Verification

from mammoxai.node.orthanc import ORTHANC_ENVIRONMENT, orthanc_environment
from mammoxai.node.scu import Peer, c_echo, c_store
from node_helpers import free_port, make_image, node_settings, poll, running_node

REPO = Path(__file__).resolve().parents[2]


def _nodelay(sock: socket.socket) -> int:
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.fixture()
def storescp(tmp_path):
    port = free_port()
    out = tmp_path / "received"
    out.mkdir()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=orthanc_environment())
    poll(lambda: subprocess.run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)],
                                capture_output=True).returncode == 0, 20, 0.1, "storescp")
    yield Peer("STORESCP", "127.0.0.1", port), out
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)


@pytest.fixture()
def requestor_sockets(monkeypatch):
    """TCP_NODELAY of each association the code under test requests, read once the association is accepted."""
    seen: list[int] = []
    associate = AE.associate

    def spy(self, *args, **kwargs):
        handlers = list(kwargs.pop("evt_handlers", None) or [])
        handlers.append((evt.EVT_ACCEPTED, lambda event: seen.append(_nodelay(event.assoc.dul.socket.socket))))
        return associate(self, *args, evt_handlers=handlers, **kwargs)

    monkeypatch.setattr(AE, "associate", spy)
    return seen


def test_c_echo_and_c_store_turn_nagle_off(storescp, requestor_sockets, tmp_path):
    peer, out = storescp
    assert c_echo(peer, "MAMMOXAI") == 0
    make_image(tmp_path / "mg.dcm")
    assert [s for _, s in c_store([tmp_path / "mg.dcm"], peer, "MAMMOXAI")] == [0]
    assert len(list(out.iterdir())) == 1
    assert len(requestor_sockets) == 2 and all(requestor_sockets), requestor_sockets


def test_a_plain_association_keeps_nagle_on(storescp, requestor_sockets):
    """The control: without the node's handlers, the operating system's default (Nagle on) stays."""
    peer, _ = storescp
    ae = AE("PLAIN")
    ae.add_requested_context(Verification)
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
    assert assoc.is_established
    assoc.release()
    assert requestor_sockets == [0]


def test_the_scp_turns_nagle_off_on_accepted_connections(tmp_path):
    settings = node_settings(tmp_path)
    with running_node(settings) as node:
        ae = AE("PACS")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", settings.node.port, ae_title=settings.node.ae_title)
        assert assoc.is_established
        try:
            accepted = poll(lambda: node.scp._server.active_associations, 10, what="the node's association")
            assert [_nodelay(a.dul.socket.socket) for a in accepted] == [1]
            assert assoc.send_c_echo().Status == 0
        finally:
            assoc.release()


def test_orthanc_runs_with_tcp_nodelay_here_and_in_docker():
    assert ORTHANC_ENVIRONMENT == {"TCP_NODELAY": "1"}
    assert orthanc_environment({"PATH": "/bin"}) == {"PATH": "/bin", "TCP_NODELAY": "1"}
    dockerfile = (REPO / "docker" / "Dockerfile.orthanc").read_text(encoding="utf-8")
    assert re.search(r"^ENV TCP_NODELAY=1$", dockerfile, re.M)
