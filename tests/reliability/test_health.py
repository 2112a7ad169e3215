"""``/healthz`` turns degraded, with its reason, for each cause, and ``/metrics`` says the same (issue 16, fault 10)."""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from mammoxai.node.queue import PROCESS_DIED, JobQueue
from node_helpers import free_port, make_image, poll, running_node, storescu_file
from node_standin import StandInPipeline


def healthz(port: int) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metrics(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return r.read().decode()


class BlockingPipeline(StandInPipeline):
    """The stand-in pipeline, holding each batch until the test releases it (a job that runs long)."""

    def __init__(self, settings) -> None:
        super().__init__(settings)
        self.started = threading.Event()
        self.release = threading.Event()

    def process(self, paths: list[Path]):
        self.started.set()
        self.release.wait(60)
        return super().process(paths)


def test_healthy_node_is_ok(make_node_settings):
    settings = make_node_settings(http_port=free_port())
    with running_node(settings):
        assert healthz(settings.node.http_port) == (200, "ok\n")
        text = metrics(settings.node.http_port)
        assert 'mammoxai_degraded{reason="disk"} 0.0' in text and "mammoxai_poison_jobs 0.0" in text


def test_degraded_when_the_spool_is_below_its_watermark(make_node_settings):
    settings = make_node_settings(http_port=free_port(), disk_free_watermark_mb=10**9)
    with running_node(settings):
        code, body = healthz(settings.node.http_port)
        assert code == 503 and body.startswith("degraded\n") and "below node.disk_free_watermark_mb" in body
        text = metrics(settings.node.http_port)
        assert 'mammoxai_degraded{reason="disk"} 1.0' in text and "mammoxai_spool_free_bytes" in text


def test_degraded_when_the_destination_fails_for_too_long(tmp_path, make_node_settings):
    dead = {"kind": "dicom", "ae_title": "DOWN", "host": "127.0.0.1", "port": free_port(), "timeout_s": 2,
            "backoff_initial_s": 0.1, "backoff_max_s": 0.2, "max_attempts": 1000}
    settings = make_node_settings(http_port=free_port(), destination_alert_s=0.5, destination=dead)
    mg = tmp_path / "mg.dcm"
    make_image(mg)
    with running_node(settings) as node:
        assert storescu_file(node.scp.port, mg).returncode == 0
        poll(lambda: node.destination.failing_since is not None, 30, what="a failed delivery")
        assert healthz(settings.node.http_port)[0] == 200          # failing, but not for long yet
        code, body = poll(lambda: (lambda r: r if r[0] == 503 else None)(healthz(settings.node.http_port)), 30,
                          what="degraded")
        assert "destination C-STORE DOWN@127.0.0.1" in body and "node.destination_alert_s" in body
        assert 'mammoxai_degraded{reason="destination"} 1.0' in metrics(settings.node.http_port)


def test_degraded_while_a_job_runs_past_its_budget(tmp_path, make_node_settings):
    settings = make_node_settings(http_port=free_port(), job_budget_s=0.2)
    pipeline = BlockingPipeline(settings)
    mg = tmp_path / "mg.dcm"
    make_image(mg)
    with running_node(settings, pipeline=pipeline) as node:
        assert storescu_file(node.scp.port, mg).returncode == 0
        assert pipeline.started.wait(30)
        try:
            code, body = poll(lambda: (lambda r: r if r[0] == 503 else None)(healthz(settings.node.http_port)),
                              30, what="degraded")
            assert "running longer than node.job_budget_s" in body
            assert "mammoxai_jobs_over_budget 1.0" in metrics(settings.node.http_port)
        finally:
            pipeline.release.set()
        poll(node.idle, 30, what="the job done")
        assert healthz(settings.node.http_port) == (200, "ok\n")


def test_degraded_while_poison_jobs_are_present(make_node_settings):
    settings = make_node_settings(http_port=free_port())
    with running_node(settings) as node:
        queue = JobQueue(node.spool.database)
        job = queue.add_received("1.2.3.4", "1.2.840.10008.5.1.4.1.1.1.2", "1.2.3", "1.2.3.1", "")
        queue.claim(1)
        queue.mark_failed(job, PROCESS_DIED, 1)        # what the job store records for a poison job
        queue.close()
        code, body = healthz(settings.node.http_port)
        assert code == 503 and "1 poison job(s)" in body
        assert "mammoxai_poison_jobs 1.0" in metrics(settings.node.http_port)


@pytest.mark.parametrize("state", ["ok", "degraded"])
def test_http_server_answers_health_states(state):
    from mammoxai.node.metrics import HttpServer, Metrics

    server = HttpServer("127.0.0.1", 0, Metrics(), lambda: (state, [] if state == "ok" else ["why"]))
    server.start()
    try:
        code, body = healthz(server.port)
        assert (code, body) == ((200, "ok\n") if state == "ok" else (503, "degraded\nwhy\n"))
    finally:
        server.stop()
