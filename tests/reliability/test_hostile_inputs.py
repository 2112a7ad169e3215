"""Hostile inputs through the real SCP of a real ``mammoxai serve`` process (issue 16, faults 2, 6 and 9).

One node process serves the whole module (the reader stand-in pipeline: the real reader with the
node's limits). What is answered Success must be processed (done) or recorded (ignored), never
failed later; what cannot be processed is refused with a clear status; the process never dies.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from pynetdicom import AE, _config, evt
from pynetdicom.sop_class import Verification

import hostile
from mammoxai.node.queue import JobQueue
from node_helpers import REPO, echo_ok, free_port, make_image, node_process, poll, write_toml

pytestmark = pytest.mark.slow   # a real node process per module

HERE = Path(__file__).resolve().parent
MIB = 1024 * 1024

# send each file's data set bytes as they are (pynetdicom would otherwise parse and re-encode them)
_config.STORE_SEND_CHUNKED_DATASET = True


@dataclass
class NodeProc:
    proc: subprocess.Popen
    port: int
    spool: Path
    tmpdir: Path
    log: Path
    queue: JobQueue

    def alive(self) -> bool:
        return self.proc.poll() is None

    def peak_rss_mb(self) -> float:
        """VmHWM: the process's peak resident set size so far."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        raise AssertionError("no VmHWM in /proc")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProc]:
    root = tmp_path_factory.mktemp("hostile-node")
    port = free_port()
    tmpdir = root / "TMPDIR"
    tmpdir.mkdir()
    config = write_toml(root / "node.toml", {
        "node": {"port": port, "spool_dir": str(root / "spool"), "http_port": 0, "disk_free_watermark_mb": 0,
                 "study_quiet_seconds": 0.2, "max_inflated_mb": 64, "max_dataset_mb": 30},
        "destination": {"kind": "folder", "folder": str(root / "out")},
    })
    log = root / "node.log"
    env = {"MAMMOXAI_PIPELINE_FACTORY": "reader_standin:make_pipeline", "TMPDIR": str(tmpdir),
           "PYTHONPATH": os.pathsep.join([str(HERE), str(HERE.parent / "node"), str(REPO)])}
    proc = node_process(config, log, extra_env=env)
    try:
        poll(lambda: proc.poll() is not None or echo_ok(port), 60, 0.2, "node to answer C-ECHO")
        assert proc.poll() is None, log.read_text()[-3000:]
        yield NodeProc(proc, port, root / "spool", tmpdir, log, JobQueue(root / "spool" / "queue.sqlite"))
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def send(port: int, path: Path, sop_class: str, transfer_syntax: str) -> tuple[int | None, str]:
    """C-STORE the file's data set bytes as they are; (status, error comment), or (None, why) without a context."""
    ae = AE(ae_title="FUZZER")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
    ae.add_requested_context(sop_class, transfer_syntax)
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="MAMMOXAI")
    assert assoc.is_established, "the node did not accept the association"
    try:
        rsp = assoc.send_c_store(path)
    except ValueError as exc:          # no accepted presentation context for it
        return None, str(exc)
    finally:
        if assoc.is_established:
            assoc.release()
    assert rsp is not None and "Status" in rsp, "no C-STORE response"
    return int(rsp.Status), str(rsp.get("ErrorComment", ""))


def final_state(node: NodeProc, uid: str) -> str:
    def state() -> str | None:
        job = node.queue.find(uid)
        return job.state if job is not None and job.state in ("done", "ignored", "failed", "dead") else None
    return poll(state, 60, 0.1, f"job of {uid} to finish")


def test_fuzz_corpus_every_input_gets_a_clear_status_and_the_node_stays_up(node, tmp_path):
    jpeg_src = tmp_path / "src.dcm"
    make_image(jpeg_src)
    jpeg = tmp_path / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(jpeg_src), str(jpeg)], check=True)
    cases = hostile.corpus(tmp_path / "corpus", jpeg_source=jpeg)
    assert len([c for c in cases if c.expect != "done"]) >= 25
    outcomes = {}
    for case in cases:
        status, comment = send(node.port, case.path, case.sop_class, case.transfer_syntax)
        assert node.alive(), f"{case.name} killed the node:\n{node.log.read_text()[-3000:]}"
        outcomes[case.name] = (status, comment)
        if case.expect == "no_context":
            assert status is None, (case.name, status, comment)
        elif case.expect == "refused":
            assert status not in (None, 0), (case.name, status)
            assert status in (0xA700, 0xC000) and comment, (case.name, hex(status), comment)
        else:
            assert status == 0, (case.name, hex(status or 0), comment)
    for case in cases:
        if case.expect in ("done", "ignored"):
            assert final_state(node, case.sop_instance_uid) == case.expect, (
                case.name, node.queue.find(case.sop_instance_uid).describe())
        elif case.expect == "refused":
            job = node.queue.find(case.sop_instance_uid)
            assert job is None, f"{case.name} was refused but queued: {job.describe()}"
    assert not any(j.state == "failed" for j in node.queue.list()), "answered Success, then lost"
    assert echo_ok(node.port) and node.alive()
    text = node.log.read_text()
    assert "refused" in text and "max_pixel_data_mb" in text and "max_inflated_mb" in text
    assert "HOSTILE-1" not in text                                  # refusals log UIDs, not patient data
    # received data went to the spool's tmp/, never $TMPDIR, and nothing partial is left behind
    assert list(node.tmpdir.iterdir()) == []
    poll(lambda: list((node.spool / "tmp").iterdir()) == [], 10, 0.1, "spool tmp/ empty")


def test_rle_60000_squared_is_refused_and_the_node_serves_on(node, tmp_path):
    bomb = tmp_path / "rle-bomb.dcm"
    ds = hostile.rle_bomb_file(bomb)
    assert bomb.stat().st_size < 2048
    status, comment = send(node.port, bomb, hostile.MG, hostile.RLE)
    assert status == 0xA700 and "max_pixel_data_mb" in comment
    assert node.queue.find(str(ds.SOPInstanceUID)) is None
    assert node.alive()
    good = tmp_path / "good.dcm"
    ok = make_image(good)
    assert send(node.port, good, hostile.MG, hostile.EXPLICIT) == (0, "")
    assert final_state(node, str(ok.SOPInstanceUID)) == "done"


def test_deflate_bomb_is_refused_within_a_fixed_memory_bound(node, tmp_path):
    bomb = tmp_path / "deflate-bomb.dcm"
    ds = hostile.deflate_bomb_file(bomb, inflated_mb=1536)
    assert bomb.stat().st_size < 4 * MIB
    status, comment = send(node.port, bomb, hostile.MG, hostile.DEFLATED)
    assert status == 0xA700 and "max_inflated_mb" in comment
    assert node.queue.find(str(ds.SOPInstanceUID)) is None
    peak = node.peak_rss_mb()
    assert peak < 400, f"peak RSS {peak:.0f} MB for a data set that inflates to 1536 MB"
    assert node.alive() and echo_ok(node.port)


def test_data_set_over_max_dataset_mb_is_refused_while_it_arrives(node, tmp_path):
    big = tmp_path / "big.dcm"
    ds = hostile.header()
    ds.add_new(0x00091010, "LO", "FUZZ")
    ds.add_new(0x00091011, "OB", b"\0" * (40 * MIB))        # over the node's max_dataset_mb of 30
    big.write_bytes(hostile.part10(ds, hostile.EXPLICIT,
                                   hostile.encode(ds) + hostile.pixel_element(hostile.pixels())))
    status, comment = send(node.port, big, hostile.MG, hostile.EXPLICIT)
    assert status == 0xA700 and "max_dataset_mb" in comment
    assert node.queue.find(str(ds.SOPInstanceUID)) is None
    assert list(node.tmpdir.iterdir()) == []
    poll(lambda: list((node.spool / "tmp").iterdir()) == [], 10, 0.1, "spool tmp/ empty")


def test_a_pdu_over_the_cap_is_aborted_before_its_body_is_read(node):
    with socket.create_connection(("127.0.0.1", node.port), timeout=10) as s:
        s.sendall(struct.pack(">BBL", 0x01, 0, 200 * MIB) + b"\0" * 64)   # a 200 MiB A-ASSOCIATE-RQ
        reply = s.recv(64)
    assert reply[:1] == b"\x07", f"expected an A-ABORT, got {reply!r}"
    assert node.alive() and echo_ok(node.port)


def test_a_partial_transfer_leaves_nothing_behind(node, tmp_path):
    """An association lost mid-data-set: its partial file (in the spool's tmp/, not $TMPDIR) is removed."""
    big = tmp_path / "partial.dcm"
    ds = hostile.header()
    ds.add_new(0x00091010, "LO", "FUZZ")
    ds.add_new(0x00091011, "OB", b"\0" * (8 * MIB))
    big.write_bytes(hostile.part10(ds, hostile.EXPLICIT,
                                   hostile.encode(ds) + hostile.pixel_element(hostile.pixels())))
    halfway, resume = threading.Event(), threading.Event()
    sent = [0]

    def on_pdu_sent(event: evt.Event) -> None:   # runs in the sender's DUL thread: hold it halfway
        sent[0] += 1
        if sent[0] == 200:                        # about 3 MB of the 8 MB data set
            halfway.set()
            resume.wait(30)

    ae = AE(ae_title="CUTOFF")
    ae.add_requested_context(hostile.MG, hostile.EXPLICIT)
    assoc = ae.associate("127.0.0.1", node.port, ae_title="MAMMOXAI", evt_handlers=[(evt.EVT_PDU_SENT, on_pdu_sent)])
    assert assoc.is_established
    sender = threading.Thread(target=lambda: assoc.send_c_store(big), daemon=True)
    sender.start()
    try:
        assert halfway.wait(30)
        poll(lambda: any(p.stat().st_size > MIB for p in (node.spool / "tmp").iterdir()), 30, 0.01,
             "a partial data set in the spool's tmp/")
        assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)    # the network goes away mid-transfer
    finally:
        resume.set()
    sender.join(30)
    poll(lambda: list((node.spool / "tmp").iterdir()) == [], 10, 0.1, "the partial file removed")
    assert list(node.tmpdir.iterdir()) == [] and node.queue.find(str(ds.SOPInstanceUID)) is None
    assert node.alive() and echo_ok(node.port)
