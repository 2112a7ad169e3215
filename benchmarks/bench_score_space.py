"""Faithfulness (insertion − deletion AUC) of LIME, Kernel SHAP and RISE maps scored in probability vs logit
space, on the demo CNN and demo ViT (4 phantoms each): the figures behind the logit default.

    .venv/bin/python benchmarks/bench_score_space.py
"""
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import numpy as np, torch
torch.set_num_threads(1)
from mammoxai.explainers import create
from mammoxai.explainers.quality import score_explanation, not_informative_reason
from mammoxai.models import load_classifier
from mammoxai.models.phantoms import generate_phantom
out = {}
for kind in ("demo-cnn", "demo-vit"):
    clf = load_classifier(kind, device="cpu")
    for seed, finding in ((11, "malignant_mass"), (12, "malignant_mass"), (21, None), (22, None)):
        ph = generate_phantom(seed, finding=finding, shape=(512, 416))
        x, _ = clf.preprocess(ph.image, ph.laterality)
        with torch.no_grad():
            logits = clf.module(x)
        t = int(logits.argmax())
        p = float(logits.softmax(1)[0, t])
        for name, params in (("lime", {"samples": 200}), ("kernel_shap", {"samples": 200}), ("rise", {"n_masks": 300})):
            for score in ("probability", "logit"):
                e = create(name, score=score, batch_size=32, **params).explain(clf.module, x, t)
                reason = not_informative_reason(e.heatmap[0])
                q = score_explanation(clf.module, x, e, steps=10, batch_size=32)[0]
                key = f"{kind} {name} {score}"
                out.setdefault(key, []).append((q["faithfulness"], bool(reason), p))
                print(kind, seed, name, score, f"p={p:.4f}", f"faith={q['faithfulness']:.3f}", reason, flush=True)
print(json.dumps({k: [float(np.mean([v[0] for v in vals])), sum(v[1] for v in vals), len(vals)] for k, vals in out.items()}, indent=1))
