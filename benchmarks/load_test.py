"""Load test of the node's Storage SCP: A concurrent storescu associations x N large mammograms each.

Every instance must be stored, every job done, nothing lost. The same files
are first sent to dcmtk's ``storescp`` (``--fork``, one process per
association) for a reference ingest throughput, then to ``mammoxai serve``
(a real subprocess; the stand-in pipeline from ``tests/node`` by default so
the test measures the node, not the model; ``--pipeline real`` for the
real one) with results written to a folder.

    .venv/bin/python benchmarks/load_test.py                       # 4 x 25 x ~42 MB (heavy: ~4.2 GB of files)
    .venv/bin/python benchmarks/load_test.py --per-association 5   # reduced run

Writes ``benchmarks/results/load_test.json`` and prints a summary.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

REPO = Path(__file__).resolve().parents[1]
MG = "1.2.840.10008.5.1.4.1.1.1.2"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.2)


def echo(port: int, ae: str) -> bool:
    return subprocess.run(["echoscu", "-to", "2", "-aec", ae, "127.0.0.1", str(port)],
                          capture_output=True).returncode == 0


def make_files(folder: Path, count: int, rows: int, cols: int, studies: int) -> list[Path]:
    """``count`` 16-bit MG files (Rows x Columns, uncompressed), spread over ``studies`` studies."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 4096, (rows, cols), dtype=np.uint16).tobytes()
    study_uids = [generate_uid() for _ in range(studies)]
    paths = []
    for i in range(count):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = MG
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPClassUID = MG
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.PatientName, ds.PatientID = "Load^Test", f"LOAD{i % studies}"
        ds.StudyInstanceUID = study_uids[i % studies]
        ds.SeriesInstanceUID = generate_uid()
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "MG", 1, i + 1
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
        ds.PixelData = pixels
        path = folder / f"mg{i:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def send_concurrently(port: int, ae: str, groups: list[list[Path]]) -> tuple[float, list[int]]:
    """One storescu per group, all at once; returns (seconds until the last exits, exit codes)."""
    start = time.perf_counter()
    procs = [subprocess.Popen(["storescu", "-R", "-aec", ae, "127.0.0.1", str(port), *map(str, g)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for g in groups]
    codes = [p.wait() for p in procs]
    return time.perf_counter() - start, codes


def run_dcmtk(groups: list[list[Path]], work: Path) -> dict:
    out = work / "storescp"
    out.mkdir()
    port = free_port()
    # --fork: one process per association; +B: write the data set as received (no decode and re-encode),
    # the fastest dcmtk mode and the same work as our SCP (which streams the bytes to disk)
    proc = subprocess.Popen(["storescp", "--fork", "+B", "-aet", "STORESCP", "-od", str(out), str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: echo(port, "STORESCP"), 30, "storescp")
        seconds, codes = send_concurrently(port, "STORESCP", groups)
        wait_until(lambda: len(list(out.iterdir())) >= sum(map(len, groups)), 60, "storescp files")
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        proc.wait(10)
    received = len(list(out.iterdir()))
    shutil.rmtree(out)
    return {"seconds": seconds, "exit_codes": codes, "received": received}


def counts(db: Path) -> dict[str, int]:
    if not db.exists():
        return {}
    with sqlite3.connect(db, timeout=30) as con:
        return dict(con.execute("SELECT state, COUNT(*) FROM jobs WHERE kind = 'instance' GROUP BY state"))


def run_node(groups: list[list[Path]], work: Path, pipeline: str, timeout: float) -> dict:
    port, http_port = free_port(), free_port()
    spool, out = work / "spool", work / "results"
    config = work / "node.toml"
    config.write_text(
        f'[node]\nport = {port}\nspool_dir = "{spool}"\nhttp_port = {http_port}\nmax_associations = 8\n'
        f'disk_free_watermark_mb = 512\nstudy_quiet_seconds = 2.0\nmax_dataset_mb = 1024\n'
        f'[destination]\nkind = "folder"\nfolder = "{out}"\n'
        + ('[explainers]\nenabled = ["gradcam"]\nquality = false\n' if pipeline == "real" else ""))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests" / "node"), str(REPO)])
    if pipeline == "standin":
        env["MAMMOXAI_PIPELINE_FACTORY"] = "node_standin:make_pipeline"
    log = open(work / "node.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "mammoxai.cli", "--config", str(config), "serve"],
                            stdout=log, stderr=log, env=env, cwd=REPO)
    total = sum(map(len, groups))
    try:
        wait_until(lambda: echo(port, "MAMMOXAI"), 120, "the node")
        start = time.perf_counter()
        seconds, codes = send_concurrently(port, "MAMMOXAI", groups)
        wait_until(lambda: counts(spool / "queue.sqlite").get("done", 0) >= total
                   or counts(spool / "queue.sqlite").get("failed", 0) + counts(spool / "queue.sqlite").get("dead", 0) > 0,
                   timeout, "every job done")
        all_done = time.perf_counter() - start
        with __import__("urllib.request").request.urlopen(f"http://127.0.0.1:{http_port}/metrics") as r:
            metrics = r.read().decode()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(120)
    state = counts(spool / "queue.sqlite")
    outputs = len(list(out.rglob("*.dcm"))) if out.exists() else 0
    latency = [line for line in metrics.splitlines() if line.startswith("mammoxai_job_latency_seconds_")]
    return {"ingest_seconds": seconds, "exit_codes": codes, "all_done_seconds": all_done, "jobs": state,
            "outputs": outputs, "instances_in_spool": len(list((spool / "instances").iterdir())),
            "latency_metrics": latency, "exit_code": proc.returncode}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--associations", type=int, default=4)
    parser.add_argument("--per-association", type=int, default=25)
    parser.add_argument("--rows", type=int, default=5120)
    parser.add_argument("--columns", type=int, default=4096, help="5120 x 4096 x 2 bytes = 42 MB per file")
    parser.add_argument("--pipeline", choices=["standin", "real"], default="standin")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--rounds", type=int, default=3, help="alternating dcmtk / mammoxai rounds")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "load_test.json")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mammoxai-load-", dir=args.workdir))
    try:
        total = args.associations * args.per_association
        t0 = time.perf_counter()
        files = make_files(work, total, args.rows, args.columns, studies=args.associations * 2)
        size_mb = sum(f.stat().st_size for f in files) / 2**20
        print(f"{total} files, {size_mb / total:.1f} MB each, {size_mb:.0f} MB in all "
              f"(written in {time.perf_counter() - t0:.1f} s)", flush=True)
        groups = [files[i::args.associations] for i in range(args.associations)]
        dcmtk_runs, node_runs = [], []
        for round_ in range(args.rounds):
            # alternate the order so that neither side always gets the warm page cache
            order = ["dcmtk", "node"] if round_ % 2 == 0 else ["node", "dcmtk"]
            for side in order:
                if side == "dcmtk":
                    dcmtk = run_dcmtk(groups, work)
                    dcmtk_runs.append(dcmtk)
                    print(f"round {round_ + 1} dcmtk storescp: {dcmtk['received']}/{total} in "
                          f"{dcmtk['seconds']:.2f} s = {size_mb / dcmtk['seconds']:.0f} MB/s", flush=True)
                else:
                    round_dir = work / f"node{round_}"
                    round_dir.mkdir()
                    node = run_node(groups, round_dir, args.pipeline, args.timeout)
                    shutil.rmtree(round_dir / "results", ignore_errors=True)
                    node_runs.append(node)
                    print(f"round {round_ + 1} mammoxai SCP: ingest {node['ingest_seconds']:.2f} s = "
                          f"{size_mb / node['ingest_seconds']:.0f} MB/s; all {total} jobs done after "
                          f"{node['all_done_seconds']:.1f} s; jobs {node['jobs']}; outputs {node['outputs']}", flush=True)
        ok = all(all(c == 0 for c in d["exit_codes"]) and d["received"] == total for d in dcmtk_runs) and all(
            all(c == 0 for c in n["exit_codes"]) and n["jobs"].get("done") == total and n["instances_in_spool"] == 0
            and n["outputs"] >= total for n in node_runs)
        median = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
        result = {"associations": args.associations, "per_association": args.per_association, "files": total,
                  "mb_per_file": size_mb / total, "total_mb": size_mb, "pipeline": args.pipeline,
                  "cpus": os.cpu_count(), "rounds": args.rounds, "dcmtk_storescp": dcmtk_runs, "mammoxai": node_runs,
                  "dcmtk_mb_s_median": median([size_mb / d["seconds"] for d in dcmtk_runs]),
                  "mammoxai_ingest_mb_s_median": median([size_mb / n["ingest_seconds"] for n in node_runs]),
                  "mammoxai_all_done_s_median": median([n["all_done_seconds"] for n in node_runs]),
                  "nothing_lost": ok}
        print(f"median ingest: dcmtk {result['dcmtk_mb_s_median']:.0f} MB/s, "
              f"mammoxai {result['mammoxai_ingest_mb_s_median']:.0f} MB/s", flush=True)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=2))
        print(f"{'OK' if ok else 'FAILED'}: results in {args.out}")
        return 0 if ok else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
