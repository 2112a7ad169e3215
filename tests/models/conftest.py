"""Fixtures for the models tests: a tiny checkpoint trained in seconds, small phantoms."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

TINY_ARCH = "resnet10t"
TINY_KWARGS = {"channels": [8, 16, 32, 64], "stem_width": 8}
TINY_SIZE = (64, 48)


@pytest.fixture(scope="session", autouse=True)
def _two_threads():
    torch.set_num_threads(2)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny resnet10t trained for one epoch on 24 phantoms (weights stored as float32)."""
    from mammoxai.models.training import phantom_arrays, train_classifier, training_seeds

    train = phantom_arrays(training_seeds(24, seed=7), TINY_SIZE, shape=(128, 104))
    out = tmp_path_factory.mktemp("tiny") / "tiny.pt"
    result = train_classifier(train, None, architecture=TINY_ARCH, out=out, input_size=TINY_SIZE, epochs=1,
                              batch_size=8, model_kwargs=TINY_KWARGS, device="cpu", progress=False,
                              description="tiny test model")
    return result.checkpoint
