"""Crash safety: kill -9 the real ``mammoxai serve`` process with jobs queued and in flight, restart it."""

from __future__ import annotations

import io
import os
import signal
import urllib.request

import pydicom
import pytest
from pydicom.uid import generate_uid

from mammoxai.node.queue import JobQueue
from node_helpers import echo_ok, free_port, make_image, node_process, poll, write_toml

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]


def test_kill_9_and_restart_delivers_every_result_exactly_once(tmp_path, orthanc, node_port):
    study = generate_uid()
    n = 6
    sources = [make_image(tmp_path / f"mg{i}.dcm", study, seed=i) for i in range(n)]
    http_port = free_port()
    spool = tmp_path / "spool"
    config = write_toml(tmp_path / "node.toml", {
        "node": {"port": node_port, "spool_dir": str(spool), "http_port": http_port, "batch_images": 2,
                 "study_quiet_seconds": 1.0, "disk_free_watermark_mb": 0},
        "destination": {"kind": "dicom", "ae_title": "ORTHANC", "host": "127.0.0.1", "port": orthanc.dicom_port,
                        "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
    })
    log = tmp_path / "node.log"
    proc = node_process(config, log, delay_s=0.5)
    try:
        poll(lambda: echo_ok(node_port), 60, 0.2, "node to answer C-ECHO")
        for i in range(n):
            orthanc.upload(tmp_path / f"mg{i}.dcm")
        queue = JobQueue(spool / "queue.sqlite")

        def mid_flight() -> bool:
            c = queue.counts()
            return c["done"] + c["sending"] >= 1 and c["received"] + c["running"] >= 1
        poll(mid_flight, 60, 0.05, "some jobs done and some waiting")
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        before = queue.counts()
        assert before["received"] + before["running"] >= 1     # work was really interrupted

        proc = node_process(config, log, delay_s=0.5)
        poll(lambda: echo_ok(node_port), 60, 0.2, "restarted node")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as r:
            assert r.status == 200

        def finished() -> bool:
            c = queue.counts()
            jobs = [j for j in queue.list() if j.kind == "instance"]
            summary = queue.find(f"summary:{study}")
            return (len(jobs) == n and all(j.state == "done" for j in jobs) and c["sending"] == 0
                    and summary is not None and summary.state == "done")
        poll(finished, 120, 0.2, "every job done after the restart")
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/metrics", timeout=5) as r:
            metrics = r.read().decode()
        assert 'mammoxai_jobs{state="done"}' in metrics and "mammoxai_queue_depth 0" in metrics

        client = orthanc.client()
        ids = client.post_tools_find({"Level": "Instance", "Query": {"StudyInstanceUID": study}})
        datasets = [pydicom.dcmread(io.BytesIO(client.get_instances_id_file(i))) for i in ids]
        results = [d for d in datasets if d.get("SeriesNumber") == 9100]
        summaries = [d for d in datasets if d.get("SeriesNumber") == 9150]
        referenced = sorted(d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in results)
        assert referenced == sorted(s.SOPInstanceUID for s in sources)   # one result per source, no duplicates
        assert len(summaries) == 1
        assert len(datasets) == n + n + 1
        # graceful stop on SIGTERM
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        assert "node stopped" in log.read_text()
        queue.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
