"""Workers (process queued instances with the pipeline) and the sender (deliver staged results).

Crash safety comes from ordering, each step durable before the next:

1. the SCP commits the instance file, then the job ('received'), then answers Success;
2. a worker claims jobs ('running', the attempt counted on disk first), runs the pipeline (whose
   outputs carry deterministic UIDs, :mod:`mammoxai.dicom_io.identity`), keeps the study-summary
   record (``results/JOB.json``), stages the outputs all-or-nothing (:meth:`Spool.stage_outputs`),
   then marks the job 'sending';
3. the sender C-STOREs the staged files, then marks the job 'done'.

A ``kill -9`` between any two steps replays at most the last step after the
restart ('running' jobs go back to 'received', or are given up after
``node.max_process_attempts`` claims: :data:`~mammoxai.node.jobstore.PROCESS_DIED`);
replays produce the same SOP Instance UIDs, which the archive stores once.
Half-written outputs are never visible, so never sent.

Disk: below ``node.disk_free_watermark_mb`` a worker claims nothing; a write that fails for
lack of space puts the job back without counting an attempt (nothing is lost) and the worker
waits for space. The sender keeps delivering (delivery is what frees the spool) but backs off
when it cannot record an outcome, so it never re-sends in a loop.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
import threading
import time
from pathlib import Path
from typing import Protocol

from pydicom.dataset import Dataset

from ..config import Settings
from ..outcome import ImageOutcome, RecordError, SummaryRecord
from .jobstore import Job, JobStore
from .metrics import Metrics
from .scu import Destination, SendError
from .spool import Spool

log = logging.getLogger(__name__)


class PipelineLike(Protocol):
    """What the node needs from :class:`mammoxai.pipeline.Pipeline` (one per worker: never shared)."""

    def outcomes(self, paths: list[Path]) -> list[ImageOutcome]: ...

    def study_summary(self, records: list[SummaryRecord]) -> Dataset | None: ...


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` means the spool's file system is full (or over quota)."""
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower()


class DiskGate:
    """``node.disk_free_watermark_mb`` for the writers of one node: :meth:`ok` before each write.

    After a write failed for lack of space (:meth:`full`), :meth:`ok` says no for a back-off
    (0.5 s, doubling up to :attr:`MAX_BACKOFF_S`) whatever the watermark, so a full disk is
    retried now and then, never in a loop; a write that succeeds (:meth:`wrote`) resets it.
    """

    MAX_BACKOFF_S = 10.0

    def __init__(self, spool: Spool, watermark_mb: float) -> None:
        self.spool = spool
        self.watermark_mb = watermark_mb
        self.low = False
        self._backoff = 0.0
        self._retry_at = 0.0
        self._lock = threading.Lock()

    def ok(self) -> bool:
        """True while the spool has at least the watermark free (and no recent write failed); logs changes."""
        with self._lock:
            if time.monotonic() < self._retry_at:
                return False
        try:
            free = self.spool.free_mb()
        except OSError:
            free = 0.0
        low = free < self.watermark_mb
        with self._lock:
            if low != self.low:
                if low:
                    log.warning("spool %s: %.1f MB free, below node.disk_free_watermark_mb %g: no new work is "
                                "claimed until space returns", self.spool.root, free, self.watermark_mb)
                else:
                    log.info("spool %s: %.1f MB free: claiming work again", self.spool.root, free)
                self.low = low
        return not low

    def full(self) -> None:
        """A write just failed for lack of space: claim nothing for a while (back-off), then look again."""
        with self._lock:
            self._backoff = min(self.MAX_BACKOFF_S, max(0.5, 2 * self._backoff))
            self._retry_at = time.monotonic() + self._backoff
            if not self.low:
                log.warning("spool %s: disk full: no new work is claimed until space returns", self.spool.root)
            self.low = True

    def wrote(self) -> None:
        """A write succeeded: forget the back-off."""
        with self._lock:
            self._backoff = 0.0


def format_timings(timings: dict[str, float]) -> str:
    """``stage=1.234s`` pairs in a stable order (receive, read, predict, explainers..., write, send)."""
    order = ["receive", "read", "predict"]
    tail = ["write", "send", "total"]
    keys = [k for k in order if k in timings]
    keys += sorted(k for k in timings if k not in order and k not in tail)
    keys += [k for k in tail if k in timings]
    return " ".join(f"{k}={timings[k]:.3f}s" for k in keys)


class Worker(threading.Thread):
    """Claims up to ``node.batch_images`` waiting jobs at a time and runs its own pipeline on them.

    Each worker owns its pipeline (model and explainers keep per-call state), so several workers
    run in parallel. Study summaries are made between batches, as soon as their study is quiet.
    """

    #: one worker thread at a time makes study summaries (two would make the same summary twice); across
    #: processes sharing a broker, :meth:`~mammoxai.node.jobstore.JobStore.claim_summary` does the same
    _summaries = threading.Lock()

    def __init__(self, name: str, settings: Settings, queue: JobStore, spool: Spool, pipeline: PipelineLike,
                 metrics: Metrics, stop: threading.Event, wake: threading.Event,
                 disk: DiskGate | None = None, staged: threading.Event | None = None) -> None:
        super().__init__(name=name, daemon=True)
        self.settings = settings
        self.queue = queue
        self.spool = spool
        self.pipeline = pipeline
        self.metrics = metrics
        self.stop_event = stop
        self.wake = wake
        #: set when a job's outputs are staged for sending: wakes the sender in this process at once instead of
        #: at its next poll
        self.staged = staged
        self.disk = disk or DiskGate(spool, settings.node.disk_free_watermark_mb)
        self.idle = threading.Event()
        self.busy_since: float | None = None
        self._put_back: list[int] = []   # jobs to re-queue once the disk lets us write again

    def run(self) -> None:
        while not self.stop_event.is_set():
            try:
                did = self.step()
            except Exception as exc:
                if disk_full(exc):
                    self.disk.full()
                else:
                    log.exception("worker %s: unexpected error", self.name)
                did = False
            if not did:
                self.idle.set()
                self.wake.wait(0.5)
                self.wake.clear()

    def step(self) -> bool:
        """Make due study summaries, then process one batch. Returns False when there was nothing to do."""
        if self._put_back:
            for job_id in list(self._put_back):
                self.queue.requeue(job_id)
                self._put_back.remove(job_id)
        if not self.disk.ok():
            return False
        did = self.summarise_due()
        jobs = self.queue.claim(self.settings.node.batch_images, worker=self.name)
        if jobs:
            self.idle.clear()
            self.process(jobs)
            return True
        return did

    def process(self, jobs: list[Job]) -> None:
        """Run the pipeline on claimed jobs and record each outcome."""
        self.busy_since = time.time()
        try:
            self._process(jobs)
        finally:
            self.busy_since = None

    def _process(self, jobs: list[Job]) -> None:
        paths = [self.spool.localise(j.path) for j in jobs]
        try:
            outcomes = self.pipeline.outcomes(paths)
            if len(outcomes) != len(jobs):
                raise RuntimeError(f"pipeline returned {len(outcomes)} results for {len(jobs)} files")
        except Exception as exc:
            if disk_full(exc):
                self._disk_full(jobs, exc)
                return
            if len(jobs) > 1:
                # one image may have broken the batch: process them one by one, so it fails alone
                log.warning("pipeline failed on a batch of %d (%s); processing them one by one", len(jobs), exc)
                for job in jobs:
                    self._process([job])
                return
            log.exception("pipeline failed on job %d", jobs[0].id)
            state = self.queue.mark_failed(jobs[0].id, f"{type(exc).__name__}: {exc}",
                                           self.settings.node.max_process_attempts)
            if state == "failed":
                self.metrics.inc("jobs_failed", stage="process", help="jobs that failed")
            return
        for i, (job, outcome) in enumerate(zip(jobs, outcomes)):
            try:
                if outcome.status == "done" and not self.disk.ok():
                    raise OSError(errno.ENOSPC, "spool below node.disk_free_watermark_mb")
                self._record(job, outcome)
                self.disk.wrote()
            except Exception as exc:
                if disk_full(exc):
                    self._disk_full(jobs[i:], exc)
                    return
                log.exception("job %d: cannot record its result", job.id)
                self.queue.mark_failed(job.id, f"{type(exc).__name__}: {exc}",
                                       self.settings.node.max_process_attempts)

    def _disk_full(self, jobs: list[Job], exc: BaseException) -> None:
        """No space to record results: the jobs go back (their attempt not counted) once the queue can be written."""
        self.disk.full()
        log.warning("spool full while recording %d job(s) (%s); they are processed again when space returns",
                    len(jobs), exc)
        for job in jobs:
            self.spool.remove_result(job.id)
            try:
                self.queue.requeue(job.id)
            except Exception as again:  # noqa: BLE001 - the queue itself may be unable to write now
                if not disk_full(again):
                    raise
                self._put_back.append(job.id)

    def _record(self, job: Job, outcome: ImageOutcome) -> None:
        timings = {k: float(v) for k, v in outcome.timings.items()}
        if outcome.status == "ignored":
            self.queue.mark_ignored(job.id, outcome.reason or "ignored by the pipeline", timings)
            self.spool.remove_instance(job.path)
            log.info("job %d ignored: sop=%s study=%s: %s", job.id, job.key, job.study_uid, outcome.reason)
            self.metrics.inc("jobs_ignored", help="instances not processed (not a mammogram, our own output)")
            return
        if outcome.status != "done":
            self.queue.mark_failed(job.id, outcome.reason or "pipeline failure", 1)
            log.error("job %d failed: sop=%s study=%s: %s", job.id, job.key, job.study_uid, outcome.reason)
            self.metrics.inc("jobs_failed", stage="process", help="jobs that failed")
            return
        # the summary record first: it must exist once the job leaves 'running'
        if outcome.record is not None:
            self.spool.write_bytes(self.spool.result_path(job.id), outcome.record.to_json().encode())
        if not outcome.outputs:
            self.queue.mark_done(job.id, timings)
            self.spool.remove_instance(job.path)
            log.info("job %d done: sop=%s study=%s: no outputs %s", job.id, job.key, job.study_uid,
                     format_timings(timings))
            return
        start = time.perf_counter()
        self.spool.stage_outputs(job.id, outcome.outputs)   # encoded, fsynced, renamed into place
        timings["stage"] = time.perf_counter() - start
        self.queue.mark_sending(job.id, len(outcome.outputs), timings)
        self._wake_sender()
        self.metrics.inc("jobs_processed", help="instances processed by the pipeline")

    def _wake_sender(self) -> None:
        if self.staged is not None:
            self.staged.set()

    def summarise_due(self) -> bool:
        """Make the summary of every study quiet for ``node.study_quiet_seconds`` (whatever else is waiting)."""
        if not Worker._summaries.acquire(blocking=False):
            return False
        try:
            did = False
            quiet = self.settings.node.study_quiet_seconds
            for study in self.queue.due_summaries(quiet):
                if not self.queue.claim_summary(study, self.name, quiet):
                    continue   # another worker process makes it (a store shared by several processes)
                did = True
                started = time.time()
                self._summarise(study)   # a full disk raises: the summary stays due
                # marked after the summary job exists, so the node never looks idle in between
                self.queue.summary_made(study, started)
            return did
        finally:
            Worker._summaries.release()

    def _summarise(self, study: str) -> None:
        jobs = [j for j in self.queue.list(["sending", "done"], study_uid=study) if j.kind == "instance"]
        records: list[SummaryRecord] = []
        missing: list[int] = []
        for job in jobs:
            try:
                records.append(SummaryRecord.from_json(self.spool.result_path(job.id).read_text()))
            except FileNotFoundError:
                missing.append(job.id)
            except (OSError, RecordError) as exc:
                log.warning("study %s: summary record of job %d unreadable: %s", study, job.id, exc)
                missing.append(job.id)
        if missing:
            # never replace a summary with one that leaves out views it had: the views' own SRs stand
            log.warning("study %s: summary not remade: the records of job(s) %s are no longer kept "
                        "(they were summarised before)", study, ", ".join(map(str, missing)))
        elif records:
            try:
                summary = self.pipeline.study_summary(records)
                if summary is not None:
                    job_id = self.queue.add_summary(study)
                    self.spool.stage_outputs(job_id, [summary])   # its UIDs are the study's (identity.summary_identity)
                    self.queue.mark_sending(job_id, 1)
                    self._wake_sender()
                    log.info("job %d summary: study=%s from %d images", job_id, study, len(records))
            except Exception as exc:
                if disk_full(exc):
                    raise   # the records stay: the summary is made when space returns
                log.exception("study %s: summary failed", study)
        for job in jobs:   # summarised (or not needed): the records, which copy the headers, go
            self.spool.remove_result(job.id)


class Sender(threading.Thread):
    """Delivers staged outputs of 'sending' jobs, with exponential back-off and a dead-letter state."""

    def __init__(self, settings: Settings, queue: JobStore, spool: Spool, destination: Destination,
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
        pause = 0.0
        while not self.stop_event.is_set():
            try:
                did = self.step()
                pause = 0.0
            except Exception as exc:
                # cannot record an outcome (disk full, database locked): back off, never re-send in a loop
                d = self.settings.destination
                pause = min(d.backoff_max_s, max(d.backoff_initial_s, 2 * pause))
                if disk_full(exc):
                    log.warning("sender: spool full, cannot record deliveries; pausing %.1f s", pause)
                else:
                    log.exception("sender: unexpected error; pausing %.1f s", pause)
                self.stop_event.wait(pause)
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
        with self.spool.reception:
            finished = self.queue.finish_delivery(job.id, job.revision, {"send": send_s})
            if finished and job.kind == "instance":
                self.spool.remove_instance(job.path)   # delivered: the source is no longer needed
        if not finished:
            # received again while sending: the queued copy owns the spooled file and the next outputs
            log.info("job %d delivered; its instance was received again meanwhile and will be processed again",
                     job.id)
            self.metrics.inc("jobs_done", help="jobs whose results were delivered")
            return
        self.spool.remove_outputs(job.id)
        latency = time.time() - job.created_at
        self.metrics.observe_latency(latency)
        self.metrics.inc("jobs_done", help="jobs whose results were delivered")
        timings["total"] = latency
        log.info("job %d done: %s sop=%s study=%s outputs=%d to %s %s", job.id, job.kind, job.sop_instance_uid,
                 job.study_uid, len(files), self.destination.describe(), format_timings(timings))
