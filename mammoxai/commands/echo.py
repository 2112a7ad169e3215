"""``mammoxai echo [--to AE@HOST:PORT]``: C-ECHO a DICOM node (default: the configured destination)."""

from __future__ import annotations

import argparse

from ..config import Settings

HELP = "C-ECHO a DICOM node (default: the configured destination)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", metavar="AE@HOST:PORT")


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Exit 0 when the peer answers C-ECHO with Success."""
    from ..node.scu import Peer, c_echo, parse_peer

    d = settings.destination
    peer = parse_peer(args.to) if args.to else Peer(d.ae_title, d.host, d.port)
    status = c_echo(peer, d.calling_ae_title or settings.node.ae_title, d.tls, d.timeout_s)
    print(f"C-ECHO {peer}: status 0x{status:04X}")
    return 0 if status == 0 else 1
