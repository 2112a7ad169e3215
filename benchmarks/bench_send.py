"""Sending one image's results to Orthanc: Nagle's algorithm on or off at each end of the association.

One phantom's result objects (made by the pipeline: overlay SCs, montage, SR, SEGs, GSPS) are sent
with :func:`mammoxai.node.scu.c_store` (one association) to a real Debian Orthanc on loopback, in
four set-ups, interleaved over ``--rounds``: the node's sockets with or without ``TCP_NODELAY``
(:mod:`mammoxai.node.sockets`), Orthanc started with or without ``TCP_NODELAY=1``
(:data:`mammoxai.node.orthanc.ORTHANC_ENVIRONMENT`). A C-ECHO round trip is timed beside it.

    .venv/bin/python benchmarks/bench_send.py --rounds 5

Prints a Markdown table (medians) and writes it to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


@contextlib.contextmanager
def node_sockets(nodelay: bool) -> Iterator[None]:
    """The node's requestor handlers as shipped (Nagle off), or none (the operating system's default)."""
    import mammoxai.node.scu as scu

    shipped = scu.REQUESTOR_HANDLERS
    scu.REQUESTOR_HANDLERS = shipped if nodelay else []
    try:
        yield
    finally:
        scu.REQUESTOR_HANDLERS = shipped


def result_files(folder: Path) -> list[Path]:
    """One 2048 × 1664 phantom's result objects, written by the pipeline with the default settings."""
    from benchmarks.bench_end_to_end import make_phantoms
    from mammoxai.config import Settings
    from mammoxai.pipeline import Pipeline

    (path,) = make_phantoms(folder, 1, (2048, 1664), first_seed=1001)
    (item,) = Pipeline(Settings()).process([path])
    out = folder / "results"
    out.mkdir()
    files = []
    for i, ds in enumerate(item.outputs):
        files.append(out / f"{i:03d}.dcm")
        ds.save_as(files[-1], enforce_file_format=True)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "send_nodelay.md")
    args = parser.parse_args(argv)

    from benchmarks.bench_end_to_end import Orthanc, free_port
    from mammoxai.node.scu import Peer, c_echo, c_store

    times: dict[tuple[bool, bool], dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        files = result_files(Path(tmp))
        for orthanc_nodelay in (False, True):
            root = Path(tmp) / f"orthanc-{orthanc_nodelay}"
            orthanc = Orthanc(root, free_port(), nagle=not orthanc_nodelay)
            orthanc.start()
            try:
                peer = Peer("ORTHANC", "127.0.0.1", orthanc.dicom_port)
                c_store(files, peer, "MAMMOXAI")                                  # warm-up
                for _ in range(args.rounds):
                    for node_nodelay in (False, True):
                        slot = times.setdefault((node_nodelay, orthanc_nodelay), {"store": [], "echo": []})
                        with node_sockets(node_nodelay):
                            start = time.perf_counter()
                            statuses = [s for _, s in c_store(files, peer, "MAMMOXAI")]
                            slot["store"].append(time.perf_counter() - start)
                            if any(statuses):
                                raise SystemExit(f"Orthanc answered {statuses}")
                            start = time.perf_counter()
                            c_echo(peer, "MAMMOXAI")
                            slot["echo"].append(time.perf_counter() - start)
            finally:
                orthanc.stop()
                shutil.rmtree(root, ignore_errors=True)
        mb = sum(f.stat().st_size for f in files) / 2**20
    lines = [f"{len(files)} result objects of one 2048 × 1664 phantom ({mb:.1f} MB) to Debian Orthanc on loopback by "
             f"C-STORE, one association; C-ECHO on a new association each; median of {args.rounds} rounds.", "",
             "| node's sockets | Orthanc | C-STORE of the results (s) | C-ECHO incl. association (s) |",
             "|---|---|---|---|"]
    for (node_nodelay, orthanc_nodelay), slot in sorted(times.items()):
        lines.append(f"| {'TCP_NODELAY' if node_nodelay else 'Nagle on'} | "
                     f"{'TCP_NODELAY=1' if orthanc_nodelay else 'Nagle on (dcmtk default)'} | "
                     f"{statistics.median(slot['store']):.3f} | {statistics.median(slot['echo']):.3f} |")
    text = "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
