"""Output identity end to end: the real node (real Pipeline, demo CNN) into a real Orthanc.

* A four-view study (L/R x CC/MLO): from Orthanc's own series list, no series mixes the breasts and every
  series' instances agree on every series-level attribute.
* The same source processed twice, the first time with one explainer made to fail: the archive holds no
  duplicate (every object of the first pass is replaced by the second), and ``mammoxai explain --dicom``
  on the same file with the same settings writes exactly the UIDs the node sent.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

from mammoxai.config import Settings
from mammoxai.dicom_io.synthetic import write_phantom_dicom
from node_helpers import REPO, orthanc_dest, poll, running_node, write_toml

pytestmark = [pytest.mark.orthanc, pytest.mark.slow]

#: Series-level attributes (General Series, General Equipment, SR Document Series modules) that every
#: instance of one series must agree on.
SERIES_LEVEL = ("SeriesInstanceUID", "SeriesNumber", "SeriesDescription", "Modality", "Laterality", "SeriesDate",
                "SeriesTime", "BodyPartExamined", "ProtocolName", "PatientPosition", "PerformingPhysicianName",
                "OperatorsName", "Manufacturer", "InstitutionName", "InstitutionalDepartmentName", "StationName",
                "ManufacturerModelName", "DeviceSerialNumber", "SoftwareVersions")
SECTIONS = {"explainers": {"enabled": ["gradcam", "saliency"], "quality": False, "sanity": "off"},
            "output": {"sc_methods": "all"}}


def phantom(path: Path, laterality: str, view: str, study: str, seed: int) -> pydicom.Dataset:
    """A small synthetic MG (For Presentation) with a bright blob, chest wall on the conventional side."""
    rng = np.random.default_rng(seed)
    rows, cols = 256, 192
    yy, xx = np.mgrid[0:rows, 0:cols]
    breast = ((yy - rows / 2) / (rows * 0.45)) ** 2 + (xx / (cols * 0.9)) ** 2 <= 1.0
    px = np.where(breast, 1800 + 400 * rng.random((rows, cols)), 80)
    px += 1200 * np.exp(-(((yy - rows * (0.3 + 0.1 * seed)) ** 2) + (xx - cols * 0.3) ** 2) / 200.0)
    px = np.clip(px, 0, 4095).astype(np.uint16)
    if laterality == "R":
        px = px[:, ::-1].copy()
    return write_phantom_dicom(px, laterality=laterality, view=view, path=path, study_instance_uid=study,
                               patient_id="ID-TEST-1", patient_name="Identity^Test")


def node_settings(tmp_path: Path, orthanc, node_port: int) -> Settings:
    return Settings(
        node={"spool_dir": tmp_path / "spool", "port": node_port, "http_port": 0, "disk_free_watermark_mb": 0,
              "study_quiet_seconds": 0.5},
        destination={**orthanc_dest(orthanc), "backoff_initial_s": 0.2, "backoff_max_s": 1.0},
        **SECTIONS)


def walk(value: Any, key: str) -> list[str]:
    """Every value of ``key`` at any depth of Orthanc's simplified tags (sequences are lists of dicts)."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            if k == key and isinstance(v, str):
                found.append(v)
            found += walk(v, key)
    elif isinstance(value, list):
        for v in value:
            found += walk(v, key)
    return found


def our_instances(orthanc, study: str, sources: set[str]) -> dict[str, dict[str, Any]]:
    """SOP Instance UID -> simplified tags of every instance of the study in Orthanc but the sources."""
    tags = {t["SOPInstanceUID"]: t for t in orthanc.study_instances(study)}
    return {uid: t for uid, t in tags.items() if uid not in sources}


def test_four_view_study_no_series_mixes_breasts(tmp_path, orthanc, node_port):
    from mammoxai.pipeline import Pipeline

    study = generate_uid()
    views = [("L", "CC"), ("L", "MLO"), ("R", "CC"), ("R", "MLO")]
    files, laterality_of = [], {}
    for seed, (lat, view) in enumerate(views):
        ds = phantom(tmp_path / f"{lat}{view}.dcm", lat, view, study, seed)
        files.append(tmp_path / f"{lat}{view}.dcm")
        laterality_of[str(ds.SOPInstanceUID)] = lat
    settings = node_settings(tmp_path, orthanc, node_port)
    client = orthanc.client()
    with running_node(settings, pipeline=Pipeline(settings)) as node:
        for f in files:
            orthanc.upload(f)

        def delivered():
            done = [j for j in node.queue.list(["done"]) if j.study_uid == study and j.kind == "instance"]
            ours = our_instances(orthanc, study, set(laterality_of))
            summary = any(t.get("SeriesDescription") == "mammoxai study summary SR" for t in ours.values())
            return len(done) == 4 and summary and node.idle()
        poll(delivered, 300, 0.5, "the four views' results and the study summary")

    (study_id,) = client.post_tools_find({"Level": "Study", "Query": {"StudyInstanceUID": study}})
    series_list = client.get_studies_id_series(study_id)              # Orthanc's own series list
    ours = 0
    sides_seen: dict[str, set[str]] = {}
    seg_series: dict[str, set[str]] = {}
    for series in series_list:
        instances = [client.get_instances_id_simplified_tags(i["ID"]) for i in client.get_series_id_instances(series["ID"])]
        if set(t["SOPInstanceUID"] for t in instances) <= set(laterality_of):
            continue                                                   # a source series
        ours += 1
        for keyword in SERIES_LEVEL:
            values = {str(t.get(keyword)) for t in instances}
            assert len(values) == 1, f"series {series['MainDicomTags'].get('SeriesDescription')}: {keyword} {values}"
        description = instances[0]["SeriesDescription"]
        assert series["MainDicomTags"].get("SeriesDescription") == description
        if instances[0]["Modality"] == "SEG":      # hot regions (BINARY) and maps (FRACTIONAL): a series each
            types = {str(t.get("SegmentationType")) for t in instances}
            assert types == {"BINARY" if description.startswith("mammoxai hot regions (SEG)") else "FRACTIONAL"}, \
                (description, types)
            seg_series.setdefault(types.pop(), set()).add(description)
        sides = set()
        for t in instances:
            own = {t[k] for k in ("Laterality", "ImageLaterality") if t.get(k)}
            referenced = {laterality_of[u] for u in walk(t, "ReferencedSOPInstanceUID") if u in laterality_of}
            sides |= own | referenced
        if description == "mammoxai study summary SR":
            assert sides == {"L", "R"} and len(instances) == 1     # study level, by design
        else:
            assert len(sides) == 1, f"series {description!r} mixes lateralities {sides}"
            assert description.endswith(" " + next(iter(sides))), description
            sides_seen.setdefault(description[:-2], set()).update(sides)
    assert ours >= 2 * 6 + 1, [s["MainDicomTags"].get("SeriesDescription") for s in series_list]
    assert seg_series == {"BINARY": {"mammoxai hot regions (SEG) L", "mammoxai hot regions (SEG) R"},
                          "FRACTIONAL": {"mammoxai explanation maps (SEG) L", "mammoxai explanation maps (SEG) R"}}
    assert all(s == {"L", "R"} for s in sides_seen.values()), sides_seen   # every kind: one series per breast


def test_partial_failure_leaves_no_duplicates_and_explain_agrees(tmp_path, orthanc, node_port):
    from mammoxai.pipeline import Pipeline

    study = generate_uid()
    source_path = tmp_path / "LCC.dcm"
    source = str(phantom(source_path, "L", "CC", study, 0).SOPInstanceUID)
    settings = node_settings(tmp_path, orthanc, node_port)
    pipeline = Pipeline(settings)
    (saliency,) = [e for e in pipeline.explainers if e.name == "saliency"]

    def out_of_memory(*_args, **_kwargs):
        raise RuntimeError("CUDA out of memory (injected)")

    saliency._attribute = out_of_memory                                # first pass: this explainer fails
    with running_node(settings, pipeline=pipeline) as node:
        orthanc.upload(source_path)

        def processed():
            job = node.queue.find(source)
            return job is not None and job.state == "done" and node.idle() and job
        first_job = poll(processed, 300, 0.5, "the first pass")
        first = our_instances(orthanc, study, {source})
        assert first and not [t for t in first.values() if "Saliency" in t.get("SeriesDescription", "")]

        del saliency._attribute                                        # second pass: it works again
        client = orthanc.client()
        (orthanc_id,) = client.post_tools_find({"Level": "Instance", "Query": {"SOPInstanceUID": source}})
        client.post_modalities_id_store("mammoxai", json={"Resources": [orthanc_id], "Synchronous": True})

        def reprocessed():
            job = node.queue.find(source)
            return job.state == "done" and job.updated_at > first_job.updated_at and node.idle()
        poll(reprocessed, 300, 0.5, "the second pass")
        second = our_instances(orthanc, study, {source})

    # the archive keeps what it got; a duplicate would be a second-pass object of a kind the first pass
    # already wrote under another UID. The only new objects must be saliency's own (its overlay, its map).
    added = [second[u] for u in set(second) - set(first)]
    assert added, "the second pass wrote nothing new for saliency"
    for t in added:
        names = [t.get("SeriesDescription", ""), *walk(t, "SegmentLabel")]
        assert t["Modality"] in ("OT", "SEG") and any("Saliency" in n for n in names), f"duplicate: {names}"
    for uid in first:                                                  # replaced in place: same series, same number
        assert (first[uid]["SeriesInstanceUID"], first[uid]["SeriesNumber"]) == (
            second[uid]["SeriesInstanceUID"], second[uid]["SeriesNumber"])

    # the offline command, same file and settings: the very same UIDs
    config = write_toml(tmp_path / "explain.toml", SECTIONS)
    out = tmp_path / "explain-out"
    proc = subprocess.run([sys.executable, "-m", "mammoxai.cli", "--config", str(config), "explain", "--dicom",
                           "--out", str(out), str(source_path)], capture_output=True, text=True, timeout=600, cwd=REPO)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    written = [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted((out / "LCC.dicom").glob("*.dcm"))]
    assert {d.SOPInstanceUID for d in written} == set(second)     # ... and the archive holds nothing else
    assert {(d.SOPInstanceUID, d.SeriesInstanceUID) for d in written} == {
        (u, t["SeriesInstanceUID"]) for u, t in second.items()}
