"""Plain, torch-free result objects that the DICOM writers turn into SC, SR, SEG and GSPS.

Heatmaps here are already on the *stored* pixel grid of the source image
(Rows × Columns, no display flip applied): the models layer maps them back
from model-input resolution before they reach ``dicom_io``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np


@dataclass(frozen=True)
class AlgorithmInfo:
    """The model that produced the result (SR Algorithm Identification, Contributing Equipment)."""

    name: str                     # e.g. "mammoxai demo CNN (resnet10t)"
    version: str                  # model version from the checkpoint metadata
    checkpoint_sha256: str
    architecture: str             # timm architecture name
    software_version: str         # mammoxai.__version__
    manufacturer: str = "mammoxai"
    intended_use: str = ""        # e.g. "demo - synthetic data - not for clinical use"


@dataclass(frozen=True)
class MethodMap:
    """One explainer's map for one image."""

    method: str                   # registry name, e.g. "gradcam"
    display_name: str             # e.g. "Grad-CAM"
    heatmap: np.ndarray           # float32, (Rows, Columns) of the source image, stored grid
    signed: bool
    parameters: Mapping[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    quality: Mapping[str, float] = field(default_factory=dict)   # e.g. {"faithfulness": 0.71, ...}
    # A warning the reader must see with this map, burned into its SC and recorded in the SR
    # (e.g. that the map fails the checkpoint's model-randomisation check); "" for none.
    caution: str = ""
    # Why the map says nothing (constant, near-constant, non-finite), "" when it is informative. Such a map
    # is recorded in the SR with the reason and never drawn (no SC overlay, SEG segment or hot region).
    not_informative: str = ""
    # The method's record, carried by its explainer class (mammoxai.explainers.method_record) and copied
    # here by the pipeline: 99MAMMOXAI code suffix ("GCAM" -> MXAI-M-GCAM), SC series slot, family.
    # "" / None for a method without a record (a plugin, a test double).
    code: str = ""
    series_slot: int | None = None
    family: str = ""


@dataclass(frozen=True)
class DomainCheck:
    """Whether an image lies in the domain the model was validated on (the checkpoint's domain record)."""

    score: float                  # the record's out-of-domain score; higher is further from the domain
    threshold: float              # flagged when score > threshold (chosen on held-out in-domain data)
    in_domain: bool
    score_name: str               # e.g. "Mahalanobis distance, penultimate layer"
    reasons: tuple[str, ...] = () # acquisition checks that failed, in plain words


@dataclass(frozen=True)
class ImageResult:
    """Classification and explanations of one mammogram."""

    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    algorithm: AlgorithmInfo
    maps: tuple[MethodMap, ...] = ()
    positive_class: str = "malignant"
    failures: Mapping[str, str] = field(default_factory=dict)   # method -> error message
    domain: DomainCheck | None = None     # None: the checkpoint has no domain record ("domain not checked")
    calibrated: bool = False              # probabilities calibrated with the checkpoint's record
    prediction_withheld: bool = False     # model.out_of_domain = "withhold" and the image is out of domain

    @property
    def predicted_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def predicted_class(self) -> str:
        return self.class_names[self.predicted_index]

    @property
    def malignancy_probability(self) -> float:
        return float(self.probabilities[self.class_names.index(self.positive_class)])
