"""Fixtures: small random timm models (1 channel) and small smooth images, all on the CPU."""

from __future__ import annotations

import pytest
import torch

from mammoxai.models._torchvision_compat import import_timm

timm = import_timm()


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps (flattened)."""
    ra = a.flatten().double().argsort().argsort().double()
    rb = b.flatten().double().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def pearson(a, b) -> float:
    a = torch.as_tensor(a).flatten().double()
    b = torch.as_tensor(b).flatten().double()
    return float(torch.corrcoef(torch.stack([a, b]))[0, 1])


def make_cnn(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = timm.create_model("resnet10t", pretrained=False, in_chans=1, num_classes=2).eval()
    with torch.no_grad():  # a random head gives near-constant outputs; scale it so decisions vary
        model.fc.weight.mul_(30.0)
    return model


def randomise_head(model: torch.nn.Module, seed: int = 123) -> torch.nn.Module:
    """Adebayo et al. cascading randomisation from the top: re-initialise the last two stages and the head."""
    import copy
    other = copy.deepcopy(model)
    torch.manual_seed(seed)
    with torch.no_grad():
        for module in list(other.layer3.modules()) + list(other.layer4.modules()) + [other.fc]:
            if hasattr(module, "reset_parameters") and not isinstance(module, torch.nn.BatchNorm2d):
                module.reset_parameters()
        other.fc.weight.mul_(30.0)
    return other.eval()


def smooth_image(size: int = 64, seed: int = 0, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(1, channels, 8, 8, generator=g)
    img = torch.nn.functional.interpolate(low, size=(size, size), mode="bicubic", align_corners=False)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    blob = torch.exp(-((yy - size * 0.6) ** 2 + (xx - size * 0.35) ** 2) / (2 * (size / 10) ** 2))
    return img + 2.0 * blob


@pytest.fixture(scope="session")
def cnn() -> torch.nn.Module:
    return make_cnn(0)


@pytest.fixture(scope="session")
def image() -> torch.Tensor:
    return smooth_image(64, 0)


@pytest.fixture(scope="session")
def tools():
    """The helpers above, for test modules (pytest's importlib mode does not let them import conftest)."""
    import types
    return types.SimpleNamespace(make_cnn=make_cnn, pearson=pearson, randomise_head=randomise_head,
                                 smooth_image=smooth_image, spearman=spearman)
