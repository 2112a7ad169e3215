"""``mammoxai explain FILE...``: classify and explain DICOM or PNG files offline.

Per file: one overlay PNG per method, a montage, a JSON report and, with
``--dicom``, the DICOM results (SC/SR/SEG/GSPS) the node would send.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..config import Settings
from ..errors import MammoxaiError

if TYPE_CHECKING:
    from ..dicom_io import Mammogram
    from ..dicom_io.results import ImageResult
    from ..pipeline import ProcessedImage

HELP = "classify and explain DICOM or PNG files offline"
#: zlib level of the overlay PNGs (lossless at any level): on a 2048-pixel page Pillow's default (6) took 4x as long
#: as level 1, whose files are about 15 % larger
PNG_COMPRESS_LEVEL = 1


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, metavar="FILE")
    p.add_argument("--explainers", help="comma-separated explainer names (default: the settings' profile)")
    p.add_argument("--out", type=Path, default=Path("mammoxai-explain"), help="output folder")
    p.add_argument("--dicom", action="store_true", help="also write the DICOM results (SC/SR/SEG/GSPS) for DICOM input")
    p.add_argument("--checkpoint", type=Path, help="override model.checkpoint")
    p.add_argument("--device", help="override model.device")


def png_mammogram(path: Path, image: np.ndarray) -> Mammogram:
    """A PNG as a Mammogram (no DICOM header) so the SC renderer can draw it."""
    import pydicom

    from ..dicom_io import Mammogram
    from ..dicom_io.identity import stand_in_uid

    pixels = image.astype(np.float32)
    top = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else max(float(pixels.max()), 1e-6)
    ds = pydicom.Dataset()
    ds.SOPInstanceUID = stand_in_uid(str(path))  # a PNG has none; used only in error messages
    return Mammogram(dataset=ds, pixels=np.clip(pixels / top, 0.0, 1.0), laterality=None, view=None)


def write_pngs(item: ProcessedImage, out: Path, stem: str, settings: Settings) -> dict[str, str]:
    """One overlay PNG per map and a montage when there are several; method (or "montage") -> file name."""
    from PIL import Image

    from ..dicom_io.render import render_montage, render_overlay

    written: dict[str, str] = {}
    for method_map in item.result.maps:
        page = render_overlay(item.mammogram, method_map, item.result, colormap=settings.output.colormap,
                              max_size=settings.output.sc_max_size)
        target = out / f"{stem}.{method_map.method}.png"
        Image.fromarray(page).save(target, compress_level=PNG_COMPRESS_LEVEL)
        written[method_map.method] = target.name
    if len(item.result.maps) > 1:
        target = out / f"{stem}.montage.png"
        montage = render_montage(item.mammogram, item.result, colormap=settings.output.colormap,
                                 max_size=settings.output.sc_max_size)
        Image.fromarray(montage).save(target, compress_level=PNG_COMPRESS_LEVEL)
        written["montage"] = target.name
    return written


def domain_report(result: ImageResult) -> dict[str, Any]:
    """The image against the checkpoint's domain record, as in the SR: ``checked`` False = domain not checked;
    else score, threshold, verdict, failed acquisition checks and the caution the SC shows."""
    from ..dicom_io.render import OUT_OF_DOMAIN

    domain = result.domain
    if domain is None:
        return {"checked": False, "caution": "domain not checked"}
    return {"checked": True, "in_domain": domain.in_domain, "score": domain.score, "threshold": domain.threshold,
            "score_name": domain.score_name, "reasons": list(domain.reasons),
            "caution": "" if domain.in_domain else OUT_OF_DOMAIN.lower()}


def report(item: ProcessedImage, pngs: dict[str, str], dicom_files: list[str]) -> dict[str, Any]:
    """The JSON report of one file: prediction, model, one entry per map, failures, timings, files written."""
    result = item.result
    return {
        "file": str(item.path),
        "status": item.status,
        "reason": item.reason,
        "prediction": None if result is None or result.prediction_withheld else {
            "class": result.predicted_class,
            "probabilities": dict(zip(result.class_names, result.probabilities)),
            "malignancy_probability": result.malignancy_probability,
            "calibrated": result.calibrated,
        },
        "prediction_withheld": result is not None and result.prediction_withheld,
        "domain": None if result is None else domain_report(result),
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


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Prediction, one overlay PNG per method, a JSON report per file; exit 1 when any file failed."""
    from ..models import load_png
    from ..pipeline import Pipeline

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
            item.mammogram = png_mammogram(path, image)
        else:
            item = pipeline.process([path])[0]
        pngs: dict[str, str] = {}
        dicom_files: list[str] = []
        if item.result is not None and item.mammogram is not None:
            pngs = write_pngs(item, args.out, stem, settings)
        if args.dicom and item.outputs:
            folder = args.out / f"{stem}.dicom"
            folder.mkdir(exist_ok=True)
            for ds in item.outputs:
                target = folder / f"{ds.Modality}.{ds.SOPInstanceUID}.dcm"
                ds.save_as(target, enforce_file_format=True)
                dicom_files.append(str(target.relative_to(args.out)))
        (args.out / f"{stem}.json").write_text(json.dumps(report(item, pngs, dicom_files), indent=2, default=str))
        if item.status == "done":
            r = item.result
            shown = ("prediction withheld" if r.prediction_withheld else
                     f"{r.predicted_class} (P(malignant) = {r.malignancy_probability:.3f})")
            out = r.domain is not None and not r.domain.in_domain
            print(f"{path}: {shown}{'; outside the model domain' if out else ''}; "
                  f"{len(r.maps)} map(s) -> {args.out}/{stem}.*" +
                  (f"; failed: {', '.join(r.failures)}" if r.failures else ""))
        else:
            failed += 1
            print(f"{path}: {item.status}: {item.reason}")
    return 1 if failed else 0
