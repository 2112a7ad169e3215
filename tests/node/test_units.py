"""Queue, spool, triage and metrics, each on its own (real SQLite, real files)."""

from __future__ import annotations

import time
import urllib.error
import urllib.request

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence

from mammoxai.config import OutputSettings
from mammoxai.dicom_io.triage import own_output_reason, triage
from mammoxai.node.metrics import HttpServer, Metrics, gpu_memory_gauges
from mammoxai.node.jobstore import PROCESS_DIED, JobStore, Recovery
from mammoxai.node.queue import JobQueue, QueueError
from mammoxai.node.security import AddressFilter
from mammoxai.node.spool import Spool, SpoolError
from mammoxai.node.worker import format_timings
from node_helpers import CT_IMAGE, make_image


def test_queue_life_cycle(tmp_path):
    q = JobQueue(tmp_path / "q.sqlite")
    a = q.add_received("1.2.3", "1.2.840.10008.5.1.4.1.1.1.2", "9.9", "9.8", tmp_path / "a.dcm", "PACS", 0.5)
    b = q.add_received("1.2.4", "1.2.840.10008.5.1.4.1.1.1.2", "9.9", "9.8", tmp_path / "b.dcm")
    assert q.add_received("1.2.3", "x", "9.9", "9.8", tmp_path / "a.dcm") == a     # same instance, same job
    claimed = q.claim(5)
    assert [j.id for j in claimed] == [a, b] and all(j.state == "running" and j.attempts == 1 for j in claimed)
    assert claimed[0].sop_instance_uid == "1.2.3" and claimed[0].calling_ae == "PACS"
    assert q.claim(5) == []
    assert q.due_summaries(0.0) == []                      # study busy
    assert q.mark_failed(a, "boom", max_attempts=2) == "received"
    q.mark_sending(b, 2, {"read": 0.25})
    assert q.get(b).timings == {"receive": 0.0, "read": 0.25}
    assert q.recover() == Recovery(requeued=0, given_up=[])
    q.claim(1)
    assert q.recover().requeued == 1                        # crash: running goes back to received
    job = q.claim(1)[0]
    assert job.attempts == 3 and q.mark_failed(a, "boom again", max_attempts=3) == "failed"
    assert q.retry([a]) == [a] and q.get(a).state == "received" and q.get(a).attempts == 0
    q.claim(1)
    q.requeue(a)
    assert q.get(a).state == "received" and q.get(a).attempts == 0
    # sending: back-off then dead letter
    assert q.due_for_sending()[0].id == b
    assert q.send_failed(b, "down", max_attempts=3, backoff_initial_s=10, backoff_max_s=20) == "sending"
    assert q.due_for_sending() == [] and q.get(b).next_attempt_at > time.time() + 5
    assert q.send_failed(b, "down", 3, 10, 20) == "sending"
    assert q.get(b).next_attempt_at > time.time() + 15       # doubled
    assert q.send_failed(b, "down", 3, 10, 20) == "dead"
    with pytest.raises(QueueError, match="only failed or dead"):
        q.retry([a])
    assert q.retry([b]) == [b] and q.get(b).state == "sending" and q.get(b).send_attempts == 0
    q.mark_done(b, {"send": 0.1})
    q.claim(1)
    q.mark_ignored(a, "not a mammogram")
    assert q.counts()["done"] == 1 and q.counts()["ignored"] == 1
    assert q.due_summaries(0.0) == ["9.9"] and q.due_summaries(3600) == []
    s = q.add_summary("9.9")
    q.summary_made("9.9")
    assert q.due_summaries(0.0) == [] and q.get(s).kind == "summary" and q.find("summary:9.9").id == s
    assert [j.id for j in q.list(["done"])] == [b] and len(q.list(study_uid="9.9")) == 3
    with pytest.raises(QueueError, match="unknown job state"):
        q.list(["bogus"])
    with pytest.raises(QueueError, match="no such job"):
        q.get(999)
    assert "state" not in q.get(a).describe() and "ignored" in q.get(a).describe()
    q.reprocess(b, "lost")
    assert q.get(b).state == "received"
    assert q.oldest_waiting_age() >= 0
    assert q.pending_count() == 2 and q.failed_count() == 0 and q.poison_count() == 0   # b, the summary
    q.close()


def test_queue_poison_jobs_are_counted_at_claim_and_never_batched(tmp_path):
    q = JobQueue(tmp_path / "q.sqlite")
    assert isinstance(q, JobStore)
    poison, good1, good2 = (q.add_received(f"1.2.{i}", "1.2.840.10008.5.1.4.1.1.1.2", "9.9", "9.8",
                                           tmp_path / f"{i}.dcm") for i in range(3))
    assert [j.id for j in q.claim(4)] == [poison, good1, good2]
    assert q.stuck(0.0, now=time.time() + 1) and q.stuck(3600) == []
    # the process dies: every claimed job has one attempt on disk; none is given up yet
    assert q.recover(max_attempts=2) == Recovery(requeued=3, given_up=[])
    assert [j.id for j in q.claim(4)] == [poison]           # tried before: alone, never batched again
    assert [j.id for j in q.claim(4)] == [good1]
    assert [j.id for j in q.claim(4)] == [good2]
    q.mark_done(good1)
    q.mark_done(good2)
    # the process dies again while the poison job runs: its second claim was its last
    assert q.recover(max_attempts=2) == Recovery(requeued=0, given_up=[poison])
    assert q.get(poison).state == "failed" and q.get(poison).error == PROCESS_DIED
    assert q.poison_count() == 1 and q.failed_count() == 1 and q.pending_count() == 0
    assert q.claim(4) == []
    q.close()


def test_spool_atomic_files(tmp_path):
    spool = Spool(tmp_path / "s")
    assert spool.free_mb() > 0 and spool.database.name == "queue.sqlite"
    with pytest.raises(SpoolError, match="not a valid SOP Instance UID"):
        spool.instance_path("../../etc/passwd")
    src = spool.temp_path()
    src.write_bytes(b"x" * 10)
    dest = spool.commit_file(src, spool.instance_path("1.2.3"))
    assert dest.read_bytes() == b"x" * 10 and not src.exists()
    ds = make_image(tmp_path / "m.dcm")
    folder = spool.stage_outputs(7, [ds, ds])
    assert [p.name for p in spool.staged_outputs(7)] == ["000.dcm", "001.dcm"] and folder.is_dir()
    spool.stage_outputs(7, [ds])                     # a new attempt replaces the old set entirely
    assert len(spool.staged_outputs(7)) == 1
    spool.remove_outputs(7)
    assert spool.staged_outputs(7) == []
    spool.write_bytes(spool.root / "f.bin", b"abc")
    (spool.tmp / "partial.part").write_bytes(b"half")
    assert spool.clear_tmp() == 1 and list(spool.tmp.iterdir()) == []
    assert spool.result_path(3).name == "3.json"
    spool.write_bytes(spool.result_path(3), b"{}")
    spool.remove_result(3)
    assert not spool.result_path(3).exists()


def test_triage_and_loop_prevention(tmp_path):
    out = OutputSettings()
    mg = make_image(tmp_path / "mg.dcm")
    assert triage(mg, out) is None and own_output_reason(mg, out) is None
    ct = make_image(tmp_path / "ct.dcm", modality="CT", sop_class=CT_IMAGE)
    assert triage(ct, out) == "not_mammogram: Modality CT, SOP Class CT Image Storage"
    sc = make_image(tmp_path / "sc.dcm", modality="OT", sop_class="1.2.840.10008.5.1.4.1.1.7")
    assert "Modality OT" in triage(sc, out)
    sc.Modality = "MG"
    assert triage(sc, out) is None
    for sop_class in ("1.2.840.10008.5.1.4.1.1.1.1",     # Digital X-Ray For Presentation (was mistaken for CR)
                      "1.2.840.10008.5.1.4.1.1.1"):      # Computed Radiography (CR mammography plates)
        dx = make_image(tmp_path / "dx.dcm", sop_class=sop_class)
        assert triage(dx, out) is None, sop_class
        dx.Modality = "DX"
        assert "not_mammogram" in triage(dx, out)
    tomo = make_image(tmp_path / "tomo.dcm", sop_class="1.2.840.10008.5.1.4.1.1.13.1.3")
    assert triage(tomo, out).startswith("unsupported_mammogram: Breast Tomosynthesis")
    sc.Manufacturer, sc.SeriesNumber = "mammoxai", 9103
    assert triage(sc, out) == "our own output (Manufacturer mammoxai)"
    sc.Manufacturer = "Other"
    eq = Dataset()
    eq.Manufacturer = "mammoxai"       # no IHE purpose: still ours (an archive may have dropped it)
    sc.ContributingEquipmentSequence = Sequence([eq])
    assert "Contributing Equipment" in triage(sc, out)
    sc.ContributingEquipmentSequence = Sequence()
    assert "our series range" in triage(sc, out)     # Secondary Capture with Series Number 9103
    sr = Dataset()
    sr.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.34"
    assert "never processes" in triage(sr, out)      # anyone's SR: never a source


def test_address_filter():
    f = AddressFilter(["10.0.0.0/8", "127.0.0.1"])
    assert f.allows("10.2.3.4") and f.allows("127.0.0.1") and f.allows("::ffff:10.1.1.1")
    assert not f.allows("192.168.1.1") and not f.allows("not-an-ip")
    assert AddressFilter([]).allows("8.8.8.8")


def test_metrics_text_and_http():
    m = Metrics(buckets=(1, 10))
    m.inc("jobs_done", help="done jobs")
    m.inc("instances", event="received")
    m.observe_latency(0.5)
    m.observe_latency(5)
    m.add_gauges(lambda: [("mammoxai_queue_depth", {}, 3.0)])
    m.add_gauges(lambda: 1 / 0)                       # a broken gauge does not break the scrape
    text = m.render()
    assert "# TYPE mammoxai_jobs_done_total counter" in text and "mammoxai_jobs_done_total 1" in text
    assert 'mammoxai_instances_total{event="received"} 1' in text
    assert 'mammoxai_job_latency_seconds_bucket{le="1.0"} 1.0' in text     # prometheus-client's exposition
    assert 'mammoxai_job_latency_seconds_bucket{le="10.0"} 2.0' in text
    assert 'le="+Inf"} 2' in text and "mammoxai_job_latency_seconds_count 2" in text
    assert "mammoxai_queue_depth 3" in text
    assert m.counter("jobs_done") == 1
    assert gpu_memory_gauges() == [] or all(v >= 0 for _, _, v in gpu_memory_gauges())
    healthy = [True]
    server = HttpServer("127.0.0.1", 0, m, lambda: healthy[0])
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        with urllib.request.urlopen(base + "/healthz") as r:
            assert r.status == 200 and r.read() == b"ok\n"
        with urllib.request.urlopen(base + "/metrics") as r:
            assert "version=0.0.4" in r.headers["Content-Type"] and b"mammoxai_queue_depth 3" in r.read()
        healthy[0] = False
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(base + "/healthz")
        assert err.value.code == 503
    finally:
        server.stop()


def test_format_timings_order():
    text = format_timings({"send": 1, "gradcam": 2, "read": 0.5, "receive": 0.1, "write": 0.2, "predict": 0.3})
    assert text == "receive=0.100s read=0.500s predict=0.300s gradcam=2.000s write=0.200s send=1.000s"
