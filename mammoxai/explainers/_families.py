"""Imports every method-family module so that its explainers register themselves."""

from . import attention, cam, gradients, lrp, perturbation, robustness  # noqa: F401
