"""Fixtures for the mammogram reading tests: small phantoms, dcmtk / dciodvfy runners.

pytest runs with --import-mode=importlib, so helpers are handed out as fixtures.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from mammoxai.models.phantoms import generate_phantom

SHAPE = (128, 104)


def _phantom(laterality: str = "L", view: str = "CC", bits_stored: int = 12, seed: int = 3,
             shape: tuple[int, int] = SHAPE) -> np.ndarray:
    return generate_phantom(seed, finding="malignant_mass", laterality=laterality, view=view,
                            shape=shape, bits_stored=bits_stored).image


def _tool(*args: str) -> subprocess.CompletedProcess:
    exe = shutil.which(args[0])
    assert exe is not None, f"{args[0]} is not installed (Debian packages dcmtk / dicom3tools)"
    return subprocess.run([exe, *args[1:]], capture_output=True, text=True, timeout=60)


def _dciodvfy(path: Path) -> tuple[int, list[str]]:
    result = _tool("dciodvfy", str(path))
    lines = (result.stdout + result.stderr).splitlines()
    return result.returncode, [line for line in lines if "Error" in line]


@pytest.fixture
def phantom() -> Callable[..., np.ndarray]:
    """phantom(laterality, view, bits_stored, seed, shape) -> uint16 image (models.phantoms)."""
    return _phantom


@pytest.fixture
def tool() -> Callable[..., subprocess.CompletedProcess]:
    """tool("dcmcjpeg", "+eb", in, out) runs a real dcmtk / dicom3tools program."""
    return _tool


@pytest.fixture
def dciodvfy() -> Callable[[Path], tuple[int, list[str]]]:
    """dciodvfy(path) -> (exit status, the 'Error' lines it printed)."""
    return _dciodvfy


@pytest.fixture
def image12() -> np.ndarray:
    return _phantom("L", "CC", 12)
