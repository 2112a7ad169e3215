"""``mammoxai serve [--port N] [--ae-title AE] [--once] [--role all|scp|worker]``: run the DICOM node until
SIGTERM/SIGINT.

``--role all`` (the default) runs everything in one process. With a broker (``node.job_store = "redis"``),
``--role scp`` receives, spools and enqueues, and ``--role worker`` (as many as wanted, on any machine
mounting the same ``node.spool_dir``) claims, processes and sends.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import Any

from ..config import Settings
from ..errors import MammoxaiError

log = logging.getLogger(__name__)

HELP = "run the DICOM node: C-STORE SCP, job queue, workers, results back to the PACS"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="override node.port")
    p.add_argument("--ae-title", help="override node.ae_title")
    p.add_argument("--once", action="store_true", help="process what is queued, then exit (no SCP)")
    p.add_argument("--role", choices=["all", "scp", "worker"], default="all",
                   help="all: everything in one process (default); with node.job_store = 'redis': scp (receive, "
                        "spool, enqueue) or worker (claim, process, send)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the node until SIGTERM/SIGINT (graceful stop); with ``--once``, until the queue is worked off."""
    from ..node.server import Node

    if getattr(args, "port", None) is not None:
        settings.node.port = args.port
    if getattr(args, "ae_title", None):
        settings.node.ae_title = args.ae_title
    once = bool(getattr(args, "once", False))
    role = getattr(args, "role", None) or "all"
    if once and role != "all":
        raise MammoxaiError("serve --once runs every step itself: it cannot be combined with --role")
    node = Node(settings, scp=not once, role=role)
    stop = threading.Event()

    def _signal(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping (finishing the job in hand)", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, _signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        node.start()
        if once:
            settings.node.study_quiet_seconds = 0.0
            while not stop.is_set() and not node.idle():
                # a destination that is down leaves jobs 'sending' with a back-off: give up on them for now
                counts = node.queue.counts()
                backing_off = node.queue.list(["sending"])
                if (counts["received"] + counts["running"] == 0 and backing_off
                        and all(j.send_attempts > 0 and j.next_attempt_at > time.time() for j in backing_off)
                        and not node.queue.due_summaries(0.0, now=float("inf"))):
                    log.warning("%d job(s) still waiting for the destination; they stay queued", len(backing_off))
                    break
                stop.wait(0.2)
        else:
            if role == "all":
                log.info("node %s ready: SCP port %d, %d worker(s), results to %s", settings.node.ae_title,
                         node.scp.port if node.scp else 0, settings.node.workers, node.destination.describe())
            elif role == "scp":
                log.info("node %s ready (role scp): SCP port %d, jobs to %s", settings.node.ae_title,
                         node.scp.port if node.scp else 0, node.queue.describe())
            else:
                log.info("node %s ready (role worker, consumer %s): %d worker(s) on jobs from %s, results to %s",
                         settings.node.ae_title, getattr(node.queue, "consumer", ""), settings.node.workers,
                         node.queue.describe(), node.destination.describe())
            stop.wait()
    finally:
        node.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
