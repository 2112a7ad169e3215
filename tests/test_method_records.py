"""One record per method: every shipped explainer class carries its code, display name, series slot,
signedness and family; nothing else keeps a copy; the SR's quality codes say what is computed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from mammoxai.config.settings import PROFILE_METHODS, PROFILE_PARAMS
from mammoxai.dicom_io import codes
from mammoxai.dicom_io.series import MAX_SERIES_SLOT
from mammoxai.dicom_io.writers import AUTO_SC_METHODS, AUTO_SC_METHODS_GPU
from mammoxai.explainers import create, explainer_class, method_record, method_records
from mammoxai.explainers.base import _REGISTRY
from mammoxai.explainers.quality import SCORE_KEYS, compute_quality

PACKAGE = Path(__file__).resolve().parents[1] / "mammoxai"
FAMILIES = {"gradients", "cam", "relevance", "perturbation", "robustness", "attention"}


def shipped() -> dict[str, type]:
    """The registered explainer classes that ship with mammoxai (tests register doubles of their own)."""
    return {name: cls for name, cls in _REGISTRY.items() if cls.__module__.startswith("mammoxai.explainers.")}


def test_every_shipped_method_has_a_complete_record():
    classes = shipped()
    assert len(classes) >= 29
    for name, cls in classes.items():
        record = method_record(name)
        assert record.name == name == cls.name
        assert re.fullmatch(r"[A-Z0-9]{1,9}", record.code), f"{name}: code {record.code!r} (MXAI-M-<code> <= 16 chars)"
        assert record.display_name.strip() and len(f"mammoxai {record.display_name} L") <= 64, name
        # written into LO elements (Series Description, Code Meaning) under the *source's* character set,
        # which may be the default repertoire: "PGD L∞" came out as "PGD L?"
        assert record.display_name.isascii() and record.display_name.isprintable(), name
        assert isinstance(record.series_slot, int) and 0 <= record.series_slot <= MAX_SERIES_SLOT, name
        assert isinstance(record.signed, bool) and record.family in FAMILIES, name
        code = codes.method_code(_map(record))
        assert code.value == f"MXAI-M-{record.code}" and len(code.value) <= 16 and code.meaning == record.display_name


def _map(record):
    import numpy as np

    from mammoxai.dicom_io.results import MethodMap
    return MethodMap(record.name, record.display_name, np.zeros((2, 2), np.float32), signed=record.signed,
                     code=record.code, series_slot=record.series_slot, family=record.family)


@pytest.mark.parametrize("field", ["code", "series_slot", "display_name"])
def test_no_two_methods_share_a_code_a_series_slot_or_a_name(field):
    values = [getattr(method_record(name), field) for name in shipped()]
    duplicates = sorted({str(v) for v in values if values.count(v) > 1})
    assert not duplicates, f"methods share a {field}: {duplicates}"


def test_records_reach_the_writers_as_plain_data():
    records = method_records()
    assert set(shipped()) <= set(records)
    for record in records.values():
        assert not any(isinstance(v, torch.Tensor) for v in vars(record).values())
    assert not hasattr(codes, "METHOD_CODES"), "the method codes live on the explainer classes"


def test_profiles_and_sc_defaults_only_name_registered_methods():
    names = [*AUTO_SC_METHODS, *AUTO_SC_METHODS_GPU]
    names += [m for methods in PROFILE_METHODS.values() for m in methods]
    names += [m for params in PROFILE_PARAMS.values() for m in params]
    for name in names:
        explainer_class(name)   # ValueError for a name nobody registered


def test_no_other_module_keeps_a_table_of_method_names_or_codes():
    records = [method_record(name) for name in shipped()]   # other tests register stand-ins without records
    taken = {r.display_name for r in records} | {r.code for r in records} | {f"MXAI-M-{r.code}" for r in records}
    for path in [*(PACKAGE / "dicom_io").glob("*.py"), *(PACKAGE / "config").glob("*.py"), PACKAGE / "pipeline.py"]:
        literals = {node.value for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
                    if isinstance(node, ast.Constant) and isinstance(node.value, str)}
        assert not literals & taken, f"{path.name} repeats method records: {sorted(literals & taken)}"


# --- the quality codes say what is computed ---------------------------------------------------------

#: What each score computed by explainers/quality.py is, in the words its SR code meaning must use.
COMPUTED = {
    "faithfulness": ("insertion AUC minus deletion AUC",),
    "deletion_auc": ("Deletion AUC",),
    "insertion_auc": ("Insertion AUC",),
    "max_sensitivity": ("Max-sensitivity",),
    "sparseness": ("Gini index",),
    "pointing_game": ("Pointing game",),
    "relevance_mass": ("Relevance mass",),
}


def test_every_computed_score_has_a_code_whose_meaning_is_what_is_computed():
    assert set(COMPUTED) == set(SCORE_KEYS)
    for key in SCORE_KEYS:
        assert key in codes.QUALITY_CODES, f"{key} would get a hashed code"
        meaning = codes.quality_code(key).meaning
        for words in COMPUTED[key]:
            assert words.lower() in meaning.lower(), f"{key}: SR says {meaning!r}"


def test_faithfulness_is_insertion_auc_minus_deletion_auc():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, 2)).eval()
    batch = torch.randn(2, 1, 16, 16)
    explanation = create("saliency").explain(model, batch)
    for scores in compute_quality(model, batch, explanation, steps=4):
        assert scores.faithfulness == pytest.approx(scores.insertion_auc - scores.deletion_auc, abs=1e-6)
