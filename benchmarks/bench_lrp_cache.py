"""LRP with its canonised model copy cached (one explainer reused, as the node does) against canonising anew
on every call (a fresh explainer each time, as before the cache), same model, input and run.

    .venv/bin/python benchmarks/bench_lrp_cache.py [--repeats 7] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from mammoxai.explainers import create
from mammoxai.models import load_classifier
from mammoxai.models.phantoms import generate_phantom


def best_seconds(fn, repeats: int, device: torch.device) -> float:
    """Best wall time of ``repeats`` calls after one warm-up call (synchronised on CUDA)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    clf = load_classifier("demo-cnn", device=args.device)
    phantom = generate_phantom(20_000_000, shape=(512, 416))
    x, _ = clf.preprocess(phantom.image, phantom.laterality)
    x = x.to(clf.device)
    explainer = create("lrp")
    cached = best_seconds(lambda: explainer.explain(clf.module, x, 1), args.repeats, clf.device)
    anew = best_seconds(lambda: create("lrp").explain(clf.module, x, 1), args.repeats, clf.device)
    print(json.dumps({"device": str(clf.device), "torch_threads": torch.get_num_threads(),
                      "cached_ms": round(cached * 1000, 1), "canonised_each_call_ms": round(anew * 1000, 1),
                      "speed_up": round(anew / cached, 2)}))


if __name__ == "__main__":
    main()
