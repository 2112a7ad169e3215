"""The node: spool + queue + Storage SCP + workers + sender + /healthz and /metrics; ``mammoxai serve``."""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import threading
import time
from typing import Any, Callable

from ..config import Settings
from ..errors import MammoxaiError
from .metrics import HttpServer, Metrics, gpu_memory_gauges
from .queue import STATES, JobQueue
from .scp import StorageSCP, adopt_orphans
from .scu import Destination, make_destination
from .spool import Spool
from .worker import Sender, Worker

log = logging.getLogger(__name__)

PipelineFactory = Callable[[Settings], Any]
#: environment variable naming another pipeline factory ("module:callable", called with the settings)
PIPELINE_ENV = "MAMMOXAI_PIPELINE_FACTORY"


def default_pipeline_factory(settings: Settings) -> Any:
    """:class:`mammoxai.pipeline.Pipeline` (or the factory named by ``$MAMMOXAI_PIPELINE_FACTORY``)."""
    spec = os.environ.get(PIPELINE_ENV)
    if spec:
        module, _, name = spec.partition(":")
        if not name:
            raise MammoxaiError(f"{PIPELINE_ENV}={spec!r}: expected module:callable")
        return getattr(importlib.import_module(module), name)(settings)
    from ..pipeline import Pipeline

    return Pipeline(settings)


class NodeError(MammoxaiError):
    """The node cannot start (a port in use, an unusable spool, ...)."""


class Node:
    """Everything ``mammoxai serve`` runs, in one process. :meth:`start`, then :meth:`stop`.

    ``scp=False`` runs workers and sender only (``serve --once``).
    """

    def __init__(self, settings: Settings, pipeline_factory: PipelineFactory = default_pipeline_factory,
                 destination: Destination | None = None, scp: bool = True) -> None:
        self.settings = settings
        self.spool = Spool(settings.node.spool_dir)
        self.queue = JobQueue(self.spool.database)
        self.metrics = Metrics()
        self.stop_event = threading.Event()
        self.work_wake = threading.Event()
        self.send_wake = threading.Event()
        self.pipeline_factory = pipeline_factory
        self.destination = destination or make_destination(settings)
        self.with_scp = scp
        self.scp: StorageSCP | None = None
        self.http: HttpServer | None = None
        self.workers: list[Worker] = []
        self.sender: Sender | None = None
        self.pipeline: Any = None
        self.started_at = 0.0

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Recover from a crash, load the model once, start workers, sender, HTTP and the SCP (last)."""
        self.started_at = time.time()
        removed = self.spool.clear_tmp()
        recovered = self.queue.recover()
        adopted = adopt_orphans(self.spool, self.queue)
        if removed or recovered or adopted:
            log.info("recovered after a restart: %d job(s) re-queued, %d spooled instance(s) adopted, "
                     "%d partial file(s) removed", recovered, adopted, removed)
        self.pipeline = self.pipeline_factory(self.settings)
        lock = threading.Lock()
        for i in range(self.settings.node.workers):
            w = Worker(f"mammoxai-worker-{i}", self.settings, self.queue, self.spool, self.pipeline, self.metrics,
                       self.stop_event, self.work_wake, lock)
            w.start()
            self.workers.append(w)
        self.sender = Sender(self.settings, self.queue, self.spool, self.destination, self.metrics,
                             self.stop_event, self.send_wake)
        self.sender.start()
        self.metrics.add_gauges(self._gauges)
        self.metrics.add_gauges(gpu_memory_gauges)
        node = self.settings.node
        try:
            if node.http_port:
                self.http = HttpServer(node.http_host, node.http_port, self.metrics, self.healthy)
                self.http.start()
            if self.with_scp:
                self.scp = StorageSCP(self.settings, self.spool, self.queue,
                                      on_stored=lambda _id: self.work_wake.set(),
                                      on_event=lambda name: self.metrics.inc(
                                          "instances", event=name, help="C-STORE requests by outcome"))
                self.scp.start()
        except OSError as exc:
            self.stop(timeout=5)
            raise NodeError(f"cannot listen (node.host {node.host}:{node.port}, node.http_host "
                            f"{node.http_host}:{node.http_port}): {exc.strerror or exc}") from None

    def healthy(self) -> bool:
        """True while the worker and sender threads are alive (and the SCP listens, when it runs)."""
        threads_ok = all(w.is_alive() for w in self.workers) and self.sender is not None and self.sender.is_alive()
        return threads_ok and (not self.with_scp or self.scp is not None) and not self.stop_event.is_set()

    def _gauges(self) -> list[tuple[str, dict[str, str], float]]:
        counts = self.queue.counts()
        out = [("mammoxai_jobs", {"state": s}, float(counts[s])) for s in STATES]
        out.append(("mammoxai_queue_depth", {}, float(counts["received"] + counts["running"])))
        out.append(("mammoxai_send_backlog", {}, float(counts["sending"])))
        out.append(("mammoxai_oldest_waiting_seconds", {}, self.queue.oldest_waiting_age()))
        out.append(("mammoxai_uptime_seconds", {}, time.time() - self.started_at))
        return out

    def idle(self) -> bool:
        """No job waiting, running or sending, and no study summary pending (even one still in its quiet period)."""
        c = self.queue.counts()
        return (c["received"] + c["running"] + c["sending"] == 0
                and not self.queue.due_summaries(0.0, now=float("inf")))

    def stop(self, timeout: float = 600.0) -> None:
        """Graceful stop: no new associations, workers finish the batch in hand, then everything closes.

        A batch still running after ``timeout`` is re-queued (its jobs go back to 'received').
        """
        if self.scp is not None:
            self.scp.stop(timeout=min(timeout, 30.0))
        self.stop_event.set()
        self.work_wake.set()
        self.send_wake.set()
        deadline = time.time() + timeout
        for t in [*self.workers, *( [self.sender] if self.sender else [])]:
            t.join(max(0.0, deadline - time.time()))
        still = self.queue.list(["running"])
        for job in still:
            self.queue.requeue(job.id)
        if still:
            log.warning("re-queued %d job(s) still running at shutdown", len(still))
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.queue.close()
        log.info("node stopped")


def main_serve(args: argparse.Namespace, settings: Settings) -> int:
    """``mammoxai serve [--port N] [--ae-title AE] [--once]``: run until SIGTERM/SIGINT (graceful stop)."""
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
