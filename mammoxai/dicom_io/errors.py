"""Typed errors raised while reading mammograms.

Every message is one line that names the object (SOP Instance UID and/or
file) and the problem, e.g.::

    SOP Instance UID 1.2.3 (file /spool/a.dcm): pixel data is 1000 bytes, Rows x Columns x ... needs 2048
"""

from __future__ import annotations

from mammoxai.errors import MammoxaiError


class DicomReadError(MammoxaiError):
    """The object could not be read as a mammogram (I/O, structure, pixel data)."""


class NotAMammogramError(DicomReadError):
    """The object is not a mammogram (wrong Modality / SOP Class, e.g. a CT image or an SR)."""


class UnsupportedMammogramError(DicomReadError):
    """A mammogram that mammoxai does not handle (tomosynthesis, multi-frame, RGB, ...)."""


class UnsupportedTransferSyntaxError(UnsupportedMammogramError):
    """The Transfer Syntax is unknown or no pixel-data decoder for it is installed."""


def describe_source(sop_instance_uid: str | None, filename: str | None) -> str:
    """The prefix used in error messages: ``SOP Instance UID X (file Y)``."""
    parts = []
    if sop_instance_uid:
        parts.append(f"SOP Instance UID {sop_instance_uid}")
    if filename:
        parts.append(f"(file {filename})" if parts else f"file {filename}")
    return " ".join(parts) if parts else "dataset without SOP Instance UID"
