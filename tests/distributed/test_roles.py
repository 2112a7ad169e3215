"""``serve --role``: what each role runs, the shared-spool locks, and /healthz + /metrics per role (in-process nodes,
the stand-in pipeline, a real redis-server)."""

from __future__ import annotations

import os
from pathlib import Path
import urllib.error
import urllib.request

import pytest

from mammoxai.node.server import Node, NodeError
from mammoxai.node.spool import Spool, SpoolError
from node_helpers import echo_ok, free_port, make_image, node_settings, poll, storescu_file
from node_standin import StandInPipeline


def role_settings(tmp_path, redis_server, name: str, **node):
    return node_settings(tmp_path, job_store="redis", broker_url=redis_server.url, consumer_name=name,
                         broker_lease_s=2.0, **node)


def started(settings, role: str) -> Node:
    node = Node(settings, pipeline_factory=StandInPipeline, role=role)
    node.start()
    return node


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_roles_need_a_shared_job_store(tmp_path):
    with pytest.raises(NodeError, match="node.job_store = 'redis'"):
        Node(node_settings(tmp_path), role="worker")


def test_scp_and_worker_split_the_work_and_each_serves_its_own_health(tmp_path, redis_server):
    scp_http, worker_http = free_port(), free_port()
    scp = started(role_settings(tmp_path, redis_server, "scp-1", http_port=scp_http), "scp")
    worker = started(role_settings(tmp_path, redis_server, "worker-1", http_port=worker_http), "worker")
    try:
        assert scp.workers == [] and scp.sender is None and scp.scp is not None      # receives only
        assert worker.scp is None and len(worker.workers) == 1                      # processes only
        assert echo_ok(scp.settings.node.port)
        image = make_image(tmp_path / "mg.dcm")
        assert storescu_file(scp.settings.node.port, tmp_path / "mg.dcm").returncode == 0
        poll(lambda: (worker.queue.find(image.SOPInstanceUID) or 0) and
             worker.queue.find(image.SOPInstanceUID).state == "done", 30, 0.05, "the job done by the worker")
        assert list((tmp_path / "out").rglob("*.dcm"))
        for port, role in ((scp_http, "scp"), (worker_http, "worker")):
            assert get(port, "/healthz") == (200, "ok\n")
            status, metrics = get(port, "/metrics")
            assert f'mammoxai_node_role{{role="{role}"}} 1.0' in metrics and "mammoxai_job_store_up 1.0" in metrics
            assert 'mammoxai_jobs{state="done"} 1.0' in metrics                    # the broker's counts
        # the broker goes away: every role says so at once (the probe does not wait out the client's retries)
        redis_server.kill()
        for port in (scp_http, worker_http):
            status, body = get(port, "/healthz")
            assert status == 503 and "unhealthy" in body and "unreachable" in body
            assert "mammoxai_job_store_up 0.0" in get(port, "/metrics")[1]
        redis_server.start()
        assert get(worker_http, "/healthz")[0] == 200
    finally:
        worker.stop(timeout=10)
        scp.stop(timeout=10)


def test_a_shared_spool_keeps_single_machine_and_role_processes_apart(tmp_path, redis_server):
    spool_dir = tmp_path / "spool"
    worker = started(role_settings(tmp_path, redis_server, "worker-1"), "worker")
    try:
        # a single-machine serve on the role processes' spool is refused, before touching anything
        alone = Spool(spool_dir)
        with pytest.raises(SpoolError, match="in use by another mammoxai process"):
            alone.lock()
        # a second worker with the same consumer name is refused; another name is welcome
        with pytest.raises(SpoolError, match="consumer_name must be unique"):
            started(role_settings(tmp_path, redis_server, "worker-1"), "worker")
        other = started(role_settings(tmp_path, redis_server, "worker-2"), "worker")
        other.stop(timeout=10)
        # one SCP per spool
        scp = started(role_settings(tmp_path, redis_server, "scp-1"), "scp")
        try:
            with pytest.raises(SpoolError, match="another SCP process"):
                started(role_settings(tmp_path, redis_server, "scp-2"), "scp")
        finally:
            scp.stop(timeout=10)
    finally:
        worker.stop(timeout=10)
    # with every role process gone, a single-machine serve may take the spool again
    alone = Spool(spool_dir)
    alone.lock()
    alone.unlock()


def test_partial_files_of_dead_processes_are_removed_and_live_ones_kept(tmp_path):
    live = Spool(tmp_path / "spool")
    live.lock(shared=True, name="live")
    (live.tmp / "receiving.part").write_bytes(b"x")
    dead = tmp_path / "spool" / "tmp" / "dead"
    dead.mkdir()
    (dead / "half.part").write_bytes(b"x")
    (tmp_path / "spool" / "tmp" / "dead.lock").write_bytes(b"")   # its process is gone: nobody holds the lock
    starting = Spool(tmp_path / "spool")
    starting.lock(shared=True, name="starting")
    assert starting.clear_tmp() == 1
    assert not dead.exists() and (live.tmp / "receiving.part").exists()
    starting.unlock()
    live.unlock()
    assert os.listdir(tmp_path / "spool" / "tmp")   # the live one's folder is still there


def test_a_host_mounting_the_shared_spool_elsewhere_finds_the_scps_files(tmp_path):
    spool = Spool(tmp_path / "here")
    assert spool.localise("/mnt/there/instances/1.2.3.dcm") == Path("/mnt/there/instances/1.2.3.dcm")   # unshared
    spool.lock(shared=True, name="w")
    try:
        assert spool.localise("/mnt/there/instances/1.2.3.dcm") == spool.instances / "1.2.3.dcm"
        assert spool.localise(spool.instances / "1.2.3.dcm") == spool.instances / "1.2.3.dcm"
        assert spool.localise("/elsewhere/x.dcm") == Path("/elsewhere/x.dcm")     # not a spooled instance
    finally:
        spool.unlock()
