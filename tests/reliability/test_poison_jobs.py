"""Poison jobs (issue 16, fault 2): a job whose processing kills the process is given up, the others finish.

A real ``mammoxai serve --once`` subprocess runs the stand-in pipeline, which ``SIGKILL``s its own
process when it meets the poison image (as an allocation for a 60000² image would get the process
killed). Each claim is counted on disk before processing, so after ``node.max_process_attempts``
deaths the job is 'failed' with "process died while running"; the good images, once batched with
it, are then claimed one by one and delivered.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pydicom
from pydicom.uid import generate_uid

from mammoxai.node.jobstore import PROCESS_DIED
from mammoxai.node.queue import JobQueue
from mammoxai.node.spool import Spool
from node_helpers import make_image, write_toml
from node_standin import StandInPipeline

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
POISON_ID = "POISON"


class KillingPipeline(StandInPipeline):
    """The stand-in, except that the process dies (SIGKILL, no clean-up) when a batch holds the poison image."""

    def outcomes(self, paths):
        if any(pydicom.dcmread(p, stop_before_pixels=True).PatientID == POISON_ID for p in paths):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().outcomes(paths)


def make_pipeline(settings):
    """MAMMOXAI_PIPELINE_FACTORY=test_poison_jobs:make_pipeline (in the node subprocess)."""
    return KillingPipeline(settings)


def _serve_once(config: Path, log: Path) -> int:
    env = dict(os.environ, MAMMOXAI_PIPELINE_FACTORY="test_poison_jobs:make_pipeline",
               PYTHONPATH=os.pathsep.join([str(HERE), str(HERE.parent / "node"), str(REPO)]))
    with open(log, "ab") as out:
        return subprocess.run([sys.executable, "-m", "mammoxai.cli", "--config", str(config), "serve", "--once"],
                              stdout=out, stderr=out, env=env, cwd=REPO, timeout=300).returncode


def test_a_job_that_kills_the_process_is_given_up_and_the_others_are_delivered(tmp_path):
    spool_dir, out = tmp_path / "spool", tmp_path / "out"
    config = write_toml(tmp_path / "node.toml", {
        "node": {"spool_dir": str(spool_dir), "http_port": 0, "disk_free_watermark_mb": 0,
                 "study_quiet_seconds": 0.0, "batch_images": 4, "max_process_attempts": 2},
        "destination": {"kind": "folder", "folder": str(out)},
    })
    spool = Spool(spool_dir)
    queue = JobQueue(spool.database)
    study = generate_uid()
    uids = []
    for i, patient in enumerate([POISON_ID, "P1", "P1", "P1"]):   # the poison image first: in the first batch
        ds = make_image(tmp_path / f"m{i}.dcm", study, seed=i, size=16, patient_id=patient)
        shutil.copyfile(tmp_path / f"m{i}.dcm", spool.instance_path(ds.SOPInstanceUID))
        queue.add_received(ds.SOPInstanceUID, ds.SOPClassUID, study, ds.SeriesInstanceUID,
                           spool.instance_path(ds.SOPInstanceUID))
        uids.append(ds.SOPInstanceUID)
    log = tmp_path / "node.log"

    # 1: the batch of four holds the poison image: the process dies, every job has one attempt on disk
    assert _serve_once(config, log) == -signal.SIGKILL
    assert [queue.find(u).attempts for u in uids] == [1, 1, 1, 1]
    # 2: tried before, the poison job is claimed alone: it kills the process again, alone
    assert _serve_once(config, log) == -signal.SIGKILL
    assert [queue.find(u).attempts for u in uids] == [2, 1, 1, 1]
    # 3: at start it is given up (max_process_attempts = 2); the others are processed and delivered
    assert _serve_once(config, log) == 0, log.read_text()[-3000:]
    poison = queue.find(uids[0])
    assert poison.state == "failed" and poison.error == PROCESS_DIED and poison.attempts == 2
    assert [queue.find(u).state for u in uids[1:]] == ["done", "done", "done"]
    assert queue.poison_count() == 1
    assert spool.instance_path(uids[0]).exists()              # kept for `mammoxai jobs retry`
    delivered = [pydicom.dcmread(p) for p in out.rglob("*.dcm")]
    sources = {d.SourceImageSequence[0].ReferencedSOPInstanceUID for d in delivered if len(d.SourceImageSequence) == 1}
    assert sources == set(uids[1:])                           # one result per good image, none for the poison one
    assert "given up" in log.read_text()
    queue.close()
