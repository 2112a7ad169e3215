"""Start-up: one process per spool, ``serve --once`` binds no port, a failed start is one clear line
(issue 16, faults 8 and 11). Real ``mammoxai serve`` processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from node_helpers import HERE as NODE_TESTS
from node_helpers import REPO, echo_ok, free_port, node_process, poll, write_toml


pytestmark = pytest.mark.slow   # a real node process per module

def _config(path: Path, spool: Path, port: int, http_port: int) -> Path:
    return write_toml(path, {
        "node": {"port": port, "spool_dir": str(spool), "http_port": http_port, "disk_free_watermark_mb": 0},
        "destination": {"kind": "folder", "folder": str(path.parent / "out")},
    })


def _serve(config: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, MAMMOXAI_PIPELINE_FACTORY="node_standin:make_pipeline",
               PYTHONPATH=os.pathsep.join([str(NODE_TESTS), str(REPO)]))
    return subprocess.run([sys.executable, "-m", "mammoxai.cli", "--config", str(config), "serve", *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=120)


def test_one_process_per_spool_and_clear_start_errors(tmp_path):
    spool, port, http_port = tmp_path / "spool", free_port(), free_port()
    running = node_process(_config(tmp_path / "a.toml", spool, port, http_port), tmp_path / "a.log")
    try:
        poll(lambda: running.poll() is not None or echo_ok(port), 60, 0.2, "first node to answer")
        assert running.poll() is None, (tmp_path / "a.log").read_text()[-2000:]

        # a second process on the same spool (here serve --once) stops at once, touching nothing
        second = _serve(_config(tmp_path / "b.toml", spool, free_port(), free_port()), "--once")
        assert second.returncode != 0
        assert "spool is in use by another mammoxai process" in second.stderr and str(running.pid) in second.stderr
        assert "Traceback" not in second.stderr

        # serve --once on its own spool binds no port: the HTTP port of the running node does not matter
        once = _serve(_config(tmp_path / "c.toml", tmp_path / "spool-c", port, http_port), "--once")
        assert once.returncode == 0, once.stderr[-2000:]

        # a full serve whose SCP port is taken: one clear line, no traceback, no closed-database error
        clash = _serve(_config(tmp_path / "d.toml", tmp_path / "spool-d", port, free_port()))
        assert clash.returncode == 2
        assert f"mammoxai serve: error: cannot listen (node.host 127.0.0.1:{port}" in clash.stderr
        assert "Traceback" not in clash.stderr and "closed database" not in clash.stderr
        assert echo_ok(port) and running.poll() is None             # the first node never noticed
    finally:
        running.send_signal(signal.SIGTERM)
        assert running.wait(60) == 0
    # the lock went with the process: the spool can be served again
    again = _serve(_config(tmp_path / "e.toml", spool, free_port(), free_port()), "--once")
    assert again.returncode == 0, again.stderr[-2000:]


def test_spool_lock_is_exclusive_and_released(tmp_path):
    from mammoxai.node.spool import Spool, SpoolError

    first, second = Spool(tmp_path / "spool"), Spool(tmp_path / "spool")
    first.lock()
    try:
        try:
            second.lock()
        except SpoolError as exc:
            assert f"pid {os.getpid()}" in str(exc)
        else:
            raise AssertionError("a second lock on the same spool was granted")
    finally:
        first.unlock()
    second.lock()                      # free again once released
    second.unlock()
