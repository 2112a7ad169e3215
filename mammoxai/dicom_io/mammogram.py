"""The mammogram as read: header, presentation-ready pixels on the stored grid, laterality, view, display flips."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pydicom.dataset import Dataset


@dataclass(frozen=True)
class Mammogram:
    """A mammogram read by :func:`mammoxai.dicom_io.read_mammogram`.

    ``pixels`` are float32 in [0, 1] on the *stored* grid (Rows × Columns, as in
    Pixel Data), after the Modality LUT / Rescale, the VOI LUT or window
    (first by default), the Presentation LUT Shape, and MONOCHROME1 inversion:
    higher = brighter = denser tissue. ``flip_horizontal`` / ``flip_vertical``
    say how to flip the stored grid so that it shows as a radiologist expects
    (chest wall on the conventional side); :meth:`display_pixels` applies them.
    """

    dataset: Dataset          # the header; PixelData is removed to keep memory low
    pixels: np.ndarray
    laterality: str | None    # "L" | "R" | None
    view: str | None          # "CC", "MLO", "ML", "LM", "XCCL", ... or None
    flip_horizontal: bool = False
    flip_vertical: bool = False

    @property
    def sop_instance_uid(self) -> str:
        return str(self.dataset.SOPInstanceUID)

    @property
    def sop_class_uid(self) -> str:
        return str(self.dataset.SOPClassUID)

    @property
    def study_instance_uid(self) -> str:
        return str(self.dataset.StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        return str(self.dataset.SeriesInstanceUID)

    def display_pixels(self) -> np.ndarray:
        """``pixels`` flipped for display."""
        out = self.pixels
        if self.flip_horizontal:
            out = out[:, ::-1]
        if self.flip_vertical:
            out = out[::-1, :]
        return np.ascontiguousarray(out)
