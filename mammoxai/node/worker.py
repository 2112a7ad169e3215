"""Workers (process queued instances with the pipeline) and the sender (deliver staged results).

Crash safety comes from ordering, each step durable before the next:

1. the SCP commits the instance file, then the job ('received'), then answers Success;
2. a worker claims jobs ('running'), runs the pipeline, gives the outputs
   deterministic UIDs (:mod:`mammoxai.node.uids`), stages them all-or-nothing
   (:meth:`Spool.stage_outputs`), then marks the job 'sending';
3. the sender C-STOREs the staged files, then marks the job 'done'.

A ``kill -9`` between any two steps replays at most the last step after the
restart ('running' jobs go back to 'received'); replays produce the same SOP
Instance UIDs, which the archive stores once. Half-written outputs are never
visible, so never sent.
"""

from __future__ import annotations

import dataclasses
import logging
import pickle
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from ..config import Settings
from .metrics import Metrics
from .queue import Job, JobQueue
from .scu import Destination, SendError
from .spool import Spool
from .uids import make_deterministic

log = logging.getLogger(__name__)



class PipelineLike(Protocol):
    """What the node needs from :class:`mammoxai.pipeline.Pipeline`."""

    def process(self, paths: list[Path]) -> list[Any]: ...

    def study_summary(self, items: list[Any]) -> Any: ...


#: long side (px) of the heatmaps kept for the study summary (which reads predictions, not maps)
SUMMARY_MAP_SIZE = 64


def _slim(item: Any) -> Any:
    """A copy of a ProcessedImage small enough to keep on disk for the study summary.

    No outputs, no mammogram pixels, heatmaps decimated to at most
    :data:`SUMMARY_MAP_SIZE` px; headers, predictions and map metadata intact.
    """
    try:
        import numpy as np

        changes: dict[str, Any] = {"outputs": []}
        mammogram = getattr(item, "mammogram", None)
        if mammogram is not None and dataclasses.is_dataclass(mammogram) and hasattr(mammogram, "pixels"):
            changes["mammogram"] = dataclasses.replace(mammogram, pixels=np.zeros((1, 1), dtype="float32"))
        result = getattr(item, "result", None)
        if result is not None and dataclasses.is_dataclass(result) and getattr(result, "maps", None):
            maps = []
            for m in result.maps:
                heat = getattr(m, "heatmap", None)
                if isinstance(heat, np.ndarray) and heat.ndim == 2:
                    step = max(1, -(-max(heat.shape) // SUMMARY_MAP_SIZE))
                    m = dataclasses.replace(m, heatmap=np.ascontiguousarray(heat[::step, ::step]))
                maps.append(m)
            changes["result"] = dataclasses.replace(result, maps=tuple(maps))
        return dataclasses.replace(item, **changes) if dataclasses.is_dataclass(item) else item
    except Exception:  # the summary is best effort; never lose the job over it
        return item


def format_timings(timings: dict[str, float]) -> str:
    """``stage=1.234s`` pairs in a stable order (receive, read, predict, explainers..., write, send)."""
    order = ["receive", "read", "predict"]
    tail = ["write", "send", "total"]
    keys = [k for k in order if k in timings]
    keys += sorted(k for k in timings if k not in order and k not in tail)
    keys += [k for k in tail if k in timings]
    return " ".join(f"{k}={timings[k]:.3f}s" for k in keys)


class Worker(threading.Thread):
    """Claims up to ``node.batch_images`` waiting jobs at a time and runs the pipeline on them."""

    def __init__(self, name: str, settings: Settings, queue: JobQueue, spool: Spool, pipeline: PipelineLike,
                 metrics: Metrics, stop: threading.Event, wake: threading.Event,
                 pipeline_lock: threading.Lock | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.queue = queue
        self.spool = spool
        self.pipeline = pipeline
        self.metrics = metrics
        self.stop_event = stop
        self.wake = wake
        self.pipeline_lock = pipeline_lock or threading.Lock()
        self.idle = threading.Event()
        self.busy_since: float | None = None

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                did = self.step()
            except Exception:
                log.exception("worker %s: unexpected error", self.name)
                did = False
            if not did:
                self.idle.set()
                self.wake.wait(0.5)
                self.wake.clear()

    def step(self) -> bool:
        """Process one batch (or one due study summary). Returns False when there was nothing to do."""
        jobs = self.queue.claim(self.settings.node.batch_images)
        if jobs:
            self.idle.clear()
            self.process(jobs)
            return True
        return self.summarise_due()

    def process(self, jobs: list[Job]) -> None:
        """Run the pipeline on claimed jobs and record each outcome."""
        self.busy_since = time.time()
        paths = [Path(j.path) for j in jobs]
        try:
            with self.pipeline_lock:
                items = self.pipeline.process(paths)
            if len(items) != len(jobs):
                raise RuntimeError(f"pipeline returned {len(items)} results for {len(jobs)} files")
        except Exception as exc:
            if len(jobs) > 1:
                # one image may have broken the batch: process them one by one, so it fails alone
                log.warning("pipeline failed on a batch of %d (%s); processing them one by one", len(jobs), exc)
                self.busy_since = None
                for job in jobs:
                    self.process([job])
                return
            log.exception("pipeline failed on job %d", jobs[0].id)
            for job in jobs:
                state = self.queue.mark_failed(job.id, f"{type(exc).__name__}: {exc}", self.settings.node.max_process_attempts)
                if state == "failed":
                    self.metrics.inc("jobs_failed", stage="process", help="jobs that failed")
            self.busy_since = None
            return
        for job, item in zip(jobs, items):
            try:
                self._record(job, item)
            except Exception as exc:
                log.exception("job %d: cannot record its result", job.id)
                self.queue.mark_failed(job.id, f"{type(exc).__name__}: {exc}", self.settings.node.max_process_attempts)
        self.busy_since = None

    def _record(self, job: Job, item: Any) -> None:
        timings = {k: float(v) for k, v in (getattr(item, "timings", None) or {}).items()}
        status = getattr(item, "status", "failed")
        reason = str(getattr(item, "reason", "") or "")
        if status == "ignored":
            self.queue.mark_ignored(job.id, reason or "ignored by the pipeline", timings)
            self.spool.remove_instance(job.path)
            log.info("job %d ignored: sop=%s study=%s: %s", job.id, job.key, job.study_uid, reason)
            self.metrics.inc("jobs_ignored", help="instances not processed (not a mammogram, our own output)")
            return
        if status != "done":
            self.queue.mark_failed(job.id, reason or "pipeline failure", 1)
            log.error("job %d failed: sop=%s study=%s: %s", job.id, job.key, job.study_uid, reason)
            self.metrics.inc("jobs_failed", stage="process", help="jobs that failed")
            return
        outputs = list(getattr(item, "outputs", None) or [])
        # the slim result for the study summary first: it must exist once the job leaves 'running'
        part = self.spool.tmp / f"res-{job.id}.pkl"
        with open(part, "wb") as fh:
            pickle.dump(_slim(item), fh, protocol=pickle.HIGHEST_PROTOCOL)
        self.spool.commit_file(part, self.spool.result_path(job.id))
        if not outputs:
            self.queue.mark_done(job.id, timings)
            self.spool.remove_instance(job.path)
            log.info("job %d done: sop=%s study=%s: no outputs %s", job.id, job.key, job.study_uid,
                     format_timings(timings))
            return
        if not getattr(self.pipeline, "deterministic_uids", False):
            make_deterministic(outputs, job.key)
        self.spool.stage_outputs(job.id, outputs)
        self.queue.mark_sending(job.id, len(outputs), timings)
        self.metrics.inc("jobs_processed", help="instances processed by the pipeline")

    def summarise_due(self) -> bool:
        """Make the study-level summary of every study quiet for ``node.study_quiet_seconds``."""
        did = False
        for study in self.queue.due_summaries(self.settings.node.study_quiet_seconds):
            did = True
            started = time.time()
            try:
                self._summarise(study)
            except Exception:
                log.exception("study %s: summary failed", study)
            finally:
                # marked after the summary job exists, so the node never looks idle in between
                self.queue.summary_made(study, started)
        return did

    def _summarise(self, study: str) -> None:
        jobs = [j for j in self.queue.list(["sending", "done"], study_uid=study) if j.kind == "instance"]
        items = []
        for job in jobs:
            try:
                with open(self.spool.result_path(job.id), "rb") as fh:
                    items.append(pickle.load(fh))
            except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError) as exc:
                log.warning("study %s: result of job %d unavailable for the summary: %s", study, job.id, exc)
        if not items:
            return
        with self.pipeline_lock:
            summary = self.pipeline.study_summary(items)
        if summary is None:
            return
        job_id = self.queue.add_summary(study)
        outputs = make_deterministic([summary], f"summary:{study}")
        self.spool.stage_outputs(job_id, outputs)
        self.queue.mark_sending(job_id, len(outputs))
        log.info("job %d summary: study=%s from %d images", job_id, study, len(items))


class Sender(threading.Thread):
    """Delivers staged outputs of 'sending' jobs, with exponential back-off and a dead-letter state."""

    def __init__(self, settings: Settings, queue: JobQueue, spool: Spool, destination: Destination,
                 metrics: Metrics, stop: threading.Event, wake: threading.Event) -> None:
        super().__init__(name="mammoxai-sender", daemon=True)
        self.settings = settings
        self.queue = queue
        self.spool = spool
        self.destination = destination
        self.metrics = metrics
        self.stop_event = stop
        self.wake = wake
        self.passes = 0

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                did = self.step()
            except Exception:
                log.exception("sender: unexpected error")
                did = False
            self.passes += 1
            if not did:
                self.wake.wait(0.5)
                self.wake.clear()

    def step(self) -> bool:
        """Try every job whose back-off has expired. Returns False when none was due."""
        jobs = self.queue.due_for_sending()
        for job in jobs:
            if self.stop_event.is_set():
                break
            self.deliver(job)
        return bool(jobs)

    def deliver(self, job: Job) -> None:
        """Send one job's staged outputs and record the outcome."""
        d = self.settings.destination
        files = self.spool.staged_outputs(job.id)
        if len(files) != job.outputs:
            # outputs lost (someone cleaned the spool): process again rather than send a partial set
            log.warning("job %d: %d of %d staged outputs found; processing again", job.id, len(files), job.outputs)
            if job.kind == "instance":
                self.queue.reprocess(job.id, "staged outputs missing")
            else:
                self.queue.send_failed(job.id, "staged outputs missing", 1, 1.0, 1.0)
            return
        started = time.perf_counter()
        try:
            if files:
                self.destination.send(files)
        except Exception as exc:  # SendError, OSError, or anything a client library raises
            if not isinstance(exc, (SendError, OSError)):
                log.exception("job %d: unexpected error while sending", job.id)
            state = self.queue.send_failed(job.id, str(exc), d.max_attempts, d.backoff_initial_s, d.backoff_max_s)
            self.metrics.inc("send_failures", help="failed delivery attempts")
            if state == "dead":
                self.metrics.inc("jobs_failed", stage="send", help="jobs that failed")
                log.error("job %d dead after %d attempts: %s", job.id, d.max_attempts, exc)
            else:
                log.warning("job %d: delivery to %s failed (will retry): %s", job.id,
                            self.destination.describe(), exc)
            return
        send_s = time.perf_counter() - started
        timings = dict(job.timings)
        timings["send"] = send_s
        if not self.queue.finish_delivery(job.id, job.revision, {"send": send_s}):
            # received again while sending: the queued copy owns the spooled file and the next outputs
            log.info("job %d delivered; its instance was received again meanwhile and will be processed again",
                     job.id)
            self.metrics.inc("jobs_done", help="jobs whose results were delivered")
            return
        self.spool.remove_outputs(job.id)
        if job.kind == "instance":
            self.spool.remove_instance(job.path)   # delivered: the source is no longer needed
        latency = time.time() - job.created_at
        self.metrics.observe_latency(latency)
        self.metrics.inc("jobs_done", help="jobs whose results were delivered")
        timings["total"] = latency
        log.info("job %d done: %s sop=%s study=%s outputs=%d to %s %s", job.id, job.kind, job.sop_instance_uid,
                 job.study_uid, len(files), self.destination.describe(), format_timings(timings))
