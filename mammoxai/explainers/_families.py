"""Imports every method-family module so that its explainers register themselves."""

import importlib

_FAMILIES = ("gradients", "cam", "lrp", "perturbation", "attention", "robustness")

for _name in _FAMILIES:
    try:
        importlib.import_module(f"{__package__}.{_name}")
    except ModuleNotFoundError as exc:  # a family still being written
        if exc.name != f"{__package__}.{_name}":
            raise
