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
from .dicom_io.results import ImageResult, MethodMap
from .errors import MammoxaiError
from .explainers import Explainer, Explanation, create, explainer_class, run_explainers
from .explainers.quality import score_explanation
from .explainers.sanity import entry_verdict, measurement_for, recorded_parameters, sanity_verdicts
from .models import Classifier, Geometry, load_classifier

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

    @property
    def gpu_present(self) -> bool:
        return self.classifier.device.type == "cuda"

    # -- reading ---------------------------------------------------------------------------------

    def _read(self, path: Path) -> _Prepared | ProcessedImage:
        item = ProcessedImage(path=path, status="failed")
        start = time.perf_counter()
        try:
            dataset = load_dataset(path)   # once: the header for the loop check, then the pixels
        except DicomReadError as exc:
            item.reason = str(exc)
            return item
        if is_our_output(dataset, self.settings.output):
            item.status, item.reason = "ignored", "produced by mammoxai (loop prevention)"
            return item
        try:
            mammogram = read_mammogram(dataset)
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
        predict_seconds = (time.perf_counter() - start) / len(prepared)

        if self.settings.explainers.target == "positive":
            target = torch.full((len(prepared),), self.positive_index, dtype=torch.long)
        else:
            target = probabilities.argmax(dim=1)
        run = run_explainers(self.classifier.module, batch, self.explainers, target,
                             time_budget_s=self.settings.explainers.time_budget_s)
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
                caution = ""
                if name in self.sanity:
                    rho, passed = self.sanity[name]
                    quality["randomisation_rho"] = rho
                    caution = "" if passed else "map fails model-randomisation check"
                maps.append(MethodMap(
                    method=name,
                    display_name=explainer_class(name).display_name,
                    heatmap=p.geometry.to_original(explanation.heatmap[i].numpy()).astype(np.float32),
                    signed=explanation.signed,
                    parameters=_plain(explanation.parameters),
                    seconds=explanation.seconds / len(prepared),
                    quality=quality,
                    caution=caution,
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
            )

    def _gets_sensitivity(self, explainer: Explainer) -> bool:
        """Whether ``explainer``'s maps get max-sensitivity (``explainers.sensitivity_methods``).

        "auto" leaves out the perturbation family on a CPU: each of its re-runs costs as much as
        the map (hundreds to thousands of forward passes), which in the ``full`` profile made
        max-sensitivity two thirds of a mammogram's latency.
        """
        wanted = self.settings.explainers.sensitivity_methods
        if wanted == "all":
            return True
        if wanted == "auto":
            return self.gpu_present or explainer.family != "perturbation"
        return explainer.name in wanted

    def _score(self, batch: torch.Tensor, explanations: dict[str, Explanation]) -> dict[str, list[dict[str, float]]]:
        if not self.settings.explainers.quality:
            return {}
        options = self.settings.explainers
        by_name = {e.name: e for e in self.explainers if self._gets_sensitivity(e)}
        scores: dict[str, list[dict[str, float]]] = {}
        for name, explanation in explanations.items():
            try:
                scores[name] = score_explanation(
                    self.classifier.module, batch, explanation,
                    explainer=by_name.get(name) if options.sensitivity_samples else None,
                    steps=options.quality_steps, baseline=options.quality_baseline, batch_size=options.batch_size,
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

    def study_summary(self, items: list[ProcessedImage]) -> pydicom.Dataset | None:
        """The study-level SR (per breast: highest probability across views) when the study has several views."""
        done = [i for i in items if i.status == "done" and i.mammogram is not None and i.result is not None]
        if len(done) < 2 or not self.settings.output.structured_report:
            return None
        return write_study_summary([i.mammogram for i in done], [i.result for i in done], self.settings.output)


def _plain(parameters: dict[str, Any]) -> dict[str, Any]:
    """Parameters as JSON-friendly values (for the SR and the JSON report)."""
    return json.loads(json.dumps(parameters, default=str))


# --- `mammoxai explain` -----------------------------------------------------------------------

def _png_mammogram(path: Path, image: np.ndarray) -> Mammogram:
    """A PNG as a Mammogram (no DICOM header) so the SC renderer can draw it."""
    pixels = image.astype(np.float32)
    top = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else max(float(pixels.max()), 1e-6)
    ds = pydicom.Dataset()
    ds.SOPInstanceUID = pydicom.uid.generate_uid()  # a PNG has none; used only in error messages
    return Mammogram(dataset=ds, pixels=np.clip(pixels / top, 0.0, 1.0), laterality=None, view=None)


def _write_pngs(item: ProcessedImage, out: Path, stem: str, settings: Settings) -> dict[str, str]:
    from PIL import Image

    from .dicom_io.render import render_montage, render_overlay

    written: dict[str, str] = {}
    for method_map in item.result.maps:
        page = render_overlay(item.mammogram, method_map, item.result, colormap=settings.output.colormap,
                              max_size=settings.output.sc_max_size)
        target = out / f"{stem}.{method_map.method}.png"
        Image.fromarray(page).save(target)
        written[method_map.method] = target.name
    if len(item.result.maps) > 1:
        target = out / f"{stem}.montage.png"
        Image.fromarray(render_montage(item.mammogram, item.result, colormap=settings.output.colormap,
                                       max_size=settings.output.sc_max_size)).save(target)
        written["montage"] = target.name
    return written


def _report(item: ProcessedImage, pngs: dict[str, str], dicom_files: list[str]) -> dict[str, Any]:
    result = item.result
    return {
        "file": str(item.path),
        "status": item.status,
        "reason": item.reason,
        "prediction": None if result is None else {
            "class": result.predicted_class,
            "probabilities": dict(zip(result.class_names, result.probabilities)),
            "malignancy_probability": result.malignancy_probability,
        },
        "model": None if result is None else {
            "name": result.algorithm.name, "version": result.algorithm.version,
            "architecture": result.algorithm.architecture, "checkpoint_sha256": result.algorithm.checkpoint_sha256,
            "intended_use": result.algorithm.intended_use,
        },
        "explanations": [] if result is None else [
            {"method": m.method, "display_name": m.display_name, "signed": m.signed, "seconds": m.seconds,
             "parameters": dict(m.parameters), "quality": dict(m.quality), "caution": m.caution,
             "png": pngs.get(m.method)}
            for m in result.maps
        ],
        "failures": {} if result is None else dict(result.failures),
        "timings": item.timings,
        "montage_png": pngs.get("montage"),
        "dicom": dicom_files,
    }


def main_explain(args: Any, settings: Settings) -> int:
    """``mammoxai explain FILE...``: prediction, one overlay PNG per method, a JSON report per file."""
    from .models import load_png

    overrides: dict[str, Any] = {}
    if args.explainers:
        settings.explainers.enabled = [n.strip() for n in args.explainers.split(",") if n.strip()]
    if args.checkpoint:
        overrides["checkpoint"] = args.checkpoint
    if args.device:
        overrides["device"] = args.device
    for key, value in overrides.items():
        setattr(settings.model, key, value)
    pngs_in: dict[Path, np.ndarray] = {}
    for path in args.files:  # bad input fails before the model is loaded
        if not path.is_file():
            raise MammoxaiError(f"{path}: no such file")
        if path.suffix.lower() == ".png":
            pngs_in[path] = load_png(path)
    pipeline = Pipeline(settings)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.files:
        stem = path.stem
        if path in pngs_in:
            image = pngs_in[path]
            item = pipeline.analyse_array(image, path=path)
            item.mammogram = _png_mammogram(path, image)
        else:
            item = pipeline.process([path])[0]
        pngs: dict[str, str] = {}
        dicom_files: list[str] = []
        if item.result is not None and item.mammogram is not None:
            pngs = _write_pngs(item, args.out, stem, settings)
        if args.dicom and item.outputs:
            folder = args.out / f"{stem}.dicom"
            folder.mkdir(exist_ok=True)
            for ds in item.outputs:
                target = folder / f"{ds.Modality}.{ds.SOPInstanceUID}.dcm"
                ds.save_as(target, enforce_file_format=True)
                dicom_files.append(str(target.relative_to(args.out)))
        report = _report(item, pngs, dicom_files)
        (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2, default=str))
        if item.status == "done":
            r = item.result
            print(f"{path}: {r.predicted_class} (P(malignant) = {r.malignancy_probability:.3f}); "
                  f"{len(r.maps)} map(s) -> {args.out}/{stem}.*" +
                  (f"; failed: {', '.join(r.failures)}" if r.failures else ""))
        else:
            failed += 1
            print(f"{path}: {item.status}: {item.reason}")
    return 1 if failed else 0
