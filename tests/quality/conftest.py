"""Fixtures for the quality-metric tests: small real models and small real explainers (not registered)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from mammoxai.explainers.base import Explainer
from mammoxai.models._torchvision_compat import ensure_torchvision_importable

# quantus imports zennit, which imports torchvision: declare its ops first (CPU torch trap).
ensure_torchvision_importable()

SIZE = 32


class LinearModel(nn.Module):
    """Two-class model whose class-1 logit is ``w·x``: the exact relevance of pixel p is ``w_p·x_p``."""

    def __init__(self, size: int = SIZE, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(1, 1, size, size, generator=gen) * 0.2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logit = (x * self.weight).sum(dim=(1, 2, 3))
        return torch.stack([torch.zeros_like(logit), logit], dim=1)


class InputGradient(Explainer):
    """Gradient (or gradient × input) of the target logit: a small real explainer for the tests."""

    name = "test_input_gradient"
    display_name = "Input gradient (test)"
    signed = True
    defaults = {"times_input": False}

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        x = batch.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            logits = model(x)
            grad, = torch.autograd.grad(logits.gather(1, target[:, None]).sum(), x)
        out = grad * x if self.params["times_input"] else grad
        return out.sum(dim=1).detach()


class InputIntensity(Explainer):
    """A 'map' that ignores the model (the image itself): fails the randomisation sanity check."""

    name = "test_input_intensity"
    display_name = "Input intensity (test)"

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return batch.abs().sum(dim=1)


@pytest.fixture(scope="session")
def linear_model() -> LinearModel:
    return LinearModel().eval()


@pytest.fixture(scope="session")
def timm_model() -> nn.Module:
    from mammoxai.models._torchvision_compat import import_timm

    timm = import_timm()
    torch.manual_seed(0)
    return timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=2).eval()


@pytest.fixture(scope="session")
def images() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(3, 1, SIZE, SIZE, generator=gen)  # standardised, as the models take them


@pytest.fixture(scope="session")
def masks() -> torch.Tensor:
    m = torch.zeros(3, SIZE, SIZE, dtype=torch.bool)
    m[0, 4:12, 4:12] = True
    m[1, 20:30, 10:20] = True
    m[2, 0:16, 16:32] = True
    return m


class NotForThisModel(Explainer):
    """An explainer that never applies (as attention maps on a CNN): exercises failure reporting."""

    name = "test_not_applicable"
    display_name = "Never applicable (test)"

    def check_applicable(self, model: nn.Module) -> None:
        from mammoxai.explainers.base import ExplainerNotApplicable

        raise ExplainerNotApplicable(self.name, "never applies")

    def _attribute(self, model: nn.Module, batch: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        raise AssertionError("not reached")


def _register_test_explainers() -> None:
    from mammoxai.explainers.base import _REGISTRY, register

    for cls in (InputGradient, InputIntensity, NotForThisModel):
        if _REGISTRY.get(cls.name) is not cls:
            _REGISTRY.pop(cls.name, None)
            register(cls)


_register_test_explainers()

INPUT_SIZE = (64, 48)


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory) -> "Path":
    """A small random resnet10t checkpoint (64×48 input) with its metadata sidecar."""
    from mammoxai.models.classifier import ModelMetadata, create_module, save_checkpoint

    metadata = ModelMetadata(architecture="resnet10t", input_size=INPUT_SIZE, description="quality tests")
    torch.manual_seed(0)
    module = create_module(metadata)
    return save_checkpoint(module, metadata, tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="session")
def classifier(checkpoint):
    from mammoxai.models import load_classifier

    return load_classifier(checkpoint, device="cpu")


def write_mg(path, pixels, laterality: str = "L"):
    """Write a minimal MG 'For Presentation' DICOM of ``pixels`` (uint16) as CBIS-DDSM-like test data."""
    import numpy as np
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.Modality = "MG"
    ds.PatientID = "P_TEST"
    ds.Laterality = laterality
    ds.ImageLaterality = laterality
    ds.PatientOrientation = ["A", "R"] if laterality == "L" else ["P", "L"]
    ds.ViewPosition = "CC"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = np.ascontiguousarray(pixels.astype(np.uint16)).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
