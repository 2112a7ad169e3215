"""``mammoxai serve [--port N] [--ae-title AE] [--once]``: run the DICOM node until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
import logging
import signal
import threading
import time
from typing import Any

from ..config import Settings

log = logging.getLogger(__name__)

HELP = "run the DICOM node: C-STORE SCP, job queue, workers, results back to the PACS"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--port", type=int, help="override node.port")
    p.add_argument("--ae-title", help="override node.ae_title")
    p.add_argument("--once", action="store_true", help="process what is queued, then exit (no SCP)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Run the node until SIGTERM/SIGINT (graceful stop); with ``--once``, until the queue is worked off."""
    from ..node.server import Node

    if getattr(args, "port", None) is not None:
        settings.node.port = args.port
    if getattr(args, "ae_title", None):
        settings.node.ae_title = args.ae_title
    once = bool(getattr(args, "once", False))
    node = Node(settings, scp=not once)
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
            log.info("node %s ready: SCP port %d, %d worker(s), results to %s", settings.node.ae_title,
                     node.scp.port if node.scp else 0, settings.node.workers, node.destination.describe())
            stop.wait()
    finally:
        node.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return 0
