"""The scaled node end to end (issue 15): a real redis-server, one ``serve --role scp`` and two ``serve --role
worker`` processes (the bundled demo model, one cheap explainer, one thread each) on one shared spool.

20 phantoms (5 studies x 4 views) go in with dcmtk ``storescu``. Test 1 SIGKILLs a worker while the broker
shows it holding a job; test 2 SIGKILLs the broker mid-run and starts it again on the same AOF. Both assert
that every expected result (each image's SC, SR, SEG, GSPS; each study's summary) arrives in the folder
destination exactly once, and nothing else: the expected SOP Instance UIDs are computed by running the same
pipeline in the test (output UIDs are deterministic functions of the source).
"""

from __future__ import annotations

import collections
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pydicom
import pytest

from mammoxai.config import Settings
from mammoxai.node.redis_store import RedisJobStore
from node_helpers import echo_ok, free_port, poll, write_toml

pytestmark = [pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
STUDIES, VIEWS = 5, (("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO"))
SECTIONS = {
    "explainers": {"profile": "custom", "enabled": ["gradcam"], "quality": False, "sanity": "off"},
    "output": {"sc_methods": ["gradcam"], "montage": False},
    "model": {"device": "cpu"},
}


def make_phantoms(folder: Path) -> list[Path]:
    """20 small phantoms: 5 studies, each with the four standard views."""
    from mammoxai.dicom_io.identity import new_source_uid
    from mammoxai.dicom_io.synthetic import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    folder.mkdir()
    paths = []
    for s in range(STUDIES):
        study = new_source_uid()
        for v, (laterality, view) in enumerate(VIEWS):
            ph = generate_phantom(100 + 4 * s + v, laterality=laterality, view=view, shape=(256, 208))
            path = folder / f"s{s}v{v}.dcm"
            write_phantom_dicom(ph.image, laterality=laterality, view=view, path=path, study_instance_uid=study,
                                patient_id=f"PHANTOM-{s}", instance_number=v + 1)
            paths.append(path)
    return paths


def expected_outputs(paths: list[Path], settings: Settings) -> set[str]:
    """The SOP Instance UIDs the node must deliver: the pipeline's outputs per image and per study."""
    import torch

    from mammoxai.pipeline import Pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # like the workers; the default oversubscribes a shared 2-core machine
    try:
        return _expected_outputs(paths, Pipeline(settings))
    finally:
        torch.set_num_threads(threads)


def _expected_outputs(paths: list[Path], pipeline) -> set[str]:
    uids: set[str] = set()
    records: dict[str, list] = collections.defaultdict(list)
    for path in paths:
        [outcome] = pipeline.outcomes([path])
        assert outcome.status == "done", outcome.reason
        uids.update(str(ds.SOPInstanceUID) for ds in outcome.outputs)
        records[str(pydicom.dcmread(path, stop_before_pixels=True).StudyInstanceUID)].append(outcome.record)
    for study_records in records.values():
        summary = pipeline.study_summary(study_records)
        if summary is not None:
            uids.add(str(summary.SOPInstanceUID))
    return uids


def delivered(out: Path) -> collections.Counter:
    """SOP Instance UID -> how many files in the folder destination carry it."""
    return collections.Counter(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)
                               for p in out.rglob("*.dcm"))


class Cluster:
    """One SCP and two workers, real subprocesses of ``python -m mammoxai.cli serve --role ...``."""

    def __init__(self, tmp: Path, broker_url: str) -> None:
        self.tmp = tmp
        self.port = free_port()
        self.out = tmp / "out"
        self.config = write_toml(tmp / "node.toml", {
            "node": {"port": self.port, "spool_dir": str(tmp / "spool"), "http_port": 0, "job_store": "redis",
                     "broker_url": broker_url, "broker_lease_s": 2.0, "study_quiet_seconds": 1.0,
                     "batch_images": 2, "disk_free_watermark_mb": 0, "max_process_attempts": 3},
            "destination": {"kind": "folder", "folder": str(self.out), "backoff_initial_s": 0.2,
                            "backoff_max_s": 1.0},
            **SECTIONS,
        })
        self.procs: dict[str, subprocess.Popen] = {}
        self.http: dict[str, int] = {}

    def start(self, name: str, role: str) -> None:
        self.http[name] = free_port()
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", MAMMOXAI_NODE__CONSUMER_NAME=name,
                   MAMMOXAI_NODE__HTTP_PORT=str(self.http[name]))
        env.pop("MAMMOXAI_PIPELINE_FACTORY", None)
        log = open(self.tmp / f"{name}.log", "ab")
        self.procs[name] = subprocess.Popen(
            [sys.executable, "-m", "mammoxai.cli", "--config", str(self.config), "serve", "--role", role],
            stdout=log, stderr=log, env=env, cwd=REPO)

    def log(self, name: str) -> str:
        return (self.tmp / f"{name}.log").read_text(errors="replace")

    def healthz(self, name: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http[name]}/healthz", timeout=5) as r:
                return r.status
        except OSError as exc:
            return getattr(exc, "code", 0) or 0

    def metrics(self, name: str) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http[name]}/metrics", timeout=5) as r:
            return r.read().decode()

    def ready(self) -> None:
        def up() -> bool:
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise AssertionError(f"{name} exited: {self.log(name)[-3000:]}")
            return all(self.healthz(n) == 200 for n in self.procs) and echo_ok(self.port)
        poll(up, 120, 0.2, "SCP and workers to answer /healthz (and the SCP C-ECHO)")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGCONT)
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def storescu(port: int, paths: list[Path]) -> None:
    r = subprocess.run(["storescu", "-R", "-aet", "PACS", "-aec", "MAMMOXAI", "127.0.0.1", str(port),
                        *map(str, paths)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr


def all_finished(store: RedisJobStore, n: int) -> bool:
    jobs = store.list()
    instances = [j for j in jobs if j.kind == "instance"]
    summaries = [j for j in jobs if j.kind == "summary"]
    return (len(instances) == n and all(j.state == "done" for j in instances)
            and len(summaries) == STUDIES and all(j.state == "done" for j in summaries)
            and not store.due_summaries(0.0, now=float("inf")))


def assert_exactly_once(out: Path, expected: set[str]) -> None:
    got = delivered(out)
    assert {uid for uid, n in got.items() if n > 1} == set()          # no result twice
    assert set(got) - expected == set()                               # nothing unexpected
    assert expected - set(got) == set()                               # nothing missing


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], set[str]]:
    """The 20 phantoms and the results expected of them (shared by the tests: each has its own broker and node)."""
    paths = make_phantoms(tmp_path_factory.mktemp("phantoms") / "in")
    return paths, expected_outputs(paths, Settings(**SECTIONS))


def test_a_worker_killed_while_holding_a_job_loses_nothing_and_duplicates_nothing(tmp_path, redis_server,
                                                                                  phantoms):
    paths, expected = phantoms
    cluster = Cluster(tmp_path, redis_server.url)
    store = RedisJobStore(redis_server.url, consumer="test-observer", lease_s=2.0)
    try:
        cluster.start("scp", "scp")
        cluster.start("worker-a", "worker")
        cluster.start("worker-b", "worker")
        cluster.ready()
        storescu(cluster.port, paths)
        victim = cluster.procs["worker-a"]

        def freeze_a_holder() -> int | None:
            """SIGSTOP worker-a while the broker shows it holding a job; the job it holds, frozen."""
            held = [j for j in store.list(["running"]) if j.worker == "worker-a" and j.kind == "instance"]
            if not held:
                return None
            victim.send_signal(signal.SIGSTOP)
            still = [j for j in held if store.get(j.id).state == "running" and store.worker_of(j.id) == "worker-a"]
            if still:
                return still[0].id
            victim.send_signal(signal.SIGCONT)
            return None

        job_id = poll(freeze_a_holder, 120, 0.01, "worker-a to hold a job")
        victim.send_signal(signal.SIGKILL)
        victim.wait(10)
        del cluster.procs["worker-a"]

        poll(lambda: all_finished(store, len(paths)), 180, 0.2, "every job and study summary done")
        taken_over = store.get(job_id)
        assert taken_over.worker == "worker-b" and taken_over.attempts == 2     # redelivered, attempt counted
        assert_exactly_once(cluster.out, expected)
        assert cluster.healthz("worker-b") == 200 and cluster.healthz("scp") == 200
        metrics = cluster.metrics("worker-b")
        assert 'mammoxai_node_role{role="worker"} 1.0' in metrics and "mammoxai_job_store_up 1.0" in metrics
        assert 'mammoxai_node_role{role="scp"} 1.0' in cluster.metrics("scp")
        # `mammoxai jobs` reads the broker
        r = subprocess.run([sys.executable, "-m", "mammoxai.cli", "--config", str(cluster.config), "jobs"],
                           capture_output=True, text=True, cwd=REPO, timeout=60)
        assert r.returncode == 0, r.stderr
        assert f"done={len(paths) + STUDIES}" in r.stdout and "running=0" in r.stdout
    finally:
        cluster.stop()
        store.close()
    for name in ("scp", "worker-b"):
        assert "node stopped (role" in cluster.log(name)


def test_a_broker_restart_mid_run_loses_nothing_and_duplicates_nothing(tmp_path, redis_server, phantoms):
    paths, expected = phantoms
    cluster = Cluster(tmp_path, redis_server.url)
    store = RedisJobStore(redis_server.url, consumer="test-observer", lease_s=2.0)
    try:
        cluster.start("scp", "scp")
        cluster.start("worker-a", "worker")
        cluster.start("worker-b", "worker")
        cluster.ready()
        storescu(cluster.port, paths)

        def mid_run() -> bool:
            c = store.counts()
            return c["sending"] + c["done"] >= 1 and c["received"] + c["running"] >= 4
        poll(mid_run, 120, 0.02, "some jobs processed and some waiting")
        redis_server.kill()                     # SIGKILL: only what the AOF (fsync always) holds survives
        redis_server.start()                    # same port, same AOF directory
        assert len([j for j in store.list() if j.kind == "instance"]) == len(paths)   # no job lost

        poll(lambda: all_finished(store, len(paths)), 180, 0.2, "every job and study summary done after the restart")
        assert_exactly_once(cluster.out, expected)
        assert all(p.poll() is None for p in cluster.procs.values())     # every role rode the restart out
        assert all(cluster.healthz(n) == 200 for n in cluster.procs)
    finally:
        cluster.stop()
        store.close()
