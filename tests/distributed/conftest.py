"""Distributed node tests (issue 15): a real redis-server, SCP and worker processes. Helpers from tests/node."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent / "node"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from broker_helpers import RedisServer  # noqa: E402


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A real redis-server (docker/redis.conf: AOF, fsync always) on a free loopback port; stopped by PID."""
    server = RedisServer(tmp_path / "redis")
    server.start()
    yield server
    server.stop()
