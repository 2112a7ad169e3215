"""Fixtures for the gradient / CAM / LRP explainer tests: small timm models on CPU, small inputs."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mammoxai.models._torchvision_compat import ensure_torchvision_importable, import_timm
from mammoxai.models.random_init import live_branches

ensure_torchvision_importable()  # pytorch-grad-cam and zennit import torchvision

torch.set_num_threads(2)


def pearson(a: torch.Tensor, b: torch.Tensor) -> float:
    """Pearson correlation of two maps (flattened, float64)."""
    stacked = torch.stack([torch.as_tensor(a).flatten().double(), torch.as_tensor(b).flatten().double()])
    return float(torch.corrcoef(stacked)[0, 1])


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    """Spearman rank correlation of two maps."""
    def ranks(v: torch.Tensor) -> torch.Tensor:
        v = torch.as_tensor(v).flatten().double()
        out = torch.empty_like(v)
        out[v.argsort()] = torch.arange(v.numel(), dtype=torch.float64)
        return out
    return pearson(ranks(a), ranks(b))


def timm_model(name: str, **kwargs) -> nn.Module:
    timm = import_timm()
    torch.manual_seed(0)
    return timm.create_model(name, pretrained=False, in_chans=1, num_classes=2, **kwargs).eval()


def randomize_bn(model: nn.Module, seed: int = 1) -> nn.Module:
    """Every residual branch of a random model live (:func:`mammoxai.models.random_init.live_branches`)."""
    return live_branches(model, seed)


@pytest.fixture(scope="session")
def resnet() -> nn.Module:
    """timm resnet10t, 1 channel, 2 classes, random weights, ReLUs made non-inplace (captum needs that)."""
    model = randomize_bn(timm_model("resnet10t"))
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return model


@pytest.fixture(scope="session")
def resnet_inplace() -> nn.Module:
    """timm resnet10t exactly as timm builds it (inplace ReLUs)."""
    return randomize_bn(timm_model("resnet10t"))


@pytest.fixture(scope="session")
def image() -> torch.Tensor:
    """A 1×1×64×64 structured input: a bright blob on a gradient, plus noise."""
    gen = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 64), torch.linspace(-1, 1, 64), indexing="ij")
    blob = torch.exp(-((xx - 0.3) ** 2 + (yy + 0.2) ** 2) / 0.05)
    img = 2 * blob + 0.5 * xx + 0.3 * torch.randn(64, 64, generator=gen)
    return img[None, None].float()


class SmallCNN(nn.Module):
    """A few-channel CNN (cheap for Score-CAM's one forward per channel): conv stack + GAP + linear."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(12, 12, 3, padding=1), nn.ReLU())
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(12, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.global_pool(self.features(x)).flatten(1))


@pytest.fixture(scope="session")
def small_cnn() -> nn.Module:
    return SmallCNN().eval()


def hook_count(model: nn.Module) -> int:
    """Number of hooks of any kind registered on ``model``'s modules."""
    total = 0
    for module in model.modules():
        total += len(module._forward_hooks) + len(module._forward_pre_hooks) + len(module._backward_hooks)
        total += len(getattr(module, "_backward_pre_hooks", {}))
    return total


@pytest.fixture(scope="session")
def util():
    """The helper functions above, for the test modules (importlib mode cannot import conftest)."""
    import types
    return types.SimpleNamespace(pearson=pearson, spearman=spearman, timm_model=timm_model,
                                 randomize_bn=randomize_bn, hook_count=hook_count, SmallCNN=SmallCNN)
