"""Small public helpers of the reading side (the torch-free boundary is tested in tests/test_layering.py)."""

from __future__ import annotations


import numpy as np
from pydicom.dataset import Dataset

from mammoxai.dicom_io.errors import describe_source
from mammoxai.dicom_io.pixels import padding_mask, transfer_syntax


def test_describe_source():
    assert describe_source("1.2.3", "/a/b.dcm") == "SOP Instance UID 1.2.3 (file /a/b.dcm)"
    assert describe_source(None, "/a/b.dcm") == "file /a/b.dcm"
    assert describe_source("1.2.3", None) == "SOP Instance UID 1.2.3"
    assert describe_source(None, None) == "dataset without SOP Instance UID"


def test_padding_mask_signed_and_absent():
    ds = Dataset()
    stored = np.array([[-1, 0, 5]], dtype=np.int16)
    assert padding_mask(stored, ds) is None
    ds.PixelRepresentation, ds.BitsStored, ds.PixelPaddingValue = 1, 16, 0xFFFF   # -1 written as US
    assert padding_mask(stored, ds).tolist() == [[True, False, False]]
    ds.PixelPaddingValue = 7
    assert padding_mask(stored, ds) is None          # the value does not occur


def test_transfer_syntax_of_bare_dataset():
    ds = Dataset()
    ds.PixelData = b"\x00\x00" * 4
    assert transfer_syntax(ds, "x") == "1.2.840.10008.1.2.1"
