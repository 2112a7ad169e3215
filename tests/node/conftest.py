"""Fixtures for the node tests (helpers live in node_helpers.py, importable from the tests)."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from mammoxai.config import Settings  # noqa: E402
from node_helpers import OrthancServer, free_port, node_settings  # noqa: E402


@pytest.fixture
def make_node_settings(tmp_path: Path) -> Callable[..., Settings]:
    return lambda **kw: node_settings(tmp_path, **kw)


@pytest.fixture(scope="session")
def node_port() -> int:
    """The port the node uses in Orthanc tests (Orthanc's DicomModalities points at it)."""
    return free_port()


@pytest.fixture(scope="session")
def orthanc_session(tmp_path_factory: pytest.TempPathFactory, node_port: int) -> Iterator[OrthancServer]:
    server = OrthancServer(tmp_path_factory.mktemp("orthanc"), node_port)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def orthanc(orthanc_session: OrthancServer) -> Iterator[OrthancServer]:
    """The session's Orthanc, emptied before each test, started again if a test stopped it."""
    if orthanc_session.proc is None:
        orthanc_session.start()
    orthanc_session.clear()
    yield orthanc_session
    if orthanc_session.proc is None:
        orthanc_session.start()


