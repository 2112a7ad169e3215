"""Explainers: one module per method family, one common interface (:class:`Explainer`)."""

from .base import (
    Explainer,
    ExplainerError,
    ExplainerNotApplicable,
    ExplainerTimeout,
    Explanation,
    RunResult,
    available,
    check_budget,
    create,
    explainer_class,
    register,
    run_explainers,
    shared_cache,
    shared_passes,
    time_budget,
)

# Importing the family modules registers their explainers.
from . import _families  # noqa: E402,F401

__all__ = [
    "Explainer", "ExplainerError", "ExplainerNotApplicable", "ExplainerTimeout", "check_budget", "time_budget", "Explanation", "RunResult", "available",
    "create", "explainer_class", "register", "run_explainers", "shared_cache", "shared_passes",
]
