"""The one interface every explainer implements, and the registry of explainers by name.

An explainer is a small subclass of :class:`Explainer` that overrides
:meth:`Explainer._attribute` (and, if the method does not apply to every model,
:meth:`Explainer.check_applicable`). ``explain`` does the common work: eval
mode, device/dtype placement, target selection, autocast, timing and the
:class:`Explanation` record. Explainers never import ``mammoxai.node`` or
``mammoxai.dicom_io``.
"""

from __future__ import annotations

import contextlib
import contextvars
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Mapping

import torch
from torch import nn

from ..errors import MammoxaiError


class ExplainerError(MammoxaiError, RuntimeError):
    """An explainer failed; ``method`` names it."""

    def __init__(self, method: str, reason: str) -> None:
        super().__init__(f"{method}: {reason}")
        self.method = method
        self.reason = reason


class ExplainerNotApplicable(ExplainerError):
    """The method does not apply to this model (e.g. CAM without a conv layer, attention on a CNN)."""


@dataclass
class Explanation:
    """What an explainer returns.

    ``heatmap`` is ``(N, H, W)`` float32 at model-input resolution, on the CPU,
    signed when ``signed`` (positive = evidence for ``target``).
    """

    method: str
    heatmap: torch.Tensor
    target: torch.Tensor
    parameters: dict[str, Any]
    seconds: float
    signed: bool = False
    extras: dict[str, Any] = field(default_factory=dict)


class Explainer(ABC):
    """Base class: subclasses set ``name``, ``display_name``, ``defaults`` and override ``_attribute``.

    The class is the method's one record (:class:`MethodRecord`, :func:`method_record`): ``name``
    (registry name), ``display_name``, ``code`` (suffix of its 99MAMMOXAI code ``MXAI-M-<code>``,
    at most 9 of ``A-Z0-9``), ``series_slot`` (its SC overlay series is ``series_number_base + 10 +
    slot``; unique, 0..79), ``signed`` and ``family``. Shipped methods must set all of them
    (tests/test_method_records.py); the pipeline hands them to ``dicom_io`` as plain data on each map.

    Parameters are validated at construction: an unknown key or a value of the
    wrong type raises ``ValueError`` naming the method and the allowed keys.
    Common parameters: ``seed`` (each explainer owns its generator),
    ``batch_size`` (forward-pass budget of sampled methods), ``autocast``
    (``"off" | "fp16" | "bf16"``, used on CUDA only, where the method tolerates it).
    """

    name: ClassVar[str]
    display_name: ClassVar[str]
    code: ClassVar[str] = ""
    series_slot: ClassVar[int | None] = None
    signed: ClassVar[bool] = False
    family: ClassVar[str] = "other"
    #: one forward (and at most one backward) per image, or a small fixed number (DeepLIFT's baseline): a
    #: re-run costs about one model pass. False where a map takes many passes (integration paths, noisy
    #: samples, masks, attack steps): ``explainers.sensitivity_methods = "auto"`` leaves those out on a CPU.
    single_pass: ClassVar[bool] = True
    defaults: ClassVar[Mapping[str, Any]] = {}
    common_defaults: ClassVar[Mapping[str, Any]] = {"seed": 0, "batch_size": 16, "autocast": "off"}
    tolerates_autocast: ClassVar[bool] = False

    def __init__(self, **params: Any) -> None:
        allowed = {**self.common_defaults, **self.defaults}
        unknown = sorted(set(params) - set(allowed))
        if unknown:
            raise ValueError(
                f"explainer {self.name!r}: unknown parameter(s) {', '.join(unknown)} "
                f"(allowed: {', '.join(sorted(allowed))})")
        merged = dict(allowed)
        for key, value in params.items():
            default = allowed[key]
            if default is not None and not isinstance(value, type(default)) and not (
                    isinstance(default, float) and isinstance(value, int)):
                raise ValueError(
                    f"explainer {self.name!r}: parameter {key} must be {type(default).__name__}, got {value!r}")
            merged[key] = value
        if merged["autocast"] not in ("off", "fp16", "bf16"):
            raise ValueError(f"explainer {self.name!r}: autocast must be 'off', 'fp16' or 'bf16'")
        self.params: dict[str, Any] = merged
        self._validate()

    def _validate(self) -> None:
        """Check parameter values; raise ``ValueError`` naming the method and key."""

    def check_applicable(self, model: nn.Module) -> None:
        """Raise :class:`ExplainerNotApplicable` if this method cannot explain ``model``."""

    @abstractmethod
    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the ``(N, H, W)`` map for ``batch`` (on the model's device and dtype)."""

    def generator(self, device: torch.device) -> torch.Generator:
        """A fresh generator on ``device`` seeded with this explainer's ``seed``."""
        gen = torch.Generator(device=device)
        gen.manual_seed(int(self.params["seed"]))
        return gen

    def explain(self, model: nn.Module, batch: torch.Tensor, target: int | torch.Tensor | None = None) -> Explanation:
        """Explain ``model``'s decision on ``batch`` (``N×C×H×W``) for ``target`` (default: predicted class)."""
        if batch.ndim != 4:
            raise ValueError(f"{self.name}: batch must be N×C×H×W, got shape {tuple(batch.shape)}")
        self.check_applicable(model)
        model.eval()
        reference = next(model.parameters())
        batch = batch.to(device=reference.device, dtype=reference.dtype)
        start = time.perf_counter()
        if target is None:
            with torch.no_grad():
                target_t = model(batch).argmax(dim=1)
        else:
            target_t = torch.as_tensor(target, device=batch.device, dtype=torch.long).reshape(-1)
            if target_t.numel() == 1:
                target_t = target_t.expand(batch.shape[0])
        with self._autocast(batch.device):
            heatmap = self._attribute(model, batch, target_t)
        heatmap = heatmap.detach().float()
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        seconds = time.perf_counter() - start
        if heatmap.shape != (batch.shape[0], batch.shape[2], batch.shape[3]):
            raise ExplainerError(self.name, f"produced a map of shape {tuple(heatmap.shape)}, "
                                            f"expected {(batch.shape[0], batch.shape[2], batch.shape[3])}")
        return Explanation(method=self.name, heatmap=heatmap.cpu(), target=target_t.cpu(),
                           parameters=dict(self.params), seconds=seconds, signed=self.signed,
                           extras=self._extras())

    def _extras(self) -> dict[str, Any]:
        """Method-specific results beside the heatmap (e.g. a robustness report)."""
        return {}

    def _autocast(self, device: torch.device):
        mode = self.params["autocast"]
        if mode == "off" or device.type != "cuda" or not self.tolerates_autocast:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.float16 if mode == "fp16" else torch.bfloat16)


_REGISTRY: dict[str, type[Explainer]] = {}


def register(cls: type[Explainer]) -> type[Explainer]:
    """Class decorator: make ``cls`` available by ``cls.name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"explainer name {cls.name!r} registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def available() -> list[str]:
    """Names of every registered explainer."""
    return sorted(_REGISTRY)


def explainer_class(name: str) -> type[Explainer]:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown explainer {name!r} (available: {', '.join(available())})") from None


@dataclass(frozen=True)
class MethodRecord:
    """What identifies an explanation method outside the explainer: plain data, no torch.

    ``code``: suffix of the 99MAMMOXAI code (``MXAI-M-<code>``), "" when the class sets none;
    ``series_slot``: the method's SC series offset (``None``: none); see :class:`Explainer`.
    """

    name: str
    display_name: str
    code: str
    series_slot: int | None
    signed: bool
    family: str


def method_record(name: str) -> MethodRecord:
    """The record of the explainer registered as ``name`` (``ValueError`` if unknown)."""
    cls = explainer_class(name)
    return MethodRecord(name=cls.name, display_name=cls.display_name, code=cls.code,
                        series_slot=cls.series_slot, signed=bool(cls.signed), family=cls.family)


def method_records() -> dict[str, MethodRecord]:
    """The record of every registered explainer, by name."""
    return {name: method_record(name) for name in available()}


def create(name: str, **params: Any) -> Explainer:
    """Build the explainer registered as ``name`` with ``params``."""
    return explainer_class(name)(**params)


# --- sharing passes between explainers run together -------------------------------------------

_SHARED: contextvars.ContextVar[dict[Any, Any] | None] = contextvars.ContextVar("mammoxai_shared", default=None)


@contextlib.contextmanager
def shared_passes() -> Iterator[dict[Any, Any]]:
    """Within this context, explainers may memoise expensive passes via :func:`shared_cache`.

    The Grad-CAM family uses it so that Grad-CAM, Grad-CAM++, HiResCAM, ... and
    Guided Grad-CAM run one forward/backward between them.
    """
    token = _SHARED.set({})
    try:
        yield _SHARED.get()  # type: ignore[misc]
    finally:
        _SHARED.reset(token)


def shared_cache() -> dict[Any, Any] | None:
    """The current sharing cache, or ``None`` outside :func:`shared_passes`."""
    return _SHARED.get()


# --- per-explainer time budgets ----------------------------------------------------------------

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("mammoxai_deadline", default=None)
#: the budget (s) behind ``_DEADLINE``, for the reason a cut method reports
_BUDGET_S: contextvars.ContextVar[float | None] = contextvars.ContextVar("mammoxai_budget_s", default=None)


class ExplainerTimeout(ExplainerError):
    """The explainer ran past its time budget (``explainers.time_budget_s``)."""


@contextlib.contextmanager
def time_budget(seconds: float | None) -> Iterator[None]:
    """Within this context, :func:`check_budget` raises once ``seconds`` have passed."""
    token = _DEADLINE.set(None if seconds is None else time.monotonic() + seconds)
    budget_token = _BUDGET_S.set(seconds)
    try:
        yield
    finally:
        _BUDGET_S.reset(budget_token)
        _DEADLINE.reset(token)


def check_budget(method: str) -> None:
    """Called between chunks by methods that loop (sampled, perturbation, iterative attacks)."""
    deadline = _DEADLINE.get()
    if deadline is not None and time.monotonic() > deadline:
        raise ExplainerTimeout(method, f"cut: exceeded time budget of {_BUDGET_S.get():g} s "
                                       "(explainers.time_budget_s)")


@dataclass
class RunResult:
    """Results of :func:`run_explainers`: explanations by name, and failures by name."""

    explanations: dict[str, Explanation]
    failures: dict[str, ExplainerError]


def run_explainers(model: nn.Module, batch: torch.Tensor, explainers: list[Explainer],
                   target: int | torch.Tensor | None = None, *,
                   time_budget_s: float | None = None) -> RunResult:
    """Run several explainers on one batch, sharing passes; one failure never loses the others.

    ``time_budget_s`` bounds each explainer (checked between its chunks by :func:`check_budget`).
    """
    explanations: dict[str, Explanation] = {}
    failures: dict[str, ExplainerError] = {}
    with shared_passes():
        for explainer in explainers:
            try:
                with time_budget(time_budget_s):
                    explanations[explainer.name] = explainer.explain(model, batch, target)
            except ExplainerError as exc:
                failures[explainer.name] = exc
            except Exception as exc:  # noqa: BLE001 - any failure of one method is reported, not raised
                failures[explainer.name] = ExplainerError(explainer.name, f"{type(exc).__name__}: {exc}")
    return RunResult(explanations, failures)
