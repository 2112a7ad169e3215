"""Explainers: one module per method family, one common interface (:class:`Explainer`)."""

from .base import (
    Explainer,
    ExplainerError,
    ExplainerNotApplicable,
    ExplainerTimeout,
    Explanation,
    MethodRecord,
    RunResult,
    available,
    check_budget,
    create,
    explainer_class,
    method_record,
    method_records,
    register,
    run_explainers,
    shared_cache,
    shared_passes,
    time_budget,
)

# Importing the family modules registers their explainers.
from . import _families  # noqa: E402,F401

__all__ = [
    "Explainer", "ExplainerError", "ExplainerNotApplicable", "ExplainerTimeout", "check_budget", "time_budget", "Explanation", "MethodRecord", "RunResult", "available", "method_record", "method_records",
    "create", "explainer_class", "register", "run_explainers", "shared_cache", "shared_passes",
]
