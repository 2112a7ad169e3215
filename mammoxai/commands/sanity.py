"""``mammoxai sanity``: the model-parameter-randomisation check (Adebayo et al. 2018) of each explainer.

``--write`` stores the verdicts in the checkpoint's metadata, where the node reads them
(``explainers.sanity``).
"""

from __future__ import annotations

import argparse
import math

from ..config import Settings

HELP = "model-parameter-randomisation check (Adebayo et al. 2018) per explainer"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--explainers", help="comma-separated names, or 'all' (default: settings)")
    p.add_argument("--phantoms", type=int, default=4)
    p.add_argument("--seeds", type=int, default=2, help="randomisation seeds per phantom")
    p.add_argument("--randomise", help="comma-separated module names (default: the upper half of the network)")
    p.add_argument("--write", action="store_true", help="store the verdicts in the checkpoint's metadata")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Print a verdict table; exit 1 when every method errored."""
    import torch

    from ..evaluate import EVAL_SEED, EvaluateError, phantom_samples
    from ..explainers import available
    from ..explainers.sanity import (finite_or_null, merge_measurement, model_randomisation_check, sanity_record,
                                     top_modules)
    from ..models.classifier import sidecar_path
    from .evaluate import load_for_measuring

    if args.phantoms < 1:
        raise EvaluateError(f"--phantoms must be >= 1, got {args.phantoms}")
    if args.seeds < 1:
        raise EvaluateError(f"--seeds must be >= 1, got {args.seeds}")
    names = ",".join(available()) if args.explainers == "all" else args.explainers
    classifier, explainers, settings = load_for_measuring(settings, names)
    samples = phantom_samples(classifier, args.phantoms)
    batch = torch.cat([s.tensor for s in samples]).to(classifier.device)
    if settings.explainers.target == "positive":
        target = torch.full((batch.shape[0],), classifier.positive_index, dtype=torch.long)
    else:
        target = classifier.predict_proba(batch).argmax(dim=1)
    modules = ([m.strip() for m in args.randomise.split(",") if m.strip()] if args.randomise
               else top_modules(classifier.module))
    seeds = list(range(args.seeds))
    try:
        results = model_randomisation_check(classifier.module, explainers, batch, target, modules=modules,
                                            seeds=seeds)
    except KeyError as exc:
        raise EvaluateError(f"--randomise: {exc.args[0]}") from None
    print(f"Randomised: {', '.join(modules)}; {len(samples)} phantoms x {len(seeds)} seeds\n")
    print("| method | map | Spearman ρ as displayed | range over images | ρ of abs(map) | verdict |\n"
          "|---|---|---|---|---|---|")
    for name, result in results.items():
        if result.error:
            print(f"| {name} | – | – | – | – | error: {result.error} |")
            continue
        finite = [v for v in result.per_image if math.isfinite(v)] or [math.nan]
        lo, hi = min(finite), max(finite)
        verdict = "passes (depends on the model)" if result.passed else "FAILS (map survives randomisation)"
        print(f"| {name} | {'signed' if result.signed else 'unsigned'} | {result.spearman:.3f} | "
              f"{lo:.2f} – {hi:.2f} | {result.spearman_abs:.3f} | {verdict} |")
    print("\nAdebayo et al. 2018, Quantus MPRT seeding: pass when the mean ρ of the map as displayed < 0.5.")
    if args.write:
        record = sanity_record(results, explainers, modules=modules, seeds=seeds,
                               images=f"{len(samples)} phantom{'s' if len(samples) != 1 else ''}, "
                                      f"seeds {EVAL_SEED}..{EVAL_SEED + len(samples) - 1}")
        meta = classifier.metadata
        if meta.sanity and (meta.sanity.get("randomised") != modules
                            or meta.sanity.get("threshold") != record["threshold"]):
            meta.sanity = {}   # another protocol: earlier verdicts are not comparable, start afresh
        methods = dict(meta.sanity.get("methods", {}))
        for name, entry in record["methods"].items():
            methods[name] = merge_measurement(methods.get(name), entry)
        meta.sanity = finite_or_null({**record, "methods": methods})
        path = sidecar_path(classifier.checkpoint_path)
        path.write_text(meta.to_json(), encoding="utf-8")
        print(f"verdicts of {len(results)} methods written to {path}")
    errors = sum(1 for r in results.values() if r.error)
    return 1 if explainers and errors == len(explainers) else 0
