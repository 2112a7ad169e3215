"""The broker-based node (issue 15): worker-process throughput, and the job store's own cost per job.

In one run:

1. **Throughput**: a real ``redis-server`` (``docker/redis.conf``: AOF, ``appendfsync always``) and 1, then 2,
   ``mammoxai serve --role worker`` processes (each limited to one thread: ``OMP_NUM_THREADS=1``,
   ``torch.set_num_threads(1)`` through it), the bundled demo model. Once every worker answers ``/healthz``
   (model loaded), N phantoms are enqueued on the broker at once (files in the shared spool, jobs added as
   the SCP adds them) and the clock runs until every job is 'done' (processed *and* delivered to a folder).
2. **Per-job overhead of the store**: the node's life cycle of one job (receive, claim, staged, due for
   sending, delivered: 5 store operations) in one process, ``RedisJobStore`` vs the SQLite ``JobQueue``
   (``synchronous=FULL``), both durable on the same disk.

    .venv/bin/python benchmarks/bench_broker.py [--images 16] [--jobs 300] [--shape 512 416] [--out FILE]

Prints a Markdown table (and writes it to ``--out``). The explainer set is one method (gradcam, SC + SR +
SEG + GSPS written) to keep the run short; processing cost per image is what the profile makes it, the
store's overhead is not.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "distributed"))
sys.path.insert(0, str(REPO / "tests" / "node"))

from broker_helpers import RedisServer, free_port  # noqa: E402
from node_helpers import write_toml  # noqa: E402

SECTIONS = {
    "explainers": {"profile": "custom", "enabled": ["gradcam"], "quality": False, "sanity": "off"},
    "output": {"sc_methods": ["gradcam"], "montage": False},
    "model": {"device": "cpu"},
}


def phantoms(folder: Path, n: int, shape: tuple[int, int]) -> list[Path]:
    from mammoxai.dicom_io.identity import new_source_uid
    from mammoxai.dicom_io.synthetic import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    views = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    study = new_source_uid()
    for i in range(n):
        if i % 4 == 0:
            study = new_source_uid()
        laterality, view = views[i % 4]
        ph = generate_phantom(1000 + i, laterality=laterality, view=view, shape=shape)
        path = folder / f"p{i}.dcm"
        write_phantom_dicom(ph.image, laterality=laterality, view=view, path=path, study_instance_uid=study)
        paths.append(path)
    return paths


def enqueue(store, spool, paths: list[Path]) -> None:
    """What the SCP does per instance: commit the file into the spool, then the job."""
    import pydicom

    for path in paths:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        target = spool.commit_file(Path(shutil.copy(path, spool.temp_path(".dcm"))),
                                   spool.instance_path(str(ds.SOPInstanceUID)))
        store.add_received(str(ds.SOPInstanceUID), str(ds.SOPClassUID), str(ds.StudyInstanceUID),
                           str(ds.SeriesInstanceUID), target, "BENCH")


def throughput(root: Path, workers: int, images: list[Path]) -> float:
    """Images per second with ``workers`` worker processes (startup excluded)."""
    from mammoxai.node.redis_store import RedisJobStore
    from mammoxai.node.spool import Spool

    root.mkdir(parents=True)
    redis = RedisServer(root / "redis")
    redis.start()
    config = write_toml(root / "node.toml", {
        "node": {"spool_dir": str(root / "spool"), "job_store": "redis", "broker_url": redis.url,
                 "broker_lease_s": 60.0, "study_quiet_seconds": 3600.0, "batch_images": 1, "disk_free_watermark_mb": 0},
        "destination": {"kind": "folder", "folder": str(root / "out")},
        **SECTIONS,
    })
    procs, ports = [], []
    store = RedisJobStore(redis.url, consumer="bench")
    try:
        for i in range(workers):
            ports.append(free_port())
            env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                       MAMMOXAI_NODE__CONSUMER_NAME=f"bench-worker-{i}", MAMMOXAI_NODE__HTTP_PORT=str(ports[-1]))
            log = open(root / f"worker-{i}.log", "ab")
            procs.append(subprocess.Popen([sys.executable, "-m", "mammoxai.cli", "--config", str(config), "serve",
                                           "--role", "worker"], stdout=log, stderr=log, env=env, cwd=REPO))
        deadline = time.monotonic() + 300
        for port in ports:
            while True:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                        if r.status == 200:
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"workers did not start; see {root}")
                time.sleep(0.2)
        spool = Spool(root / "spool")
        # warm-up: one image per worker (first forward passes are slower), not timed
        enqueue(store, spool, images[:workers])
        while done(store) < workers:
            time.sleep(0.05)
        timed = images[workers:]
        started = time.perf_counter()
        enqueue(store, spool, timed)
        while done(store) < len(images):
            if time.perf_counter() - started > 1800:
                raise SystemExit("throughput run did not finish in 30 min")
            time.sleep(0.05)
        return len(timed) / (time.perf_counter() - started)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            p.wait(60)
        store.close()
        redis.stop()


def done(store) -> int:
    """Instance jobs processed and delivered (study summaries are not counted: they wait an hour here)."""
    return sum(1 for j in store.list(["done"]) if j.kind == "instance")


def lifecycle_ms(store, jobs: int, tag: str) -> float:
    """Median milliseconds of one job's 5 store operations (receive, claim, staged, due, delivered)."""
    times = []
    for i in range(jobs):
        started = time.perf_counter()
        job_id = store.add_received(f"1.2.826.0.{tag}.{i}", "1.2.840.10008.5.1.4.1.1.1.2", f"1.2.826.9.{i // 4}",
                                    "1.2.826.8", f"/spool/{i}.dcm", "BENCH")
        [job] = store.claim(1, worker="bench")
        assert job.id == job_id
        store.mark_sending(job.id, 5, {"predict": 0.1})
        [due] = store.due_for_sending()
        assert store.finish_delivery(due.id, due.revision, {"send": 0.01})
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def overhead(root: Path, jobs: int) -> tuple[float, float]:
    from mammoxai.node.queue import JobQueue
    from mammoxai.node.redis_store import RedisJobStore

    root.mkdir(parents=True)
    sqlite = JobQueue(root / "queue.sqlite")
    redis_server = RedisServer(root / "redis")
    redis_server.start()
    store = RedisJobStore(redis_server.url, consumer="bench")
    try:
        lifecycle_ms(sqlite, 20, "warm-sqlite")
        lifecycle_ms(store, 20, "warm-redis")
        return lifecycle_ms(sqlite, jobs, "sqlite"), lifecycle_ms(store, jobs, "redis")
    finally:
        sqlite.close()
        store.close()
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=16, help="phantoms per throughput run (after warm-up)")
    parser.add_argument("--jobs", type=int, default=300, help="jobs in the store overhead comparison")
    parser.add_argument("--shape", type=int, nargs=2, default=(512, 416), help="phantom rows columns")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-broker-") as tmp:
        root = Path(tmp)
        sqlite_ms, redis_ms = overhead(root / "overhead", args.jobs)
        rates = {}
        for workers in (1, 2):
            images = phantoms(root / f"in-{workers}", args.images + workers, tuple(args.shape))
            rates[workers] = throughput(root / f"run-{workers}", workers, images)
    cores = os.cpu_count()
    lines = [
        f"Broker (Redis {_redis_version()}, AOF appendfsync always) on {cores} CPU cores; demo model, gradcam only "
        f"(SC + SR + 2 SEG + GSPS per image), {args.shape[0]}x{args.shape[1]} phantoms, {args.images} timed images "
        "per run after one warm-up image per worker, folder destination, study summaries not made.",
        "",
        "| worker processes (1 thread each) | images/s | speed-up |",
        "|---|---|---|",
        f"| 1 | {rates[1]:.2f} | 1.00x |",
        f"| 2 | {rates[2]:.2f} | {rates[2] / rates[1]:.2f}x |",
        "",
        f"| job store | ms per job (5 operations, median of {args.jobs}) | vs SQLite |",
        "|---|---|---|",
        f"| SQLite JobQueue (WAL, synchronous=FULL) | {sqlite_ms:.2f} | 1.00x |",
        f"| RedisJobStore (Lua scripts, appendfsync always) | {redis_ms:.2f} | {redis_ms / sqlite_ms:.2f}x |",
        "",
        f"Per-job store overhead relative to processing: Redis {redis_ms:.2f} ms vs "
        f"{1000 / rates[1]:.0f} ms per image for one worker ({100 * redis_ms / (1000 / rates[1]):.2f} %).",
        "",
        "Command: `.venv/bin/python benchmarks/bench_broker.py " + " ".join(sys.argv[1:]) + "`",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


def _redis_version() -> str:
    out = subprocess.run(["/usr/bin/redis-server", "--version"], capture_output=True, text=True).stdout
    return next((w.split("=")[1] for w in out.split() if w.startswith("v=")), "?")


if __name__ == "__main__":
    main()
