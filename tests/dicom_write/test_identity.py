"""dicom_io.identity: every output UID decided once, from what the result is (not where it sits in a list)."""

from __future__ import annotations

import dataclasses

import pytest

from mammoxai.config.settings import OutputSettings
from mammoxai.dicom_io import identity
from mammoxai.dicom_io.identity import (
    derived_uid,
    device_uid,
    image_output_identity,
    output_identity,
    stand_in_uid,
    summary_identity,
)
from mammoxai.dicom_io.series import SERIES_SPAN, in_our_range
from mammoxai.dicom_io.writers import drawable_maps, write_results, write_study_summary
from mammoxai.explainers import method_records

STUDY, SOURCE = "1.2.3.4.5", "1.2.3.4.5.6"


def _ident(kind: str, **kw):
    args = dict(study_instance_uid=STUDY, source_sop_instance_uid=SOURCE, series_number_base=9100, laterality="L")
    args.update(kw)
    return output_identity(kind, **args)


def _uid_values(ds) -> list[tuple[str, str]]:
    """Every UI element of ``ds`` at any depth, file meta included, in order."""
    values = [(e.keyword, str(e.value)) for e in ds.iterall() if e.VR == "UI"]
    meta = getattr(ds, "file_meta", None)
    return values + ([(e.keyword, str(e.value)) for e in meta if e.VR == "UI"] if meta is not None else [])


def _key(ds) -> tuple[str, str]:
    """(object kind, method) of an output, read back from the object."""
    modality, description = str(ds.Modality), str(ds.SeriesDescription)
    if modality == "SEG":
        if ds.SegmentationType == "BINARY":
            return "region_seg", ""
        return "seg", str(ds.SegmentSequence[0].SegmentLabel)
    if modality == "OT":
        return ("montage", "") if "montage" in description else ("sc", description)
    return modality, ""


def test_same_inputs_give_the_same_uids_and_they_are_valid():
    a, b = _ident("sr"), _ident("sr")
    assert a == b
    for uid in (a.series_instance_uid, a.sop_instance_uid, a.uid("x"), device_uid("ab" * 32), stand_in_uid("x.png")):
        assert uid.startswith("2.25.") and len(uid) <= 64 and uid.replace(".", "").isdigit()
    assert a.uid("region", "gradcam", 1) == b.uid("region", "gradcam", 1) != a.uid("region", "gradcam", 2)
    assert derived_uid("a", "b") == derived_uid("a", "b") != derived_uid("ab")


def test_every_kind_method_and_source_has_its_own_uids():
    idents = [_ident(k) for k in ("montage", "sr", "region_seg", "gsps")]
    idents += [_ident(k, method=m, series_slot=s) for k in ("sc", "seg") for m, s in (("gradcam", 6), ("lrp", 14))]
    idents.append(_ident("sr", source_sop_instance_uid=SOURCE + ".1"))
    assert len({i.sop_instance_uid for i in idents}) == len(idents)
    # one series per kind (per method for SC overlays); the SEGs of all methods share theirs
    series = {(i.kind, i.method if i.kind == "sc" else None): i.series_instance_uid for i in idents}
    assert len(set(series.values())) == len(series)
    assert _ident("seg", method="gradcam").series_instance_uid == _ident("seg", method="lrp").series_instance_uid
    assert _ident("sr", source_sop_instance_uid="9.9").series_instance_uid == _ident("sr").series_instance_uid


def test_left_and_right_never_share_a_series():
    for kind, method in (("sc", "gradcam"), ("montage", None), ("sr", None), ("seg", "gradcam"), ("region_seg", None),
                         ("gsps", None)):
        left, right = _ident(kind, method=method, laterality="L"), _ident(kind, method=method, laterality="R")
        assert left.series_instance_uid != right.series_instance_uid, kind
        assert left.series_description.endswith(" L") and right.series_description.endswith(" R")
        unknown = _ident(kind, method=method, laterality=None)
        assert unknown.series_instance_uid not in (left.series_instance_uid, right.series_instance_uid)
        assert not unknown.series_description.endswith((" L", " R"))
    summary = summary_identity(STUDY, 9100)
    assert summary.laterality is None and summary.series_description == "mammoxai study summary SR"
    assert summary == summary_identity(STUDY, 9100) and summary.series_number == 9107
    assert summary.sop_instance_uid != summary_identity(STUDY + ".1", 9100).sop_instance_uid


def test_series_numbers_come_from_the_method_records_and_stay_in_range():
    records = method_records()
    numbers = {}
    for name, record in records.items():
        if record.series_slot is None:
            continue
        ident = _ident("sc", method=name, display_name=record.display_name, series_slot=record.series_slot)
        assert in_our_range(ident.series_number, 9100), name
        assert ident.series_description.endswith(" L") and record.display_name[:40] in ident.series_description
        assert len(ident.series_description) <= 64
        numbers[ident.series_number] = name
    assert len(numbers) == len([r for r in records.values() if r.series_slot is not None])
    assert {_ident(k).series_number for k in ("montage", "sr", "gsps")}.isdisjoint(numbers)
    assert 9100 <= _ident("sc", method="plugin").series_number < 9100 + SERIES_SPAN    # no record: shared slot
    with pytest.raises(ValueError, match="series slot"):
        _ident("sc", method="x", series_slot=80)


@pytest.mark.parametrize("kind,kw,match", [
    ("nope", {}, "unknown"), ("sc", {}, "needs method"), ("sr", {"method": "gradcam"}, "takes no method"),
    ("sr", {"study_instance_uid": ""}, "empty"), ("summary", {}, "unknown")])
def test_bad_requests_are_refused(kind, kw, match):
    with pytest.raises(ValueError, match=match):
        _ident(kind, **kw)
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        summary_identity("", 9100)


def test_write_results_is_deterministic_down_to_every_uid(phantom_l_cc, dw):
    result = dw.make_result(phantom_l_cc.pixels.shape)
    first = write_results(phantom_l_cc, result, OutputSettings())
    second = write_results(phantom_l_cc, result, OutputSettings())
    assert [_uid_values(d) for d in first] == [_uid_values(d) for d in second]
    assert len({d.SOPInstanceUID for d in first}) == len(first)
    # the writers take their identity from identity.py, nothing else
    by_method = {m.method: m for m in result.maps}
    expected = [image_output_identity(phantom_l_cc, "sc", 9100, method=name, display_name=by_method[name].display_name,
                                      series_slot=by_method[name].series_slot)
                for name in ("gradcam", "lrp", "integrated_gradients")]
    expected += [image_output_identity(phantom_l_cc, kind, 9100) for kind in ("montage", "sr")]
    expected.append(image_output_identity(phantom_l_cc, "region_seg", 9100))   # the BINARY SEG, its own series
    expected += [image_output_identity(phantom_l_cc, "seg", 9100, method=m.method, series_slot=m.series_slot)
                 for m in result.maps]
    expected.append(image_output_identity(phantom_l_cc, "gsps", 9100))
    assert [(d.SOPInstanceUID, d.SeriesInstanceUID, int(d.SeriesNumber), d.SeriesDescription, int(d.InstanceNumber))
            for d in first] == [(i.sop_instance_uid, i.series_instance_uid, i.series_number, i.series_description,
                                 i.instance_number) for i in expected]


def test_a_failing_explainer_does_not_change_the_other_outputs_uids(phantom_l_cc, dw):
    full = dw.make_result(phantom_l_cc.pixels.shape)
    failed = dataclasses.replace(full, maps=tuple(m for m in full.maps if m.method != "lrp"),
                                 failures={"lrp": "RuntimeError: out of memory"})
    settings = OutputSettings(sc_methods="all")
    everything = {_key(d): d.SOPInstanceUID for d in write_results(phantom_l_cc, full, settings)}
    partial = {_key(d): d.SOPInstanceUID for d in write_results(phantom_l_cc, failed, settings)}
    assert len(partial) == len(everything) - 2                      # lrp's SC overlay and SEG are missing
    assert all(everything[k] == uid for k, uid in partial.items()), "a failure moved another object's UIDs"


def test_left_and_right_views_of_a_study_land_in_separate_series(dw):
    study = "1.2.826.0.1.3680043.8.498.1"
    views = [dw.mammogram_from_dataset(dw.phantom_dataset(laterality=lat, view=view, study_uid=study),
                                    laterality=lat, view=view)
             for lat in ("L", "R") for view in ("CC", "MLO")]
    by_series: dict[str, set[str]] = {}
    descriptions: dict[str, set[str]] = {}
    for mg in views:
        for ds in write_results(mg, dw.make_result(mg.pixels.shape), OutputSettings()):
            by_series.setdefault(ds.SeriesInstanceUID, set()).add(mg.laterality)
            descriptions.setdefault(ds.SeriesInstanceUID, set()).add((str(ds.SeriesDescription), int(ds.SeriesNumber)))
    assert all(len(lats) == 1 for lats in by_series.values())
    assert all(len(d) == 1 for d in descriptions.values())
    results = [dw.make_result(v.pixels.shape) for v in views]
    summary = write_study_summary(views, results, OutputSettings())
    assert _uid_values(summary) == _uid_values(write_study_summary(views, results, OutputSettings()))
    assert summary.SeriesInstanceUID not in by_series and summary.SOPInstanceUID == summary_identity(
        study, 9100).sop_instance_uid


def test_maps_that_say_nothing_are_not_drawn(phantom_l_cc, dw):
    full = dw.make_result(phantom_l_cc.pixels.shape)
    flat = dataclasses.replace(full.maps[0], not_informative="constant map")
    result = dataclasses.replace(full, maps=(flat, *full.maps[1:]))
    assert drawable_maps(result) == full.maps[1:]
    outputs = write_results(phantom_l_cc, result, OutputSettings(sc_methods="all"))
    name = flat.display_name
    assert not [d for d in outputs if d.Modality == "OT" and d.SeriesDescription == f"mammoxai {name} L"]
    assert not [d for d in outputs if d.Modality == "SEG" and d.SegmentSequence[0].SegmentLabel == name]
    (montage,) = [d for d in outputs if d.Modality == "OT" and "montage" in d.SeriesDescription]
    assert name not in montage.DerivationDescription
    (gsps,) = [d for d in outputs if d.Modality == "PR"]
    assert name not in " ".join(str(l.GraphicLayerDescription) for l in gsps.GraphicLayerSequence)
    (sr,) = [d for d in outputs if d.Modality == "SR"]
    texts = [str(e.value) for e in sr.iterall() if e.keyword == "TextValue"]
    assert not [t for t in texts if t.startswith(f"{name} region")]       # no hot region of it ...
    assert [t for t in texts if t.startswith(name)]                         # ... but the SR names it
    assert "Layer-wise Relevance Propagation region 1" in texts
    # nothing informative at all: no montage, no SEG, the SR still lists the maps
    none = dataclasses.replace(full, maps=tuple(dataclasses.replace(m, not_informative="flat") for m in full.maps))
    kinds = [d.Modality for d in write_results(phantom_l_cc, none, OutputSettings(sc_methods="all"))]
    assert kinds == ["SR", "PR"]


def test_module_exports_one_place():
    assert set(identity.IMAGE_KINDS) == {"sc", "montage", "sr", "seg", "region_seg", "gsps"}
