"""A full disk (issue 16, fault 3): the node stops claiming, loses nothing, and resumes by itself.

The spool is a real size-limited file system (a 4 MiB tmpfs) where this test may mount one
(root with CAP_SYS_ADMIN, as in the project's CI container); elsewhere the same tests run on a
fault-injecting spool whose writes fail with ENOSPC and whose queue says "database or disk is
full", as SQLite does.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import subprocess
import threading
from pathlib import Path

import pytest
from pydicom.uid import generate_uid

from mammoxai.node.metrics import Metrics
from mammoxai.node.queue import JobQueue
from mammoxai.node.scu import FolderDestination
from mammoxai.node.spool import Spool
from mammoxai.node.worker import Worker
from node_helpers import make_image, node_settings, poll, running_node
from node_standin import StandInPipeline

SIZE_MB = 4


class TmpfsDisk:
    """A real tmpfs of ``SIZE_MB`` MiB at ``root``; :meth:`fill` leaves ``free_mb`` free, :meth:`empty` frees it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.ballast = root / "ballast"

    def mount(self) -> bool:
        self.root.mkdir(parents=True, exist_ok=True)
        return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MB}m", "tmpfs", str(self.root)],
                              capture_output=True).returncode == 0

    def unmount(self) -> None:
        subprocess.run(["umount", "-l", str(self.root)], capture_output=True)

    def fill(self, free_mb: float = 0.0) -> None:
        keep = int(free_mb * 1024 * 1024)
        with open(self.ballast, "ab", buffering=0) as fh:
            for chunk in (1 << 16, 1 << 12, 1):
                try:
                    while True:
                        stat = os.statvfs(self.root)
                        if stat.f_bavail * stat.f_frsize <= keep + chunk:
                            break
                        fh.write(b"\0" * chunk)
                        fh.flush()
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            if keep == 0:   # really full: write until the file system refuses
                with contextlib.suppress(OSError):
                    while True:
                        fh.write(b"\0" * 512)
                        fh.flush()
                        os.fsync(fh.fileno())

    def empty(self) -> None:
        self.ballast.unlink(missing_ok=True)


class InjectedDisk:
    """Where no tmpfs can be mounted: the spool's writes and the queue's transactions fail as on a full disk."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = root
        self.free = float(SIZE_MB)
        self.monkeypatch = monkeypatch

    def mount(self) -> bool:
        disk = self

        def free_mb(_spool: Spool) -> float:
            return disk.free

        def guarded(original):
            def write(*args, **kwargs):
                if disk.free <= 0:
                    raise OSError(errno.ENOSPC, "No space left on device")
                return original(*args, **kwargs)
            return write

        def tx(original):
            def run(*args, **kwargs):
                if disk.free <= 0:
                    raise sqlite3.OperationalError("database or disk is full")
                return original(*args, **kwargs)
            return run

        self.monkeypatch.setattr(Spool, "free_mb", free_mb)
        for name in ("stage_outputs", "write_bytes", "commit_file"):
            self.monkeypatch.setattr(Spool, name, guarded(getattr(Spool, name)))
        for name in ("_tx", "_update"):
            self.monkeypatch.setattr(JobQueue, name, tx(getattr(JobQueue, name)))
        return True

    def unmount(self) -> None:
        pass

    def fill(self, free_mb: float = 0.0) -> None:
        self.free = free_mb

    def empty(self) -> None:
        self.free = float(SIZE_MB)


@pytest.fixture
def disk(tmp_path, monkeypatch):
    real = TmpfsDisk(tmp_path / "spool")
    chosen = real if os.geteuid() == 0 and real.mount() else InjectedDisk(tmp_path / "spool", monkeypatch)
    if chosen is not real:
        chosen.mount()
    try:
        yield chosen
    finally:
        chosen.unmount()


def _queue_images(tmp_path: Path, spool: Spool, study: str, count: int) -> list[str]:
    queue = JobQueue(spool.database)
    uids = []
    for i in range(count):
        ds = make_image(tmp_path / f"m{i}.dcm", study, seed=i, size=16)
        shutil.copyfile(tmp_path / f"m{i}.dcm", spool.instance_path(ds.SOPInstanceUID))
        queue.add_received(ds.SOPInstanceUID, ds.SOPClassUID, study, ds.SeriesInstanceUID,
                           spool.instance_path(ds.SOPInstanceUID))
        uids.append(ds.SOPInstanceUID)
    queue.close()
    return uids


class GatedPipeline(StandInPipeline):
    """The stand-in, holding its first batch until ``go`` is set (so the disk fills while it computes)."""

    def __init__(self, settings):
        super().__init__(settings)
        self.started, self.go = threading.Event(), threading.Event()

    def outcomes(self, paths):
        self.started.set()
        assert self.go.wait(60)
        return super().outcomes(paths)


class CountingDestination(FolderDestination):
    def __init__(self, folder: Path) -> None:
        super().__init__(folder)
        self.sent: list[str] = []

    def send(self, files):
        self.sent += [Path(f).name for f in files]
        super().send(files)


def test_a_full_disk_loses_nothing_and_the_node_resumes_when_space_returns(tmp_path, disk):
    settings = node_settings(tmp_path, spool_dir=disk.root, disk_free_watermark_mb=0, study_quiet_seconds=0,
                             batch_images=2)
    spool = Spool(disk.root)
    study = generate_uid()
    uids = _queue_images(tmp_path, spool, study, 6)
    pipeline = GatedPipeline(settings)
    destination = CountingDestination(tmp_path / "out")
    with running_node(settings, pipeline=pipeline, destination=destination) as node:
        assert pipeline.started.wait(60)
        disk.fill(0.0)                                    # the disk fills while the first batch computes
        pipeline.go.set()
        poll(lambda: node.workers[0].disk.low, 60, what="the worker to meet the full disk")
        assert node.healthy()                             # no thread died
        counts = node.queue.counts()
        assert counts["failed"] == counts["dead"] == counts["done"] == 0   # nothing given up, nothing lost
        assert counts["received"] + counts["running"] == 6
        assert destination.sent == []
        disk.empty()                                      # space returns: no restart, no operator
        poll(node.idle, 120, what="every job delivered after space returned")
        jobs = node.queue.list()
        assert sorted(j.key for j in jobs if j.kind == "instance" and j.state == "done") == sorted(uids)
        assert [j.state for j in jobs if j.kind == "summary"] == ["done"]
        assert all(j.attempts <= 1 for j in jobs if j.kind == "instance")   # a full disk costs no attempt
        poll(lambda: not any(spool.results.iterdir()) and not any(spool.tmp.iterdir()), 30,
             what="no summary record or temporary file left")
    delivered = list((tmp_path / "out").rglob("*.dcm"))
    assert len(delivered) == 7                                # one SC per image + the summary
    assert len(destination.sent) == 7                         # each sent once: no re-send storm


def test_below_the_watermark_nothing_is_claimed_until_space_returns(tmp_path, disk):
    settings = node_settings(tmp_path, spool_dir=disk.root, disk_free_watermark_mb=SIZE_MB / 2,
                             study_quiet_seconds=0, batch_images=4)
    spool = Spool(disk.root)
    _queue_images(tmp_path, spool, generate_uid(), 2)
    queue = JobQueue(spool.database)
    worker = Worker("w", settings, queue, spool, StandInPipeline(settings), Metrics(), threading.Event(),
                    threading.Event())
    disk.fill(SIZE_MB / 4)                                # free space below the watermark
    assert not worker.step()                              # claims nothing
    assert queue.counts()["received"] == 2 and worker.disk.low
    disk.empty()
    assert worker.step()                                  # space is back: the work goes on by itself
    assert queue.counts()["sending"] == 2 and not worker.disk.low
    queue.close()
