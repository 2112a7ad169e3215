"""Storage the PACS can afford (issue 12): with default settings, the results of one source image take at
most the source's own bytes. BENCHMARKS.md ("Storage") has the figures for real pipeline runs."""

from __future__ import annotations

import io

import pydicom

from mammoxai.config.settings import OutputSettings
from mammoxai.dicom_io.writers import write_results


def _bytes(ds: pydicom.Dataset) -> int:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return len(buffer.getvalue())


def test_default_results_fit_in_the_source_size(dw):
    source = dw.phantom_dataset(rows=1280, cols=640)              # 16-bit, uncompressed: about 1.6 MB
    mg = dw.mammogram_from_dataset(source, laterality="L", view="CC")
    result = dw.make_result(mg.pixels.shape)                      # five methods, every object on
    outputs = write_results(mg, result, OutputSettings())
    assert {str(ds.Modality) for ds in outputs} == {"OT", "SR", "SEG", "PR"}
    total, budget = sum(_bytes(ds) for ds in outputs), _bytes(source)
    assert total <= budget, f"{total} bytes of results for a {budget}-byte source"
    # what the budget rests on: lossy SC pages, compressed SEGs
    lossless = write_results(mg, result, OutputSettings(sc_compression="none", segmentation=False,
                                                        structured_report=False, gsps=False))
    assert sum(_bytes(ds) for ds in lossless) > budget            # uncompressed RGB pages alone would not fit
