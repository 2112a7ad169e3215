"""docker/: the compose file parses and runs the same Orthanc configuration and Lua script as the tests."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from mammoxai.config import load_settings
from mammoxai.node.orthanc import CONFIG_TEMPLATE, LUA_SCRIPT, NODE_MODALITY, orthanc_config

DOCKER = Path(__file__).resolve().parents[2] / "docker"


def test_compose_wires_orthanc_and_node(monkeypatch):
    compose = yaml.safe_load((DOCKER / "compose.yaml").read_text())
    services = compose["services"]
    assert {"orthanc", "mammoxai"} <= set(services)
    mounts = {}
    for volume in services["orthanc"]["volumes"]:
        source, target = volume.split(":")[:2]
        if source.startswith("."):
            mounts[(DOCKER / source).resolve()] = target
    template = json.loads(CONFIG_TEMPLATE.read_text())
    # the very files the tests use, mounted where the configuration expects them
    assert mounts[CONFIG_TEMPLATE.resolve()] == "/etc/orthanc/orthanc.json"
    assert mounts[LUA_SCRIPT.resolve()] in template["LuaScripts"]
    node_env = services["mammoxai"]["environment"]
    ae, host, port = template["DicomModalities"][NODE_MODALITY]
    assert host == "mammoxai" and ae == node_env["MAMMOXAI_NODE__AE_TITLE"] and str(port) == node_env["MAMMOXAI_NODE__PORT"]
    assert node_env["MAMMOXAI_DESTINATION__HOST"] == "orthanc"
    assert f"{template['DicomPort']}:{template['DicomPort']}" in services["orthanc"]["ports"]
    assert "'" + NODE_MODALITY + "'" in LUA_SCRIPT.read_text()        # the script routes to that modality
    # every environment variable is a valid setting
    for key, value in node_env.items():
        monkeypatch.setenv(key, str(value))
    settings = load_settings()
    assert settings.destination.kind == "dicom" and settings.node.port == int(node_env["MAMMOXAI_NODE__PORT"])
    # the Dockerfiles the compose file builds exist and copy files that exist
    for service in services.values():
        if "build" not in service:      # an upstream image (the scaled profile's broker)
            continue
        dockerfile = (DOCKER / service["build"]["context"] / service["build"]["dockerfile"]).resolve()
        context = (DOCKER / service["build"]["context"]).resolve()
        ignore_file = dockerfile.with_name(dockerfile.name + ".dockerignore")
        ignored = set()
        if context != DOCKER.resolve():        # the repository root: the virtualenv must stay out
            ignored = {line.strip() for line in ignore_file.read_text().splitlines()
                       if line.strip() and not line.startswith("#")}
            assert ".venv" in ignored and ".git" in ignored
        for line in dockerfile.read_text().splitlines():
            m = re.match(r"COPY\s+(.+)\s+\S+$", line)
            if m:
                for source in m.group(1).split():
                    assert (context / source).exists(), f"{dockerfile.name}: COPY {source} missing"
                    assert source not in ignored, f"{dockerfile.name}: COPY {source} is excluded"


def test_compose_scaled_profile_wires_broker_scp_and_workers(monkeypatch):
    """Profile 'scaled': Redis with docker/redis.conf (durable), one SCP answering as the routed host, workers."""
    services = yaml.safe_load((DOCKER / "compose.yaml").read_text())["services"]
    scaled = {name for name, s in services.items() if "scaled" in s.get("profiles", [])}
    assert scaled == {"redis", "scp", "worker"}
    assert "profiles" not in services["mammoxai"] and "profiles" not in services["orthanc"]   # default unchanged
    redis = services["redis"]
    conf_mount = next(v for v in redis["volumes"] if v.startswith("./redis.conf:"))
    assert conf_mount.split(":")[1] in redis["command"]
    conf = (DOCKER / "redis.conf").read_text()
    assert re.search(r"^appendonly yes$", conf, re.M) and re.search(r"^appendfsync always$", conf, re.M)
    assert services["scp"]["command"] == ["serve", "--role", "scp"]
    assert services["worker"]["command"] == ["serve", "--role", "worker"]
    template = json.loads(CONFIG_TEMPLATE.read_text())
    _, host, port = template["DicomModalities"][NODE_MODALITY]
    assert host in services["scp"]["networks"]["default"]["aliases"]
    assert f"{port}:{port}" in services["scp"]["ports"] and "ports" not in services["worker"]   # workers scale
    spool = [v for v in services["mammoxai"]["volumes"] if "spool" in v]
    assert spool and spool[0] in services["scp"]["volumes"] and spool[0] in services["worker"]["volumes"]
    for name in ("scp", "worker"):
        for key, value in services[name]["environment"].items():
            monkeypatch.setenv(key, str(value))
        settings = load_settings()
        assert settings.node.job_store == "redis" and settings.node.broker_url.startswith("redis://redis:")
        assert settings.node.port == int(port)


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda", "Dockerfile.orthanc"])
def test_dockerfiles_have_a_base_and_an_entrypoint(name):
    text = (DOCKER / name).read_text()
    assert re.search(r"^FROM \S+", text, re.M) and "ENTRYPOINT" in text
    if name == "Dockerfile.cuda":
        assert "nvidia/cuda" in text


def test_orthanc_config_local_values(tmp_path):
    config = orthanc_config(tmp_path, 8043, 4243, "NODE", "127.0.0.1", 11113)
    assert config["DicomModalities"] == {NODE_MODALITY: ["NODE", "127.0.0.1", 11113]}
    assert config["LuaScripts"] == [str(LUA_SCRIPT)] and config["RemoteAccessAllowed"] is False
    assert config["StorageDirectory"] == str(tmp_path) and config["Plugins"] == []
