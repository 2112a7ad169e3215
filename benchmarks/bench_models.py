#!/usr/bin/env python
"""What a node does per image and per hour with a realistic model: the pipeline's profiles, per stage.

Public mammography classifiers are ImageNet-sized CNNs at about 1 megapixel (e.g. EfficientNet-B2..B3
at 1024 × 512 or larger, 3 channels). This script builds such a checkpoint on the fly, reproducibly and
without the network (``timm.create_model(ARCH, pretrained=False)`` after ``torch.manual_seed(SEED)``;
saved by :func:`mammoxai.models.classifier.save_checkpoint` as ``.pt`` + JSON sidecar, the layout the
node loads), and times the real :class:`mammoxai.pipeline.Pipeline` on MG phantoms (DICOM, 2048 × 1664,
12-bit) for each model × profile × autocast, beside the bundled demo CNN:

* stages from the pipeline's own per-image timings: ``read`` (decode), ``predict`` (preprocess +
  classify + domain check), ``explain.X`` per explainer, ``quality`` (deletion/insertion AUCs and
  max-sensitivity of every map), ``write`` (SC/SR/SEG/GSPS), ``other`` (wall time of
  :meth:`Pipeline.process` minus those);
* ``s / image`` = median wall time of :meth:`Pipeline.process` over the counted phantoms, and
  ``images / hour`` = 3600 / that (one worker, one image at a time; the node's receive and send,
  see ``bench_end_to_end.py``, are not included).

The weights are random: the maps mean nothing, the costs are the real ones. Without a domain record
and a sanity record every method of the profile runs (the demo CNN's sanity record leaves out the
methods that fail it, as the node does).

``--scale F`` (0 < F < 1) runs the sample-driven parameters at F times the profile's values (IG steps,
SmoothGrad / LIME / Kernel SHAP samples, RISE masks; occlusion patch and stride × 1/√F, so about F
times the windows) and fixes ``stability_target = 0`` so the counts are exactly those; the table then
shows the measured figures *and* a linear projection to the profile's own counts (explain.X × the
pass ratio; quality + the max-sensitivity re-runs of those methods). Use it for a CPU, where the full
profile with a 1024 × 512 EfficientNet-B2 takes hours per image.

    .venv/bin/python benchmarks/bench_models.py --device cpu --out benchmarks/results/models      # CPU default
    .venv/bin/python benchmarks/bench_models.py --device cuda --autocast off bf16 --n 3 --out DIR  # GPU node

Writes ``OUT/models_<device>[_TAG].json`` (every image's stage timings, the settings, the machine) and
``OUT/models_<device>[_TAG].md``, and prints the Markdown.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: The "realistic" model: EfficientNet-B2 at 1024 × 512 (rows × columns), RGB input.
REALISTIC = {"architecture": "efficientnet_b2", "input_size": (1024, 512), "in_chans": 3}
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
#: parameters that set how many model passes a method makes (scaled by ``--scale``)
COUNT_KEYS = ("steps", "samples", "n_masks")


# -- the checkpoint -----------------------------------------------------------------------------------
def build_checkpoint(folder: Path, architecture: str, input_size: tuple[int, int], in_chans: int,
                     seed: int) -> Path:
    """A random-weight ``architecture`` checkpoint (``.pt`` + ``.json``) in ``folder``; same seed, same bytes.

    No network: ``pretrained=False``. Mean/std are ImageNet's (what a fine-tuned public model uses).
    """
    import torch

    from mammoxai.models._torchvision_compat import import_timm
    from mammoxai.models.classifier import ModelMetadata, save_checkpoint

    timm = import_timm()
    torch.manual_seed(seed)
    module = timm.create_model(architecture, pretrained=False, num_classes=2, in_chans=in_chans)
    rgb = in_chans == 3
    metadata = ModelMetadata(
        architecture=architecture, input_size=input_size, in_chans=in_chans,
        mean=IMAGENET_MEAN if rgb else (0.5,), std=IMAGENET_STD if rgb else (0.25,),
        description=f"{architecture} {input_size[0]}x{input_size[1]}, {in_chans} channel(s), random weights "
                    f"(seed {seed}) - for sizing only, not a classifier",
        intended_use="benchmark only - random weights - not for clinical use",
        trained_on="nothing (random initialisation)",
        training={"seed": seed, "script": "benchmarks/bench_models.py", "torch": torch.__version__},
    )
    name = f"{architecture}_{input_size[0]}x{input_size[1]}_c{in_chans}_seed{seed}.pt"
    return save_checkpoint(module, metadata, folder / name)


# -- the images ---------------------------------------------------------------------------------------
def make_phantoms(folder: Path, count: int, shape: tuple[int, int], first_seed: int) -> list[Path]:
    """``count`` MG For Presentation phantoms (12-bit DICOM, uncompressed), each its own study."""
    from mammoxai.dicom_io import write_phantom_dicom
    from mammoxai.models.phantoms import generate_phantom

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        seed = first_seed + i
        path = folder / f"phantom_{shape[0]}x{shape[1]}_{seed}.dcm"
        if not path.exists():
            ph = generate_phantom(seed, shape=shape)
            write_phantom_dicom(ph.image, laterality=ph.laterality, view=ph.view, bits_stored=ph.bits_stored,
                                path=path, patient_id=f"BENCH-{seed}", pixel_spacing_mm=ph.pixel_spacing_mm)
        paths.append(path)
    return paths


# -- profiles, scaled ---------------------------------------------------------------------------------
def profile_parameters(profile: str, scale: float) -> tuple[list[str], dict[str, dict[str, Any]], dict[str, float]]:
    """The profile's methods, their parameters at ``scale`` and, per scaled method, the pass ratio
    (profile's passes ÷ scaled passes) used for the projection."""
    from mammoxai.config import PROFILE_METHODS, PROFILE_PARAMS
    from mammoxai.explainers import explainer_class

    methods = list(PROFILE_METHODS[profile])
    params = {m: dict(v) for m, v in PROFILE_PARAMS.get(profile, {}).items()}
    ratios: dict[str, float] = {}
    if scale >= 1.0:
        return methods, params, ratios
    for method in methods:
        defaults = explainer_class(method).defaults
        values = {**{k: v for k, v in defaults.items()}, **params.get(method, {})}
        changed: dict[str, Any] = {}
        for key in COUNT_KEYS:
            if isinstance(values.get(key), int) and key in defaults:
                changed[key] = max(2, round(values[key] * scale))
                ratios[method] = values[key] / changed[key]
        if method == "occlusion":
            factor = 1 / math.sqrt(scale)
            changed["patch"] = max(1, round(values["patch"] * factor))
            changed["stride"] = max(1, round(values["stride"] * factor))
            ratios[method] = (changed["stride"] / values["stride"]) ** 2
        if changed:
            params[method] = {**params.get(method, {}), **changed}
    return methods, params, ratios


# -- one configuration --------------------------------------------------------------------------------
def run_configuration(model_name: str, checkpoint: str, profile: str, autocast: str, device: str,
                      phantoms: list[Path], warmup: Path | None, scale: float, time_budget_s: float,
                      stability_target: float | None, batch_size: int | None = None) -> dict[str, Any]:
    """Load a Pipeline for (model, profile, autocast) and process each phantom; the per-image records."""
    import torch

    from mammoxai.config import Settings
    from mammoxai.pipeline import Pipeline

    methods, params, ratios = profile_parameters(profile, scale)
    settings = Settings()
    settings.model.checkpoint = Path(checkpoint) if checkpoint not in ("demo-cnn", "demo-vit") else checkpoint
    settings.model.device = device
    settings.model.autocast = autocast  # type: ignore[assignment]
    settings.explainers.profile = profile  # type: ignore[assignment]
    settings.explainers.enabled = None
    if scale < 1.0:   # the profile's methods, counts scaled; MAMMOXAI_EXPLAINERS__PARAMS still wins per key
        merged = {m: {**v, **settings.explainers.params.get(m, {})} for m, v in params.items()}
        settings.explainers.params = {**settings.explainers.params, **merged}
        settings.explainers.stability_target = 0.0
    params = {m: settings.explainers.parameters_for(m) for m in methods if settings.explainers.parameters_for(m)}
    settings.explainers.time_budget_s = time_budget_s
    if batch_size is not None:
        settings.explainers.batch_size = batch_size
    if scale >= 1.0 and stability_target is not None:
        settings.explainers.stability_target = stability_target
    t = time.perf_counter()
    pipeline = Pipeline(settings)
    load_s = time.perf_counter() - t
    sensitivity = sorted(e.name for e in pipeline.explainers if pipeline._gets_sensitivity(e))
    ran = [e.name for e in pipeline.explainers if e.name not in pipeline.sanity or pipeline.sanity[e.name][1]
           or settings.explainers.sanity != "exclude"]
    label = f"{model_name} / {profile}{f' x{scale:g}' if scale < 1 else ''} / autocast {autocast}"
    records: list[dict[str, Any]] = []
    for kind, path in ([("warm-up", warmup)] if warmup else []) + [("counted", p) for p in phantoms]:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        item = pipeline.process([path])[0]
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        wall = time.perf_counter() - t0
        if item.status != "done":
            raise SystemExit(f"{label}: {path.name} ended {item.status}: {item.reason}")
        failures = dict(item.result.failures)
        rec = {"kind": kind, "file": path.name, "wall_s": wall, "stages_s": dict(item.timings),
               "objects": len(item.outputs), "maps": [m.method for m in item.result.maps], "failures": failures}
        records.append(rec)
        print(f"[{label}] {kind} {path.name}: {wall:.2f} s, {len(rec['maps'])} maps, {rec['objects']} objects"
              + (f", FAILED: {failures}" if failures else ""), flush=True)
    peak_gpu = (torch.cuda.max_memory_allocated() / 2**20) if device.startswith("cuda") else None
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024   # MB; the process's peak so far
    meta = pipeline.classifier.metadata
    result = {"model": model_name, "checkpoint": str(checkpoint), "architecture": meta.architecture,
              "input_size": list(meta.input_size), "in_chans": meta.in_chans,
              "parameters_m": sum(p.numel() for p in pipeline.classifier.module.parameters()) / 1e6,
              "checkpoint_sha256": pipeline.classifier.checkpoint_sha256, "profile": profile, "scale": scale,
              "autocast": autocast, "methods": methods, "params": params, "pass_ratios": ratios,
              "sensitivity_methods": sensitivity, "sanity_excluded": sorted(set(methods) - set(ran)),
              "stability_target": settings.explainers.stability_target, "time_budget_s": time_budget_s,
              "pipeline_load_s": load_s, "peak_gpu_mb": peak_gpu, "peak_rss_mb_so_far": peak_rss,
              "batch_size": settings.explainers.batch_size,
              "sensitivity_samples": settings.explainers.sensitivity_samples,
              "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
              "load_average_end": [round(x, 2) for x in os.getloadavg()], "images": records}
    result["summary"] = summarise(result)
    del pipeline
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return result


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Median per stage over the counted images, ``other``, s/image, images/hour; a projection if scaled."""
    counted = [r for r in result["images"] if r["kind"] == "counted"]
    stages: dict[str, list[float]] = {}
    for r in counted:
        named = dict(r["stages_s"])
        for k, v in named.items():
            stages.setdefault(k, []).append(v)
        stages.setdefault("explain (all)", []).append(sum(v for k, v in named.items() if k.startswith("explain.")))
        stages.setdefault("other", []).append(r["wall_s"] - sum(named.values()))
    med = {k: statistics.median(v) for k, v in stages.items()}
    wall = statistics.median(r["wall_s"] for r in counted)
    out: dict[str, Any] = {"n": len(counted), "stages_median_s": med, "s_per_image": wall,
                           "images_per_hour": 3600.0 / wall, "min_s": min(r["wall_s"] for r in counted),
                           "max_s": max(r["wall_s"] for r in counted)}
    warm = [r for r in result["images"] if r["kind"] == "warm-up"]
    if warm:
        out["warmup_s"] = warm[0]["wall_s"]
    if result["pass_ratios"]:
        proj = dict(med)
        extra_sensitivity = 0.0
        for method, ratio in result["pass_ratios"].items():
            key = f"explain.{method}"
            if key in med:
                proj[key] = med[key] * ratio
                if method in result["sensitivity_methods"]:
                    extra_sensitivity += result["sensitivity_samples"] * (proj[key] - med[key])
        if "quality" in proj:
            proj["quality"] = med["quality"] + extra_sensitivity
        proj["explain (all)"] = sum(v for k, v in proj.items() if k.startswith("explain."))
        total = wall + (proj["explain (all)"] - med["explain (all)"]) + extra_sensitivity
        out["projected"] = {"stages_median_s": proj, "s_per_image": total, "images_per_hour": 3600.0 / total}
    return out


# -- report -------------------------------------------------------------------------------------------
def machine(device: str) -> dict[str, Any]:
    import torch

    from benchmarks.bench_end_to_end import cpu_model

    cpu = cpu_model()
    info = {"cpu": cpu, "logical_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "device": device,
            "load_average_start": [round(x, 2) for x in os.getloadavg()]}
    if device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def fmt(v: float) -> str:
    return f"{v:.3f}" if v < 10 else f"{v:.1f}"


def markdown(results: list[dict[str, Any]], info: dict[str, Any], command: str) -> str:
    where = info.get("gpu") or f"CPU {info['cpu']}, {info['logical_cores']} cores"
    lines = [f"# Pipeline per image and per hour by model (`benchmarks/bench_models.py`, device `{info['device']}`)", "",
             f"Machine: {where}; torch {info['torch']}, Python {info['python']}, torch threads "
             f"{info['torch_threads']}; load average at the start {info['load_average_start']}.",
             f"Command: `{command}`", "",
             "Phantoms: MG DICOM, 12-bit. s / image = median wall time of `Pipeline.process` (read, predict, explain, "
             "quality, write; no DICOM receive/send); images / hour = 3600 / s per image, one worker. "
             "Built models (not `demo-*`) have random weights: their maps mean nothing, their costs are real.", "",
             "| model | input | params (M) | profile | autocast | methods run | images | s / image | images / hour "
             "| min–max (s) | explainer batch | peak RSS MB (process, so far) | peak GPU MB |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        ran = len(r["images"][-1]["maps"])
        gpu = f"{r['peak_gpu_mb']:.0f}" if r["peak_gpu_mb"] is not None else "—"
        prof = r["profile"] + (f" ×{r['scale']:g} counts" if r["scale"] < 1 else "")
        lines.append(f"| {r['model']} ({r['architecture']}) | {r['in_chans']}×{r['input_size'][0]}×{r['input_size'][1]} "
                     f"| {r['parameters_m']:.1f} | {prof} | {r['autocast']} | {ran} | {s['n']} | "
                     f"{fmt(s['s_per_image'])} | {s['images_per_hour']:.0f} | {fmt(s['min_s'])}–{fmt(s['max_s'])} | "
                     f"{r['batch_size']} | {r['peak_rss_mb_so_far']:.0f} | {gpu} |")
        if "projected" in s:
            p = s["projected"]
            lines.append(f"| ↳ projected to the `{r['profile']}` counts | | | {r['profile']} | {r['autocast']} | {ran} | "
                         f"(linear) | ~{fmt(p['s_per_image'])} | ~{p['images_per_hour']:.1f} | | | | |")
    lines += ["", "## Stages (median s per image)", ""]
    cols = []
    for r in results:
        scaled = f" ×{r['scale']:g}" if r["scale"] < 1 else ""
        head = f"{r['model']} {r['profile']}{scaled} {r['autocast']}"
        cols.append((head, r["summary"]["stages_median_s"]))
        if "projected" in r["summary"]:
            cols.append((f"↳ projected {r['profile']}", r["summary"]["projected"]["stages_median_s"]))
    keys: list[str] = []
    for _, c in cols:
        keys += [k for k in c if k not in keys]
    head_keys = [k for k in ("read", "predict") if k in keys]
    mid = sorted(k for k in keys if k.startswith("explain."))
    tail = [k for k in ("explain (all)", "quality", "write", "other") if k in keys]
    lines += ["| stage | " + " | ".join(h for h, _ in cols) + " |", "|---|" + "---|" * len(cols)]
    for k in head_keys + mid + tail:
        lines.append(f"| {k} | " + " | ".join(fmt(c[k]) if k in c else "—" for _, c in cols) + " |")
    lines.append("")
    for r in results:
        notes = []
        if r["sanity_excluded"]:
            notes.append(f"left out by the checkpoint's sanity record: {', '.join(r['sanity_excluded'])}")
        fails = sorted({f"{k}: {v}" for x in r["images"] for k, v in x["failures"].items()})
        if fails:
            notes.append("failures: " + "; ".join(fails)[:400])
        if r["scale"] < 1:
            notes.append(f"scaled parameters {json.dumps(r['params'])}; stability_target 0")
        notes.append(f"max-sensitivity on {', '.join(r['sensitivity_methods']) or 'none'}")
        if "warmup_s" in r["summary"]:
            notes.append(f"uncounted warm-up image {r['summary']['warmup_s']:.1f} s")
        notes.append(f"pipeline load {r['pipeline_load_s']:.1f} s; checkpoint sha256 {r['checkpoint_sha256'][:12]}")
        lines.append(f"- {r['model']} / {r['profile']} / {r['autocast']} ({r['date_utc']} UTC): " + "; ".join(notes) + ".")
    lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--models", nargs="+", default=["demo-cnn", "efficientnet_b2"],
                   help="'demo-cnn', 'demo-vit', 'efficientnet_b2' (the realistic model), or any timm name "
                        "(built like it at --input-size/--in-chans)")
    p.add_argument("--profiles", nargs="+", default=["fast", "full"], choices=["fast", "full"])
    p.add_argument("--autocast", nargs="+", default=["off"], choices=["off", "fp16", "bf16"],
                   help="one row per value (CUDA only; on CPU only 'off' makes sense)")
    p.add_argument("--n", type=int, default=1, help="counted phantoms per configuration (realistic model)")
    p.add_argument("--n-demo", type=int, default=None, help="counted phantoms for the demo models (default: --n)")
    p.add_argument("--shape", type=int, nargs=2, default=[2048, 1664], metavar=("ROWS", "COLS"))
    p.add_argument("--input-size", type=int, nargs=2, default=list(REALISTIC["input_size"]), metavar=("H", "W"))
    p.add_argument("--in-chans", type=int, default=REALISTIC["in_chans"])
    p.add_argument("--seed", type=int, default=0, help="weights' seed of the built checkpoints")
    p.add_argument("--scale", default="1", help="sample-count scale: one value, or PROFILE=F,... "
                                                "(e.g. 'fast=0.25,full=0.02'); < 1 adds a projection")
    p.add_argument("--warmup", choices=["auto", "on", "off"], default="auto",
                   help="one uncounted phantom before the first profile of each model and autocast (auto: on CUDA; "
                        "on a CPU for the demo models only)")
    p.add_argument("--time-budget", type=float, default=7200.0,
                   help="explainers.time_budget_s (node default 300; raised so no method is cut short)")
    p.add_argument("--stability-target", type=float, default=None,
                   help="explainers.stability_target (default: the settings' default; 0 with --scale < 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="explainers.batch_size (default: the settings' 16). A CPU node with EfficientNet-B2 at "
                        "1024x512 needs a smaller one: 16 gradient passes at once took > 20 GB of RAM")
    p.add_argument("--tag", default="", help="suffix of the result files")
    p.add_argument("--work", type=Path, default=None, help="folder for checkpoints and phantoms (default: temporary)")
    p.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = p.parse_args(argv)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("bench_models: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    scales: dict[str, float] = {}
    for part in args.scale.split(","):
        key, _, value = part.rpartition("=")
        for profile in ([key] if key else args.profiles):
            scales[profile] = float(value)
    if any(not 0 < v <= 1 for v in scales.values()):
        raise SystemExit("--scale values must be in (0, 1]")
    info = machine(args.device)
    command = "python benchmarks/bench_models.py " + " ".join(sys.argv[1:] if argv is None else argv)
    tag = ("cpu" if args.device == "cpu" else "cuda") + (f"_{args.tag}" if args.tag else "")
    args.out.mkdir(parents=True, exist_ok=True)
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="mammoxai-models-") as tmp:
        work = args.work or Path(tmp)
        n_max = max(args.n, args.n_demo or args.n)
        phantoms = make_phantoms(work / "phantoms", n_max, tuple(args.shape), first_seed=1000)
        warm_image = make_phantoms(work / "phantoms", 1, tuple(args.shape), first_seed=9000)[0]
        for name in args.models:
            demo = name in ("demo-cnn", "demo-vit")
            # auto: always on CUDA (kernel selection, lazy init); on a CPU for the demo models only, whose
            # warm-up is cheap and takes the process's one-off costs (imports, first hooks) off the counted
            # images of every later model; a realistic model's warm-up would cost a whole image there
            warm_on = args.warmup == "on" or (args.warmup == "auto" and (args.device.startswith("cuda") or demo))
            warmup = warm_image if warm_on else None
            if demo:
                checkpoint, n = name, (args.n_demo or args.n)
            else:
                checkpoint = str(build_checkpoint(work / "checkpoints", name, tuple(args.input_size), args.in_chans,
                                                  args.seed))
                n = args.n
            for autocast in args.autocast:
                for i, profile in enumerate(args.profiles):
                    # one warm-up per (model, autocast): later profiles find CUDA's kernels and the model warm
                    result = run_configuration(name, checkpoint, profile, autocast, args.device, phantoms[:n],
                                               warmup if i == 0 else None, scales.get(profile, 1.0),
                                               args.time_budget, args.stability_target, args.batch_size)
                    results.append(result)
                    payload = {"machine": info, "command": command, "results": results}
                    (args.out / f"models_{tag}.json").write_text(json.dumps(payload, indent=2, default=str),
                                                                 encoding="utf-8")
                    (args.out / f"models_{tag}.md").write_text(markdown(results, info, command), encoding="utf-8")
    print(markdown(results, info, command))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
