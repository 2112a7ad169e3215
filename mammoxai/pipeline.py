"""One image (or a batch) through the whole chain: read → preprocess → predict → explain → score → write.

The node's workers and ``mammoxai explain`` both use :class:`Pipeline`. It
loads the model once (on the GPU when present), builds the configured
explainers once, and for each batch of files returns a :class:`ProcessedImage`
per file with the DICOM objects to send back and per-stage timings.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
import torch

from .config import Settings, SettingsError
from .dicom_io import (
    DicomReadError,
    Mammogram,
    NotAMammogramError,
    UnsupportedMammogramError,
    is_our_output,
    load_dataset,
    read_mammogram,
    write_results,
    write_study_summary,
)
from .dicom_io.limits import DecodeLimits
from .dicom_io.results import DomainCheck, ImageResult, MethodMap
from .errors import MammoxaiError
from .explainers import Explainer, Explanation, create, explainer_class, method_record, run_explainers
from .explainers.quality import explanation_not_informative, map_figures, score_explanation, score_explanations
from .explainers.sanity import entry_verdict, measurement_for, recorded_parameters, sanity_verdicts
from .models import Classifier, Geometry, load_classifier
from .models.domain import DomainRecord, acquisition_facts, penultimate
from .outcome import ImageOutcome, SummaryRecord

log = logging.getLogger(__name__)

Status = Literal["done", "ignored", "failed"]


@dataclass
class ProcessedImage:
    """The outcome for one input file."""

    path: Path
    status: Status
    reason: str = ""
    outputs: list[pydicom.Dataset] = field(default_factory=list)
    mammogram: Mammogram | None = None
    result: ImageResult | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def outcome(self) -> ImageOutcome:
        """What the node records: status, outputs, timings and, for a done image, its summary record."""
        record = (SummaryRecord.of(self.mammogram, self.result)
                  if self.status == "done" and self.mammogram is not None else None)
        return ImageOutcome(path=self.path, status=self.status, reason=self.reason, outputs=list(self.outputs),
                            timings=dict(self.timings), record=record)


@dataclass
class _Prepared:
    """An image ready for the model."""

    item: ProcessedImage
    pixels: np.ndarray
    laterality: str | None
    tensor: torch.Tensor | None = None
    geometry: Geometry | None = None


def build_explainers(settings: Settings, classifier: Classifier) -> list[Explainer]:
    """The configured explainers; a bad name or parameter is a :class:`SettingsError` naming the key.

    Parameters, later ones winning: ``explainers.seed`` / ``batch_size`` and ``model.autocast``; the
    checkpoint's ``mean`` / ``std`` for methods that work in intensities; the checkpoint metadata's
    ``explainer_params`` (e.g. the demo CNN's CAM target layer); ``[explainers.params.NAME]``.

    With ``explainers.sanity = "exclude"`` (the default), methods whose map fails the checkpoint's
    model-randomisation check (``ModelMetadata.sanity``) are left out, each with a warning.
    """
    explainers = []
    meta = classifier.metadata
    for name in settings.explainers.methods():
        try:
            cls = explainer_class(name)
        except ValueError as exc:
            raise SettingsError(f"explainers.enabled: {exc}") from None
        params: dict[str, Any] = {"seed": settings.explainers.seed, "batch_size": settings.explainers.batch_size,
                                  "autocast": settings.model.autocast}
        for key in ("mean", "std"):  # the checkpoint's normalisation, for methods that work in intensities
            if key in cls.defaults:
                values = [float(v) for v in getattr(meta, key)]
                params[key] = values[0] if isinstance(cls.defaults[key], float) else values
        if "stability_target" in cls.defaults:  # sampled methods: adaptive sample count
            params["stability_target"] = settings.explainers.stability_target
        # The checkpoint may declare per-method defaults (e.g. its CAM target layer); settings override them.
        params.update({k: v for k, v in getattr(meta, "explainer_params", {}).get(name, {}).items()
                       if k in cls.defaults})
        params.update(settings.explainers.parameters_for(name))
        try:
            explainer = create(name, **params)
        except ValueError as exc:
            raise SettingsError(f"explainers.params.{name}: {exc}") from None
        if settings.explainers.sanity != "off":
            verdict = _checked_verdict(explainer, meta.sanity)
            if verdict is not None and not verdict[1] and settings.explainers.sanity == "exclude":
                log.warning("explainer %s not run: its map fails this checkpoint's model-randomisation check "
                            "(Spearman %.2f >= %.2f); set explainers.sanity = 'label' to run it with a caution",
                            name, verdict[0], float(meta.sanity.get("threshold", 0.5)))
                continue
        explainers.append(explainer)
    return explainers


def _checked_verdict(explainer: Explainer, record: dict[str, Any]) -> tuple[float, bool] | None:
    """The record's ``(spearman, passed)`` for ``explainer`` as configured, None if it has none.

    A verdict holds for the parameters it was measured with: the one taken with these parameters
    is used where the record has it; otherwise the method's first one, with a warning.
    """
    configured = recorded_parameters(explainer)
    entry, exact = measurement_for(record, explainer.name, configured)
    if entry is None:
        return None
    measured = entry.get("parameters")
    if not exact and isinstance(measured, dict):
        differ = sorted(k for k in set(configured) | set(measured) if configured.get(k) != measured.get(k))
        log.warning("explainer %s: the checkpoint's randomisation verdict was measured with other parameters "
                    "(%s); run mammoxai sanity --write with these settings to re-check it",
                    explainer.name, ", ".join(f"{k} {measured.get(k)!r} -> {configured.get(k)!r}" for k in differ))
    return entry_verdict(entry)


def _robustness_scores(explanation: Explanation, index: int) -> dict[str, float]:
    """An attack's verdict on image ``index`` as scores for the SR: did a perturbation within the budget flip
    the decision (1/0), the smallest budget that did, and the largest budget tried (intensity units)."""
    reports = explanation.extras.get("robustness")
    if not reports or index >= len(reports):
        return {}
    report = reports[index]
    scores = {"adversarial_flipped": 1.0 if report["flipped"] else 0.0,
              "adversarial_max_epsilon": float(report["max_epsilon"])}
    if report["epsilon"] is not None:
        scores["adversarial_epsilon"] = float(report["epsilon"])
    return scores


class Pipeline:
    """Model, explainers and writers, loaded once."""

    def __init__(self, settings: Settings, *, classifier: Classifier | None = None) -> None:
        self.settings = settings
        self.classifier = classifier or load_classifier(
            settings.model.checkpoint, device=settings.model.device, architecture=settings.model.architecture)
        meta = self.classifier.metadata
        if settings.model.class_names is not None and list(settings.model.class_names) != list(meta.class_names):
            raise SettingsError(f"model.class_names = {settings.model.class_names} but the checkpoint says "
                                f"{list(meta.class_names)}")
        if settings.model.positive_class not in meta.class_names:
            raise SettingsError(f"model.positive_class = {settings.model.positive_class!r} is not one of "
                                f"{list(meta.class_names)}")
        self.positive_index = list(meta.class_names).index(settings.model.positive_class)
        self.explainers = build_explainers(settings, self.classifier)
        if isinstance(settings.explainers.sensitivity_methods, list):
            for name in settings.explainers.sensitivity_methods:
                try:
                    explainer_class(name)
                except ValueError as exc:
                    raise SettingsError(f"explainers.sensitivity_methods: {exc}") from None
        self.algorithm = self.classifier.algorithm_info()
        self.sanity = {} if settings.explainers.sanity == "off" else sanity_verdicts(
            meta.sanity, {e.name: recorded_parameters(e) for e in self.explainers})
        self.domain = DomainRecord.from_metadata(meta)   # None: domain not checked, probabilities not calibrated

    @property
    def gpu_present(self) -> bool:
        return self.classifier.device.type == "cuda"

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, path: Path) -> _Prepared | ProcessedImage:
        item = ProcessedImage(path=path, status="failed")
        start = time.perf_counter()
        try:
            limits = DecodeLimits.from_settings(self.settings.node)   # node.max_pixel_data_mb / max_inflated_mb
            dataset = load_dataset(path, limits)   # once: the header for the loop check, then the pixels
        except DicomReadError as exc:
            item.reason = str(exc)
            return item
        if is_our_output(dataset, self.settings.output):
            item.status, item.reason = "ignored", "produced by mammoxai (loop prevention)"
            return item
        try:
            mammogram = read_mammogram(dataset, limits=limits)
        except (NotAMammogramError, UnsupportedMammogramError) as exc:
            item.status, item.reason = "ignored", str(exc)
            return item
        except DicomReadError as exc:
            item.reason = str(exc)
            return item
        item.mammogram = mammogram
        item.timings["read"] = time.perf_counter() - start
        return _Prepared(item=item, pixels=mammogram.pixels, laterality=mammogram.laterality)

    # -- the model and the explainers ------------------------------------------------------------

    def _analyse(self, prepared: list[_Prepared]) -> None:
        """Predict, explain, score and map back for a batch of prepared images (fills ``item.result``)."""
        start = time.perf_counter()
        for p in prepared:
            p.tensor, p.geometry = self.classifier.preprocess(p.pixels, p.laterality)
        batch = torch.cat([p.tensor for p in prepared]).to(self.classifier.device)
        probabilities = self.classifier.predict_proba(batch).cpu()
        calibrated, domain = self._check_domain(prepared, batch)
        if calibrated is not None:
            probabilities = calibrated
        predict_seconds = (time.perf_counter() - start) / len(prepared)

        if self.settings.explainers.target == "positive":
            target = torch.full((len(prepared),), self.positive_index, dtype=torch.long)
        else:
            target = probabilities.argmax(dim=1)
        run = run_explainers(self.classifier.module, batch, self.explainers, target,   # the budget is per image
                             time_budget_s=self.settings.explainers.time_budget_s * len(prepared))
        for name, failure in run.failures.items():
            log.warning("explainer %s failed: %s", name, failure.reason)

        start = time.perf_counter()
        scores = self._score(batch, run.explanations)
        quality_seconds = (time.perf_counter() - start) / len(prepared)
        names = tuple(self.classifier.metadata.class_names)
        for i, p in enumerate(prepared):
            maps = []
            for name, explanation in run.explanations.items():
                quality = dict(scores.get(name, [{}] * len(prepared))[i])
                quality.update(_robustness_scores(explanation, i))
                figures, unstable = map_figures(explanation, i)   # stability, completeness_error
                quality.update(figures)
                caution = ""
                if name in self.sanity:
                    rho, passed = self.sanity[name]
                    quality["randomisation_rho"] = rho
                    caution = "" if passed else "map fails model-randomisation check"
                caution = "; ".join(c for c in (caution, unstable) if c)
                record = method_record(name)   # the method's one record, handed to dicom_io as data
                maps.append(MethodMap(
                    method=name,
                    display_name=record.display_name,
                    code=record.code,
                    series_slot=record.series_slot,
                    family=record.family,
                    heatmap=p.geometry.to_original(explanation.heatmap[i].numpy()).astype(np.float32),
                    signed=explanation.signed,
                    # how its figures were made rides with the method's parameters (SR algorithm parameters)
                    parameters=_plain({**explanation.parameters,
                                       **({"quality_steps": self.settings.explainers.curve_steps()}
                                          if "faithfulness" in quality else {})}),
                    seconds=explanation.seconds / len(prepared),
                    quality=quality,
                    caution=caution,
                    not_informative=explanation_not_informative(explanation, i),
                ))
                p.item.timings[f"explain.{name}"] = explanation.seconds / len(prepared)
            p.item.timings["predict"] = predict_seconds
            if scores:
                p.item.timings["quality"] = quality_seconds
            p.item.result = ImageResult(
                class_names=names,
                probabilities=tuple(float(v) for v in probabilities[i]),
                algorithm=self.algorithm,
                maps=tuple(maps),
                positive_class=self.settings.model.positive_class,
                failures={name: failure.reason for name, failure in run.failures.items()},
                domain=domain[i],
                calibrated=calibrated is not None,
                prediction_withheld=(self.settings.model.out_of_domain == "withhold" and domain[i] is not None
                                     and not domain[i].in_domain),
            )

    def _check_domain(self, prepared: list[_Prepared], batch: torch.Tensor
                      ) -> tuple[torch.Tensor | None, list[DomainCheck | None]]:
        """Calibrated probabilities (None without the checkpoint's temperature) and each image's domain check
        against the checkpoint's record (None: no record, or ``model.out_of_domain = "off"``)."""
        if self.domain is None:
            return None, [None] * len(prepared)
        features, logits = penultimate(self.classifier.module, batch)
        calibrated = (torch.from_numpy(self.domain.probabilities(logits)).float()
                      if self.domain.temperature else None)
        if self.settings.model.out_of_domain == "off":
            return calibrated, [None] * len(prepared)
        checks: list[DomainCheck | None] = []
        for i, p in enumerate(prepared):
            header = p.item.mammogram.dataset if p.item.mammogram is not None else None
            checks.append(self.domain.check(features[i], logits[i], acquisition_facts(p.pixels, header)))
        return calibrated, checks

    def _gets_sensitivity(self, explainer: Explainer) -> bool:
        """Whether ``explainer``'s maps get max-sensitivity (``explainers.sensitivity_methods``).

        "auto" leaves out, on a CPU, the methods whose map takes many model passes
        (:attr:`~mammoxai.explainers.base.Explainer.single_pass` False: Integrated Gradients, the
        SmoothGrad family, Score-CAM, the perturbation family, the attacks): each of their re-runs
        costs as much as the map, which in the ``full`` profile made max-sensitivity two thirds of
        a mammogram's latency, and in the ``fast`` profile Integrated Gradients' alone a quarter.
        """
        wanted = self.settings.explainers.sensitivity_methods
        if wanted == "all":
            return True
        if wanted == "auto":
            return self.gpu_present or explainer.single_pass
        return explainer.name in wanted

    def _score(self, batch: torch.Tensor, explanations: dict[str, Explanation]) -> dict[str, list[dict[str, float]]]:
        if not self.settings.explainers.quality:
            return {}
        options = self.settings.explainers
        by_name = {e.name: e for e in self.explainers if self._gets_sensitivity(e)}
        explainers = by_name if options.sensitivity_samples else {}
        try:   # every map's deletion / insertion steps in shared forward passes
            return score_explanations(
                self.classifier.module, batch, explanations, explainers=explainers, steps=options.curve_steps(),
                baseline=options.quality_baseline, batch_size=options.batch_size,
                sensitivity_samples=max(options.sensitivity_samples, 1))
        except Exception as exc:  # noqa: BLE001 - then one by one: a failure costs only that map's scores
            log.warning("quality scores of the maps together failed (%s: %s); scoring them one by one",
                        type(exc).__name__, exc)
        scores: dict[str, list[dict[str, float]]] = {}
        for name, explanation in explanations.items():
            try:
                scores[name] = score_explanation(
                    self.classifier.module, batch, explanation,
                    explainer=by_name.get(name) if options.sensitivity_samples else None,
                    steps=options.curve_steps(), baseline=options.quality_baseline, batch_size=options.batch_size,
                    sensitivity_samples=max(options.sensitivity_samples, 1))
            except Exception as exc:  # noqa: BLE001 - a failed score never loses the map
                log.warning("quality scores for %s failed: %s", name, exc)
        return scores

    # -- public entry points ---------------------------------------------------------------------

    def analyse_array(self, image: np.ndarray, laterality: str | None = None, *, path: Path | None = None
                      ) -> ProcessedImage:
        """Classify and explain one grayscale array (e.g. a PNG); no DICOM output."""
        item = ProcessedImage(path=path or Path("<array>"), status="failed")
        self._analyse([_Prepared(item=item, pixels=image, laterality=laterality)])
        item.status = "done"
        return item

    def process(self, paths: list[Path]) -> list[ProcessedImage]:
        """Process a batch of DICOM files; one :class:`ProcessedImage` per path, in order."""
        items: list[ProcessedImage] = []
        prepared: list[_Prepared] = []
        for path in paths:
            outcome = self._read(Path(path))
            if isinstance(outcome, ProcessedImage):
                items.append(outcome)
            else:
                items.append(outcome.item)
                prepared.append(outcome)
        if prepared:
            try:
                self._analyse(prepared)
            except MammoxaiError as exc:
                for p in prepared:
                    p.item.reason = str(exc)
                return items
            for p in prepared:
                start = time.perf_counter()
                try:
                    p.item.outputs = write_results(p.item.mammogram, p.item.result, self.settings.output,
                                                   gpu_present=self.gpu_present)
                    p.item.status = "done"
                except MammoxaiError as exc:
                    p.item.reason = f"writing results failed: {exc}"
                p.item.timings["write"] = time.perf_counter() - start
        return items

    def outcomes(self, paths: list[Path]) -> list[ImageOutcome]:
        """:meth:`process`, as the node records it: one :class:`~mammoxai.outcome.ImageOutcome` per path."""
        return [item.outcome() for item in self.process(paths)]

    def study_summary(self, records: list[SummaryRecord]) -> pydicom.Dataset | None:
        """The study-level SR (per breast: highest probability across views) when the study has several views."""
        done = [r for r in records if r.result is not None]
        if len(done) < 2 or not self.settings.output.structured_report:
            return None
        return write_study_summary([r.mammogram() for r in done], [r.result for r in done], self.settings.output)


def _plain(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON-friendly values (for the SR and the JSON report)."""
    return json.loads(json.dumps(parameters, default=str))
