"""Reliability tests (issue 16): hostile inputs, slow peers, idle sockets, locks, health. Helpers from tests/node."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for folder in (HERE, HERE.parent / "node"):
    if str(folder) not in sys.path:
        sys.path.insert(0, str(folder))

from collections.abc import Callable  # noqa: E402

import pytest  # noqa: E402

from mammoxai.config import Settings  # noqa: E402
from node_helpers import node_settings  # noqa: E402


@pytest.fixture
def make_node_settings(tmp_path: Path) -> Callable[..., Settings]:
    """Settings for an in-process node on a free loopback port, spooling in ``tmp_path``."""
    return lambda **kw: node_settings(tmp_path, **kw)
