"""Worker behaviour: batching, a poison image failing alone, per-job outcome and the slim summary inputs."""

from __future__ import annotations

import pickle
import shutil

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
        # the slim result kept for the summary has no pixels and no outputs
        with open(node.spool.result_path(states[uids[0]].id), "rb") as fh:
            slim = pickle.load(fh)
        assert slim.outputs == [] and slim.status == "done"
        assert node.metrics.counter("jobs_failed", stage="process") == 1


def test_slim_result_drops_pixels_and_decimates_maps():
    from dataclasses import dataclass, field

    import numpy as np
    from pydicom.dataset import Dataset

    from mammoxai.dicom_io.mammogram import Mammogram
    from mammoxai.dicom_io.results import AlgorithmInfo, ImageResult, MethodMap
    from mammoxai.node.worker import SUMMARY_MAP_SIZE, _slim

    @dataclass
    class Processed:
        status: str
        outputs: list = field(default_factory=list)
        mammogram: Mammogram | None = None
        result: ImageResult | None = None

    mammogram = Mammogram(dataset=Dataset(), pixels=np.ones((1000, 800), np.float32), laterality="L", view="CC")
    heat = np.random.default_rng(0).random((1000, 800)).astype(np.float32)
    result = ImageResult(class_names=("benign", "malignant"), probabilities=(0.3, 0.7),
                         algorithm=AlgorithmInfo("m", "1", "0" * 64, "resnet10t", "0.1"),
                         maps=(MethodMap("gradcam", "Grad-CAM", heat, signed=False),))
    slim = _slim(Processed("done", outputs=[Dataset()], mammogram=mammogram, result=result))
    assert slim.outputs == [] and slim.mammogram.pixels.size == 1 and slim.mammogram.laterality == "L"
    assert max(slim.result.maps[0].heatmap.shape) <= SUMMARY_MAP_SIZE
    assert slim.result.malignancy_probability == 0.7 and slim.result.maps[0].method == "gradcam"
    assert mammogram.pixels.shape == (1000, 800)          # the original is untouched


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
