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
