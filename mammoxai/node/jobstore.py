"""The job life cycle as an interface: :class:`JobStore`, and the :class:`Job` record it hands out.

The node (SCP, workers, sender, ``/healthz``, ``mammoxai jobs``) talks to the job
store only through this interface. Two implementations, chosen by ``node.job_store``
(:func:`open_job_store`): the SQLite queue in the spool (:class:`mammoxai.node.queue.JobQueue`,
the default: one node process), and Redis Streams with a consumer group
(:class:`mammoxai.node.redis_store.RedisJobStore`: one SCP and worker processes on
several machines sharing the work, ``serve --role scp|worker``).

Life cycle (``Job.state``)::

    received --claim--> running --outputs staged--> sending --delivered--> done
        ^                  |  \\--not a mammogram / our own output--> ignored
        |                  \\--error, attempts left: back to received; none left--> failed
        \\-- recover after a crash (running -> received, or failed once attempts are spent);
           ``mammoxai jobs retry``
    sending --destination down--> sending (exponential back-off) ... --max attempts--> dead

What an implementation must guarantee (the node's crash safety rests on it):

* :meth:`~JobStore.receive` is durable when it returns (the C-STORE is answered after it);
* :meth:`~JobStore.claim` counts the attempt durably *before* the job is processed, so a job
  whose processing kills the process is given up by :meth:`~JobStore.recover` after
  ``max_attempts`` claims, with :data:`PROCESS_DIED`;
* a job once tried is claimed alone, never batched, so a poison job cannot hold others back;
* :meth:`~JobStore.finish_delivery` only finishes the reception it was given (``revision``).

For a distributed implementation: ``claim`` takes a lease (and takes over expired ones,
counting the attempt there), :meth:`~JobStore.recover` returns the jobs this process's
previous incarnation held, :meth:`~JobStore.held` is what this process holds, and the study
bookkeeping (:meth:`~JobStore.due_summaries`, :meth:`~JobStore.claim_summary`) is shared by all.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from ..config import Settings

STATES = ("received", "running", "sending", "done", "ignored", "failed", "dead")
#: states a job never leaves by itself
FINAL_STATES = ("done", "ignored", "failed", "dead")
#: the ``error`` of a job given up because processing it killed the process ``max_attempts`` times
PROCESS_DIED = "process died while running"


@dataclass
class Job:
    """One job: a received SOP Instance (``kind`` 'instance') or a study's summary (``kind`` 'summary')."""

    id: int
    kind: str
    key: str                 # SOP Instance UID, or 'summary:' + Study Instance UID
    sop_class_uid: str
    study_uid: str
    series_uid: str
    path: str                # the spooled instance file ('' for a summary)
    calling_ae: str
    state: str
    attempts: int            # processing attempts, counted when claimed
    send_attempts: int       # failed delivery attempts
    outputs: int             # staged output files
    error: str
    timings: dict[str, float] = field(default_factory=dict)
    created_at: float = 0.0
    updated_at: float = 0.0
    next_attempt_at: float = 0.0
    revision: int = 0        # receptions of the instance; see JobStore.finish_delivery
    worker: str = ""         # the process holding it while 'running' (broker stores; '' in SQLite)

    @property
    def sop_instance_uid(self) -> str:
        """The received instance's SOP Instance UID ('' for a summary job)."""
        return "" if self.kind == "summary" else self.key

    def describe(self) -> str:
        """One line for the operator: id, state, attempts, UIDs (no patient data)."""
        text = (f"{self.id:>6} {self.state:<8} {self.kind:<8} attempts={self.attempts} "
                f"failed_sends={self.send_attempts} outputs={self.outputs} study={self.study_uid} key={self.key}")
        text += f" worker={self.worker}" if self.worker and self.state == "running" else ""
        return text + (f" error={self.error}" if self.error else "")


@dataclass(frozen=True)
class Recovery:
    """What :meth:`JobStore.recover` did at start-up."""

    requeued: int            # jobs left running by a dead process, put back
    given_up: list[int]      # jobs whose processing killed the process max_attempts times: now 'failed'


class JobStore(abc.ABC):
    """The job life cycle: receive, claim, record the outcome, deliver, recover, study summaries, queries."""

    # -- receiving -------------------------------------------------------------------------------
    @abc.abstractmethod
    def add_received(self, sop_instance_uid: str, sop_class_uid: str, study_uid: str, series_uid: str,
                     path: Path | str, calling_ae: str = "", receive_s: float = 0.0,
                     state: str = "received", error: str = "") -> int:
        """Record a received instance, durably ('received', or 'ignored' with the reason); returns the job id.

        The same SOP Instance UID again re-uses its job (processed again unless waiting or running)
        and makes its study's summary due again.
        """

    # -- processing ------------------------------------------------------------------------------
    @abc.abstractmethod
    def claim(self, limit: int = 1, worker: str = "") -> list[Job]:
        """Move up to ``limit`` waiting jobs to 'running', counting the attempt durably, and return them.

        Only jobs never tried are batched; a job tried before (it failed, or the process died with it)
        is claimed alone.
        """

    @abc.abstractmethod
    def requeue(self, job_id: int) -> None:
        """Put a running job back without counting its attempt (graceful stop, disk full)."""

    @abc.abstractmethod
    def mark_sending(self, job_id: int, outputs: int, timings: dict[str, float] | None = None) -> None:
        """The job's outputs are staged: deliver them next."""

    @abc.abstractmethod
    def mark_done(self, job_id: int, timings: dict[str, float] | None = None) -> None:
        """Nothing (more) to deliver."""

    @abc.abstractmethod
    def mark_ignored(self, job_id: int, reason: str, timings: dict[str, float] | None = None) -> None:
        """Nothing to do for this instance (not a mammogram, our own output, ...)."""

    @abc.abstractmethod
    def mark_failed(self, job_id: int, error: str, max_attempts: int = 1) -> str:
        """Processing failed: back to 'received' while attempts < ``max_attempts``, else 'failed'. Returns the state."""

    @abc.abstractmethod
    def reprocess(self, job_id: int, reason: str) -> None:
        """Process again (its staged outputs were lost); the reason is kept in ``error``."""

    @abc.abstractmethod
    def recover(self, max_attempts: int | None = None) -> Recovery:
        """At start-up: jobs left 'running' by a dead process go back to 'received'; with ``max_attempts``,
        those already claimed that often are 'failed' with :data:`PROCESS_DIED` instead."""

    # -- delivering ------------------------------------------------------------------------------
    @abc.abstractmethod
    def due_for_sending(self, now: float | None = None, limit: int = 16) -> list[Job]:
        """'sending' jobs whose back-off has expired, oldest first."""

    @abc.abstractmethod
    def finish_delivery(self, job_id: int, revision: int, timings: dict[str, float] | None = None) -> bool:
        """Mark a delivered job 'done' if it still sends reception ``revision``; False: received again meanwhile."""

    @abc.abstractmethod
    def send_failed(self, job_id: int, error: str, max_attempts: int, backoff_initial_s: float,
                    backoff_max_s: float) -> str:
        """A delivery attempt failed: back off exponentially, or 'dead' after ``max_attempts``. Returns the state."""

    # -- study summaries -------------------------------------------------------------------------
    @abc.abstractmethod
    def due_summaries(self, quiet_s: float, now: float | None = None) -> list[str]:
        """Studies with a summary due, nothing received for ``quiet_s`` and no instance waiting or running."""

    def claim_summary(self, study_uid: str, worker: str = "", quiet_s: float = 0.0) -> bool:
        """Whether the caller makes the study's summary now (False: another process is making it, or it is
        no longer due). One process per store here (the spool lock), so always True; a shared store
        claims it for one process at a time."""
        return True

    @abc.abstractmethod
    def summary_made(self, study_uid: str, started_at: float | None = None) -> None:
        """The study's summary was made (or found unnecessary) for what was received before ``started_at``."""

    @abc.abstractmethod
    def add_summary(self, study_uid: str) -> int:
        """Create (or reset) the study's summary job in state 'running'; returns its id."""

    # -- queries (operator, /healthz, /metrics) --------------------------------------------------
    @abc.abstractmethod
    def get(self, job_id: int) -> Job:
        """The job with this id (:class:`~mammoxai.node.queue.QueueError` if none)."""

    @abc.abstractmethod
    def find(self, key: str) -> Job | None:
        """The job of a SOP Instance UID (or 'summary:STUDY'), if any."""

    @abc.abstractmethod
    def list(self, states: Iterable[str] | None = None, study_uid: str | None = None) -> list[Job]:
        """Jobs (all, or those in ``states`` / of one study), oldest first."""

    @abc.abstractmethod
    def counts(self) -> dict[str, int]:
        """Jobs per state (every state of :data:`STATES` present, 0 when none)."""

    @abc.abstractmethod
    def retry(self, job_ids: Iterable[int]) -> list[int]:
        """Operator: 'dead' jobs are sent again, 'failed' ones processed again; returns the ids re-queued."""

    @abc.abstractmethod
    def oldest_waiting_age(self, now: float | None = None) -> float:
        """Seconds since the oldest 'received' job was received (0 when none)."""

    @abc.abstractmethod
    def stuck(self, older_than_s: float, now: float | None = None) -> list[Job]:
        """Jobs 'running' for longer than ``older_than_s`` (e.g. ``node.job_budget_s``)."""

    @abc.abstractmethod
    def poison_count(self) -> int:
        """Jobs given up because processing them killed the process (:data:`PROCESS_DIED`)."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the store (connections, channels)."""

    def held(self) -> list[Job]:
        """The 'running' jobs this process holds (all of them for a store one process owns)."""
        return self.list(["running"])

    def ping(self) -> str:
        """'' when the store can be used, else why not (``/healthz``)."""
        return ""

    def describe(self) -> str:
        """Where the jobs are kept, for logs."""
        return type(self).__name__

    def pending_count(self) -> int:
        """Jobs not finished yet: waiting, running or sending."""
        c = self.counts()
        return c["received"] + c["running"] + c["sending"]

    def failed_count(self) -> int:
        """Jobs that failed processing or delivery for good ('failed' + 'dead')."""
        c = self.counts()
        return c["failed"] + c["dead"]


JOB_STORES = ("sqlite", "redis")


def open_job_store(settings: "Settings", database: Path | str) -> JobStore:
    """The job store ``node.job_store`` names: the spool's SQLite queue at ``database``, or the broker at
    ``node.broker_url`` (consumer ``node.consumer_name``, leases of ``node.broker_lease_s``)."""
    node = settings.node
    if node.job_store == "redis":
        from .redis_store import RedisJobStore

        return RedisJobStore(node.broker_url, consumer=node.consumer_name, lease_s=node.broker_lease_s,
                             max_attempts=node.max_process_attempts)
    from .queue import JobQueue

    return JobQueue(database)
