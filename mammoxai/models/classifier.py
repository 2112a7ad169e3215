"""Load a timm classifier from a checkpoint (state_dict ``.pt`` + JSON sidecar) and run it.

Checkpoint layout: ``NAME.pt`` holds a plain ``state_dict`` (float tensors may be
stored as float16; they are loaded back as float32) and ``NAME.json`` beside it
holds :class:`ModelMetadata`. Loading never touches the network: the module is
built with ``timm.create_model(architecture, pretrained=False, ...)`` and the
weights come from the file.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..errors import MammoxaiError
from .device import select_device
from .preprocess import Geometry, preprocess

log = logging.getLogger(__name__)

DEMO_DIR = Path(__file__).resolve().parent / "demo"
DEMO_KINDS: dict[str, str] = {"cnn": "demo_cnn.pt", "vit": "demo_vit.pt"}
DEMO_INTENDED_USE = "demo - synthetic data - not for clinical use"
METADATA_FORMAT = 1


class ModelLoadError(MammoxaiError, RuntimeError):
    """A checkpoint cannot be loaded; the one-line message names the file and what is wrong."""


@dataclass
class ModelMetadata:
    """What a checkpoint's JSON sidecar holds (all keys below; unknown keys are rejected).

    ``architecture``: timm model name; ``model_kwargs``: extra keyword arguments
    for ``timm.create_model`` (e.g. ``img_size`` for a ViT); ``input_size``:
    model input (rows, columns); ``in_chans``: 1 or 3; ``mean`` / ``std``: per
    channel (or one value) applied after intensity normalisation to [0, ~1];
    ``class_names`` in output order and ``positive_class`` (the "malignant"
    score); ``version``, ``description``, ``intended_use``, ``trained_on``;
    ``training``: free-form record (seed, epochs, validation AUC, seconds...);
    ``weights_dtype``: how the .pt stores float tensors; ``explainer_params``:
    per-method defaults the model's author recommends (e.g. ``{"gradcam":
    {"target_layer": "layer3"}}`` where the last stage's grid is too coarse for
    small lesions); the settings' ``[explainers.params.NAME]`` override them.
    ``sanity``: the model-parameter-randomisation check of each explainer on
    this checkpoint, as written by ``mammoxai sanity --write``
    (:func:`mammoxai.explainers.sanity.sanity_record`); the node uses it to keep
    maps that do not depend on the model away from the reader.
    ``domain``: the images the checkpoint was validated on, as written by
    ``mammoxai domain --write`` (:class:`mammoxai.models.domain.DomainRecord`):
    the out-of-domain score's parameters and threshold, the acquisition checks
    and the calibration temperature; empty = domain not checked, probabilities
    not calibrated.
    """

    architecture: str
    input_size: tuple[int, int]
    in_chans: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    class_names: tuple[str, ...] = ("benign", "malignant")
    positive_class: str = "malignant"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    version: str = "0.0.0"
    description: str = ""
    intended_use: str = ""
    trained_on: str = ""
    training: dict[str, Any] = field(default_factory=dict)
    weights_dtype: str = "float32"
    explainer_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    sanity: dict[str, Any] = field(default_factory=dict)
    domain: dict[str, Any] = field(default_factory=dict)
    format: int = METADATA_FORMAT

    def __post_init__(self) -> None:
        self.input_size = tuple(int(v) for v in self.input_size)  # type: ignore[assignment]
        self.mean = tuple(float(v) for v in self.mean)
        self.std = tuple(float(v) for v in self.std)
        self.class_names = tuple(str(v) for v in self.class_names)
        self.in_chans = int(self.in_chans)
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ValueError("architecture must be a non-empty timm model name")
        if len(self.input_size) != 2 or min(self.input_size) < 16:
            raise ValueError(f"input_size {list(self.input_size)} must be [rows, columns], each >= 16")
        if self.in_chans not in (1, 3):
            raise ValueError(f"in_chans {self.in_chans} must be 1 or 3")
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, self.in_chans):
                raise ValueError(f"{name} has {len(values)} values; need 1 or in_chans={self.in_chans}")
        if min(self.std) <= 0:
            raise ValueError(f"std {list(self.std)} must be > 0")
        if len(self.class_names) < 2 or len(set(self.class_names)) != len(self.class_names):
            raise ValueError(f"class_names {list(self.class_names)} must be at least 2 distinct names")
        if self.positive_class not in self.class_names:
            raise ValueError(f"positive_class {self.positive_class!r} is not one of class_names {list(self.class_names)}")
        if not isinstance(self.model_kwargs, dict) or not isinstance(self.training, dict):
            raise ValueError("model_kwargs and training must be JSON objects")
        if not isinstance(self.explainer_params, dict) or not all(
                isinstance(v, dict) for v in self.explainer_params.values()):
            raise ValueError("explainer_params must map method names to JSON objects of parameters")
        if not isinstance(self.sanity, dict) or not isinstance(self.sanity.get("methods", {}), dict):
            raise ValueError("sanity must be a JSON object with a 'methods' object (see mammoxai sanity --write)")
        if self.domain:
            from .domain import DomainRecord

            DomainRecord.from_dict(self.domain)   # ValueError names what is wrong
        if self.weights_dtype not in ("float32", "float16"):
            raise ValueError(f"weights_dtype {self.weights_dtype!r} must be 'float32' or 'float16'")

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def positive_index(self) -> int:
        """Index of ``positive_class`` in the model's output."""
        return self.class_names.index(self.positive_class)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("input_size", "mean", "std", "class_names"):
            out[key] = list(out[key])
        return out

    def to_json(self) -> str:
        """The sidecar text (indented JSON)."""
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ModelMetadata":
        """Build from a mapping; ``ValueError`` names unknown or missing keys and bad values."""
        if not isinstance(data, Mapping):
            raise ValueError("metadata must be a JSON object")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown key(s) {', '.join(unknown)}")
        missing = [k for k in ("architecture", "input_size") if k not in data]
        if missing:
            raise ValueError(f"missing key(s) {', '.join(missing)}")
        if data.get("format", METADATA_FORMAT) != METADATA_FORMAT:
            raise ValueError(f"format {data.get('format')!r} is not supported (expected {METADATA_FORMAT})")
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise ValueError(str(exc)) from None

    @classmethod
    def from_json(cls, text: str) -> "ModelMetadata":
        """Parse sidecar text; ``ValueError`` for invalid JSON or content."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        return cls.from_dict(data)


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass
class Classifier:
    """A loaded model: ``module`` (eval mode, on ``device``), its ``metadata`` and provenance."""

    module: nn.Module
    metadata: ModelMetadata
    device: torch.device
    checkpoint_path: Path
    checkpoint_sha256: str

    @property
    def architecture(self) -> str:
        return self.metadata.architecture

    @property
    def positive_index(self) -> int:
        return self.metadata.positive_index

    def preprocess(self, image: np.ndarray, laterality: str | None = None) -> tuple[torch.Tensor, Geometry]:
        """Model input ``(1, C, h, w)`` float32 on the CPU and the :class:`Geometry` (see ``preprocess``)."""
        return preprocess(image, laterality, self.metadata)

    def predict_proba(self, batch: torch.Tensor) -> torch.Tensor:
        """Softmax probabilities ``(N, K)`` on the CPU for a ``(N, C, h, w)`` batch; no gradients."""
        if not isinstance(batch, torch.Tensor) or batch.ndim != 4:
            raise ValueError(f"predict_proba: need a (N, C, H, W) tensor, got {getattr(batch, 'shape', type(batch))}")
        expected = (self.metadata.in_chans, *self.metadata.input_size)
        if tuple(batch.shape[1:]) != expected:
            raise ValueError(f"predict_proba: batch shape {tuple(batch.shape)} does not fit the model's (N, {expected})")
        with torch.no_grad():
            logits = self.module(batch.to(self.device, torch.float32))
        return torch.softmax(logits.float(), dim=-1).cpu()

    def predict_image(self, image: np.ndarray, laterality: str | None = None) -> float:
        """Probability of ``positive_class`` for one mammogram array."""
        x, _ = self.preprocess(image, laterality)
        return float(self.predict_proba(x)[0, self.positive_index])

    def algorithm_info(self):
        """:class:`mammoxai.dicom_io.results.AlgorithmInfo` describing this model (for SR/SC provenance)."""
        from .. import __version__
        from ..dicom_io.results import AlgorithmInfo

        meta = self.metadata
        name = meta.description or f"mammoxai classifier ({meta.architecture})"
        return AlgorithmInfo(name=name, version=meta.version, checkpoint_sha256=self.checkpoint_sha256,
                             architecture=meta.architecture, software_version=__version__,
                             intended_use=meta.intended_use)


def demo_checkpoint(kind: str = "cnn") -> Path:
    """Path of a bundled demo checkpoint: ``"cnn"`` (the default model) or ``"vit"`` (for attention maps)."""
    try:
        return DEMO_DIR / DEMO_KINDS[kind]
    except KeyError:
        raise ValueError(f"demo model kind {kind!r} is not one of {', '.join(DEMO_KINDS)}") from None


def sidecar_path(checkpoint: str | Path) -> Path:
    """The metadata file that goes with ``checkpoint`` (same stem, ``.json``)."""
    return Path(checkpoint).with_suffix(".json")


def create_module(metadata: ModelMetadata) -> nn.Module:
    """``timm.create_model`` for the metadata, without pretrained weights (never the network)."""
    from ._torchvision_compat import import_timm

    timm = import_timm()
    kwargs = dict(metadata.model_kwargs)
    for key in ("pretrained", "num_classes", "in_chans", "pretrained_cfg_overlay", "checkpoint_path"):
        kwargs.pop(key, None)
    return timm.create_model(metadata.architecture, pretrained=False, num_classes=metadata.num_classes,
                             in_chans=metadata.in_chans, **kwargs)


def save_checkpoint(module: nn.Module, metadata: ModelMetadata, path: str | Path, *, half: bool = False) -> Path:
    """Write ``module``'s state_dict to ``path`` (``.pt``) and ``metadata`` to the ``.json`` beside it.

    ``half`` stores float tensors as float16 (about half the size) and records
    ``weights_dtype = "float16"``. Returns the ``.pt`` path.
    """
    path = Path(path)
    if path.suffix != ".pt":
        raise ValueError(f"{path}: a checkpoint path must end with .pt")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {}
    for key, value in module.state_dict().items():
        value = value.detach().cpu()
        if half and value.is_floating_point():
            value = value.half()
        state[key] = value.contiguous()
    metadata.weights_dtype = "float16" if half else "float32"
    torch.save(state, path)
    sidecar_path(path).write_text(metadata.to_json(), encoding="utf-8")
    return path


def _read_metadata(path: Path) -> ModelMetadata:
    sidecar = sidecar_path(path)
    if not sidecar.is_file():
        raise ModelLoadError(f"{sidecar}: metadata sidecar not found (it must sit beside {path.name})")
    try:
        return ModelMetadata.from_json(sidecar.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ModelLoadError(f"{sidecar}: invalid model metadata: {exc}") from None


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a corrupt/non-torch file
        raise ModelLoadError(f"{path}: not a readable torch state_dict file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0] if str(exc) else ''})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelLoadError(f"{path}: does not hold a state_dict (a mapping of parameter names to tensors)")
    return {k: (v.float() if v.is_floating_point() else v) for k, v in state.items()}


def _check_fit(path: Path, architecture: str, module: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or unexpected or mismatched:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys, e.g. {missing[0]}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys, e.g. {unexpected[0]}")
        if mismatched:
            parts.append(f"{len(mismatched)} shape mismatches, e.g. {mismatched[0]}")
        raise ModelLoadError(f"checkpoint {path} does not match architecture {architecture}: {'; '.join(parts)}")


def resolve_checkpoint(checkpoint: str | Path | None) -> Path:
    """``None`` / ``"demo-cnn"`` -> the demo CNN, ``"demo-vit"`` -> the demo ViT, else the path itself."""
    if checkpoint is None or str(checkpoint) == "demo-cnn":
        return demo_checkpoint("cnn")
    if str(checkpoint) == "demo-vit":
        return demo_checkpoint("vit")
    return Path(checkpoint).expanduser()


def load_classifier(checkpoint: str | Path | None = None, *, device: str = "auto",
                    architecture: str | None = None) -> Classifier:
    """Load a checkpoint (default: the bundled demo CNN; also ``"demo-cnn"`` / ``"demo-vit"``).

    ``architecture`` (e.g. the ``model.architecture`` setting), when given, must
    equal the checkpoint's. ``device``: ``"auto"`` | ``"cpu"`` | ``"cuda[:N]"``.
    Raises :class:`ModelLoadError` (one line, naming the file) for a missing
    checkpoint or sidecar, invalid metadata, an unknown architecture, an
    architecture mismatch, weights that do not fit, or an unavailable device.
    """
    path = resolve_checkpoint(checkpoint)
    if not path.is_file():
        raise ModelLoadError(f"{path}: checkpoint file not found")
    metadata = _read_metadata(path)
    if architecture is not None and architecture != metadata.architecture:
        raise ModelLoadError(f"{path}: architecture {architecture!r} was asked for, but the checkpoint is "
                             f"{metadata.architecture!r} (per {sidecar_path(path).name})")
    from ._torchvision_compat import import_timm

    if not import_timm().is_model(metadata.architecture):
        raise ModelLoadError(f"{sidecar_path(path)}: unknown timm architecture {metadata.architecture!r}")
    try:
        torch_device = select_device(device)
    except (ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"{path}: {exc}") from None
    try:
        module = create_module(metadata)
    except Exception as exc:  # timm raises TypeError/ValueError/AssertionError for bad kwargs
        raise ModelLoadError(f"{sidecar_path(path)}: cannot build {metadata.architecture} with model_kwargs "
                             f"{metadata.model_kwargs}: {type(exc).__name__}: {exc}") from None
    state = _read_state(path)
    _check_fit(path, metadata.architecture, module, state)
    module.load_state_dict(state)
    # channels-last weights: oneDNN's (and cuDNN's) fast convolution layout; inputs stay as they are. On this
    # 2-core CPU the demo CNN's batch-16 forward took 0.73x the time (BENCHMARKS.md, issue 14)
    module.eval().to(torch_device, memory_format=torch.channels_last)
    for p in module.parameters():
        p.requires_grad_(True)
    log.info("loaded %s (%s) from %s on %s", metadata.architecture, metadata.version, path, torch_device)
    return Classifier(module=module, metadata=metadata, device=torch_device, checkpoint_path=path,
                      checkpoint_sha256=file_sha256(path))
