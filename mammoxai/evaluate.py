"""Measuring the explainers, not one patient: samples with ground truth, scores, summaries, tables, plots.

:func:`evaluate_samples` runs every explainer on phantoms (ground-truth lesion
masks) or a CBIS-DDSM folder (ROI masks, :func:`cbis_samples`) and computes
:mod:`mammoxai.explainers.quality` scores per map; :func:`summarise_rows`,
:func:`markdown_table`, :func:`plot_summary` and :func:`trust_order` turn the
rows into per-method summaries. The ``evaluate`` and ``sanity`` commands
(:mod:`mammoxai.commands`) drive them.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import torch

from .errors import MammoxaiError
from .explainers import Explainer, ExplainerError
from .explainers.quality import HIGHER_IS_BETTER, SCORE_KEYS, compute_quality, summarise
from .explainers.sanity import model_randomisation_check

log = logging.getLogger(__name__)

#: First phantom seed of the evaluation set (apart from the training and validation seeds).
EVAL_SEED = 30_000_000

#: Columns of the evaluation: the quality scores, then the randomisation check (Spearman ρ of the map as displayed
#: before and after re-initialising the upper half of the network, as ``mammoxai sanity``; first batch only).
EVAL_KEYS: tuple[str, ...] = (*SCORE_KEYS, "randomisation_rho")
DIRECTION: dict[str, bool] = {**HIGHER_IS_BETTER, "randomisation_rho": False}

#: Scores that say how far a map can be trusted, used by :func:`trust_order` (sparseness is a style).
TRUST_SCORES: tuple[str, ...] = ("faithfulness", "max_sensitivity", "relevance_mass", "pointing_game",
                                 "randomisation_rho")


class EvaluateError(MammoxaiError):
    """The evaluation could not run (bad folder, no images, unknown benchmark)."""


@dataclass
class Sample:
    """One model input with its ground truth: ``tensor`` ``(1, C, h, w)``, ``mask`` ``(h, w)`` bool or ``None``."""

    source: str          # "phantoms" | "cbis-ddsm"
    image_id: str
    tensor: torch.Tensor
    mask: np.ndarray | None
    label: int | None
    finding: str


def model_mask(geometry: Any, mask: np.ndarray) -> np.ndarray | None:
    """The lesion ``mask`` (original grid) at model resolution, bool; ``None`` when it has no lesion pixel.

    Pixels at least half covered count; a lesion smaller than that (fine
    calcifications at a small input size) keeps every touched pixel.
    """
    if not np.any(mask):
        return None
    fraction = geometry.to_model(mask.astype(np.float32))
    inside = fraction >= 0.5
    if not inside.any():
        inside = fraction > 0
    return inside if inside.any() else None


def phantom_samples(classifier: Any, count: int, *, first_seed: int = EVAL_SEED,
                    shape: tuple[int, int] | None = None) -> list[Sample]:
    """``count`` phantoms (seeded choice of finding, laterality, view), preprocessed for ``classifier``.

    ``shape`` is the phantoms' stored size (default: ``generate_phantom``'s).
    """
    from .models.phantoms import generate_phantom

    samples = []
    for seed in range(first_seed, first_seed + count):
        phantom = generate_phantom(seed) if shape is None else generate_phantom(seed, shape=shape)
        tensor, geometry = classifier.preprocess(phantom.image, phantom.laterality)
        samples.append(Sample("phantoms", f"phantom-{seed}", tensor, model_mask(geometry, phantom.mask),
                              phantom.label, phantom.finding))
    return samples


def _cbis_rows(root: Path) -> list[dict[str, str]]:
    rows: list[dict[str, str]] = []
    for path in sorted(root.rglob("*.csv")):
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if reader.fieldnames and "image file path" in reader.fieldnames:
                rows.extend(reader)
    return rows


def _cbis_files(root: Path, relative: str) -> list[Path]:
    """The DICOMs a CSV path stands for in the folder as downloaded: the exact file, else every DICOM
    under the path's first element (TCIA downloads rename the inner folders and files)."""
    relative = relative.strip().strip('"')
    if not relative:
        return []
    candidate = root / relative
    if candidate.is_file():
        return [candidate]
    top = relative.split("/")[0]
    for folder in [root / top, *root.glob(f"*/{top}")]:
        if folder.is_dir():
            files = sorted(folder.rglob("*.dcm"))
            if files:
                return files
    return []


def cbis_samples(classifier: Any, root: Path, limit: int) -> list[Sample]:
    """Up to ``limit`` images of a CBIS-DDSM folder (its case-description CSVs and DICOM tree), with ROI masks.

    Each CSV row names a full mammogram (``image file path``), its ROI mask
    (``ROI mask file path``) and ``pathology``; rows of one image are merged
    (union of their masks). The ROI mask is the DICOM of the same size as the
    image (CBIS-DDSM folders sometimes hold the mask and the cropped lesion
    under swapped names).
    """
    import pydicom

    from .dicom_io import read_mammogram

    if not root.is_dir():
        raise EvaluateError(f"{root}: CBIS-DDSM folder not found")
    rows = _cbis_rows(root)
    if not rows:
        raise EvaluateError(f"{root}: no CBIS-DDSM case-description CSV (with an 'image file path' column)")
    by_image: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_image.setdefault(row["image file path"].strip(), []).append(row)
    samples: list[Sample] = []
    for image_rel, image_rows in by_image.items():
        if len(samples) >= limit:
            break
        found = _cbis_files(root, image_rel)
        if len(found) != 1:
            log.warning("CBIS-DDSM: %s: %d files under %s; skipped", image_rel, len(found), root)
            continue
        mammogram = read_mammogram(found[0])
        mask = np.zeros(mammogram.pixels.shape, dtype=bool)
        for row in image_rows:
            for candidate in _cbis_files(root, row.get("ROI mask file path", "")):
                pixels = pydicom.dcmread(candidate).pixel_array
                if pixels.shape == mask.shape:
                    mask |= pixels > 0
        malignant = any(r.get("pathology", "").upper().startswith("MALIGNANT") for r in image_rows)
        kind = "calcifications" if "calc" in image_rel.lower() else "mass"
        tensor, geometry = classifier.preprocess(mammogram.pixels, mammogram.laterality)
        samples.append(Sample("cbis-ddsm", image_rel.split("/")[0], tensor, model_mask(geometry, mask),
                              int(malignant), f"{'malignant' if malignant else 'benign'}_{kind}"))
    if not samples:
        raise EvaluateError(f"{root}: none of the images named in the CSV files was found")
    return samples


def evaluate_samples(classifier: Any, explainers: Sequence[Explainer], samples: Sequence[Sample], *,
                     target_mode: str = "predicted", batch_images: int = 4, steps: int = 20,
                     sensitivity_samples: int = 3, batch_size: int = 16,
                     sanity: bool = True) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Explain and score every sample with every explainer.

    Returns the rows (one per method and image: ``source, image_id, finding,
    label, method, target, seconds`` and the scores) and the failures (method
    -> reason; a method that fails on one batch is not run again). With
    ``sanity``, the images of the first batch also get ``randomisation_rho``
    (:func:`~mammoxai.explainers.sanity.model_randomisation_check`, one seed).
    """
    module = classifier.module
    rows: list[dict[str, Any]] = []
    failures: dict[str, str] = {}
    for start in range(0, len(samples), batch_images):
        chunk = list(samples[start:start + batch_images])
        batch = torch.cat([s.tensor for s in chunk]).to(classifier.device)
        if target_mode == "positive":
            target = torch.full((len(chunk),), classifier.positive_index, dtype=torch.long)
        else:
            target = classifier.predict_proba(batch).argmax(dim=1)
        masks = [s.mask if s.mask is not None else np.zeros(batch.shape[2:], dtype=bool) for s in chunk]
        mask_t = torch.from_numpy(np.stack(masks))
        for explainer in explainers:
            if explainer.name in failures:
                continue
            try:
                explanation = explainer.explain(module, batch, target)
                scores = compute_quality(module, batch, explanation, mask=mask_t, explainer=explainer, steps=steps,
                                         sensitivity_samples=sensitivity_samples, batch_size=batch_size)
            except Exception as exc:  # noqa: BLE001 - one method's failure never stops the others
                reason = exc.reason if isinstance(exc, ExplainerError) else f"{type(exc).__name__}: {exc}"
                log.warning("%s failed: %s", explainer.name, reason)
                failures[explainer.name] = reason
                continue
            rho: list[float] = []
            if sanity and start == 0:
                try:
                    check = model_randomisation_check(module, [explainer], batch, explanation.target, seeds=(0,))
                    rho = check[explainer.name].per_image
                except Exception as exc:  # noqa: BLE001 - the scores stand without it
                    log.warning("randomisation check of %s failed: %s", explainer.name, exc)
            for i, sample in enumerate(chunk):
                row: dict[str, Any] = {"source": sample.source, "image_id": sample.image_id,
                                       "finding": sample.finding, "label": sample.label, "method": explainer.name,
                                       "target": int(explanation.target[i]),
                                       "seconds": explanation.seconds / len(chunk)}
                row.update(scores[i].as_dict())
                if i < len(rho) and math.isfinite(rho[i]):
                    row["randomisation_rho"] = rho[i]
                rows.append(row)
        log.info("evaluated %d/%d images", min(start + batch_images, len(samples)), len(samples))
    return rows, failures


def summarise_rows(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (source, method): ``n`` images and ``KEY_mean`` / ``KEY_sd`` / ``KEY_n`` for every score and seconds."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["source"], row["method"]), []).append(row)
    out = []
    for (source, method), members in groups.items():
        entry: dict[str, Any] = {"source": source, "method": method, "n": len(members)}
        for key in (*EVAL_KEYS, "seconds"):
            mean, sd, n = summarise([m[key] for m in members if key in m])
            entry[f"{key}_mean"], entry[f"{key}_sd"], entry[f"{key}_n"] = mean, sd, n
        out.append(entry)
    return out


def trust_order(summary: Sequence[dict[str, Any]]) -> list[tuple[str, float]]:
    """Methods of one source from most to least trustworthy, with their mean rank.

    For each of :data:`TRUST_SCORES` that the methods have, methods are ranked
    (1 = best; ties share the average rank); the order is by the mean of those
    ranks. Sparseness is left out: a concentrated map is not a truer one.
    """
    methods = [s["method"] for s in summary]
    ranks: dict[str, list[float]] = {m: [] for m in methods}
    for key in TRUST_SCORES:
        values = {s["method"]: s[f"{key}_mean"] for s in summary if s.get(f"{key}_n", 0) > 0}
        if len(values) < 2:
            continue
        sign = -1.0 if DIRECTION[key] else 1.0
        ordered = sorted(values, key=lambda m: sign * values[m])
        for method in values:
            better = sum(1 for o in ordered if sign * values[o] < sign * values[method])
            same = sum(1 for o in ordered if values[o] == values[method])
            ranks[method].append(better + (same + 1) / 2)
    mean_rank = {m: (sum(r) / len(r) if r else math.inf) for m, r in ranks.items()}
    return sorted(mean_rank.items(), key=lambda item: (item[1], item[0]))


def _fmt(mean: float, sd: float, n: int, digits: int = 3) -> str:
    if n == 0 or not math.isfinite(mean):
        return "–"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def markdown_table(summary: Sequence[dict[str, Any]], failures: dict[str, str] | None = None) -> str:
    """The summary as Markdown: one table per source, then the trust order, then failures."""
    lines: list[str] = []
    for source in dict.fromkeys(s["source"] for s in summary):
        part = [s for s in summary if s["source"] == source]
        lines += [f"### {source} (n = {max(s['n'] for s in part)} images)", "",
                  "| method | " + " | ".join(EVAL_KEYS) + " | s / image |",
                  "|---|" + "---|" * (len(EVAL_KEYS) + 1)]
        for s in part:
            cells = [_fmt(s[f"{k}_mean"], s[f"{k}_sd"], s[f"{k}_n"]) for k in EVAL_KEYS]
            cells.append(_fmt(s["seconds_mean"], s["seconds_sd"], s["seconds_n"], 2))
            lines.append(f"| {s['method']} | " + " | ".join(cells) + " |")
        order = trust_order(part)
        lines += ["", "Trust order (mean rank over " + ", ".join(TRUST_SCORES) + "): "
                  + ", ".join(f"{i + 1}. {m} ({r:.1f})" for i, (m, r) in enumerate(order)), ""]
    if failures:
        lines += ["Failed methods:", ""] + [f"- {m}: {reason}" for m, reason in failures.items()] + [""]
    direction = ", ".join(f"{k} {'↑' if up else '↓'}" for k, up in DIRECTION.items())
    lines += [f"Better is: {direction}. faithfulness = insertion AUC − deletion AUC (blurred baseline); "
              "randomisation_rho = Spearman ρ of the map as displayed with the upper half of the network "
              "re-initialised (first batch only).", ""]
    return "\n".join(lines)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Write dict rows as CSV (columns: the union of keys, in first-seen order)."""
    columns: list[str] = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def plot_summary(summary: Sequence[dict[str, Any]], path: Path) -> Path:
    """Bars (mean ± sd) per method for every score and the seconds per image, one colour per source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [*EVAL_KEYS, "seconds"]
    methods = list(dict.fromkeys(s["method"] for s in summary))
    sources = list(dict.fromkeys(s["source"] for s in summary))
    cols = 4
    rows_n = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 0.35 * len(methods) * rows_n + 2.5 * rows_n),
                             squeeze=False)
    height = 0.8 / max(len(sources), 1)
    for ax, key in zip(axes.flat, keys):
        for j, source in enumerate(sources):
            by_method = {s["method"]: s for s in summary if s["source"] == source}
            means = [by_method[m][f"{key}_mean"] if m in by_method else np.nan for m in methods]
            sds = [by_method[m][f"{key}_sd"] if m in by_method else np.nan for m in methods]
            ys = np.arange(len(methods)) + j * height
            ax.barh(ys, np.nan_to_num(means), xerr=np.nan_to_num(sds), height=height, label=source, capsize=2)
        ax.set_yticks(np.arange(len(methods)) + 0.4 - height / 2)
        ax.set_yticklabels(methods, fontsize=8)
        ax.invert_yaxis()
        arrow = "" if key == "seconds" else (" ↑" if DIRECTION[key] else " ↓")
        ax.set_title(("seconds / image" if key == "seconds" else key) + arrow, fontsize=10)
    for ax in list(axes.flat)[len(keys):]:
        ax.axis("off")
    if len(sources) > 1:
        axes.flat[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
