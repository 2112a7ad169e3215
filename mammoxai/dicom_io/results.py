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


@dataclass(frozen=True)
class ImageResult:
    """Classification and explanations of one mammogram."""

    class_names: tuple[str, ...]
    probabilities: tuple[float, ...]
    algorithm: AlgorithmInfo
    maps: tuple[MethodMap, ...] = ()
    positive_class: str = "malignant"
    failures: Mapping[str, str] = field(default_factory=dict)   # method -> error message

    @property
    def predicted_index(self) -> int:
        return int(np.argmax(self.probabilities))

    @property
    def predicted_class(self) -> str:
        return self.class_names[self.predicted_index]

    @property
    def malignancy_probability(self) -> float:
        return float(self.probabilities[self.class_names.index(self.positive_class)])
