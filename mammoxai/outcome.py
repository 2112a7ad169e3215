"""What the pipeline hands the node for each file: :class:`ImageOutcome`, and the :class:`SummaryRecord`
the node keeps (as JSON in the spool) until the study-level summary no longer needs it.

Torch-free: the node imports this without loading a model. The record holds only what the study
summary SR reads: the source header (DICOM JSON, no pixel data, no private or bulk elements),
laterality, view, display flips, and the prediction (no heatmaps). A record written by another
version of mammoxai is refused (:class:`RecordError`), never half-read.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from .dicom_io.mammogram import Mammogram
from .dicom_io.results import AlgorithmInfo, DomainCheck, ImageResult
from .errors import MammoxaiError

Status = Literal["done", "ignored", "failed"]

#: format of :meth:`SummaryRecord.to_json`; a record of another format is not read
RECORD_FORMAT = 1
#: binary elements longer than this (bytes) are left out of the kept header
_MAX_BINARY = 1024
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


class RecordError(MammoxaiError):
    """A summary record cannot be read (another format, truncated, not JSON)."""


def _slim_header(ds: Dataset) -> Dataset:
    """The header without Pixel Data, private elements, overlays and long binary values."""
    out = Dataset()
    for elem in ds:
        if elem.tag.is_private or 0x6000 <= elem.tag.group <= 0x60FF or elem.tag.group == 0x7FE0:
            continue
        if elem.VR in _BINARY_VRS and elem.value is not None and len(elem.value) > _MAX_BINARY:
            continue
        out.add(elem)
    return out


@dataclass(frozen=True)
class SummaryRecord:
    """One processed mammogram as the study summary needs it: header, laterality, view, prediction."""

    header: dict[str, Any]            # DICOM JSON model (PS3.18 F.2) of the slim source header
    laterality: str | None
    view: str | None
    flip_horizontal: bool = False
    flip_vertical: bool = False
    result: ImageResult | None = None  # maps dropped; None for a pipeline without a prediction

    @classmethod
    def of(cls, mammogram: Mammogram, result: ImageResult | None) -> SummaryRecord:
        """The record of a processed mammogram (heatmaps and pixels are not kept)."""
        return cls(header=_slim_header(mammogram.dataset).to_json_dict(), laterality=mammogram.laterality,
                   view=mammogram.view, flip_horizontal=mammogram.flip_horizontal,
                   flip_vertical=mammogram.flip_vertical,
                   result=None if result is None else dataclasses.replace(result, maps=()))

    def dataset(self) -> Dataset:
        """The kept header as a pydicom Dataset."""
        return Dataset.from_json(self.header)

    def mammogram(self) -> Mammogram:
        """A :class:`Mammogram` with the kept header and no pixels (a 1 × 1 placeholder)."""
        return Mammogram(dataset=self.dataset(), pixels=np.zeros((1, 1), dtype=np.float32),
                         laterality=self.laterality, view=self.view, flip_horizontal=self.flip_horizontal,
                         flip_vertical=self.flip_vertical)

    # -- JSON ------------------------------------------------------------------------------------
    def to_json(self) -> str:
        r = self.result
        return json.dumps({
            "format": RECORD_FORMAT, "header": self.header, "laterality": self.laterality, "view": self.view,
            "flip_horizontal": self.flip_horizontal, "flip_vertical": self.flip_vertical,
            "result": None if r is None else {
                "class_names": list(r.class_names), "probabilities": list(r.probabilities),
                "algorithm": dataclasses.asdict(r.algorithm), "positive_class": r.positive_class,
                "failures": dict(r.failures),
                "domain": None if r.domain is None else dataclasses.asdict(r.domain),
                "calibrated": r.calibrated, "prediction_withheld": r.prediction_withheld,
            },
        })

    @classmethod
    def from_json(cls, text: str) -> SummaryRecord:
        """Read :meth:`to_json`'s output; :class:`RecordError` for anything else."""
        try:
            data = json.loads(text)
            if data.get("format") != RECORD_FORMAT:
                raise RecordError(f"summary record format {data.get('format')!r}, expected {RECORD_FORMAT}")
            r = data["result"]
            result = None if r is None else ImageResult(
                class_names=tuple(r["class_names"]), probabilities=tuple(float(p) for p in r["probabilities"]),
                algorithm=AlgorithmInfo(**r["algorithm"]), positive_class=r["positive_class"],
                failures=dict(r["failures"]),
                domain=None if r["domain"] is None else DomainCheck(
                    **{**r["domain"], "reasons": tuple(r["domain"].get("reasons", ()))}),
                calibrated=bool(r["calibrated"]), prediction_withheld=bool(r["prediction_withheld"]))
            return cls(header=data["header"], laterality=data["laterality"], view=data["view"],
                       flip_horizontal=bool(data["flip_horizontal"]), flip_vertical=bool(data["flip_vertical"]),
                       result=result)
        except RecordError:
            raise
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise RecordError(f"unreadable summary record: {type(exc).__name__}: {exc}") from None


@dataclass
class ImageOutcome:
    """The pipeline's answer for one input file, as the node records it.

    ``status``: "done" (``outputs`` to send, maybe none), "ignored" (not ours to process:
    ``reason`` says why) or "failed" (``reason``). ``record``: what the study summary needs,
    for a done image.
    """

    path: Path
    status: Status
    reason: str = ""
    outputs: list[pydicom.Dataset] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    record: SummaryRecord | None = None
