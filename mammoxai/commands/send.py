"""``mammoxai send FILE|DIR... --to AE@HOST:PORT``: C-STORE files to a DICOM node."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..config import Settings

HELP = "C-STORE files or folders to a DICOM node"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("paths", nargs="+", type=Path, metavar="FILE|DIR")
    p.add_argument("--to", required=True, metavar="AE@HOST:PORT")
    p.add_argument("--calling-ae", default=None, help="our AE title (default: node.ae_title)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """C-STORE every DICOM file under ``args.paths``; exit 1 when any is refused (or none was sent)."""
    from ..node.scu import _dicom_files, c_store, parse_peer

    peer = parse_peer(args.to)
    files = _dicom_files(args.paths)
    calling = args.calling_ae or settings.node.ae_title
    results = c_store(files, peer, calling, settings.destination.tls, settings.destination.timeout_s,
                      skip_non_dicom=True)
    failed = 0
    for path, status in results:
        ok = status in (0x0000, 0xB000, 0xB007, 0xB006)
        failed += not ok
        print(f"{'ok' if ok else 'FAILED'} 0x{status:04X} {path}")
    print(f"sent {len(results) - failed} of {len(results)} to {peer}")
    return 1 if failed or not results else 0
