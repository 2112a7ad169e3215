"""End to end with a real Orthanc: auto-routing (the shared Lua script), results back in the same study."""

from __future__ import annotations

import io

import pydicom
import pytest
from pydicom.uid import generate_uid

from node_helpers import CT_IMAGE, make_image, node_settings, orthanc_dest, poll, running_node, storescu_file

pytestmark = pytest.mark.orthanc


def routing(orthanc, instance_id: str) -> str | None:
    try:
        return orthanc.client().get_instances_id_metadata_name(instance_id, "MammoxaiRouting")
    except Exception:
        return None


def ours(instances, series_number: int) -> list[dict]:
    return [t for t in instances if str(t.get("SeriesNumber")) == str(series_number)]


def test_routing_end_to_end_ct_ignored_and_no_loop(tmp_path, orthanc, node_port):
    study = generate_uid()
    mgs = [make_image(tmp_path / f"mg{i}.dcm", study, seed=i) for i in range(2)]
    ct_study = generate_uid()
    make_image(tmp_path / "ct.dcm", ct_study, modality="CT", sop_class=CT_IMAGE)
    # the two mammograms reach the node one Orthanc routing apart: on a loaded machine more than the helpers'
    # 0.3 s, and a study summarised after its first image is not remade from records already let go
    settings = node_settings(tmp_path, destination=orthanc_dest(orthanc), port=node_port, study_quiet_seconds=3.0)
    with running_node(settings) as node:
        ids = [orthanc.upload(tmp_path / f"mg{i}.dcm") for i in range(2)]
        ct_id = orthanc.upload(tmp_path / "ct.dcm")
        # a CT routed by mistake (the Lua script routes MG only, so the operator pushes it by hand)
        orthanc.client().post_modalities_id_store("mammoxai", json={"Resources": [ct_id], "Synchronous": True})
        expected = 2 + 2 + 1          # two mammograms, one SC each, one study summary
        instances = poll(lambda: (lambda i: i if len(i) >= expected else None)(orthanc.study_instances(study)),
                         60, 0.2, "results in Orthanc")
        poll(node.idle, 30, what="node idle")
        assert all(routing(orthanc, i) == "routed" for i in ids)
        results = ours(instances, 9100)
        assert len(results) == 2
        refs = set()
        for tags in results:
            assert tags["StudyInstanceUID"] == study
            assert tags["Manufacturer"] == "mammoxai"
        client = orthanc.client()
        for inst in client.post_tools_find({"Level": "Instance", "Query": {"StudyInstanceUID": study,
                                                                            "SeriesNumber": "9100"}}):
            ds = pydicom.dcmread(io.BytesIO(client.get_instances_id_file(inst)))
            refs.add(ds.SourceImageSequence[0].ReferencedSOPInstanceUID)
        assert refs == {m.SOPInstanceUID for m in mgs}
        assert len(ours(instances, 9150)) == 1
        # CT: received, ignored, nothing produced
        ct_job = [j for j in node.queue.list() if j.study_uid == ct_study]
        assert [j.state for j in ct_job] == ["ignored"]
        assert len(orthanc.study_instances(ct_study)) == 1
        # a PACS routing everything back: our results return to the node and are ignored (no loop)
        result_ids = [i for i in client.post_tools_find({"Level": "Instance",
                                                               "Query": {"StudyInstanceUID": study, "SeriesNumber": "9100"}})]
        client.post_modalities_id_store("mammoxai", json={"Resources": result_ids, "Synchronous": True})
        poll(node.idle, 30, what="node idle")
        returned = [j for j in node.queue.list() if j.state == "ignored" and j.study_uid == study]
        assert len(returned) == 2 and all("our own output" in j.error for j in returned)
        assert len(orthanc.study_instances(study)) == expected


def test_node_started_after_orthanc_tried(tmp_path, orthanc, node_port):
    first, second = generate_uid(), generate_uid()
    make_image(tmp_path / "a.dcm", first)
    make_image(tmp_path / "b.dcm", second, seed=3)
    a = orthanc.upload(tmp_path / "a.dcm")           # the node is not running: routing fails
    poll(lambda: routing(orthanc, a) == "failed", 30, 0.1, "routing to fail")
    settings = node_settings(tmp_path, destination=orthanc_dest(orthanc), port=node_port)
    with running_node(settings) as node:
        orthanc.upload(tmp_path / "b.dcm")           # new traffic: the script retries what failed
        poll(lambda: routing(orthanc, a) == "routed", 30, 0.1, "retried routing")
        for study in (first, second):
            poll(lambda: len(ours(orthanc.study_instances(study), 9100)) == 1, 60, 0.2, f"result in {study}")
        poll(node.idle, 30, what="node idle")
        assert len(node.queue.list(["done"])) == 2


def test_orthanc_down_results_arrive_when_back(tmp_path, orthanc, node_port):
    study = generate_uid()
    make_image(tmp_path / "mg.dcm", study)
    settings = node_settings(tmp_path, destination=orthanc_dest(orthanc), port=node_port)
    with running_node(settings) as node:
        orthanc.stop()
        assert storescu_file(node.scp.port, tmp_path / "mg.dcm").returncode == 0
        job = poll(lambda: (lambda j: j if j and j.send_attempts >= 2 else None)(
            node.queue.find(str(pydicom.dcmread(tmp_path / "mg.dcm").SOPInstanceUID))), 30, 0.1, "failed sends")
        assert job.state == "sending" and "cannot associate" in job.error
        orthanc.start()
        poll(lambda: node.queue.get(job.id).state == "done", 60, 0.1, "delivery after Orthanc is back")
        assert len(ours(orthanc.study_instances(study), 9100)) == 1
