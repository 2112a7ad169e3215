"""C-STORE/C-ECHO SCU, destinations (folder, DICOMweb), TLS, and the send / echo / jobs / serve --once commands."""

from __future__ import annotations

import argparse
import datetime
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.uid import generate_uid

from mammoxai.config import TlsSettings
from mammoxai.commands.echo import run as main_echo
from mammoxai.commands.jobs import run as main_jobs
from mammoxai.commands.send import run as main_send
from mammoxai.commands.serve import run as main_serve
from mammoxai.node.queue import JobQueue, QueueError
from mammoxai.node.scu import (
    DicomDestination,
    DicomWebDestination,
    FolderDestination,
    Peer,
    SendError,
    c_echo,
    c_store,
    make_destination,
    parse_peer,
)
from mammoxai.node.security import client_context, server_context
from mammoxai.node.spool import Spool
from node_helpers import free_port, make_image, node_settings, poll, running_node


@pytest.fixture
def storescp(tmp_path):
    """dcmtk's storescp, a real independent receiver, on a free port."""
    out = tmp_path / "received"
    out.mkdir()
    port = free_port()
    proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    poll(lambda: subprocess.run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)],
                                capture_output=True).returncode == 0, 20, 0.1, "storescp")
    yield Peer("STORESCP", "127.0.0.1", port), out
    os.kill(proc.pid, signal.SIGTERM)
    proc.wait(10)


def test_parse_peer():
    assert parse_peer("ORTHANC@127.0.0.1:4242") == Peer("ORTHANC", "127.0.0.1", 4242)
    assert parse_peer("PACS@[::1]:104") == Peer("PACS", "::1", 104)
    assert str(Peer("A", "h", 1)) == "A@h:1"
    for bad in ("ORTHANC@host", "host:4242", "A@h:99999", "WAYTOOLONGAETITLE1@h:1"):
        with pytest.raises(SendError, match="AE@HOST:PORT"):
            parse_peer(bad)


def test_store_echo_send_to_dcmtk_storescp(tmp_path, storescp, capsys):
    peer, out = storescp
    files = [tmp_path / f"f{i}.dcm" for i in range(2)]
    for i, f in enumerate(files):
        make_image(f, seed=i)
    subprocess.run(["dcmcjpeg", "+e1", str(files[0]), str(tmp_path / "jpeg.dcm")], check=True)
    assert c_echo(peer, "MAMMOXAI") == 0
    assert [s for _, s in c_store(files + [tmp_path / "jpeg.dcm"], peer, "MAMMOXAI")] == [0, 0, 0]
    received = [pydicom.dcmread(p) for p in out.iterdir()]
    assert len(received) >= 2
    # storescp takes uncompressed only: the JPEG Lossless file was decompressed, losslessly
    original = pydicom.dcmread(files[0]).pixel_array
    jpeg_uid = pydicom.dcmread(tmp_path / "jpeg.dcm").SOPInstanceUID
    copies = [r for r in received if r.SOPInstanceUID == jpeg_uid]
    assert copies and all((c.pixel_array == original).all() for c in copies)
    assert {str(c.file_meta.TransferSyntaxUID) for c in copies} <= {"1.2.840.10008.1.2.1", "1.2.840.10008.1.2"}
    folder = tmp_path / "in"
    folder.mkdir()
    for f in files + [tmp_path / "jpeg.dcm"]:
        shutil.copy(f, folder)
    (folder / "notes.txt").write_text("not DICOM")
    (tmp_path / "notes.txt").write_text("not DICOM")
    settings = node_settings(tmp_path)
    rc = main_send(argparse.Namespace(paths=[folder], to=str(peer), calling_ae=None), settings)
    printed = capsys.readouterr().out
    assert rc == 0 and "sent 3 of 3" in printed and "notes.txt" not in printed
    with pytest.raises(SendError, match="not a DICOM file"):
        c_store([tmp_path / "notes.txt"], peer, "MAMMOXAI")
    assert main_echo(argparse.Namespace(to=str(peer)), settings) == 0
    assert "status 0x0000" in capsys.readouterr().out
    dest = DicomDestination(settings.destination.model_copy(update={
        "host": peer.host, "port": peer.port, "ae_title": peer.ae_title}), "MAMMOXAI")
    dest.send(files)
    assert "C-STORE STORESCP@" in dest.describe()
    closed = Peer("NOBODY", "127.0.0.1", free_port())
    with pytest.raises(SendError, match="cannot associate"):
        c_echo(closed, "MAMMOXAI", timeout_s=2)
    with pytest.raises(SendError):
        main_send(argparse.Namespace(paths=[tmp_path / "missing"], to=str(peer), calling_ae=None), settings)


def test_folder_and_dicomweb_destinations(tmp_path, orthanc):
    study = generate_uid()
    ds = make_image(tmp_path / "a.dcm", study)
    folder = FolderDestination(tmp_path / "out")
    folder.send([tmp_path / "a.dcm"])
    assert (tmp_path / "out" / study / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm").is_file()
    assert isinstance(make_destination(node_settings(tmp_path)), FolderDestination)
    url = f"http://{orthanc.USER}:{orthanc.PASSWORD}@127.0.0.1:{orthanc.http_port}/dicom-web"
    web = DicomWebDestination(url)
    assert orthanc.PASSWORD not in web.describe()
    web.send([tmp_path / "a.dcm"])
    assert len(orthanc.study_instances(study)) == 1
    bad = DicomWebDestination(f"http://{orthanc.USER}:wrong@127.0.0.1:{orthanc.http_port}/dicom-web")
    with pytest.raises(SendError, match="STOW-RS"):
        bad.send([tmp_path / "a.dcm"])
    settings = node_settings(tmp_path, destination={"kind": "dicomweb", "url": url})
    assert isinstance(make_destination(settings), DicomWebDestination)


def _certificates(folder: Path) -> dict[str, Path]:
    """A CA, a server and a client certificate (RSA 2048), written as PEM files."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def key():
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def cert(subject, issuer, pub, signer, ca=False):
        b = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
             .not_valid_after(now + datetime.timedelta(days=1))
             .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if not ca:
            b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False)
        return b.sign(signer, hashes.SHA256())

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    ca_key = key()
    ca = cert(name("test CA"), name("test CA"), ca_key.public_key(), ca_key, ca=True)
    out = {"ca": folder / "ca.pem"}
    out["ca"].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    for who in ("server", "client"):
        k = key()
        c = cert(name(who), ca.subject, k.public_key(), ca_key)
        out[who] = folder / f"{who}.pem"
        out[f"{who}_key"] = folder / f"{who}.key"
        out[who].write_bytes(c.public_bytes(serialization.Encoding.PEM))
        out[f"{who}_key"].write_bytes(k.private_bytes(serialization.Encoding.PEM,
                                                       serialization.PrivateFormat.TraditionalOpenSSL,
                                                       serialization.NoEncryption()))
    return out


def test_dicom_tls_with_client_certificates(tmp_path):
    certs = _certificates(tmp_path)
    server_tls = {"enabled": True, "cert_file": certs["server"], "key_file": certs["server_key"],
                  "ca_file": certs["ca"], "require_client_cert": True}
    settings = node_settings(tmp_path, tls=server_tls)
    assert server_context(TlsSettings()) is None and client_context(TlsSettings()) is None
    client = TlsSettings(enabled=True, cert_file=certs["client"], key_file=certs["client_key"], ca_file=certs["ca"])
    anonymous = TlsSettings(enabled=True, cert_file=certs["client"], key_file=certs["client_key"])
    no_cert = TlsSettings(enabled=False)
    mg = tmp_path / "mg.dcm"
    make_image(mg)
    with running_node(settings) as node:
        peer = Peer("MAMMOXAI", "127.0.0.1", node.scp.port)
        assert c_echo(peer, "TLSCLIENT", client) == 0
        assert c_store([mg], peer, "TLSCLIENT", client) == [(mg, 0)]
        poll(node.idle, 30, what="TLS job done")
        assert [j.state for j in node.queue.list()] == ["done"]
        with pytest.raises(SendError):
            c_echo(peer, "PLAIN", no_cert, timeout_s=3)           # no TLS at all
        # a client without a certificate is refused by the server's verification
        bare = TlsSettings.model_construct(enabled=True, cert_file=None, key_file=None, ca_file=certs["ca"],
                                           require_client_cert=False)
        with pytest.raises(SendError):
            c_echo(peer, "NOCERT", bare, timeout_s=3)
        assert c_echo(peer, "ANON", anonymous) == 0               # client does not verify the server: allowed


def test_jobs_command(tmp_path, capsys):
    settings = node_settings(tmp_path)
    spool = Spool(settings.node.spool_dir)
    q = JobQueue(spool.database)
    a = q.add_received("1.2.3", "c", "s", "se", "p")
    b = q.add_received("1.2.4", "c", "s", "se", "p")
    q.claim(2)
    q.mark_failed(a, "model exploded", 1)
    q.mark_sending(b, 1)
    q.send_failed(b, "PACS down", 1, 1, 1)
    assert q.get(b).state == "dead"

    def run(action, ids=(), all_failed=False):
        rc = main_jobs(argparse.Namespace(action=action, job_ids=list(ids), all_failed=all_failed), settings)
        return rc, capsys.readouterr().out

    rc, out = run("list")
    assert rc == 0 and "model exploded" in out and "PACS down" in out and "failed=1" in out and "dead=1" in out
    rc, out = run("failed")
    assert len([line for line in out.splitlines() if "error=" in line]) == 2
    rc, out = run("show", [b])
    assert '"state": "dead"' in out
    rc, out = run("retry", [a])
    assert "re-queued 1" in out and q.get(a).state == "received"
    rc, out = run("retry", all_failed=True)
    assert "re-queued 1" in out and q.get(b).state == "sending"
    with pytest.raises(QueueError):
        run("retry")
    with pytest.raises(QueueError):
        run("show")


def test_serve_once_processes_the_spool(tmp_path, monkeypatch):
    settings = node_settings(tmp_path)
    spool = Spool(settings.node.spool_dir)
    q = JobQueue(spool.database)
    study = generate_uid()
    for i in range(2):
        ds = make_image(tmp_path / f"m{i}.dcm", study, seed=i)
        dest = spool.instance_path(ds.SOPInstanceUID)
        shutil.copyfile(tmp_path / f"m{i}.dcm", dest)
        q.add_received(ds.SOPInstanceUID, ds.SOPClassUID, study, ds.SeriesInstanceUID, dest)
    q.close()
    # an instance committed to the spool just before a crash, without its job: adopted at start-up
    orphan = make_image(tmp_path / "orphan.dcm", study, seed=9)
    shutil.copyfile(tmp_path / "orphan.dcm", spool.instance_path(orphan.SOPInstanceUID))
    monkeypatch.setenv("MAMMOXAI_PIPELINE_FACTORY", "node_standin:make_pipeline")
    rc = main_serve(argparse.Namespace(port=None, ae_title=None, once=True), settings)
    assert rc == 0
    outputs = [pydicom.dcmread(p) for p in (tmp_path / "out").rglob("*.dcm")]
    assert sorted(int(d.SeriesNumber) for d in outputs) == [9100, 9100, 9100, 9150]
    q = JobQueue(spool.database)
    assert q.counts()["done"] == 4 and q.find(orphan.SOPInstanceUID).state == "done"


def test_dead_letter_then_jobs_retry_delivers(tmp_path, capsys):
    port = free_port()
    settings = node_settings(tmp_path, destination={
        "kind": "dicom", "ae_title": "STORESCP", "host": "127.0.0.1", "port": port, "max_attempts": 2,
        "backoff_initial_s": 0.1, "backoff_max_s": 0.2, "timeout_s": 3})
    make_image(tmp_path / "mg.dcm")
    received = tmp_path / "received"
    received.mkdir()
    with running_node(settings) as node:
        assert c_store([tmp_path / "mg.dcm"], Peer("MAMMOXAI", "127.0.0.1", node.scp.port), "PACS")[0][1] == 0
        dead = poll(lambda: node.queue.list(["dead"]), 30, 0.05, "the job to reach the dead letter state")
        assert dead[0].send_attempts == 2 and "cannot associate" in dead[0].error
        assert node.spool.staged_outputs(dead[0].id)              # outputs kept for a re-send
        proc = subprocess.Popen(["storescp", "-aet", "STORESCP", "-od", str(received), str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            poll(lambda: subprocess.run(["echoscu", "-aec", "STORESCP", "127.0.0.1", str(port)],
                                        capture_output=True).returncode == 0, 20, 0.1, "storescp")
            assert main_jobs(argparse.Namespace(action="retry", job_ids=[], all_failed=True), settings) == 0
            assert f"re-queued 1 job(s): {dead[0].id}" in capsys.readouterr().out
            poll(lambda: node.queue.get(dead[0].id).state == "done", 30, 0.05, "re-sent job")
            assert len(list(received.iterdir())) == 1
        finally:
            os.kill(proc.pid, signal.SIGTERM)
            proc.wait(10)
