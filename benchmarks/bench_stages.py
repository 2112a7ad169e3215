"""Stage table of ``mammoxai explain`` for two code trees side by side (before / after), in one run.

Each round runs ``python -m mammoxai.cli explain --dicom`` on the same phantoms once with each
code tree (``--old``: e.g. a ``git worktree`` of an earlier commit; ``--new``: this checkout),
alternating old / new so that a change of load on a shared machine hits both alike. The stages
are the command's own per-image timings (its JSON report: read, predict, explain.*, quality,
write); the first image of each command is a warm-up and is not counted. The whole command's
wall time (start-up, every image, overlay PNGs, DICOM files, JSON) is reported beside them.

    git worktree add /tmp/mammoxai-old a1c2622
    .venv/bin/python benchmarks/bench_stages.py --old /tmp/mammoxai-old --rounds 3 --images 3
    git worktree remove /tmp/mammoxai-old

Prints a Markdown table (median over rounds × counted images) and writes it, with the raw
figures, to ``--out`` (default ``benchmarks/results/stages_<profile>.{md,json}``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

#: stages that are the model's own work: the rest is the time "around the model"
MODEL_STAGES = ("predict",)


def run_tree(tree: Path, files: list[Path], out: Path, profile: str) -> tuple[list[dict[str, float]], float]:
    """Run ``mammoxai explain --dicom`` from ``tree`` on ``files``; per-file timings and the command's wall time."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(tree)
    env["MAMMOXAI_EXPLAINERS__PROFILE"] = profile
    env.pop("MAMMOXAI_PIPELINE_FACTORY", None)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "mammoxai.cli", "explain", "--dicom", "--out", str(out),
                           *map(str, files)], cwd=tree, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{tree}: mammoxai explain failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n"
                         f"{proc.stderr[-3000:]}")
    timings = []
    for f in files:
        report = json.loads((out / f"{f.stem}.json").read_text(encoding="utf-8"))
        timings.append({k: float(v) for k, v in report["timings"].items()})
    return timings, wall


def split(stages: dict[str, float]) -> dict[str, float]:
    """One image's stages with ``explain`` (all explainers), ``around`` (all but predict + explain), ``total``."""
    out = dict(stages)
    out["explain"] = sum(v for k, v in stages.items() if k.startswith("explain."))
    out["total"] = sum(v for k, v in stages.items() if not k.startswith("explain.")) + out["explain"]
    out["around"] = out["total"] - out["explain"] - sum(stages.get(k, 0.0) for k in MODEL_STAGES)
    return out


def median_table(records: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for r in records for k in r})
    return {k: statistics.median(r.get(k, 0.0) for r in records) for k in keys}


def markdown(result: dict[str, Any]) -> str:
    old, new = result["old"]["median"], result["new"]["median"]
    order = ["read", "predict"] + sorted(k for k in set(old) | set(new) if k.startswith("explain.")) + [
        "explain", "quality", "write", "total", "around"]
    lines = [f"### `mammoxai explain` stages, profile `{result['profile']}`, before / after in one run", "",
             f"{result['images']} phantoms {result['shape'][0]}×{result['shape'][1]} per command, first one a "
             f"warm-up; {result['rounds']} rounds alternating old / new; median over the "
             f"{len(result['new']['records'])} counted images of each tree. Old: `{result['old']['tree']}` "
             f"({result['old']['commit']}); new: `{result['new']['tree']}` ({result['new']['commit']}). "
             f"Load average {result['load_start']} at the start, {result['load_end']} at the end ({result['date_utc']} "
             "UTC).", "",
             "| stage (s) | old | new | new / old |", "|---|---|---|---|"]
    for k in order:
        if k not in old and k not in new:
            continue
        o, n = old.get(k), new.get(k)
        ratio = f"{n / o:.2f}" if o and n is not None else "—"
        name = {"total": "**total (command's own timings)**", "around": "around the model (all but predict + explain)",
                "explain": "explain (all methods)"}.get(k, k)
        lines.append(f"| {name} | {o:.3f} | {n:.3f} | {ratio} |" if o is not None and n is not None else
                     f"| {name} | {o if o is not None else '—'} | {n if n is not None else '—'} | — |")
    for tag in ("old", "new"):
        m = result[tag]["median"]
        lines.append(f"| share around the model, {tag} | {100 * m['around'] / m['total']:.0f} % | | |")
    o_wall, n_wall = result["old"]["command_wall"], result["new"]["command_wall"]
    lines += [f"| whole command, {result['images']} images (start-up, PNGs, DICOM files, JSON included) | "
              f"{o_wall:.1f} | {n_wall:.1f} | {n_wall / o_wall:.2f} |", "",
              f"Run: `{result['command']}`", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--old", type=Path, required=True, help="the code tree to compare against (a checkout)")
    parser.add_argument("--new", type=Path, default=REPO, help="the code tree measured (default: this checkout)")
    parser.add_argument("--profile", default="fast", choices=["fast", "full"])
    parser.add_argument("--images", type=int, default=3, help="phantoms per command (the first is a warm-up)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--shape", type=int, nargs=2, default=[2048, 1664], metavar=("ROWS", "COLS"))
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results")
    args = parser.parse_args(argv)
    if args.images < 2:
        raise SystemExit("--images must be >= 2 (the first image of each command is a warm-up)")
    from benchmarks.bench_end_to_end import commit_of, make_phantoms

    trees = {"old": args.old.resolve(), "new": args.new.resolve()}
    load_start = [round(x, 2) for x in os.getloadavg()]
    records: dict[str, list[dict[str, float]]] = {"old": [], "new": []}
    walls: dict[str, list[float]] = {"old": [], "new": []}
    with tempfile.TemporaryDirectory(prefix="mammoxai-stages-") as tmp:
        root = Path(tmp)
        (root / "images").mkdir()
        files = make_phantoms(root / "images", args.images, tuple(args.shape), first_seed=1000)
        for r in range(args.rounds):
            for tag in (("old", "new") if r % 2 == 0 else ("new", "old")):
                timings, wall = run_tree(trees[tag], files, root / f"{tag}-{r}", args.profile)
                counted = [split(t) for t in timings[1:]]
                records[tag] += counted
                walls[tag].append(wall)
                print(f"round {r} {tag}: " + ", ".join(f"{c['total']:.2f} s" for c in counted)
                      + f" (command {wall:.1f} s)", flush=True)
    result = {
        "profile": args.profile, "images": args.images, "rounds": args.rounds, "shape": args.shape,
        "load_start": load_start, "load_end": [round(x, 2) for x in os.getloadavg()],
        "date_utc": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": "python benchmarks/bench_stages.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    }
    for tag in ("old", "new"):
        result[tag] = {"tree": str(trees[tag]), "commit": commit_of(trees[tag]), "records": records[tag],
                       "median": median_table(records[tag]), "command_wall": statistics.median(walls[tag]),
                       "command_walls": walls[tag]}
    text = markdown(result)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"stages_{args.profile}.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    (args.out / f"stages_{args.profile}.md").write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
