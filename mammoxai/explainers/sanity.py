"""The model-parameter-randomisation sanity check (Adebayo et al. 2018), run for a whole set of explainers.

A map that explains the model must change when the model's learned parameters
are destroyed. :func:`model_randomisation_check` re-initialises the **top of the
network** (by default the head and the upper half of its stages, see
:func:`top_modules`) in a copy of the model, explains the same images with the
same target again, and scores the Spearman rank correlation of the two maps per
image, in both of Adebayo et al.'s forms: **as displayed** (a signed map compared
signed, as the reader sees it in the diverging colour map; an unsigned map as it
is) and of the **absolute** maps ("rank correlation (ABS)", Quantus
``MPRT(abs=True)``). A method **passes** when the mean over images and
randomisation seeds of the displayed form is below ``threshold`` (0.5). Both are
recorded: for signed attributions that multiply by the input (Integrated
Gradients, DeepLIFT, gradient × input) the magnitude follows the image and the
ABS form stays high, while the sign pattern - which says what speaks for and
against the class - is what changes with the model.

Re-initialisation follows Quantus 0.6 ``MPRT`` exactly, so the two agree to
rounding (``tests/quality/test_sanity.py``): every sub-module that has
``reset_parameters`` is reset, from the output backwards, each after
``torch.manual_seed(seed + 1)``; the caller's global RNG state is restored.

The result is a property of (checkpoint, method, parameters), not of one image:
``mammoxai sanity --write`` stores it in the checkpoint's metadata
(``ModelMetadata.sanity``, see :func:`sanity_record`) and the node reads it back
to keep maps that fail the check away from the reader (``explainers.sanity``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from .base import Explainer, run_explainers
from .quality import spearman

__all__ = ["SANITY_THRESHOLD", "SanityResult", "top_modules", "randomise_modules", "model_randomisation_check",
           "recorded_parameters", "finite_or_null", "sanity_record", "sanity_verdicts", "measurement_for",
           "merge_measurement", "entry_verdict"]

#: Adebayo et al.'s criterion as the issue states it: the map changes, rank correlation < 0.5.
SANITY_THRESHOLD = 0.5
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)
_BLOCK_CONTAINERS = ("blocks", "layers", "stages")


@dataclass
class SanityResult:
    """One method's outcome: mean Spearman ρ (over images × seeds) as displayed and of |map|, and the verdict."""

    method: str
    spearman: float
    passed: bool
    per_image: list[float] = field(default_factory=list)
    spearman_abs: float = math.nan
    per_image_abs: list[float] = field(default_factory=list)
    signed: bool = False
    error: str = ""

    def as_dict(self) -> dict[str, Any]:
        """The record entry: values rounded to 4 digits, NaN (a map that became constant) as ``None``."""
        if self.error:
            return {"error": self.error}
        return finite_or_null({"spearman": round(self.spearman, 4), "spearman_abs": round(self.spearman_abs, 4),
                               "signed": self.signed, "passed": self.passed,
                               "per_image": [round(v, 4) for v in self.per_image]})


def finite_or_null(value: Any) -> Any:
    """``value`` with every NaN / infinity (nested in dicts and lists) replaced by ``None``: JSON has neither."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite_or_null(v) for v in value]
    return value


def recorded_parameters(explainer: Explainer) -> dict[str, Any]:
    """The parameters a verdict depends on: all but ``batch_size`` and ``autocast``, which change no map, and
    ``stability_target`` / ``max_samples`` and IG's ``completeness_target`` / ``max_steps``, which only draw
    more samples (or quadrature steps) of the same map, closer to its expectation (integral), and leave the
    method's definition alone."""
    return {k: v for k, v in explainer.params.items()
            if k not in ("batch_size", "autocast", "stability_target", "max_samples", "completeness_target",
                         "max_steps")}


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _head_module(model: nn.Module) -> nn.Module | None:
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    return head if isinstance(head, nn.Module) and any(True for _ in head.parameters()) else None


def _stages(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """Top-level parametrised children in definition order, timm's block containers expanded."""
    out: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        if not any(True for _ in child.parameters()):
            continue
        if name in _BLOCK_CONTAINERS and isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 1:
            out.extend((f"{name}.{i}", block) for i, block in enumerate(child))
        else:
            out.append((name, child))
    return out


def top_modules(model: nn.Module) -> list[str]:
    """The modules the check re-initialises by default: the upper half of the stages, and all after them.

    Stages are the model's top-level parametrised children (a timm ``blocks`` /
    ``stages`` container counts block by block); normalisation layers and the
    classifier head do not count when halving. For timm's ResNet-10t that is
    ``layer3, layer4, fc``; for a 4-block ViT ``blocks.2, blocks.3, norm, head``.
    """
    stages = _stages(model)
    if not stages:
        raise ValueError("model has no parametrised layer to randomise")
    head = _head_module(model)
    counted = [i for i, (_, m) in enumerate(stages) if m is not head and not isinstance(m, _NORMS)]
    if len(counted) < 2:
        return [name for name, _ in stages]
    first = counted[len(counted) - len(counted) // 2]
    return [name for name, _ in stages[first:]]


def randomise_modules(model: nn.Module, names: Iterable[str], seed: int = 0) -> nn.Module:
    """A copy of ``model`` with the named modules re-initialised (Quantus 0.6 ``MPRT`` seeding).

    Every sub-module with ``reset_parameters`` inside the named ones is reset in
    reverse definition order, each right after ``torch.manual_seed(seed + 1)``.
    Raises ``KeyError`` for a name that is not a module of ``model``.
    """
    randomised = copy.deepcopy(model)
    modules = dict(randomised.named_modules())
    chosen: set[int] = set()
    for name in names:
        if name not in modules:
            raise KeyError(f"{name!r} is not a module of the model (top level: "
                           f"{', '.join(n for n, _ in randomised.named_children())})")
        chosen.update(id(m) for m in modules[name].modules())
    resettable = [m for m in modules.values() if id(m) in chosen and callable(getattr(m, "reset_parameters", None))]
    ref = next(model.parameters())
    with torch.random.fork_rng(devices=[ref.device] if ref.device.type == "cuda" else []):
        for module in reversed(resettable):
            torch.manual_seed(seed + 1)
            module.reset_parameters()
    return randomised


def model_randomisation_check(model: nn.Module, explainers: Sequence[Explainer], batch: torch.Tensor,
                              target: int | torch.Tensor | None = None, *, modules: Sequence[str] | None = None,
                              seeds: Sequence[int] = (0, 1), threshold: float = SANITY_THRESHOLD
                              ) -> dict[str, SanityResult]:
    """Run the randomisation check for every explainer on ``batch``; returns results by method name.

    ``modules`` defaults to :func:`top_modules`. The explained class is fixed to
    the trained model's (``target``, default: its prediction) so only the model
    changes. A method that fails on either model gets ``error`` and no verdict;
    the others are unaffected.
    """
    if not seeds:
        raise ValueError("seeds must name at least one randomisation seed")
    names = list(modules) if modules is not None else top_modules(model)
    ref = next(model.parameters())
    batch = batch.to(ref.device, ref.dtype)
    if target is None:
        with torch.no_grad():
            target = model(batch).argmax(dim=1)
    trained = run_explainers(model, batch, list(explainers), target)
    rhos: dict[str, list[float]] = {name: [] for name in trained.explanations}
    rhos_abs: dict[str, list[float]] = {name: [] for name in trained.explanations}
    errors = {name: failure.reason for name, failure in trained.failures.items()}
    for seed in seeds:
        randomised = randomise_modules(model, names, seed)
        run = run_explainers(randomised, batch, [e for e in explainers if e.name in rhos], target)
        for name, failure in run.failures.items():
            errors[name] = f"on the randomised model: {failure.reason}"
            rhos.pop(name, None)
        for name, explanation in run.explanations.items():
            if name in rhos:
                before, after = trained.explanations[name].heatmap, explanation.heatmap
                rhos[name].extend(float(r) for r in spearman(before, after))
                rhos_abs[name].extend(float(r) for r in spearman(before.abs(), after.abs()))
        del randomised
    results: dict[str, SanityResult] = {}
    for explainer in explainers:
        name = explainer.name
        if name in errors:
            results[name] = SanityResult(name, math.nan, False, error=errors[name])
            continue
        mean = _mean(rhos[name])
        results[name] = SanityResult(name, mean, bool(math.isfinite(mean) and mean < threshold), rhos[name],
                                     _mean(rhos_abs[name]), rhos_abs[name], bool(trained.explanations[name].signed))
    return results


def sanity_record(results: Mapping[str, SanityResult], explainers: Sequence[Explainer], *, modules: Sequence[str],
                  seeds: Sequence[int], images: str, threshold: float = SANITY_THRESHOLD) -> dict[str, Any]:
    """The JSON-able record kept in a checkpoint's metadata (``ModelMetadata.sanity``).

    Each method's entry carries what it was measured on (``images``, ``seeds``,
    its ``parameters``), so records of separate runs can be merged by method.
    """
    params = {e.name: recorded_parameters(e) for e in explainers}
    return {
        "check": ("model-parameter randomisation (Adebayo et al. 2018): Spearman rank correlation of the map "
                  "as displayed (spearman; the verdict) and of |map| (spearman_abs)"),
        "randomised": list(modules), "threshold": threshold,
        "methods": {name: {**r.as_dict(), "images": images, "seeds": list(seeds), "parameters": params.get(name, {})}
                    for name, r in results.items()},
    }


def _measurements(entry: Any) -> list[Mapping[str, Any]]:
    """A method's record entry and its ``variants`` (the same method measured with other parameters)."""
    if not isinstance(entry, Mapping):
        return []
    variants = entry.get("variants", [])
    return [entry, *(v for v in variants if isinstance(v, Mapping))] if isinstance(variants, list) else [entry]


def _pick(entries: list[Mapping[str, Any]], parameters: Mapping[str, Any] | None
          ) -> tuple[Mapping[str, Any] | None, bool]:
    if parameters is not None:
        for entry in entries:
            if entry.get("parameters") == dict(parameters):
                return entry, True
    return (entries[0] if entries else None), False


def measurement_for(record: Mapping[str, Any] | None, method: str,
                    parameters: Mapping[str, Any] | None = None) -> tuple[Mapping[str, Any] | None, bool]:
    """The measurement of ``method`` taken with ``parameters`` (see :func:`recorded_parameters`), and True;
    with no such measurement (or ``parameters`` None), the method's first entry and False; ``(None, False)``
    when the record has no entry for it.

    A verdict holds for the parameters it was measured with: ``parameters`` picks among the entry
    and its ``variants``, which ``mammoxai sanity --write`` adds when run with other settings.
    """
    return _pick(_measurements(dict(record.get("methods", {})).get(method)) if record else [], parameters)


def merge_measurement(existing: Mapping[str, Any] | None, new: Mapping[str, Any]) -> dict[str, Any]:
    """``existing`` (a method's record entry, or None) with the measurement ``new`` added: it replaces the
    measurement taken with the same parameters, else joins the ``variants``; the first entry stays first."""
    def alone(entry: Mapping[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in entry.items() if k != "variants"}

    entries = [alone(e) for e in _measurements(existing)]
    fresh = alone(new)
    same = [i for i, e in enumerate(entries) if e.get("parameters") == fresh.get("parameters")]
    if same:
        entries[same[0]] = fresh
    else:
        entries.append(fresh)
    head, rest = entries[0], entries[1:]
    return {**head, "variants": rest} if rest else head


def entry_verdict(entry: Mapping[str, Any] | None) -> tuple[float, bool] | None:
    """``(spearman, passed)`` of one measurement; None for an error, or a map that was constant."""
    if entry is None or entry.get("spearman") is None or "passed" not in entry:
        return None
    return float(entry["spearman"]), bool(entry["passed"])


def sanity_verdicts(record: Mapping[str, Any] | None,
                    parameters: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, tuple[float, bool]]:
    """``{method: (spearman, passed)}`` from a metadata record (methods with an error are left out).

    ``parameters`` (``{method: recorded_parameters(explainer)}``) picks, per method, the measurement
    taken with those parameters where there is one (:func:`measurement_for`).
    """
    if not record:
        return {}
    out: dict[str, tuple[float, bool]] = {}
    for name, entry in dict(record.get("methods", {})).items():
        verdict = entry_verdict(_pick(_measurements(entry), (parameters or {}).get(str(name)))[0])
        if verdict is not None:
            out[str(name)] = verdict
    return out
