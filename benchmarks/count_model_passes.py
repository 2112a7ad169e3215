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
import json
from pathlib import Path


def count(path: Path) -> dict[str, int]:
    """Images through the model per ``stage/kind`` while the default pipeline processes ``path``."""
    import torch

    import mammoxai.pipeline as pipeline_module
    from mammoxai.config import Settings

    pipeline = pipeline_module.Pipeline(Settings())
    stage = ["predict"]
    counts: collections.Counter[str] = collections.Counter()

    def hook(module, inputs, output) -> None:
        counts[f"{stage[0]}/{'fwd+bwd' if torch.is_grad_enabled() else 'fwd'}"] += int(inputs[0].shape[0])

    pipeline.classifier.module.register_forward_hook(hook)
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
        (item,) = pipeline.process([path])
    finally:
        pipeline_module.Pipeline._score, pipeline_module.run_explainers = score, run
    if item.status != "done":
        raise SystemExit(f"{path}: {item.status}: {item.reason}")
    return dict(sorted(counts.items()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("file", type=Path, help="a mammogram (DICOM), e.g. a phantom written by bench_end_to_end")
    args = parser.parse_args(argv)
    print(json.dumps(count(args.file)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
