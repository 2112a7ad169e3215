"""The Storage SCP against real clients: dcmtk storescu/echoscu and pynetdicom."""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from mammoxai.node.scp import STATUS_OUT_OF_RESOURCES, decodable_transfer_syntaxes, storage_contexts
from node_helpers import CT_IMAGE, make_image, poll, running_node


def storescu(port: int, *files: Path, aet: str = "STORESCU", extra: list[str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["storescu", "-R", "-aet", aet, "-aec", "MAMMOXAI", *(extra or []), "127.0.0.1",
                           str(port), *map(str, files)], capture_output=True, text=True, timeout=60)


def test_decodable_syntaxes_and_contexts():
    names = {u.name for u in decodable_transfer_syntaxes()}
    assert {"RLE Lossless", "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])",
            "JPEG 2000 Image Compression (Lossless Only)", "Explicit VR Little Endian"} <= names
    contexts = dict(storage_contexts())
    mg = contexts["1.2.840.10008.5.1.4.1.1.1.2"]
    assert "1.2.840.10008.1.2.4.100" not in mg          # MPEG2: not decodable, not offered for mammograms
    assert "1.2.840.10008.1.2.4.100" in contexts[CT_IMAGE]  # other classes: anything, they are only recorded


def test_store_compressed_and_concurrent_with_storescu(tmp_path, make_node_settings, caplog):
    caplog.set_level(logging.INFO)
    study = "1.2.826.0.1.3680043.8.498.1"
    plain = [make_image(tmp_path / f"mg{i}.dcm", study, seed=i) for i in range(4)]
    # compressed copies: JPEG Lossless SV1 and RLE (dcmtk encoders), same SOP Instance UIDs
    jpeg = tmp_path / "jpeg.dcm"
    subprocess.run(["dcmcjpeg", "+e1", str(tmp_path / "mg0.dcm"), str(jpeg)], check=True)
    rle = tmp_path / "rle.dcm"
    subprocess.run(["dcmcrle", str(tmp_path / "mg1.dcm"), str(rle)], check=True)
    assert pydicom.dcmread(jpeg).file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.70"
    ct = make_image(tmp_path / "ct.dcm", study, modality="CT", sop_class=CT_IMAGE)
    settings = make_node_settings(max_associations=8)
    with running_node(settings) as node:
        port = node.scp.port
        echo = subprocess.run(["echoscu", "-aec", "MAMMOXAI", "127.0.0.1", str(port)], capture_output=True, timeout=30)
        assert echo.returncode == 0
        procs = [subprocess.Popen(["storescu", "-R", "-aec", "MAMMOXAI", "127.0.0.1", str(port),
                                   str(tmp_path / f"mg{i}.dcm")], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
                 for i in range(2, 4)]
        first = storescu(port, tmp_path / "mg0.dcm", tmp_path / "mg1.dcm", tmp_path / "ct.dcm")
        assert first.returncode == 0, first.stdout + first.stderr
        for option, path in (("-xs", jpeg), ("-xr", rle)):   # offered compressed only: we accept as sent
            sent = subprocess.run(["storescu", option, "-aec", "MAMMOXAI", "127.0.0.1", str(port), str(path)],
                                  capture_output=True, text=True, timeout=60)
            assert sent.returncode == 0, sent.stderr
        for proc in procs:   # communicate() closes the pipe (an unclosed one warns when collected, later)
            out, _ = proc.communicate(timeout=60)
            assert proc.returncode == 0, out
        poll(lambda: node.idle(), 60, what="all jobs done")
        jobs = {j.key: j for j in node.queue.list()}
        for ds in plain:
            assert jobs[ds.SOPInstanceUID].state == "done", jobs[ds.SOPInstanceUID].describe()
        assert jobs[ct.SOPInstanceUID].state == "ignored"
        assert "not a mammogram" in jobs[ct.SOPInstanceUID].error or "CT" in jobs[ct.SOPInstanceUID].error
        # JPEG/RLE copies keep the SOP Instance UID of their source: re-received, processed again, still done
        outputs = sorted((tmp_path / "out").rglob("*.dcm"))
        per_study = [pydicom.dcmread(p) for p in outputs]
        sources = {ds.SourceImageSequence[0].ReferencedSOPInstanceUID for ds in per_study if ds.SeriesNumber == 9100}
        assert sources == {ds.SOPInstanceUID for ds in plain}
        assert any(ds.SeriesNumber == 9150 for ds in per_study), "study summary missing"
        assert node.spool.staged_outputs(jobs[plain[0].SOPInstanceUID].id) == []
        assert list(node.spool.instances.iterdir()) == []      # delivered: sources removed from the spool
    text = caplog.text
    assert "PID-SECRET-1" not in text and "Secret^Patient" not in text
    assert plain[0].SOPInstanceUID in text
    assert "read=" in text and "send=" in text


def test_security_rejections(tmp_path, make_node_settings):
    mg = tmp_path / "mg.dcm"
    make_image(mg)
    settings = make_node_settings(allowed_calling_aes=["GOODPACS"])
    with running_node(settings) as node:
        bad = storescu(node.scp.port, mg, aet="EVILPACS")
        assert bad.returncode != 0 and "Rejected" in (bad.stdout + bad.stderr)
        good = storescu(node.scp.port, mg, aet="GOODPACS")
        assert good.returncode == 0
        assert node.metrics.counter("instances", event="rejected") == 1
    settings = make_node_settings(allowed_addresses=["10.1.2.0/24"], spool_dir=tmp_path / "spool2")
    with running_node(settings) as node:
        bad = storescu(node.scp.port, mg)
        assert bad.returncode != 0
        assert node.queue.list() == []


def test_out_of_resources_and_size_limit(tmp_path, make_node_settings):
    mg = tmp_path / "mg.dcm"
    make_image(mg, size=256)
    for over in ({"disk_free_watermark_mb": 10**9}, {"max_dataset_mb": 0.01}):
        with running_node(make_node_settings(**over)) as node:
            ae = AE(ae_title="T")
            ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.1.2.1")
            assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MAMMOXAI")
            assert assoc.is_established
            status = assoc.send_c_store(pydicom.dcmread(mg))
            assoc.release()
            assert status.Status == STATUS_OUT_OF_RESOURCES
            assert node.queue.list() == [] and list(node.spool.instances.iterdir()) == []


def test_unusable_data_set_is_cannot_understand(tmp_path, make_node_settings):
    from mammoxai.node.scp import STATUS_CANNOT_UNDERSTAND

    ds = make_image(tmp_path / "mg.dcm")
    del ds.StudyInstanceUID                      # no study: the node cannot file it
    with running_node(make_node_settings()) as node:
        ae = AE(ae_title="T")
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.1.2.1")
        ae.add_requested_context(Verification)
        assoc = ae.associate("127.0.0.1", node.scp.port, ae_title="MAMMOXAI")
        status = assoc.send_c_store(ds)
        assert status.Status == STATUS_CANNOT_UNDERSTAND
        assert assoc.send_c_echo().Status == 0          # the association and the node carry on
        assoc.release()
        assert node.queue.list() == [] and node.metrics.counter("instances", event="store_failed") == 1


def test_max_associations(tmp_path, make_node_settings):
    with running_node(make_node_settings(max_associations=1)) as node:
        ae = AE(ae_title="T")
        ae.add_requested_context(Verification)
        first = ae.associate("127.0.0.1", node.scp.port, ae_title="MAMMOXAI")
        assert first.is_established
        second = ae.associate("127.0.0.1", node.scp.port, ae_title="MAMMOXAI")
        assert second.is_rejected
        first.release()


def test_loop_prevention_our_outputs_are_ignored(tmp_path, make_node_settings):
    study = "1.2.826.0.1.3680043.8.498.77"
    make_image(tmp_path / "mg.dcm", study)
    settings = make_node_settings()
    with running_node(settings) as node:
        assert storescu(node.scp.port, tmp_path / "mg.dcm").returncode == 0
        poll(node.idle, 30, what="first pass")
        ours = sorted((tmp_path / "out").rglob("*.dcm"))
        assert ours
        # a PACS routing everything back: our SC results return to the node
        assert storescu(node.scp.port, *ours).returncode == 0
        poll(node.idle, 30, what="second pass")
        states = {j.key: j.state for j in node.queue.list()}
        for path in ours:
            assert states[str(pydicom.dcmread(path).SOPInstanceUID)] == "ignored"
        assert len(list((tmp_path / "out").rglob("*.dcm"))) == len(ours)


def test_port_in_use_is_a_clear_error(tmp_path, make_node_settings):
    from mammoxai.errors import MammoxaiError

    settings = make_node_settings()
    with running_node(settings):
        other = make_node_settings(port=settings.node.port, spool_dir=tmp_path / "other")
        with pytest.raises(MammoxaiError, match=f"{settings.node.port}.*in use"):
            with running_node(other):
                pass
