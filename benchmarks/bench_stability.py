"""What adaptive sampling costs: sampled explainers with their configured counts vs. the node's default
stability target (``explainers.stability_target`` = 0.95) within the default time budget.

For each method and model: seconds, samples used, split-half stability, and why sampling stopped
(target / cap / time). Models: the demo CNN on a phantom, and resnet50 (random weights with live
branches) at 224 px. Writes OUT.json and OUT.md.

    .venv/bin/python benchmarks/bench_stability.py --out benchmarks/results/stability_cpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from mammoxai.models._torchvision_compat import ensure_torchvision_importable  # noqa: E402

ensure_torchvision_importable()

from mammoxai.config.settings import ExplainerSettings  # noqa: E402
from mammoxai.explainers import ExplainerTimeout, create, time_budget  # noqa: E402


def _demo() -> tuple[torch.nn.Module, torch.Tensor, str]:
    from mammoxai.models import load_classifier
    from mammoxai.models.phantoms import generate_phantom

    clf = load_classifier("demo-cnn", device="cpu")
    ph = generate_phantom(11, finding="malignant_mass", shape=(512, 416))
    x, _ = clf.preprocess(ph.image, ph.laterality)
    return clf.module, x, f"demo CNN ({clf.metadata.architecture}, {tuple(x.shape[2:])})"


def _resnet50(size: int) -> tuple[torch.nn.Module, torch.Tensor, str]:
    from benchmarks.bench_explainers import live_branches
    from mammoxai.models._torchvision_compat import import_timm
    from mammoxai.models.phantoms import generate_phantom

    torch.manual_seed(0)
    model = live_branches(import_timm().create_model("resnet50", pretrained=False, num_classes=2).eval())
    ph = generate_phantom(11, finding="malignant_mass", shape=(size, size))
    img = torch.as_tensor(ph.image, dtype=torch.float32)
    x = ((img - img.mean()) / img.std()).expand(1, 3, size, size).clone()
    return model, x, f"resnet50 (random, live branches, {size} px)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", default="smoothgrad,rise,lime,kernel_shap", help="for the demo CNN")
    p.add_argument("--resnet50-methods", default="smoothgrad")
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args(argv)
    defaults = ExplainerSettings()
    target, budget = defaults.stability_target, defaults.time_budget_s
    rows = []
    for build, methods in ((_demo, args.methods), (lambda: _resnet50(args.size), args.resnet50_methods)):
        model, x, desc = build()
        with torch.no_grad():
            label = int(model(x).argmax())
        for method in [m for m in methods.split(",") if m]:
            for stability_target in (0.0, target):
                explainer = create(method, stability_target=stability_target, batch_size=16)
                start = time.perf_counter()
                try:
                    with time_budget(budget):
                        e = explainer.explain(model, x, label)
                except ExplainerTimeout:   # the configured samples alone did not fit the budget
                    rows.append({"model": desc, "method": method, "stability_target": stability_target,
                                 "seconds": time.perf_counter() - start, "samples": None, "stability": None,
                                 "stopped": "cut (configured samples exceed the budget)"})
                    print(json.dumps(rows[-1]), flush=True)
                    continue
                seconds = time.perf_counter() - start
                row = {"model": desc, "method": method, "stability_target": stability_target, "seconds": seconds,
                       "samples": e.extras["samples_used"][0], "stability": e.extras["stability"][0],
                       "stopped": e.extras["sampling_stopped"][0]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    lines = [f"# Adaptive sampling cost (CPU, time budget {budget:.0f} s, target {target})", "",
             f"Command: `{' '.join([Path(sys.executable).name, *sys.argv])}`", "",
             "| model | method | stability_target | samples | stability | stopped by | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        stab = "–" if r["stability"] is None else f"{r['stability']:.3f}"
        lines.append(f"| {r['model']} | {r['method']} | {r['stability_target']} | {r['samples'] or '–'} | "
                     f"{stab} | {r['stopped']} | {r['seconds']:.1f} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.json").write_text(json.dumps(rows, indent=1))
    Path(f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
