"""The Orthanc configuration and auto-routing Lua script shared by the integration tests and docker/.

``orthanc.json`` is the docker deployment's configuration; :func:`orthanc_config`
returns it with the values a local run needs replaced (ports, folders, where
the node listens), so the tests run the very same routing set-up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
CONFIG_TEMPLATE = HERE / "orthanc.json"
LUA_SCRIPT = HERE / "autorouting.lua"
#: the DicomModalities entry the Lua script routes to
NODE_MODALITY = "mammoxai"
#: Orthanc's process environment: dcmtk, its DICOM layer, leaves Nagle's algorithm on unless ``TCP_NODELAY=1``
#: (Debian's build), which costs up to 40 ms per DIMSE message (:mod:`mammoxai.node.sockets`); also set by
#: docker/Dockerfile.orthanc
ORTHANC_ENVIRONMENT: dict[str, str] = {"TCP_NODELAY": "1"}


def orthanc_environment(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment to start Orthanc with: ``base`` (default: this process's) plus :data:`ORTHANC_ENVIRONMENT`."""
    return {**(os.environ if base is None else base), **ORTHANC_ENVIRONMENT}


def orthanc_config(storage_dir: Path, http_port: int, dicom_port: int, node_ae: str, node_host: str,
                   node_port: int, plugins: list[str] | None = None, stable_age: int | None = None,
                   users: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    """The configuration template with local values: storage in ``storage_dir``, loopback only.

    ``plugins`` replaces the plugin list (default: none, for a fast start);
    ``extra`` keys are set as they are.
    """
    config = json.loads(CONFIG_TEMPLATE.read_text(encoding="utf-8"))
    config.update({
        "StorageDirectory": str(storage_dir), "IndexDirectory": str(storage_dir),
        "HttpPort": http_port, "DicomPort": dicom_port, "RemoteAccessAllowed": False,
        "DicomModalities": {NODE_MODALITY: [node_ae, node_host, node_port]},
        "LuaScripts": [str(LUA_SCRIPT)], "Plugins": plugins or [],
    })
    config.pop("WebViewer", None)
    if stable_age is not None:
        config["StableAge"] = stable_age
    if users is not None:
        config["RegisteredUsers"] = users
    config.update(extra)
    return config


def write_orthanc_config(path: Path, **kwargs: Any) -> Path:
    """Write :func:`orthanc_config` (same arguments) to ``path`` as JSON; returns ``path``."""
    path.write_text(json.dumps(orthanc_config(**kwargs), indent=2), encoding="utf-8")
    return path
