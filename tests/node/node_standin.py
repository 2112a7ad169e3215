"""A tiny, real stand-in for mammoxai.pipeline.Pipeline (tests only).

It decodes each file with pydicom (so compressed transfer syntaxes are really
decoded), ignores what is not a mammogram, and returns one small Secondary
Capture per mammogram in a new series of the same study, with UIDs derived from
the source (as the real writers do), and hands the node typed outcomes
(:class:`mammoxai.outcome.ImageOutcome`). ``study_summary`` returns one more SC
referencing every image when a study has two or more records.
``STANDIN_DELAY_S`` (environment) adds compute time per image, like a model would.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage

from mammoxai.dicom_io.identity import derived_uid
from mammoxai.outcome import ImageOutcome, SummaryRecord

MG_CLASSES = {"1.2.840.10008.5.1.4.1.1.1.2", "1.2.840.10008.5.1.4.1.1.1.2.1"}


@dataclass
class Item:
    path: Path
    status: str
    reason: str = ""
    outputs: list[Dataset] = field(default_factory=list)
    mammogram: Any = None
    result: Any = None
    timings: dict[str, float] = field(default_factory=dict)


def _sc(source: Dataset, pixels: np.ndarray, series_number: int, manufacturer: str, refs: list[Dataset],
        key: str = "") -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = SecondaryCaptureImageStorage
    ds.SOPInstanceUID = derived_uid("standin", series_number, key or source.SOPInstanceUID)
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    for kw in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID", "StudyDate",
               "StudyTime", "StudyID", "AccessionNumber", "ReferringPhysicianName"):
        setattr(ds, kw, source.get(kw, ""))
    ds.SeriesInstanceUID = derived_uid("standin-series", source.StudyInstanceUID, series_number)
    ds.SeriesNumber = series_number
    ds.InstanceNumber = 1
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.Manufacturer = manufacturer
    eq = Dataset()
    eq.Manufacturer = manufacturer
    ds.ContributingEquipmentSequence = Sequence([eq])
    items = []
    for ref in refs:
        item = Dataset()
        item.ReferencedSOPClassUID = ref.SOPClassUID
        item.ReferencedSOPInstanceUID = ref.SOPInstanceUID
        items.append(item)
    ds.SourceImageSequence = Sequence(items)
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = pixels.astype(np.uint8).tobytes()
    return ds


class StandInPipeline:
    """The Pipeline interface, cheaply: one 32×32 SC per mammogram."""

    def __init__(self, settings: Any) -> None:
        self.settings = settings
        self.processed: list[str] = []
        self.delay = float(os.environ.get("STANDIN_DELAY_S", "0"))

    def process(self, paths: list[Path]) -> list[Item]:
        out = []
        for path in paths:
            t0 = time.perf_counter()
            ds = pydicom.dcmread(path)
            t1 = time.perf_counter()
            if str(ds.SOPClassUID) not in MG_CLASSES and ds.get("Modality") != "MG":
                out.append(Item(path, "ignored", "not a mammogram", timings={"read": t1 - t0}))
                continue
            try:
                arr = ds.pixel_array.astype(np.float32)
            except Exception as exc:
                out.append(Item(path, "failed", f"cannot decode: {exc}"))
                continue
            if self.delay:
                time.sleep(self.delay)   # stands for model compute time
            ys = np.linspace(0, arr.shape[0] - 1, 32).astype(int)
            xs = np.linspace(0, arr.shape[1] - 1, 32).astype(int)
            small = arr[np.ix_(ys, xs)]
            small = (255 * (small - small.min()) / max(float(np.ptp(small)), 1.0))
            t2 = time.perf_counter()
            sc = _sc(ds, small, self.settings.output.series_number_base, self.settings.output.manufacturer, [ds])
            t3 = time.perf_counter()
            self.processed.append(str(ds.SOPInstanceUID))
            del ds.PixelData
            out.append(Item(path, "done", outputs=[sc], mammogram=ds, result={"p": float(small.mean())},
                            timings={"read": t1 - t0, "predict": t2 - t1, "standin": 0.0, "write": t3 - t2}))
        return out

    def outcomes(self, paths: list[Path]) -> list[ImageOutcome]:
        return [ImageOutcome(path=i.path, status=i.status, reason=i.reason, outputs=i.outputs, timings=i.timings,
                             record=None if i.mammogram is None else SummaryRecord(
                                 header=i.mammogram.to_json_dict(), laterality=i.mammogram.get("ImageLaterality"),
                                 view=None))
                for i in self.process(paths)]

    def study_summary(self, records: list[SummaryRecord]) -> Dataset | None:
        if len(records) < 2:
            return None
        headers = sorted((r.dataset() for r in records), key=lambda d: str(d.SOPInstanceUID))
        return _sc(headers[0], np.zeros((8, 8)), self.settings.output.series_number_base + 50,
                   self.settings.output.manufacturer, headers, key=str(headers[0].StudyInstanceUID))


def make_pipeline(settings: Any) -> StandInPipeline:
    """Factory for MAMMOXAI_PIPELINE_FACTORY=node_standin:make_pipeline."""
    return StandInPipeline(settings)
