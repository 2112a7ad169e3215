"""Per-checkpoint domain record: is an image like those the model was validated on? And calibration.

A model is only validated on the images it was tested on. The domain record, kept in the
checkpoint's metadata (``ModelMetadata.domain``, written by ``mammoxai domain --write``), holds
what the node needs to say, per image, "this image is outside what the model was validated on":

* **A feature-space score** on the penultimate layer (the pooled features the classifier head
  reads). Two are measured on the model's own data and the better one is kept:

  - ``mahalanobis`` (Lee et al. 2018, "A simple unified framework for detecting out-of-distribution
    samples and adversarial attacks"): class means and one tied covariance of the training
    features, the covariance shrunk towards a scaled identity (Ledoit & Wolf 2004) so that it is
    invertible with a few hundred images; score = the smallest squared Mahalanobis distance to a
    class mean. Stored as the means and the Cholesky factor of the precision matrix.
  - ``mahalanobis_l2``: the same on L2-normalised features (Mueller & Hein 2025, "Mahalanobis++:
    improving OOD detection via feature normalization"): the features' norm varies a lot within
    the domain, which the plain distance mistakes for novelty and which hides some novel images.
  - ``energy`` (Liu et al. 2020, "Energy-based out-of-distribution detection"): ``-logsumexp(logits)``;
    needs nothing stored.

  Higher is further from the domain. The **threshold** is the ``1 - false_alarm_rate`` quantile of
  the score on held-out in-domain images (never those the score was fitted on).
* **Acquisition checks** from the header and the presentation values (after the VOI, as the
  node reads them): image size (long side), pixel spacing, manufacturer, presentation intent,
  and three photometric levels (the darkest level, the median tissue level, the saturated
  fraction); each is a range (or the set of values) seen in the domain, widened by a margin.
* **Calibration**: temperature scaling (Guo et al. 2017) fitted on the held-out images (by
  negative log-likelihood); the node reports ``softmax(logits / T)``. Expected calibration error
  (15 equal-width confidence bins) before/after is stored with it.

Pure numpy here except :func:`penultimate` (torch). What the score cannot catch: an image of the
same look as the domain whose label relation differs (a different population or reader), and
shifts the model's features are blind to; see the README ("Out-of-domain detection").
"""

from __future__ import annotations

import base64
import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

RECORD_FORMAT = 1
SCORES: tuple[str, ...] = ("mahalanobis", "mahalanobis_l2", "energy")
SCORE_NAMES: dict[str, str] = {
    "mahalanobis": "Mahalanobis distance, penultimate layer (Ledoit-Wolf shrinkage)",
    "mahalanobis_l2": "Mahalanobis distance, L2-normalised penultimate layer (Ledoit-Wolf shrinkage)",
    "energy": "Energy score (-logsumexp of the logits)",
}
DEFAULT_FALSE_ALARM_RATE = 0.01
ECE_BINS = 15
#: photometric facts (presentation values in [0, 1]) and how far past the domain's range a value may lie
PHOTOMETRIC = ("background_level", "tissue_level", "saturated_fraction")
_PHOTOMETRIC_MARGIN = 0.05
#: image size and pixel spacing may differ from the domain's range by this factor
_SCALE_MARGIN = 2.0


# --- per-image facts ----------------------------------------------------------------------------

def acquisition_facts(pixels: np.ndarray, header: Any | None = None) -> dict[str, Any]:
    """What the acquisition checks look at for one image.

    ``pixels``: presentation values in [0, 1] on the stored grid (after Modality LUT, VOI and
    polarity, as :func:`mammoxai.dicom_io.read_mammogram` returns them). ``header``: the pydicom
    dataset, or None (e.g. a PNG): then only size and photometric facts are given.
    Returns ``long_side`` (pixels), ``background_level`` (1st percentile), ``tissue_level``
    (median of the pixels brighter than background + 0.1), ``saturated_fraction`` (pixels >= 0.999)
    and, from the header, ``pixel_spacing_mm`` (Pixel Spacing, else Imager Pixel Spacing; None when
    absent), ``manufacturer`` (0008,0070) and ``presentation_intent`` (0008,0068) ("" when absent).
    """
    arr = np.asarray(pixels, dtype=np.float32)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(f"acquisition_facts: need a 2-D image, got shape {arr.shape}")
    step = max(1, int(math.sqrt(arr.size / 250_000)))   # a ~250k-pixel sample is plenty for percentiles
    sample = np.nan_to_num(arr[::step, ::step], nan=0.0).ravel()
    background = float(np.percentile(sample, 1))
    tissue = sample[sample > background + 0.1]
    facts: dict[str, Any] = {
        "long_side": int(max(arr.shape)),
        "background_level": round(background, 4),
        "tissue_level": round(float(np.median(tissue)) if tissue.size else background, 4),
        "saturated_fraction": round(float((sample >= 0.999).mean()), 4),
    }
    if header is not None:
        spacing = None
        for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
            value = getattr(header, keyword, None) if hasattr(header, keyword) else None
            try:
                if value is not None and len(value) >= 1 and float(value[0]) > 0:
                    spacing = float(value[0])
                    break
            except (TypeError, ValueError):
                continue
        facts["pixel_spacing_mm"] = spacing
        facts["manufacturer"] = str(getattr(header, "Manufacturer", "") or "").strip()
        facts["presentation_intent"] = str(getattr(header, "PresentationIntentType", "") or "").strip()
    return facts


def acquisition_ranges(facts: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """The acquisition part of a record: per fact, the range (or set) seen in ``facts``, widened.

    Photometric levels widen by 0.05 on each side; long side and pixel spacing by a factor 2.
    Header facts are recorded only when every image had a header; pixel spacing only when
    every image gave one.
    """
    if not facts:
        raise ValueError("acquisition_ranges: no images")
    out: dict[str, Any] = {}
    sides = [int(f["long_side"]) for f in facts]
    out["long_side"] = [int(min(sides) / _SCALE_MARGIN), int(math.ceil(max(sides) * _SCALE_MARGIN))]
    for key in PHOTOMETRIC:
        values = [float(f[key]) for f in facts]
        out[key] = [round(max(0.0, min(values) - _PHOTOMETRIC_MARGIN), 4),
                    round(min(1.0, max(values) + _PHOTOMETRIC_MARGIN), 4)]
    if all("manufacturer" in f for f in facts):
        spacings = [f.get("pixel_spacing_mm") for f in facts]
        if all(s is not None for s in spacings):
            out["pixel_spacing_mm"] = [round(min(spacings) / _SCALE_MARGIN, 5),
                                       round(max(spacings) * _SCALE_MARGIN, 5)]
        out["manufacturer"] = sorted({str(f["manufacturer"]) for f in facts})
        out["presentation_intent"] = sorted({str(f["presentation_intent"]) for f in facts})
    return out


def acquisition_reasons(ranges: Mapping[str, Any], facts: Mapping[str, Any]) -> tuple[str, ...]:
    """The acquisition checks of ``ranges`` that ``facts`` fails, in plain words (empty: all pass).

    A header check is skipped when the image has no header (``facts`` without ``manufacturer``).
    """
    reasons: list[str] = []

    def outside(key: str, label: str, unit: str = "", fmt: str = "g") -> None:
        if key not in ranges or facts.get(key) is None:
            return
        lo, hi = (float(v) for v in ranges[key])
        value = float(facts[key])
        if not lo <= value <= hi:
            reasons.append(f"{label} {value:{fmt}}{unit} outside the domain's {lo:{fmt}}-{hi:{fmt}}{unit}")

    outside("long_side", "image size (long side)", " px")
    outside("background_level", "background level after VOI", fmt=".2f")
    outside("tissue_level", "tissue level after VOI", fmt=".2f")
    outside("saturated_fraction", "saturated fraction after VOI", fmt=".2f")
    if "manufacturer" in facts:
        if "pixel_spacing_mm" in ranges and facts.get("pixel_spacing_mm") is None:
            reasons.append("no pixel spacing in the header")
        outside("pixel_spacing_mm", "pixel spacing", " mm")
        for key, label in (("manufacturer", "manufacturer"), ("presentation_intent", "presentation intent")):
            seen = ranges.get(key)
            if seen is not None and str(facts.get(key, "")) not in seen:
                value = facts.get(key) or "not given"
                reasons.append(f"{label} {value!r} not among the domain's ({', '.join(seen)})")
    return tuple(reasons)


# --- scores -------------------------------------------------------------------------------------

def ledoit_wolf(centred: np.ndarray) -> tuple[np.ndarray, float]:
    """Ledoit-Wolf (2004) shrunk covariance of centred rows ``(n, p)``: ``(1-a) S + a (tr S / p) I``.

    Returns the covariance and the shrinkage ``a`` in [0, 1] (the same estimator as
    ``sklearn.covariance.LedoitWolf`` with ``assume_centered=True``).
    """
    x = np.asarray(centred, dtype=np.float64)
    n, p = x.shape
    if n < 2:
        raise ValueError("ledoit_wolf: need at least 2 samples")
    s = x.T @ x / n
    mu = float(np.trace(s)) / p
    d2 = float(((s - mu * np.eye(p)) ** 2).sum())
    b2_bar = (float(((x ** 2).sum(axis=1) ** 2).sum()) - n * float((s ** 2).sum())) / (n * n)
    shrinkage = 0.0 if d2 == 0 else min(max(b2_bar, 0.0), d2) / d2
    return (1.0 - shrinkage) * s + shrinkage * mu * np.eye(p), float(shrinkage)


def _normalised(features: np.ndarray, normalise: str) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    if normalise == "l2":
        return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)
    return f


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray | None, normalise: str = "none") -> dict[str, Any]:
    """Class means and the Cholesky factor ``W`` of the shrunk tied precision (``P = W Wᵀ``).

    ``labels`` None (unlabelled data): one mean. ``normalise`` "l2" scales each feature row to
    unit length first. Returns the record's ``mahalanobis`` part.
    """
    if normalise not in ("none", "l2"):
        raise ValueError(f"normalise {normalise!r} must be 'none' or 'l2'")
    f = _normalised(features, normalise)
    y = np.zeros(len(f), dtype=int) if labels is None else np.asarray(labels, dtype=int)
    classes = sorted(set(int(v) for v in y))
    means = np.stack([f[y == k].mean(axis=0) for k in classes])
    centred = f - means[np.searchsorted(classes, y)]
    cov, shrinkage = ledoit_wolf(centred)
    precision = np.linalg.inv(cov)
    factor = np.linalg.cholesky((precision + precision.T) / 2.0)
    rows, cols = np.tril_indices(f.shape[1])
    return {"means": encode_array(means), "precision_cholesky_tril": encode_array(factor[rows, cols]),
            "dim": int(f.shape[1]), "shrinkage": round(shrinkage, 6), "classes": classes, "normalise": normalise}


def mahalanobis_scores(part: Mapping[str, Any], features: np.ndarray) -> np.ndarray:
    """Smallest squared Mahalanobis distance of each feature row to a class mean."""
    means = decode_array(part["means"]).astype(np.float64)
    dim = int(part["dim"])
    factor = np.zeros((dim, dim))
    factor[np.tril_indices(dim)] = decode_array(part["precision_cholesky_tril"])
    f = _normalised(np.asarray(features, dtype=np.float64).reshape(-1, dim), str(part.get("normalise", "none")))
    d = np.stack([(((f - m) @ factor) ** 2).sum(axis=1) for m in means], axis=1)
    return d.min(axis=1)


def energy_scores(logits: np.ndarray) -> np.ndarray:
    """Energy ``-logsumexp(logits)`` per row (Liu et al. 2020, temperature 1); higher = less familiar."""
    z = np.asarray(logits, dtype=np.float64)
    top = z.max(axis=1, keepdims=True)
    return -(top[:, 0] + np.log(np.exp(z - top).sum(axis=1)))


def auroc(negatives: Sequence[float], positives: Sequence[float]) -> float:
    """P(score of a positive > score of a negative), ties count half (Mann-Whitney)."""
    neg, pos = np.asarray(negatives, dtype=np.float64), np.asarray(positives, dtype=np.float64)
    if neg.size == 0 or pos.size == 0:
        return math.nan
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (pos.size * neg.size))


# --- calibration --------------------------------------------------------------------------------

def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under ``softmax(logits / temperature)``."""
    p = softmax(logits, temperature)
    y = np.asarray(labels, dtype=int)
    return float(-np.log(np.clip(p[np.arange(len(y)), y], 1e-12, None)).mean())


def fit_temperature(logits: np.ndarray, labels: np.ndarray) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (Guo et al. 2017)."""
    from scipy.optimize import minimize_scalar

    result = minimize_scalar(lambda log_t: nll(logits, labels, math.exp(log_t)), bounds=(-4.0, 4.0),
                             method="bounded", options={"xatol": 1e-4})
    return float(math.exp(result.x))


def expected_calibration_error(probabilities: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE: confidence (the top probability) vs accuracy in ``bins`` equal-width bins, weighted by count."""
    p = np.asarray(probabilities, dtype=np.float64)
    y = np.asarray(labels, dtype=int)
    if len(y) == 0:
        return math.nan
    confidence = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        in_bin = which == b
        if in_bin.any():
            ece += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(ece)


# --- array coding in JSON -----------------------------------------------------------------------

def encode_array(array: np.ndarray) -> dict[str, Any]:
    """A float32 array as a JSON object: shape and base64 of its little-endian bytes."""
    a = np.ascontiguousarray(np.asarray(array, dtype="<f4"))
    return {"shape": list(a.shape), "float32_base64": base64.b64encode(a.tobytes()).decode("ascii")}


def decode_array(data: Mapping[str, Any]) -> np.ndarray:
    """Inverse of :func:`encode_array`."""
    raw = base64.b64decode(str(data["float32_base64"]))
    return np.frombuffer(raw, dtype="<f4").reshape([int(v) for v in data["shape"]]).astype(np.float32)


# --- the record ---------------------------------------------------------------------------------

@dataclass
class DomainRecord:
    """The domain part of a checkpoint's metadata (see the module docstring); JSON via ``to_dict``."""

    score: str
    threshold: float
    false_alarm_rate: float
    acquisition: dict[str, Any]
    mahalanobis: dict[str, Any] = field(default_factory=dict)
    temperature: float | None = None
    calibration: dict[str, Any] = field(default_factory=dict)
    comparison: dict[str, Any] = field(default_factory=dict)
    data: dict[str, Any] = field(default_factory=dict)
    format: int = RECORD_FORMAT

    def __post_init__(self) -> None:
        if self.score not in SCORES:
            raise ValueError(f"domain.score {self.score!r} is not one of {', '.join(SCORES)}")
        if self.score.startswith("mahalanobis") and not self.mahalanobis:
            raise ValueError(f"domain: score {self.score!r} needs the 'mahalanobis' part (means, precision)")
        if not math.isfinite(float(self.threshold)):
            raise ValueError("domain.threshold must be a finite number")
        if self.temperature is not None and not float(self.temperature) > 0:
            raise ValueError(f"domain.temperature {self.temperature!r} must be > 0")
        if self.format != RECORD_FORMAT:
            raise ValueError(f"domain.format {self.format!r} is not supported (expected {RECORD_FORMAT})")

    @property
    def score_name(self) -> str:
        return SCORE_NAMES[self.score]

    def scores(self, features: np.ndarray, logits: np.ndarray) -> np.ndarray:
        """The record's score for each row of penultimate ``features`` / ``logits``."""
        if self.score.startswith("mahalanobis"):
            return mahalanobis_scores(self.mahalanobis, features)
        return energy_scores(logits)

    def check(self, features: np.ndarray, logits: np.ndarray, facts: Mapping[str, Any]):
        """One image (``features`` (D,), ``logits`` (K,), its :func:`acquisition_facts`) against the record:
        a :class:`mammoxai.dicom_io.results.DomainCheck`, in the domain when the score is at most the
        threshold and every acquisition check passes."""
        from ..dicom_io.results import DomainCheck

        score = float(self.scores(np.asarray(features)[None], np.asarray(logits)[None])[0])
        reasons = acquisition_reasons(self.acquisition, facts)
        threshold = float(self.threshold)
        return DomainCheck(score=score, threshold=threshold, in_domain=score <= threshold and not reasons,
                           score_name=self.score_name, reasons=reasons)

    def probabilities(self, logits: np.ndarray) -> np.ndarray:
        """Calibrated probabilities ``softmax(logits / T)`` (plain softmax without a temperature)."""
        return softmax(logits, self.temperature or 1.0)

    def to_dict(self) -> dict[str, Any]:
        return {"format": self.format, "score": self.score, "score_name": self.score_name,
                "threshold": float(self.threshold), "false_alarm_rate": float(self.false_alarm_rate),
                "acquisition": dict(self.acquisition), "mahalanobis": dict(self.mahalanobis),
                "temperature": self.temperature, "calibration": dict(self.calibration),
                "comparison": dict(self.comparison), "data": dict(self.data)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "DomainRecord":
        """Parse the metadata's ``domain`` object; ``ValueError`` for a malformed one."""
        if not isinstance(data, Mapping):
            raise ValueError("domain must be a JSON object")
        known = {"format", "score", "score_name", "threshold", "false_alarm_rate", "acquisition", "mahalanobis",
                 "temperature", "calibration", "comparison", "data"}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"domain: unknown key(s) {', '.join(unknown)}")
        missing = [k for k in ("score", "threshold", "false_alarm_rate", "acquisition") if k not in data]
        if missing:
            raise ValueError(f"domain: missing key(s) {', '.join(missing)}")
        values = {k: v for k, v in data.items() if k != "score_name"}
        try:
            return cls(**values)
        except TypeError as exc:
            raise ValueError(f"domain: {exc}") from None

    @classmethod
    def from_metadata(cls, metadata: Any) -> "DomainRecord | None":
        """The record of a checkpoint's metadata, None when it has none."""
        data = getattr(metadata, "domain", None)
        return cls.from_dict(data) if data else None


@dataclass
class DomainData:
    """Penultimate features, logits, labels (None = unlabelled) and acquisition facts of a set of images."""

    features: np.ndarray
    logits: np.ndarray
    labels: np.ndarray | None
    facts: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.facts)


def _detection(record_scores: np.ndarray, reasons: Iterable[tuple[str, ...]], threshold: float) -> np.ndarray:
    return np.asarray([s > threshold or bool(r) for s, r in zip(record_scores, reasons)], dtype=bool)


def build_record(fit: DomainData, held_out: DomainData, *, false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE,
                 shifted: Mapping[str, DomainData] | None = None, reported: Mapping[str, DomainData] | None = None,
                 data: Mapping[str, Any] | None = None, score: str | None = None) -> DomainRecord:
    """Fit a record: the scores on ``fit``, the threshold and temperature on ``held_out``.

    Both scores are measured; ``shifted`` (name -> held-out images under a synthetic acquisition
    shift, :data:`SHIFTS`) decides which one is kept: the higher mean rate flagged by the score at
    its threshold, then the higher mean AUROC. ``reported`` (e.g. real images known to be outside
    the domain) are measured too but do not take part in the choice. ``score`` forces one. The
    figures of both scores go into ``comparison``.
    """
    if not 0.0 < false_alarm_rate < 0.5:
        raise ValueError(f"false_alarm_rate {false_alarm_rate} must be in (0, 0.5)")
    if len(fit) < 8 or len(held_out) < 8:
        raise ValueError(f"need at least 8 fit and 8 held-out images, got {len(fit)} and {len(held_out)}")
    acquisition = acquisition_ranges(fit.facts)
    maha = {"mahalanobis": fit_mahalanobis(fit.features, fit.labels),
            "mahalanobis_l2": fit_mahalanobis(fit.features, fit.labels, normalise="l2")}
    candidates: dict[str, DomainRecord] = {}
    comparison: dict[str, Any] = {}
    for name in SCORES:
        probe = DomainRecord(score=name, threshold=0.0, false_alarm_rate=false_alarm_rate,
                             acquisition=acquisition, mahalanobis=maha.get(name, {}))
        held = probe.scores(held_out.features, held_out.logits)
        threshold = float(np.quantile(held, 1.0 - false_alarm_rate, method="higher"))
        held_reasons = [acquisition_reasons(acquisition, f) for f in held_out.facts]
        figures: dict[str, Any] = {
            "threshold": threshold,
            "held_out_flagged": round(float(_detection(held, held_reasons, threshold).mean()), 4),
            "held_out_images": len(held_out)}
        for shift_name, shift in {**(shifted or {}), **(reported or {})}.items():
            s = probe.scores(shift.features, shift.logits)
            reasons = [acquisition_reasons(acquisition, f) for f in shift.facts]
            figures[shift_name] = {"images": len(shift), "auroc": round(auroc(held, s), 4),
                                   "score_flagged": round(float((s > threshold).mean()), 4),
                                   "flagged": round(float(_detection(s, reasons, threshold).mean()), 4)}
        comparison[name] = figures
        candidates[name] = DomainRecord(score=name, threshold=threshold, false_alarm_rate=false_alarm_rate,
                                        acquisition=acquisition, mahalanobis=probe.mahalanobis)
    if score is None:
        def merit(name: str) -> tuple[float, float]:
            shifts = [comparison[name][k] for k in (shifted or {})]
            if not shifts:
                return (0.0, 0.0)
            return (float(np.mean([v["score_flagged"] for v in shifts])),
                    float(np.nanmean([v["auroc"] for v in shifts])))
        score = max(SCORES, key=lambda n: (merit(n), n.startswith("mahalanobis")))
    comparison["kept"] = score
    chosen = candidates[score]
    chosen.comparison = comparison
    chosen.data = dict(data or {})
    if held_out.labels is not None and len(set(int(v) for v in held_out.labels)) > 1:
        t = fit_temperature(held_out.logits, held_out.labels)
        chosen.temperature = round(t, 5)
        chosen.calibration = {
            "method": "temperature scaling (Guo et al. 2017), NLL on the held-out images",
            "images": len(held_out),
            "ece_before": round(expected_calibration_error(softmax(held_out.logits), held_out.labels), 5),
            "ece_after": round(expected_calibration_error(softmax(held_out.logits, t), held_out.labels), 5),
            "ece_bins": ECE_BINS}
    return chosen


# --- features (torch) ---------------------------------------------------------------------------

def penultimate(module: Any, batch: Any) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features ``(N, D)`` and logits ``(N, K)`` (float64 numpy) of a timm model; no gradients.

    The features are what the classifier head reads (``forward_head(..., pre_logits=True)``:
    the pooled, normalised embedding).
    """
    import torch

    with torch.no_grad():
        trunk = module.forward_features(batch)
        features = module.forward_head(trunk, pre_logits=True)
        logits = module.forward_head(trunk)
    return (features.float().flatten(1).cpu().numpy().astype(np.float64),
            logits.float().cpu().numpy().astype(np.float64))


# --- collecting images (torch) ------------------------------------------------------------------

#: phantom sizes of the demo records (the node sees phantoms of many sizes; sizes are relative)
DOMAIN_SHAPES: tuple[tuple[int, int], ...] = ((256, 208), (512, 416), (768, 624), (1024, 832))
#: held-out phantom seeds of a record (threshold, temperature) and of ``mammoxai domain``'s check:
#: disjoint from the training seeds (< 10 000 000 per run) and from ``mammoxai validate``'s.
HELD_OUT_SEED = 11_000_000
CHECK_SEED = 12_000_000


@dataclass(frozen=True)
class DomainImage:
    """One image as the node sees it: presentation values in [0, 1], laterality, header (or None), label."""

    pixels: np.ndarray
    laterality: str | None
    header: Any | None
    label: int | None = None


def phantom_images(seeds: Iterable[int], shapes: Sequence[tuple[int, int]] = DOMAIN_SHAPES) -> Iterable[DomainImage]:
    """Phantoms as the node reads them: written as DICOM (:func:`mammoxai.dicom_io.write_phantom_dicom`,
    its default header) and read back with :func:`mammoxai.dicom_io.read_mammogram`; the i-th seed at
    ``shapes[i % len(shapes)]``."""
    from ..dicom_io import read_mammogram, write_phantom_dicom
    from .phantoms import generate_phantom

    for i, seed in enumerate(seeds):
        ph = generate_phantom(int(seed), shape=tuple(shapes[i % len(shapes)]))
        ds = write_phantom_dicom(ph.image, laterality=ph.laterality, view=ph.view, bits_stored=ph.bits_stored)
        mg = read_mammogram(ds)
        yield DomainImage(pixels=mg.pixels, laterality=mg.laterality, header=mg.dataset, label=ph.label)


def _blur(pixels: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    return gaussian_filter(pixels, sigma=0.004 * max(pixels.shape))


#: synthetic acquisition shifts of in-domain images (presentation values in [0, 1]) that the record's
#: comparison of scores uses: another display processing, a polarity error, lower resolution, noise.
SHIFTS: dict[str, Any] = {
    "gamma 0.5": lambda p: np.sqrt(np.clip(p, 0.0, 1.0)),
    "gamma 2": lambda p: np.clip(p, 0.0, 1.0) ** 2,
    "inverted": lambda p: 1.0 - p,
    "blurred": _blur,
    "noisy": lambda p: np.clip(p + np.random.default_rng(0).normal(0.0, 0.05, p.shape).astype(np.float32), 0, 1),
}


class _Collector:
    def __init__(self, classifier: Any, batch_size: int) -> None:
        self.classifier, self.batch_size = classifier, batch_size
        self.pending: list[Any] = []
        self.features: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []
        self.labels: list[int | None] = []
        self.facts: list[dict[str, Any]] = []

    def add(self, pixels: np.ndarray, laterality: str | None, header: Any, label: int | None) -> None:
        x, _ = self.classifier.preprocess(pixels, laterality)
        self.pending.append(x)
        self.facts.append(acquisition_facts(pixels, header))
        self.labels.append(label)
        if len(self.pending) >= self.batch_size:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            import torch

            batch = torch.cat(self.pending).to(self.classifier.device)
            f, z = penultimate(self.classifier.module, batch)
            self.features.append(f)
            self.logits.append(z)
            self.pending = []

    def result(self) -> DomainData:
        self.flush()
        labelled = all(v is not None for v in self.labels) and bool(self.labels)
        dim = self.features[0].shape[1] if self.features else 0
        return DomainData(
            features=np.concatenate(self.features) if self.features else np.empty((0, dim)),
            logits=np.concatenate(self.logits) if self.logits else np.empty((0, 0)),
            labels=np.asarray(self.labels, dtype=int) if labelled else None, facts=self.facts)


def collect(classifier: Any, images: Iterable[DomainImage], *, shifts: Mapping[str, Any] | None = None,
            shift_images: int = 0, batch_size: int = 16) -> tuple[DomainData, dict[str, DomainData]]:
    """Penultimate features, logits, labels and acquisition facts of ``images`` for ``classifier``
    (a :class:`~mammoxai.models.classifier.Classifier`), and of the first ``shift_images`` of them
    under each of ``shifts`` (name -> function of the presentation values)."""
    main = _Collector(classifier, batch_size)
    shifted = {name: _Collector(classifier, batch_size) for name in (shifts or {})}
    for i, image in enumerate(images):
        main.add(image.pixels, image.laterality, image.header, image.label)
        if i < shift_images:
            for name, fn in (shifts or {}).items():
                shifted[name].add(np.asarray(fn(image.pixels), dtype=np.float32), image.laterality, image.header,
                                  image.label)
    return main.result(), {name: c.result() for name, c in shifted.items()}


def calibration_on_phantoms(classifier: Any, record: DomainRecord, seeds: Iterable[int],
                            shape: tuple[int, int] = (512, 416)) -> dict[str, float]:
    """Expected calibration error of ``classifier`` on the phantoms of ``seeds`` before and after the
    record's temperature: ``{"images", "ece_before", "ece_after", "temperature"}``."""
    import torch

    from .phantoms import generate_phantom

    logits, labels = [], []
    for seed in seeds:
        ph = generate_phantom(int(seed), shape=shape)
        x, _ = classifier.preprocess(ph.image, ph.laterality)
        with torch.no_grad():
            logits.append(classifier.module(x.to(classifier.device)).float().cpu().numpy()[0])
        labels.append(ph.label)
    z, y = np.asarray(logits, dtype=np.float64), np.asarray(labels)
    return {"images": len(y), "temperature": float(record.temperature or 1.0),
            "ece_before": expected_calibration_error(softmax(z), y),
            "ece_after": expected_calibration_error(record.probabilities(z), y)}
