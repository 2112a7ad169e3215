"""The node: spool + queue + Storage SCP + workers + sender + /healthz and /metrics (run by ``mammoxai serve``,
:mod:`mammoxai.commands.serve`).

Roles (:data:`ROLES`): ``all`` (the default) runs everything in one process on the spool's SQLite queue
(or on the broker); with a broker (``node.job_store = "redis"``) the work splits: ``scp`` receives,
spools and enqueues, ``worker`` claims, processes and sends, any number of them, on one shared spool.
"""

from __future__ import annotations

import importlib
import logging
import os
import threading
import time
from typing import Any, Callable

from ..config import Settings
from ..errors import MammoxaiError
from .metrics import HttpServer, Metrics, gpu_memory_gauges
from .jobstore import JobStore, Recovery, open_job_store
from .queue import PROCESS_DIED, STATES
from .scp import StorageSCP, adopt_orphans
from .scu import Destination, TrackedDestination, make_destination
from .spool import Spool
from .worker import PipelineLike, Sender, Worker

log = logging.getLogger(__name__)

PipelineFactory = Callable[[Settings], PipelineLike]
#: environment variable naming another pipeline factory ("module:callable", called with the settings)
PIPELINE_ENV = "MAMMOXAI_PIPELINE_FACTORY"


def default_pipeline_factory(settings: Settings) -> PipelineLike:
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


#: what ``serve --role`` runs: everything (one machine), the receiving side, or the processing side
ROLES = ("all", "scp", "worker")


class Node:
    """Everything ``mammoxai serve`` runs, in one process. :meth:`start`, then :meth:`stop`.

    ``scp=False`` runs workers and sender only (``serve --once``). ``role`` (:data:`ROLES`) 'scp' or
    'worker' runs one side of a broker-based node (``node.job_store = "redis"``) on a shared spool.
    """

    def __init__(self, settings: Settings, pipeline_factory: PipelineFactory = default_pipeline_factory,
                 destination: Destination | None = None, scp: bool = True, queue: JobStore | None = None,
                 role: str = "all") -> None:
        if role not in ROLES:
            raise NodeError(f"role {role!r}: expected one of {', '.join(ROLES)}")
        if role != "all" and queue is None and settings.node.job_store != "redis":
            raise NodeError(f"serve --role {role} needs a job store shared by processes: set node.job_store = "
                            "'redis' (and node.broker_url)")
        self.role = role
        self.settings = settings
        self.spool = Spool(settings.node.spool_dir)
        # the job store: node.job_store (the spool's SQLite queue by default) unless another JobStore is given
        self.queue: JobStore = queue if queue is not None else open_job_store(settings, self.spool.database)
        self.metrics = Metrics()
        self.stop_event = threading.Event()
        self.work_wake = threading.Event()
        self.send_wake = threading.Event()
        self.pipeline_factory = pipeline_factory
        self.destination = TrackedDestination(destination or make_destination(settings))
        self.with_scp = scp and role != "worker"
        self.with_workers = role != "scp"
        self.scp: StorageSCP | None = None
        self.http: HttpServer | None = None
        self.workers: list[Worker] = []
        self.sender: Sender | None = None
        self.pipeline: PipelineLike | None = None
        self.pipelines: list[PipelineLike] = []
        self.started_at = 0.0
        self._stopped = False
        self._locked = False

    # -- life cycle -----------------------------------------------------------------------------
    def start(self) -> None:
        """Lock the spool, recover from a crash, load the model once, start workers, sender, HTTP and the SCP (last).

        A second process on the same spool stops here with :class:`~mammoxai.node.spool.SpoolError`
        (before it clears or claims anything). ``serve --once`` (``scp=False``) binds no port at all.
        """
        self.started_at = time.time()
        if self.role == "all":
            self.spool.lock()
        else:   # role processes share the spool (each with its own tmp/), never with a single-machine serve
            self.spool.lock(shared=True, name=_consumer_name(self.queue))
        self._locked = True
        try:
            self._start()
        except BaseException:
            self.stop(timeout=5)
            raise

    def _start(self) -> None:
        if self.role == "scp":
            self.spool.lock_reception()
        removed = self.spool.clear_tmp()
        recovery = Recovery(0, [])
        if self.with_workers:
            recovery = self.queue.recover(self.settings.node.max_process_attempts)
        for job_id in recovery.given_up:
            log.error("job %d failed: %s %d times (node.max_process_attempts); given up", job_id, PROCESS_DIED,
                      self.settings.node.max_process_attempts)
        adopted = adopt_orphans(self.spool, self.queue) if self.role != "worker" else 0
        if removed or recovery.requeued or adopted:
            log.info("recovered after a restart: %d job(s) re-queued, %d spooled instance(s) adopted, "
                     "%d partial file(s) removed", recovery.requeued, adopted, removed)
        if self.with_workers:
            # One pipeline (model + explainers) per worker: explainers keep per-call state, so workers
            # share nothing and really run in parallel (on a GPU each holds its own model copy).
            self.pipelines = [self.pipeline_factory(self.settings) for _ in range(self.settings.node.workers)]
            self.pipeline = self.pipelines[0]
            for i, pipeline in enumerate(self.pipelines):
                w = Worker(f"mammoxai-worker-{i}", self.settings, self.queue, self.spool, pipeline, self.metrics,
                           self.stop_event, self.work_wake, staged=self.send_wake)
                w.start()
                self.workers.append(w)
            self.sender = Sender(self.settings, self.queue, self.spool, self.destination, self.metrics,
                                 self.stop_event, self.send_wake)
            self.sender.start()
        self.metrics.add_gauges(self._gauges)
        self.metrics.add_gauges(gpu_memory_gauges)
        node = self.settings.node
        try:
            if node.http_port and (self.with_scp or self.role == "worker"):   # serve --once: no HTTP port either
                self.http = HttpServer(node.http_host, node.http_port, self.metrics, self.health)
                self.http.start()
            if self.with_scp:
                self.scp = StorageSCP(self.settings, self.spool, self.queue,
                                      on_stored=lambda _id: self.work_wake.set(),
                                      on_event=lambda name: self.metrics.inc(
                                          "instances", event=name, help="C-STORE requests by outcome"))
                self.scp.start()
        except OSError as exc:
            raise NodeError(f"cannot listen (node.host {node.host}:{node.port}, node.http_host "
                            f"{node.http_host}:{node.http_port}): {exc.strerror or exc}") from None

    def healthy(self) -> bool:
        """True while the worker and sender threads are alive (and the SCP listens, when it runs)."""
        threads_ok = not self.with_workers or (all(w.is_alive() for w in self.workers) and self.sender is not None
                                               and self.sender.is_alive())
        return threads_ok and (not self.with_scp or self.scp is not None) and not self.stop_event.is_set()

    def health(self) -> tuple[str, list[str]]:
        """``("ok" | "degraded" | "unhealthy", reasons)`` for ``/healthz``.

        Unhealthy: a worker or the sender died, or the node is stopping. Degraded (it runs, an operator
        is needed): the spool below ``node.disk_free_watermark_mb``, the destination failing for longer
        than ``node.destination_alert_s``, a job running longer than ``node.job_budget_s``, or poison
        jobs (given up because the process died while running them).
        """
        if not self.healthy():
            return "unhealthy", ["a worker or the sender thread is not running, or the node is stopping"]
        broker = self.queue.ping()
        if broker:
            return "unhealthy", [broker]
        reasons = [text for _, text in self._degraded()]
        return ("degraded", reasons) if reasons else ("ok", [])

    def _degraded(self) -> list[tuple[str, str]]:
        """(gauge label, reason) of each degradation now."""
        node = self.settings.node
        out = []
        free = self.spool.free_mb()
        if free < node.disk_free_watermark_mb:
            out.append(("disk", f"spool disk: {free:.0f} MB free, below node.disk_free_watermark_mb "
                                f"{node.disk_free_watermark_mb:g}"))
        failing = self.destination.failing_for() if self.with_workers else 0.0
        if failing > node.destination_alert_s:
            out.append(("destination", f"destination {self.destination.describe()} failing for {failing:.0f} s "
                                       f"(node.destination_alert_s {node.destination_alert_s:g}): "
                                       f"{self.destination.last_error[:200]}"))
        overdue = self._overdue_jobs()
        if overdue:
            out.append(("job_over_budget", f"{len(overdue)} job(s) running longer than node.job_budget_s "
                                           f"{node.job_budget_s:g} s: " + ", ".join(str(j.id) for j in overdue[:10])))
        poison = self.queue.poison_count()
        if poison:
            out.append(("poison_jobs", f"{poison} poison job(s) given up ({PROCESS_DIED}); see "
                                       "`mammoxai jobs failed`"))
        return out

    def _overdue_jobs(self) -> list[Any]:
        return self.queue.stuck(self.settings.node.job_budget_s)


    def _gauges(self) -> list[tuple[str, dict[str, str], float]]:
        store_problem = self.queue.ping()
        out = [("mammoxai_node_role", {"role": self.role}, 1.0),
               ("mammoxai_job_store_up", {}, 0.0 if store_problem else 1.0),
               ("mammoxai_uptime_seconds", {}, time.time() - self.started_at),
               ("mammoxai_spool_free_bytes", {}, self.spool.free_mb() * 1024 * 1024),
               ("mammoxai_destination_failing_seconds", {}, self.destination.failing_for())]
        if store_problem:   # the job gauges come from the store: left out while it cannot answer
            return out
        counts = self.queue.counts()
        out += [("mammoxai_jobs", {"state": s}, float(counts[s])) for s in STATES]
        out.append(("mammoxai_queue_depth", {}, float(counts["received"] + counts["running"])))
        out.append(("mammoxai_send_backlog", {}, float(counts["sending"])))
        out.append(("mammoxai_oldest_waiting_seconds", {}, self.queue.oldest_waiting_age()))
        out.append(("mammoxai_jobs_over_budget", {}, float(len(self._overdue_jobs()))))
        out.append(("mammoxai_poison_jobs", {}, float(self.queue.poison_count())))
        degraded = {label for label, _ in self._degraded()}
        for label in ("disk", "destination", "job_over_budget", "poison_jobs"):
            out.append(("mammoxai_degraded", {"reason": label}, float(label in degraded)))
        return out

    def idle(self) -> bool:
        """No job waiting, running or sending, and no study summary pending (even one still in its quiet period)."""
        c = self.queue.counts()
        return (c["received"] + c["running"] + c["sending"] == 0
                and not self.queue.due_summaries(0.0, now=float("inf")))

    def stop(self, timeout: float = 600.0) -> None:
        """Graceful stop: no new associations, workers finish the batch in hand, then everything closes.

        A batch still running after ``timeout`` is re-queued (its jobs go back to 'received').
        Calling it again (or after a failed :meth:`start`) does nothing.
        """
        if self._stopped:
            return
        self._stopped = True
        if not self._locked:   # never started (e.g. the spool is another process's): touch nothing
            self.queue.close()
            return
        if self.scp is not None:
            self.scp.stop(timeout=min(timeout, 30.0))
        self.stop_event.set()
        self.work_wake.set()
        self.send_wake.set()
        deadline = time.time() + timeout
        for t in [*self.workers, *( [self.sender] if self.sender else [])]:
            t.join(max(0.0, deadline - time.time()))
        try:
            still = self.queue.held()
            for job in still:
                self.queue.requeue(job.id)
            if still:
                log.warning("re-queued %d job(s) still running at shutdown", len(still))
        except Exception as exc:  # noqa: BLE001 - e.g. "database or disk is full": recover() re-queues at start
            log.error("could not re-queue the running job(s) at shutdown (%s); the next start does", exc)
        if self.http is not None:
            self.http.stop()
            self.http = None
        self.queue.close()
        self.spool.unlock()
        log.info("node stopped" + ("" if self.role == "all" else f" (role {self.role})"))


def _consumer_name(queue: JobStore) -> str:
    """The store's name for this process (a broker's consumer), also this process's ``tmp/`` folder name."""
    return str(getattr(queue, "consumer", "") or "")
