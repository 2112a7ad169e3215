"""Pick the torch device: CUDA when present, else CPU; a setting overrides."""

from __future__ import annotations

import torch


def select_device(setting: str = "auto") -> torch.device:
    """Return the device for ``setting``.

    ``"auto"`` picks ``cuda`` when a GPU is visible, else ``cpu``. Any other
    value (``"cpu"``, ``"cuda"``, ``"cuda:1"``) is used as given; asking for
    CUDA on a machine without it raises ``ValueError`` naming the setting.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"model.device = {setting!r}, but no CUDA device is available (use 'auto' or 'cpu')")
    return device
