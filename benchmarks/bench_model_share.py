"""How much of one image's processing is the model's own work, stage by stage (``mammoxai explain``'s stages).

The pipeline processes a phantom with a forward hook on the classifier's module that records every
call (stage, batch size, gradients on or off); the same calls are then replayed on the bare model
with random inputs of the same shape (a forward, plus a backward to the input where gradients were
on), in the same rounds. *model work* of a stage is that replay's time; the rest of the stage is
the time around the model. The quality stage (deletion/insertion curves, max-sensitivity re-runs)
is model passes too, which is why it is reported apart from "write". Methods that run their own
copy of the model (LRP's canonised copy) are not seen by the hook: their passes count as
time around the model here (an upper bound on it).

    .venv/bin/python benchmarks/bench_model_share.py --rounds 5

Prints a Markdown table (medians over rounds) and writes it with the raw figures to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def record_calls(pipeline: Any, path: Path) -> tuple[dict[str, float], list[tuple[str, int, bool]]]:
    """Process ``path`` once; the item's stage timings and every model call as (stage, images, gradients)."""
    from benchmarks.count_model_passes import model_calls

    with model_calls(pipeline) as calls:
        (item,) = pipeline.process([path])
    if item.status != "done":
        raise SystemExit(f"{path}: {item.status}: {item.reason}")
    timings = dict(item.timings)
    timings["explain"] = sum(v for k, v in timings.items() if k.startswith("explain."))
    return timings, list(calls)


def replay(model: Any, calls: list[tuple[str, int, bool]], shape: tuple[int, ...]) -> dict[str, float]:
    """Seconds per stage of the same model calls on the bare model (random inputs)."""
    import torch

    seconds: dict[str, float] = defaultdict(float)
    for stage, images, grad in calls:
        x = torch.rand(images, *shape)
        start = time.perf_counter()
        if grad:
            x.requires_grad_(True)
            out = model(x)
            torch.autograd.grad(out[:, 0].sum(), x)
        else:
            with torch.no_grad():
                model(x)
        seconds[stage] += time.perf_counter() - start
    return dict(seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--shape", type=int, nargs=2, default=[2048, 1664])
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "model_share")
    args = parser.parse_args(argv)

    from benchmarks.bench_end_to_end import make_phantoms
    from mammoxai.config import Settings
    from mammoxai.pipeline import Pipeline

    settings = Settings()
    pipeline = Pipeline(settings)
    model = pipeline.classifier.module.eval()
    meta = pipeline.classifier.metadata
    shape = (meta.in_chans, *meta.input_size)
    with tempfile.TemporaryDirectory() as tmp:
        (path,) = make_phantoms(Path(tmp), 1, tuple(args.shape), first_seed=1001)
        record_calls(pipeline, path)                                         # warm-up
        rounds = []
        for _ in range(args.rounds):
            timings, calls = record_calls(pipeline, path)
            rounds.append({"timings": timings, "model": replay(model, calls, shape),
                           "calls": {s: sum(n for st, n, _ in calls if st == s) for s in {c[0] for c in calls}}})
    stages = ["read", "predict", "explain", "quality", "write"]
    med = {s: statistics.median(r["timings"].get(s, 0.0) for r in rounds) for s in stages}
    model = {s: statistics.median(r["model"].get(s, 0.0) for r in rounds) for s in stages}
    total = sum(med.values())
    model_total = sum(model.values())
    lines = [f"Phantom {args.shape[0]} × {args.shape[1]}, profile `{settings.explainers.profile}`, "
             f"{len(rounds)} rounds, median; model work = the stage's own model calls replayed on the bare model.", "",
             "| stage | time (s) | model work (s) | images through the model | time ÷ model work |",
             "|---|---|---|---|---|"]
    for s in stages:
        images = rounds[-1]["calls"].get(s, 0)
        ratio = f"{med[s] / model[s]:.2f}" if model[s] else "—"
        lines.append(f"| {s} | {med[s]:.3f} | {model[s]:.3f} | {images} | {ratio} |")
    lines += [f"| **total** | **{total:.3f}** | **{model_total:.3f}** | | |", "",
              f"Outside predict + explain: **{100 * (1 - (med['predict'] + med['explain']) / total):.0f} %**; "
              f"outside the model's work (predict, explain and quality's replayed passes): "
              f"**{100 * (1 - model_total / total):.0f} %**.", ""]
    text = "\n".join(lines)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(text, encoding="utf-8")
    args.out.with_suffix(".json").write_text(json.dumps(rounds, indent=2), encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
