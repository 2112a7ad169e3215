"""The durable job queue: one SQLite database (WAL mode) under the spool directory.

Why SQLite: it ships with Python (no broker to run beside a DICOM node), its
transactions are atomic and durable (``synchronous=FULL``: a commit is on disk
before the C-STORE is answered), and WAL mode lets ``mammoxai jobs`` read and
re-queue while the server writes. One node, one disk: a message broker would
add a process to operate and nothing this queue lacks.

It implements :class:`mammoxai.node.jobstore.JobStore` (life cycle and guarantees there).

``kind`` is ``instance`` (one received SOP Instance) or ``summary`` (the
study-level summary, made when a study has been quiet for
``node.study_quiet_seconds``).

``revision`` counts the receptions of a job's instance. An instance received
again while its results are being sent re-queues the job; the sender then
finishes only if the revision it started with is still current
(:meth:`JobQueue.finish_delivery`), so it never marks the new reception done
nor deletes its file.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from ..errors import MammoxaiError
from .jobstore import FINAL_STATES, PROCESS_DIED, STATES, Job, JobStore, Recovery

__all__ = ["FINAL_STATES", "PROCESS_DIED", "STATES", "Job", "JobQueue", "QueueError", "Recovery"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL DEFAULT 'instance',
    key TEXT NOT NULL UNIQUE,               -- SOP Instance UID, or 'summary:' + Study Instance UID
    sop_class_uid TEXT NOT NULL DEFAULT '',
    study_uid TEXT NOT NULL DEFAULT '',
    series_uid TEXT NOT NULL DEFAULT '',
    path TEXT NOT NULL DEFAULT '',
    calling_ae TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    send_attempts INTEGER NOT NULL DEFAULT 0,
    outputs INTEGER NOT NULL DEFAULT 0,
    error TEXT NOT NULL DEFAULT '',
    timings TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    next_attempt_at REAL NOT NULL DEFAULT 0,
    revision INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs(state, next_attempt_at);
CREATE INDEX IF NOT EXISTS jobs_study ON jobs(study_uid);
CREATE TABLE IF NOT EXISTS studies (
    study_uid TEXT PRIMARY KEY,
    last_received_at REAL NOT NULL,
    summary_due INTEGER NOT NULL DEFAULT 1
);
"""


class QueueError(MammoxaiError):
    """A job queue operation is impossible (unknown job id, bad state)."""


def _row_to_job(row: sqlite3.Row) -> Job:
    data = dict(row)
    data["timings"] = json.loads(data["timings"] or "{}")
    return Job(**data)


class JobQueue(JobStore):
    """The queue in ``path`` (created with its schema if missing). Thread-safe; several processes may open it."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            raise QueueError(f"{self.path}: cannot open the job queue: {exc}") from None
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=30000")
        with self._lock:
            self._db.executescript(_SCHEMA)
            columns = {row["name"] for row in self._db.execute("PRAGMA table_info(jobs)")}
            if "revision" not in columns:   # a spool made before revisions were counted
                self._db.execute("ALTER TABLE jobs ADD COLUMN revision INTEGER NOT NULL DEFAULT 0")

    def describe(self) -> str:
        """The queue's database file."""
        return f"SQLite {self.path}"

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    # -- helpers ---------------------------------------------------------------------------------
    def _tx(self, fn, *args: Any) -> Any:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(*args)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def _update(self, job_id: int, **values: Any) -> None:
        values["updated_at"] = time.time()
        if "timings" in values and not isinstance(values["timings"], str):
            values["timings"] = json.dumps(values["timings"])
        sets = ", ".join(f"{k} = ?" for k in values)
        with self._lock:
            cur = self._db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", (*values.values(), job_id))
        if cur.rowcount != 1:
            raise QueueError(f"job {job_id}: no such job")

    # -- receiving -------------------------------------------------------------------------------
    def add_received(self, sop_instance_uid: str, sop_class_uid: str, study_uid: str, series_uid: str,
                     path: Path | str, calling_ae: str = "", receive_s: float = 0.0,
                     state: str = "received", error: str = "") -> int:
        """Record a received instance (``state`` 'received', or 'ignored' with the reason in ``error``).

        An instance received again (same SOP Instance UID) re-uses its job: it
        is processed again unless it is waiting or running already. The study's
        summary becomes due again. Returns the job id.
        """
        if state not in ("received", "ignored"):
            raise QueueError(f"{sop_instance_uid}: a new job is 'received' or 'ignored', not {state!r}")
        now = time.time()

        def work() -> int:
            row = self._db.execute("SELECT id, state FROM jobs WHERE key = ?", (sop_instance_uid,)).fetchone()
            timings = json.dumps({"receive": round(receive_s, 4)})
            if row is None:
                cur = self._db.execute(
                    "INSERT INTO jobs (kind, key, sop_class_uid, study_uid, series_uid, path, calling_ae, state,"
                    " error, timings, created_at, updated_at) VALUES ('instance',?,?,?,?,?,?,?,?,?,?,?)",
                    (sop_instance_uid, sop_class_uid, study_uid, series_uid, str(path), calling_ae, state,
                     error, timings, now, now))
                job_id = int(cur.lastrowid)
            else:
                job_id = int(row["id"])
                self._db.execute("UPDATE jobs SET revision = revision + 1 WHERE id = ?", (job_id,))
                if row["state"] not in ("received", "running"):
                    self._db.execute(
                        "UPDATE jobs SET state = ?, attempts = 0, send_attempts = 0, error = ?, timings = ?,"
                        " path = ?, calling_ae = ?, updated_at = ?, next_attempt_at = 0 WHERE id = ?",
                        (state, error, timings, str(path), calling_ae, now, job_id))
            if state == "received" and study_uid:
                self._db.execute(
                    "INSERT INTO studies (study_uid, last_received_at, summary_due) VALUES (?, ?, 1)"
                    " ON CONFLICT(study_uid) DO UPDATE SET last_received_at = excluded.last_received_at,"
                    " summary_due = 1", (study_uid, now))
            return job_id

        return self._tx(work)

    # -- processing ------------------------------------------------------------------------------
    def claim(self, limit: int = 1, worker: str = "") -> list[Job]:
        """Move up to ``limit`` oldest 'received' jobs to 'running' (attempts + 1, committed) and return them.

        The attempt is on disk before the job is processed, so a job that kills the process is
        counted (:meth:`recover`). A job tried before is claimed alone; only fresh jobs are batched.
        """
        def work() -> list[Job]:
            # summary jobs are made by the worker itself (add_summary), never claimed; one left 'received' by a
            # crash is reset when its study's summary, still due, is made again
            first = self._db.execute("SELECT id, attempts FROM jobs WHERE state = 'received' AND kind = 'instance'"
                                     " ORDER BY id LIMIT 1").fetchone()
            if first is None:
                return []
            if first["attempts"] > 0:
                ids = [int(first["id"])]
            else:
                ids = [int(r["id"]) for r in self._db.execute(
                    "SELECT id FROM jobs WHERE state = 'received' AND kind = 'instance' AND attempts = 0"
                    " ORDER BY id LIMIT ?",
                    (max(1, limit),))]
            now = time.time()
            for job_id in ids:
                self._db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, updated_at = ?"
                                 " WHERE id = ?", (now, job_id))
            return [self.get_unlocked(job_id) for job_id in ids]

        return self._tx(work)

    def recover(self, max_attempts: int | None = None) -> Recovery:
        """At start-up: jobs left 'running' by a dead process go back to 'received'.

        With ``max_attempts``, an instance job already claimed that often (each claim is counted
        before processing) is 'failed' with :data:`PROCESS_DIED`: it killed the process every time.
        """
        def work() -> Recovery:
            now = time.time()
            given_up: list[int] = []
            if max_attempts is not None:
                given_up = [int(r["id"]) for r in self._db.execute(
                    "SELECT id FROM jobs WHERE state = 'running' AND kind = 'instance' AND attempts >= ?",
                    (max_attempts,))]
                for job_id in given_up:
                    self._db.execute("UPDATE jobs SET state = 'failed', error = ?, updated_at = ? WHERE id = ?",
                                     (PROCESS_DIED, now, job_id))
            cur = self._db.execute("UPDATE jobs SET state = 'received', updated_at = ? WHERE state = 'running'",
                                   (now,))
            return Recovery(requeued=cur.rowcount, given_up=given_up)

        return self._tx(work)

    def requeue(self, job_id: int) -> None:
        """Put a running job back (graceful shutdown); its attempt does not count."""
        with self._lock:
            self._db.execute("UPDATE jobs SET state = 'received', attempts = MAX(attempts - 1, 0), updated_at = ?"
                             " WHERE id = ? AND state = 'running'", (time.time(), job_id))

    def reprocess(self, job_id: int, reason: str) -> None:
        """Send a job back to 'received' (its staged outputs were lost); the reason is kept in ``error``."""
        self._update(job_id, state="received", error=reason, send_attempts=0)

    def mark_sending(self, job_id: int, outputs: int, timings: dict[str, float] | None = None) -> None:
        """The job's outputs are staged on disk: deliver them next."""
        self._update(job_id, state="sending", outputs=outputs, error="", next_attempt_at=0,
                     timings=self._merged_timings(job_id, timings))

    def mark_done(self, job_id: int, timings: dict[str, float] | None = None) -> None:
        """Everything the job produced was delivered (or it produced nothing to deliver)."""
        self._update(job_id, state="done", error="", timings=self._merged_timings(job_id, timings))

    def finish_delivery(self, job_id: int, revision: int, timings: dict[str, float] | None = None) -> bool:
        """Mark a delivered job 'done' if it is still 'sending' the reception ``revision``; True if it was.

        False means the instance was received again meanwhile: the job is queued
        (or running) for that newer copy and must be left alone.
        """
        def work() -> bool:
            merged = json.dumps(self._merged_timings(job_id, timings))
            cur = self._db.execute(
                "UPDATE jobs SET state = 'done', error = '', timings = ?, updated_at = ?"
                " WHERE id = ? AND state = 'sending' AND revision = ?", (merged, time.time(), job_id, revision))
            return cur.rowcount == 1

        return bool(self._tx(work))

    def mark_ignored(self, job_id: int, reason: str, timings: dict[str, float] | None = None) -> None:
        """Nothing to do for this instance (not a mammogram, our own output, ...)."""
        self._update(job_id, state="ignored", error=reason, timings=self._merged_timings(job_id, timings))

    def mark_failed(self, job_id: int, error: str, max_attempts: int = 1) -> str:
        """Processing failed: back to 'received' while attempts < ``max_attempts``, else 'failed'. Returns the state."""
        job = self.get(job_id)
        state = "received" if job.attempts < max_attempts else "failed"
        self._update(job_id, state=state, error=error)
        return state

    def _merged_timings(self, job_id: int, timings: dict[str, float] | None) -> dict[str, float]:
        merged = dict(self.get(job_id).timings)
        merged.update({k: round(float(v), 4) for k, v in (timings or {}).items()})
        return merged

    # -- sending ---------------------------------------------------------------------------------
    def due_for_sending(self, now: float | None = None, limit: int = 16) -> list[Job]:
        """'sending' jobs whose back-off has expired, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = 'sending' AND next_attempt_at <= ?"
                                    " ORDER BY next_attempt_at, id LIMIT ?", (now, limit)).fetchall()
        return [_row_to_job(r) for r in rows]

    def send_failed(self, job_id: int, error: str, max_attempts: int, backoff_initial_s: float,
                    backoff_max_s: float) -> str:
        """A delivery attempt failed: back off exponentially, or 'dead' after ``max_attempts``. Returns the state."""
        job = self.get(job_id)
        attempts = job.send_attempts + 1
        if attempts >= max_attempts:
            self._update(job_id, state="dead", send_attempts=attempts, error=error)
            return "dead"
        delay = min(backoff_max_s, backoff_initial_s * 2 ** (attempts - 1))
        self._update(job_id, send_attempts=attempts, error=error, next_attempt_at=time.time() + delay)
        return "sending"

    # -- operator --------------------------------------------------------------------------------
    def get_unlocked(self, job_id: int) -> Job:
        row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise QueueError(f"job {job_id}: no such job")
        return _row_to_job(row)

    def get(self, job_id: int) -> Job:
        """The job with this id; :class:`QueueError` if there is none."""
        with self._lock:
            return self.get_unlocked(job_id)

    def find(self, key: str) -> Job | None:
        """The job of a SOP Instance UID (or 'summary:STUDY'), if any."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE key = ?", (key,)).fetchone()
        return None if row is None else _row_to_job(row)

    def list(self, states: Iterable[str] | None = None, study_uid: str | None = None) -> list[Job]:
        """Jobs (all, or those in ``states`` / of one study), by id."""
        sql, params = "SELECT * FROM jobs WHERE 1=1", []
        if states is not None:
            states = list(states)
            unknown = [s for s in states if s not in STATES]
            if unknown:
                raise QueueError(f"unknown job state(s) {unknown}; known: {', '.join(STATES)}")
            sql += f" AND state IN ({','.join('?' * len(states))})"
            params += states
        if study_uid is not None:
            sql += " AND study_uid = ?"
            params.append(study_uid)
        with self._lock:
            rows = self._db.execute(sql + " ORDER BY id", params).fetchall()
        return [_row_to_job(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Number of jobs per state (every state present, 0 when none)."""
        with self._lock:
            rows = self._db.execute("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state").fetchall()
        out = {s: 0 for s in STATES}
        out.update({r["state"]: int(r["n"]) for r in rows})
        return out

    def retry(self, job_ids: Iterable[int]) -> list[int]:
        """Re-queue failed/dead jobs: 'dead' ones are sent again, 'failed' ones processed again.

        Returns the ids re-queued; a job in another state raises :class:`QueueError`.
        """
        done: list[int] = []
        for job_id in job_ids:
            job = self.get(job_id)
            if job.state == "dead":
                self._update(job_id, state="sending", send_attempts=0, next_attempt_at=0, error="")
            elif job.state == "failed":
                self._update(job_id, state="received", attempts=0, error="")
            else:
                raise QueueError(f"job {job_id}: state is {job.state!r}; only failed or dead jobs can be retried")
            done.append(job_id)
        return done

    # -- studies ---------------------------------------------------------------------------------
    def due_summaries(self, quiet_s: float, now: float | None = None) -> list[str]:
        """Studies quiet for ``quiet_s`` with a summary due and no instance waiting or running."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute(
                "SELECT s.study_uid FROM studies s WHERE s.summary_due = 1 AND s.last_received_at <= ?"
                " AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.study_uid = s.study_uid AND j.kind = 'instance'"
                " AND j.state IN ('received', 'running'))", (now - quiet_s,)).fetchall()
        return [r["study_uid"] for r in rows]

    def summary_made(self, study_uid: str, started_at: float | None = None) -> None:
        """The study's summary was made (or found unnecessary) for the instances received before ``started_at``.

        An instance received after ``started_at`` keeps the summary due (it is made again).
        """
        started_at = time.time() if started_at is None else started_at
        with self._lock:
            self._db.execute("UPDATE studies SET summary_due = 0 WHERE study_uid = ? AND last_received_at <= ?",
                             (study_uid, started_at))

    def add_summary(self, study_uid: str) -> int:
        """Create (or reset) the study's summary job in state 'running'; returns its id."""
        key = f"summary:{study_uid}"
        now = time.time()

        def work() -> int:
            row = self._db.execute("SELECT id FROM jobs WHERE key = ?", (key,)).fetchone()
            if row is None:
                cur = self._db.execute(
                    "INSERT INTO jobs (kind, key, study_uid, state, attempts, created_at, updated_at)"
                    " VALUES ('summary', ?, ?, 'running', 1, ?, ?)", (key, study_uid, now, now))
                return int(cur.lastrowid)
            self._db.execute("UPDATE jobs SET state = 'running', attempts = attempts + 1, send_attempts = 0,"
                             " error = '', updated_at = ? WHERE id = ?", (now, row["id"]))
            return int(row["id"])

        return self._tx(work)

    def oldest_waiting_age(self, now: float | None = None) -> float:
        """Seconds since the oldest 'received' job was received (0 when none)."""
        now = time.time() if now is None else now
        with self._lock:
            row = self._db.execute("SELECT MIN(created_at) AS t FROM jobs WHERE state = 'received'").fetchone()
        return 0.0 if row["t"] is None else max(0.0, now - float(row["t"]))

    def stuck(self, older_than_s: float, now: float | None = None) -> list[Job]:
        """Jobs 'running' for longer than ``older_than_s``, oldest first."""
        now = time.time() if now is None else now
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs WHERE state = 'running' AND updated_at < ? ORDER BY id",
                                    (now - older_than_s,)).fetchall()
        return [_row_to_job(r) for r in rows]

    def poison_count(self) -> int:
        """Jobs 'failed' because processing them killed the process (:data:`PROCESS_DIED`)."""
        with self._lock:
            row = self._db.execute("SELECT COUNT(*) AS n FROM jobs WHERE state = 'failed' AND error = ?",
                                   (PROCESS_DIED,)).fetchone()
        return int(row["n"])
