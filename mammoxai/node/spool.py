"""The node's spool directory: durable, atomically written files.

Layout under ``node.spool_dir``::

    tmp/                 partial files (same file system, so a rename commits them)
    instances/UID.dcm    received instances, named by SOP Instance UID (Part 10 files)
    outputs/JOB/NN.dcm   results staged for sending, one folder per job, committed by renaming the folder
    results/JOB.json     what the study summary needs of a processed image (mammoxai.outcome.SummaryRecord),
                         deleted once the study's summary is staged or found unnecessary
    queue.sqlite         the job queue (see :mod:`mammoxai.node.queue`; not used with a broker)
    lock                 held (``flock``) by the one node process serving this spool; shared by the role
                         processes of a broker-based node (``serve --role scp|worker``)

Shared by several processes (``serve --role``, :meth:`Spool.lock` with ``shared=True``), on one or
several machines (NFS v4, CephFS): each process writes into its own ``tmp/NAME/`` (flock-ed
``tmp/NAME.lock`` while it lives; a process finding such a lock free removes the dead owner's
leftovers), ``scp.lock`` is held by the one SCP process, and :attr:`Spool.reception` also takes
``reception.lock`` (flock) so that a re-reception and the end of a delivery exclude each other
across machines. The file system must give atomic ``rename`` within the spool, ``fsync`` that
reaches the server, and ``flock`` honoured across clients (NFS v4 maps it to POSIX locks; CephFS
has it); job ids come from the broker, so folders named by job never collide.

Received data sets stream into ``tmp/`` too (never ``$TMPDIR``), so ``clear_tmp`` at start removes
what a crash or an aborted association left half-received.

Every file is written to ``tmp/``, ``fsync``-ed, renamed into place and its
folder ``fsync``-ed, so a ``kill -9`` or power loss leaves either the complete
file or nothing. Nothing half-written is ever visible under its final name.
"""

from __future__ import annotations

import errno
import fcntl
import io
import os
import re
import shutil
import threading
import uuid
from collections.abc import Iterable
from pathlib import Path

from pydicom.dataset import Dataset

from ..errors import MammoxaiError

_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")


class SpoolError(MammoxaiError):
    """The spool directory cannot be used (not writable, bad name, disk full)."""


def fsync_dir(path: Path) -> None:
    """``fsync`` a directory so that a rename inside it survives a crash."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ReceptionLock:
    """A thread lock, plus an ``flock`` on ``path`` when the spool is shared by several processes."""

    def __init__(self) -> None:
        self._thread_lock = threading.Lock()
        self.path: Path | None = None
        self._fd: int | None = None

    def __enter__(self) -> "ReceptionLock":
        self._thread_lock.acquire()
        if self.path is not None:
            try:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            except BaseException:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                self._thread_lock.release()
                raise
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing releases the flock
            self._fd = None
        self._thread_lock.release()


class Spool:
    """Atomic file storage under one root directory (created if missing)."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root).absolute()
        self.tmp = self.root / "tmp"
        self.instances = self.root / "instances"
        self.outputs = self.root / "outputs"
        self.results = self.root / "results"
        #: Held while a received instance is committed and queued, and while a delivered one is finished and
        #: removed: otherwise a re-reception landing between the sender's "done" and its removal is deleted.
        self.reception = ReceptionLock()
        self.shared = False
        self._tmp_lock_fd: int | None = None
        self._scp_lock_fd: int | None = None
        try:
            for folder in (self.root, self.tmp, self.instances, self.outputs, self.results):
                folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpoolError(f"{self.root}: cannot create the spool directory: {exc.strerror}") from None
        if not os.access(self.root, os.W_OK):
            raise SpoolError(f"{self.root}: spool directory is not writable")

    def lock(self, shared: bool = False, name: str = "") -> None:
        """Take the spool's lock for this process; :class:`SpoolError` when another process holds it.

        Two node processes on one spool would both claim work and clear each
        other's partial files; the lock (``flock``, released by the kernel when
        the process dies, even by ``kill -9``) makes the second one stop at start.

        ``shared=True`` (the role processes of a broker-based node): a shared lock, so that role
        processes coexist but never with a single-machine ``serve`` on the same spool; this process
        then writes into its own ``tmp/NAME/`` (``name``: unique per live process).
        """
        if getattr(self, "_lock_fd", None) is not None:
            return
        path = self.root / "lock"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "?"
            os.close(fd)
            if shared:
                raise SpoolError(f"{self.root}: spool is in use by a single-machine mammoxai serve (pid {holder}); "
                                 "role processes (serve --role) cannot share it") from None
            holder = holder if holder != "?" else "? - serve --role processes share it"
            raise SpoolError(f"{self.root}: spool is in use by another mammoxai process (pid {holder}); "
                             "stop it first, or give this one its own node.spool_dir") from None
        if not shared:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._lock_fd: int | None = fd
        if shared:
            try:
                self._use_private_tmp(name or f"{os.uname().nodename}-{os.getpid()}")
            except BaseException:
                self.unlock()
                raise

    def _use_private_tmp(self, name: str) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name):
            raise SpoolError(f"{name!r}: not usable as a spool folder name (letters, digits, . _ -)")
        lock = self.root / "tmp" / f"{name}.lock"
        for _ in range(5):
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                raise SpoolError(f"{self.root}: another live process uses the name {name!r} "
                                 "(node.consumer_name must be unique)") from None
            try:
                if os.stat(lock).st_ino == os.fstat(fd).st_ino:
                    break   # still the file others see (not unlinked by a clean-up of dead processes' folders)
            except FileNotFoundError:
                pass
            os.close(fd)
        else:
            raise SpoolError(f"{self.root}: cannot take {lock.name}")
        self._tmp_lock_fd = fd
        self.shared = True
        self.tmp = self.root / "tmp" / name
        self.tmp.mkdir(exist_ok=True)
        self.reception.path = self.root / "reception.lock"

    def lock_reception(self) -> None:
        """The SCP role: take ``scp.lock`` (one receiving process per spool); :class:`SpoolError` if taken."""
        fd = os.open(self.root / "scp.lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise SpoolError(f"{self.root}: another SCP process receives into this spool") from None
        self._scp_lock_fd = fd

    def unlock(self) -> None:
        """Release the locks taken by :meth:`lock` and :meth:`lock_reception` (no-op when not held)."""
        for attr in ("_scp_lock_fd", "_tmp_lock_fd", "_lock_fd"):
            fd = getattr(self, attr, None)
            if fd is not None:
                setattr(self, attr, None)
                fcntl.flock(fd, fcntl.LOCK_UN)
                os.close(fd)

    @property
    def database(self) -> Path:
        """The SQLite job queue file."""
        return self.root / "queue.sqlite"

    def free_mb(self) -> float:
        """Free space (MiB) on the spool's file system, for an unprivileged writer."""
        stat = os.statvfs(self.root)
        return stat.f_bavail * stat.f_frsize / (1024 * 1024)

    def temp_path(self, suffix: str = ".part") -> Path:
        """A fresh file name in ``tmp/`` (not created)."""
        return self.tmp / f"{uuid.uuid4().hex}{suffix}"

    def clear_tmp(self) -> int:
        """Remove leftovers of writes interrupted by a crash; returns how many entries were removed.

        Shared: this process's own ``tmp/NAME/``, and the folders of processes that are gone (their
        ``tmp/NAME.lock`` is free); a live process's partial files are never touched.
        """
        count = 0
        for entry in self.tmp.iterdir():
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
            count += 1
        if self.shared:
            count += self._clear_dead_tmp()
        return count

    def _clear_dead_tmp(self) -> int:
        count = 0
        for lock in (self.root / "tmp").glob("*.lock"):
            folder = lock.with_suffix("")
            if folder == self.tmp:
                continue
            fd = os.open(lock, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)
                continue   # its process lives
            try:
                if folder.is_dir():
                    count += sum(1 for _ in folder.iterdir())
                    shutil.rmtree(folder, ignore_errors=True)
                lock.unlink(missing_ok=True)
            finally:
                os.close(fd)
        return count

    def instance_path(self, sop_instance_uid: str) -> Path:
        """Where the instance with this SOP Instance UID is kept."""
        if not _UID.match(sop_instance_uid) or len(sop_instance_uid) > 64:
            raise SpoolError(f"{sop_instance_uid!r}: not a valid SOP Instance UID (0-9 and dots, <= 64 characters)")
        return self.instances / f"{sop_instance_uid}.dcm"

    def commit_file(self, source: Path, destination: Path) -> Path:
        """Move ``source`` to ``destination`` durably: fsync, rename (copy across file systems), fsync the folder."""
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            _fsync_file(source)
            os.replace(source, destination)
        except OSError as exc:
            if exc.errno != errno.EXDEV:
                raise
            part = self.temp_path()
            shutil.copyfile(source, part)
            _fsync_file(part)
            os.replace(part, destination)
        fsync_dir(destination.parent)
        return destination

    def write_bytes(self, destination: Path, data: bytes) -> Path:
        """Write ``data`` to ``destination`` atomically."""
        part = self.temp_path()
        try:
            with open(part, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, destination)
        fsync_dir(destination.parent)
        return destination

    def stage_outputs(self, job_id: int, datasets: Iterable[Dataset]) -> Path:
        """Write a job's result datasets as ``outputs/JOB/NN.dcm``, all or nothing.

        The files are written into a temporary folder that is renamed to its
        final name only when every file is on disk, so a crash never leaves a
        partial set that could be sent. An existing folder (an earlier attempt)
        is replaced.
        """
        final = self.outputs / str(job_id)
        encoded = []
        for ds in datasets:
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            encoded.append(buffer.getvalue())
        names = [f"{index:03d}.dcm" for index in range(len(encoded))]
        if final.is_dir() and sorted(p.name for p in final.glob("*.dcm")) == names and all(
                (final / name).read_bytes() == data for name, data in zip(names, encoded)):
            return final   # the same outputs are staged already: never rewrite them
        part = self.tmp / f"out-{job_id}-{uuid.uuid4().hex}"
        try:
            part.mkdir()
            for name, data in zip(names, encoded):
                path = part / name
                path.write_bytes(data)
                _fsync_file(path)
            fsync_dir(part)
        except BaseException:
            shutil.rmtree(part, ignore_errors=True)   # a full disk must not leave half a set behind
            raise
        if final.exists():
            shutil.rmtree(final)
        os.replace(part, final)
        fsync_dir(self.outputs)
        return final

    def staged_outputs(self, job_id: int) -> list[Path]:
        """The committed output files of a job, in order (empty when none)."""
        folder = self.outputs / str(job_id)
        if not folder.is_dir():
            return []
        return sorted(folder.glob("*.dcm"))

    def remove_outputs(self, job_id: int) -> None:
        """Delete a job's staged outputs (after they were delivered)."""
        shutil.rmtree(self.outputs / str(job_id), ignore_errors=True)

    def localise(self, path: Path | str) -> Path:
        """A spooled instance's path as this process sees it.

        Shared by several hosts, the SCP records ``instances/UID.dcm`` under *its* mount point; a host
        that mounts the spool elsewhere finds the file under its own ``instances/``. Unshared: unchanged.
        """
        path = Path(path)
        if self.shared and path.parent.name == "instances" and path.parent != self.instances:
            return self.instances / path.name
        return path

    def remove_instance(self, path: Path | str) -> None:
        """Delete a received instance once its job is finished (only files inside ``instances/``)."""
        if not path:
            return
        path = self.localise(path)
        if path.parent.resolve() == self.instances.resolve():
            path.unlink(missing_ok=True)

    def result_path(self, job_id: int) -> Path:
        """Where a job's summary record (JSON) is kept until its study's summary no longer needs it."""
        return self.results / f"{job_id}.json"

    def remove_result(self, job_id: int) -> None:
        """Delete a job's summary record (no-op when there is none)."""
        self.result_path(job_id).unlink(missing_ok=True)
