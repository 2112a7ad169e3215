"""Worker behaviour: batching, a poison image failing alone, typed outcomes, summary records (JSON, deleted once
summarised), summaries of quiet studies under a steady stream, workers in parallel."""

from __future__ import annotations

import shutil
import threading

from pydicom.uid import generate_uid

from mammoxai.node.queue import JobQueue
from mammoxai.node.spool import Spool
from node_helpers import StandInPipeline, make_image, node_settings, poll, running_node


class PoisonPipeline(StandInPipeline):
    """The stand-in, except that a batch containing the poison file raises (like a model crashing)."""

    def __init__(self, settings, poison: str):
        super().__init__(settings)
        self.poison = poison
        self.batches: list[int] = []

    def process(self, paths):
        self.batches.append(len(paths))
        if any(p.name == f"{self.poison}.dcm" for p in paths):
            raise RuntimeError("model crashed")
        return super().process(paths)


def test_poison_image_fails_alone_and_batches_are_used(tmp_path):
    settings = node_settings(tmp_path, batch_images=4)
    settings.node.max_process_attempts = 2
    spool = Spool(settings.node.spool_dir)
    queue = JobQueue(spool.database)
    study = generate_uid()
    uids = []
    for i in range(3):
        ds = make_image(tmp_path / f"m{i}.dcm", study, seed=i)
        shutil.copyfile(tmp_path / f"m{i}.dcm", spool.instance_path(ds.SOPInstanceUID))
        queue.add_received(ds.SOPInstanceUID, ds.SOPClassUID, study, ds.SeriesInstanceUID,
                           spool.instance_path(ds.SOPInstanceUID))
        uids.append(ds.SOPInstanceUID)
    queue.close()
    pipeline = PoisonPipeline(settings, poison=uids[1])
    with running_node(settings, pipeline=pipeline) as node:
        poll(node.idle, 30, what="all jobs settled")
        states = {j.key: j for j in node.queue.list() if j.kind == "instance"}
        assert states[uids[1]].state == "failed" and "model crashed" in states[uids[1]].error
        assert states[uids[1]].attempts == 2  # node.max_process_attempts
        assert states[uids[0]].state == "done" and states[uids[2]].state == "done"
        assert pipeline.batches[0] == 3                       # the waiting images were batched
        assert node.spool.instance_path(uids[1]).exists()     # kept for `mammoxai jobs retry`
        # the study was summarised: the records it read are gone, and nothing was pickled
        assert node.queue.find(f"summary:{study}").state == "done"
        assert list(node.spool.results.iterdir()) == []
        assert not list(node.spool.root.rglob("*.pkl"))
        assert node.metrics.counter("jobs_failed", stage="process") == 1


def test_summary_record_keeps_the_prediction_and_a_slim_header_as_json():
    import numpy as np
    import pytest
    from pydicom.dataset import Dataset

    from mammoxai.dicom_io.mammogram import Mammogram
    from mammoxai.dicom_io.results import AlgorithmInfo, DomainCheck, ImageResult, MethodMap
    from mammoxai.outcome import RecordError, SummaryRecord

    header = Dataset()
    header.PatientName, header.StudyInstanceUID, header.SOPInstanceUID = "Secret^Patient", "1.2.3", "1.2.3.4"
    header.Rows, header.Columns = 1000, 800
    header.PixelData = b"\0" * 2000
    header.add_new(0x00091010, "LO", "private")
    mammogram = Mammogram(dataset=header, pixels=np.ones((1000, 800), np.float32), laterality="L", view="CC",
                          flip_horizontal=True)
    heat = np.random.default_rng(0).random((1000, 800)).astype(np.float32)
    result = ImageResult(class_names=("benign", "malignant"), probabilities=(0.3, 0.7),
                         algorithm=AlgorithmInfo("m", "1", "0" * 64, "resnet10t", "0.1"),
                         maps=(MethodMap("gradcam", "Grad-CAM", heat, signed=False),), failures={"lime": "cut"},
                         domain=DomainCheck(3.0, 2.0, False, "Mahalanobis", ("too small",)), calibrated=True)
    text = SummaryRecord.of(mammogram, result).to_json()
    assert len(text) < 4000                                        # no heatmap, no pixels
    back = SummaryRecord.from_json(text)
    assert back.result.maps == () and back.result.malignancy_probability == 0.7
    assert back.result.domain == result.domain and back.result.failures == {"lime": "cut"}
    assert back.result.calibrated and back.result.algorithm == result.algorithm
    restored = back.mammogram()
    assert restored.laterality == "L" and restored.view == "CC" and restored.flip_horizontal
    assert restored.dataset.PatientName == "Secret^Patient" and restored.dataset.Rows == 1000
    assert "PixelData" not in restored.dataset and (0x0009, 0x1010) not in restored.dataset
    with pytest.raises(RecordError, match="format"):
        SummaryRecord.from_json(text.replace('"format": 1', '"format": 0'))
    with pytest.raises(RecordError):
        SummaryRecord.from_json("{not json")


def _spool_jobs(tmp_path, spool, queue, study, count, first_seed=0):
    uids = []
    for i in range(first_seed, first_seed + count):
        ds = make_image(tmp_path / f"m{i}.dcm", study, seed=i, size=16)
        shutil.copyfile(tmp_path / f"m{i}.dcm", spool.instance_path(ds.SOPInstanceUID))
        queue.add_received(ds.SOPInstanceUID, ds.SOPClassUID, study, ds.SeriesInstanceUID,
                           spool.instance_path(ds.SOPInstanceUID))
        uids.append(ds.SOPInstanceUID)
    return uids


def test_a_quiet_study_is_summarised_while_other_work_waits(tmp_path):
    """Under a steady stream the queue is never empty; a study's summary is due when *it* is quiet."""
    from mammoxai.node.metrics import Metrics
    from mammoxai.node.worker import Worker

    settings = node_settings(tmp_path, batch_images=2, study_quiet_seconds=0)
    spool = Spool(settings.node.spool_dir)
    queue = JobQueue(spool.database)
    first, second = generate_uid(), generate_uid()
    _spool_jobs(tmp_path, spool, queue, first, 2)
    worker = Worker("w", settings, queue, spool, StandInPipeline(settings), Metrics(), threading.Event(),
                    threading.Event())
    assert worker.step()                                   # the first study's two images
    _spool_jobs(tmp_path, spool, queue, second, 2, first_seed=10)   # more work arrives
    assert worker.step()
    summary = queue.find(f"summary:{first}")
    assert summary is not None and summary.state == "sending"      # made although the queue was not empty
    assert queue.counts()["running"] == 0 and queue.counts()["sending"] == 5   # 4 images + the summary
    queue.close()


def test_a_spool_after_100_delivered_jobs_holds_no_per_job_result_files(tmp_path):
    settings = node_settings(tmp_path, batch_images=8, study_quiet_seconds=0)
    spool = Spool(settings.node.spool_dir)
    queue = JobQueue(spool.database)
    for k in range(24):                      # 24 four-view studies and 4 single images (no summary needed)
        _spool_jobs(tmp_path, spool, queue, generate_uid(), 4, first_seed=4 * k)
    for k in range(4):
        _spool_jobs(tmp_path, spool, queue, generate_uid(), 1, first_seed=1000 + k)
    queue.close()
    with running_node(settings) as node:
        poll(node.idle, 120, what="100 jobs and 24 summaries delivered")
        jobs = node.queue.list()
        assert sum(j.kind == "instance" and j.state == "done" for j in jobs) == 100
        assert sum(j.kind == "summary" and j.state == "done" for j in jobs) == 24
        root = node.spool.root

        def leftovers() -> list:
            return [p for p in root.rglob("*") if p.is_file() and p.name != "lock"
                    and not p.name.startswith("queue.sqlite")]
        # the sender removes a job's files just after marking it done
        poll(lambda: not leftovers(), 30, what="no results/*.json, outputs, instances or tmp files left")
        assert not list(root.rglob("*.pkl"))
    assert len(list((tmp_path / "out").rglob("*.dcm"))) == 124


class _BarrierPipeline(StandInPipeline):
    """Proceeds only once another worker's pipeline is inside ``outcomes`` too (fails if workers serialise)."""

    def __init__(self, settings, barrier: threading.Barrier, made: list):
        super().__init__(settings)
        self.barrier = barrier
        made.append(self)

    def outcomes(self, paths):
        self.barrier.wait()     # BrokenBarrierError after its timeout when the other worker cannot run
        return super().outcomes(paths)


def test_workers_run_in_parallel_each_with_its_own_pipeline(tmp_path):
    from mammoxai.node.server import Node

    settings = node_settings(tmp_path, workers=2, batch_images=1, study_quiet_seconds=0)
    spool = Spool(settings.node.spool_dir)
    queue = JobQueue(spool.database)
    _spool_jobs(tmp_path, spool, queue, generate_uid(), 2)
    queue.close()
    barrier, made = threading.Barrier(2, timeout=60), []
    node = Node(settings, pipeline_factory=lambda s: _BarrierPipeline(s, barrier, made))
    node.start()
    try:
        poll(node.idle, 120, what="both jobs done")
        assert len(made) == 2 and made[0] is not made[1]       # one pipeline per worker
        assert [j.state for j in node.queue.list() if j.kind == "instance"] == ["done", "done"]
        assert not barrier.broken
    finally:
        node.stop(timeout=30)


class _ReReceivingDestination:
    """A destination during whose C-STORE the PACS sends the same instance to the node again."""

    def __init__(self, spool: Spool, queue: JobQueue, source) -> None:
        self.spool, self.queue, self.source = spool, queue, source
        self.sent: list[list[str]] = []

    def send(self, files):
        self.sent.append([f.name for f in files])
        if len(self.sent) == 1:   # the second reception, committed as the SCP does, before this send returns
            part = self.spool.temp_path(".dcm")
            shutil.copyfile(self.source, part)
            path = self.spool.commit_file(part, self.spool.instance_path(self.uid))
            self.queue.add_received(self.uid, "1.2.840.10008.5.1.4.1.1.1.2", "1.2.3", "1.2.3.4", path)

    def describe(self) -> str:
        return "test destination"


def test_instance_received_again_while_its_results_are_sent_is_processed_again(tmp_path):
    """The race seen once in ~12 runs of the storescu concurrency test: the sender finished a job that had been
    re-queued by a second reception, deleted the new copy's file, and the job failed with FileNotFoundError."""
    import threading

    from mammoxai.node.metrics import Metrics
    from mammoxai.node.worker import Sender

    spool, queue = Spool(tmp_path / "spool"), JobQueue(tmp_path / "spool" / "q.sqlite")
    ds = make_image(tmp_path / "mg.dcm")
    part = spool.temp_path(".dcm")
    shutil.copyfile(tmp_path / "mg.dcm", part)
    path = spool.commit_file(part, spool.instance_path(ds.SOPInstanceUID))
    job_id = queue.add_received(ds.SOPInstanceUID, ds.SOPClassUID, "1.2.3", "1.2.3.4", path)
    assert queue.claim(1)[0].revision == 0
    spool.stage_outputs(job_id, [ds])
    queue.mark_sending(job_id, 1)
    destination = _ReReceivingDestination(spool, queue, tmp_path / "mg.dcm")
    destination.uid = ds.SOPInstanceUID
    sender = Sender(node_settings(tmp_path), queue, spool, destination, Metrics(), threading.Event(),
                    threading.Event())
    sender.deliver(queue.get(job_id))
    job = queue.get(job_id)
    assert destination.sent == [["000.dcm"]]
    assert job.state == "received" and job.revision == 1       # queued for the new copy, not marked done
    assert path.is_file()                                      # the new copy's file was not deleted
    # the second round: processed and delivered, and only then is the source removed
    assert queue.claim(1)[0].revision == 1
    spool.stage_outputs(job_id, [ds])
    queue.mark_sending(job_id, 1)
    sender.deliver(queue.get(job_id))
    assert queue.get(job_id).state == "done" and not path.exists() and spool.staged_outputs(job_id) == []
    assert len(destination.sent) == 2


def test_queue_adds_the_revision_column_to_an_old_spool(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:   # the schema before revisions were counted
        conn.execute("CREATE TABLE jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL DEFAULT 'instance',"
                     " key TEXT NOT NULL UNIQUE, sop_class_uid TEXT NOT NULL DEFAULT '', study_uid TEXT NOT NULL"
                     " DEFAULT '', series_uid TEXT NOT NULL DEFAULT '', path TEXT NOT NULL DEFAULT '', calling_ae"
                     " TEXT NOT NULL DEFAULT '', state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0,"
                     " send_attempts INTEGER NOT NULL DEFAULT 0, outputs INTEGER NOT NULL DEFAULT 0, error TEXT NOT"
                     " NULL DEFAULT '', timings TEXT NOT NULL DEFAULT '{}', created_at REAL NOT NULL, updated_at"
                     " REAL NOT NULL, next_attempt_at REAL NOT NULL DEFAULT 0)")
        conn.execute("INSERT INTO jobs (key, state, created_at, updated_at) VALUES ('1.2.3', 'sending', 0, 0)")
    queue = JobQueue(db)
    job = queue.find("1.2.3")
    assert job.revision == 0 and queue.finish_delivery(job.id, 0) and queue.get(job.id).state == "done"


def test_staging_a_job_wakes_the_sender_at_once(tmp_path):
    """The worker sets the sender's event when outputs are staged, so delivery does not wait for the sender's poll."""
    from mammoxai.node.metrics import Metrics
    from mammoxai.node.worker import Worker

    settings = node_settings(tmp_path, batch_images=2)
    spool = Spool(settings.node.spool_dir)
    queue = JobQueue(spool.database)
    staged = threading.Event()
    worker = Worker("w", settings, queue, spool, StandInPipeline(settings), Metrics(), threading.Event(),
                    threading.Event(), staged=staged)
    assert not worker.step() and not staged.is_set()         # nothing to do: nothing staged
    _spool_jobs(tmp_path, spool, queue, generate_uid(), 1)
    assert worker.step()
    assert queue.counts()["sending"] == 1 and staged.is_set()
    queue.close()
