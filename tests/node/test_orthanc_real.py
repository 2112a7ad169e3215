"""End to end with the real Pipeline (Grad-CAM only) and a real Orthanc: SC/SR/SEG/GSPS back in the study."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import generate_uid

from mammoxai.config import Settings
from node_helpers import make_image, orthanc_dest, poll, running_node

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]


def test_real_pipeline_results_reach_orthanc_exactly_once(tmp_path, orthanc, node_port):
    from mammoxai.pipeline import Pipeline

    study_uid = generate_uid()
    files = [tmp_path / "left.dcm", tmp_path / "right.dcm"]
    for i, f in enumerate(files):
        make_image(f, study_uid, size=256, seed=i)
    sources = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    study = str(sources[0].StudyInstanceUID)
    settings = Settings(
        node={"spool_dir": tmp_path / "spool", "port": node_port, "http_port": 0, "disk_free_watermark_mb": 0,
              "study_quiet_seconds": 0.5},
        destination={**orthanc_dest(orthanc), "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        explainers={"enabled": ["gradcam"], "quality": False})
    with running_node(settings, pipeline=Pipeline(settings)) as node:
        for f in files:
            orthanc.upload(f)

        def settled():
            return node.idle() and len(node.queue.list(["done"])) >= len(files)
        poll(settled, 240, 0.5, "the real pipeline's results")
        client = orthanc.client()

        def study_datasets():
            datasets = []
            for i in client.post_tools_find({"Level": "Instance", "Query": {"StudyInstanceUID": study}}):
                datasets.append(pydicom.dcmread(io.BytesIO(client.get_instances_id_file(i))))
            return datasets
        first = study_datasets()
        ours = [d for d in first if str(d.get("Manufacturer", "")) == "mammoxai"
                or d.SOPInstanceUID not in {s.SOPInstanceUID for s in sources}]
        classes = {d.SOPClassUID.name for d in ours}
        for kind in ("Secondary Capture", "SR", "Segmentation", "Presentation State"):
            assert any(kind in c for c in classes), classes
        summaries = [d for d in ours if d.SOPClassUID.name.endswith("SR Storage")
                     and len({str(e.value) for e in d.iterall() if e.keyword == "ReferencedSOPInstanceUID"}
                             & {s.SOPInstanceUID for s in sources}) == 2]
        assert summaries, "no study-level SR referencing both views"
        assert all(str(d.StudyInstanceUID) == study for d in ours)
        source_uids = {s.SOPInstanceUID for s in sources}
        referenced = set()
        for d in ours:
            for elem in d.iterall():
                if elem.keyword == "ReferencedSOPInstanceUID":
                    referenced.add(str(elem.value))
        assert source_uids <= referenced, "every source is referenced by our results"
        jobs = node.queue.list()
        assert {j.key for j in jobs if j.kind == "instance" and j.state == "done"} == source_uids
        # the PACS sends the same images again: processed again, same UIDs, nothing duplicated
        before = {j.key: j.updated_at for j in node.queue.list() if j.kind == "instance"}
        for f in files[:1]:
            orthanc.client().post_modalities_id_store(
                "mammoxai", json={"Resources": [orthanc.client().post_tools_find(
                    {"Level": "Instance", "Query": {"SOPInstanceUID": pydicom.dcmread(
                        f, stop_before_pixels=True).SOPInstanceUID}})[0]], "Synchronous": True})
        def reprocessed():
            job = node.queue.find(sources[0].SOPInstanceUID)
            return node.idle() and job.state == "done" and job.updated_at > before[job.key]
        poll(reprocessed, 240, 0.5, "second pass")
        second = study_datasets()
        assert sorted(d.SOPInstanceUID for d in second) == sorted(d.SOPInstanceUID for d in first)
