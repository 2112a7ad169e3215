"""The node's stand-in pipeline, reading with the real reader (``read_mammogram`` with the node's limits).

So a reliability test sees exactly what the worker would: an image the SCP answered Success for must be
readable by :func:`mammoxai.dicom_io.read_mammogram` within ``node.max_pixel_data_mb`` /
``node.max_inflated_mb``; otherwise its job fails with the reader's reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from node_standin import Item, StandInPipeline

from mammoxai.dicom_io import DicomReadError, NotAMammogramError, UnsupportedMammogramError, read_mammogram
from mammoxai.dicom_io.limits import DecodeLimits


class ReaderStandIn(StandInPipeline):
    """:class:`StandInPipeline` that first reads each file with the real reader and its limits."""

    def process(self, paths: list[Path]) -> list[Item]:
        limits = DecodeLimits.from_settings(self.settings.node)
        out = []
        for path in paths:
            try:
                read_mammogram(path, limits=limits)
            except (NotAMammogramError, UnsupportedMammogramError) as exc:
                out.append(Item(path, "ignored", str(exc)))
                continue
            except DicomReadError as exc:
                out.append(Item(path, "failed", str(exc)))
                continue
            out += super().process([path])
        return out


def make_pipeline(settings: Any) -> ReaderStandIn:
    """Factory for MAMMOXAI_PIPELINE_FACTORY=reader_standin:make_pipeline."""
    return ReaderStandIn(settings)
