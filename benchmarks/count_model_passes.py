"""Images through the model per pipeline stage for one mammogram: the model work of each stage, free of load noise.

A forward hook on the classifier's module counts the images of every forward call, split by stage
(predict, explain, quality) and by whether gradients were on (forward + backward) or off (forward
only). Methods that run their own copy of the model (LRP's canonised copy) are not seen. Run it
from any code tree (``PYTHONPATH=TREE``, ``cwd`` TREE) to compare two versions without timing:

    PYTHONPATH=/tmp/mammoxai-old .venv/bin/python benchmarks/count_model_passes.py PHANTOM.dcm
    .venv/bin/python benchmarks/count_model_passes.py PHANTOM.dcm

Prints one JSON object: ``{"stage/fwd": images, "stage/fwd+bwd": images, ...}``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def model_calls(pipeline: Any) -> Iterator[list[tuple[str, int, bool]]]:
    """Every call of ``pipeline``'s model while the block runs, as ``(stage, images, gradients on)``.

    The stage is ``predict`` (reading, preprocessing, prediction, domain check), ``explain``
    (``run_explainers``), ``quality`` (``Pipeline._score``) or ``after`` (mapping back, writing).
    """
    import torch

    import mammoxai.pipeline as pipeline_module

    stage = ["predict"]
    calls: list[tuple[str, int, bool]] = []
    handle = pipeline.classifier.module.register_forward_hook(
        lambda module, inputs, output: calls.append((stage[0], int(inputs[0].shape[0]), torch.is_grad_enabled())))
    score, run = pipeline_module.Pipeline._score, pipeline_module.run_explainers

    def scored(self, *args, **kwargs):
        stage[0] = "quality"
        try:
            return score(self, *args, **kwargs)
        finally:
            stage[0] = "after"

    def explained(*args, **kwargs):
        stage[0] = "explain"
        try:
            return run(*args, **kwargs)
        finally:
            stage[0] = "predict"

    pipeline_module.Pipeline._score, pipeline_module.run_explainers = scored, explained
    try:
        yield calls
    finally:
        pipeline_module.Pipeline._score, pipeline_module.run_explainers = score, run
        handle.remove()


def count(path: Path) -> dict[str, int]:
    """Images through the model per ``stage/kind`` while the default pipeline processes ``path``."""
    import mammoxai.pipeline as pipeline_module
    from mammoxai.config import Settings

    pipeline = pipeline_module.Pipeline(Settings())
    with model_calls(pipeline) as calls:
        (item,) = pipeline.process([path])
    if item.status != "done":
        raise SystemExit(f"{path}: {item.status}: {item.reason}")
    counts: collections.Counter[str] = collections.Counter()
    for stage, images, grad in calls:
        counts[f"{stage}/{'fwd+bwd' if grad else 'fwd'}"] += images
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("file", type=Path, help="a mammogram (DICOM), e.g. a phantom written by bench_end_to_end")
    args = parser.parse_args(argv)
    print(json.dumps(count(args.file)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
