"""The typed error of the DICOM writers (SC, SR, SEG, GSPS)."""

from __future__ import annotations

from ..errors import MammoxaiError


class DicomWriteError(MammoxaiError, ValueError):
    """A result cannot be written as DICOM; the message names the SOP Instance UID / method and the problem."""
