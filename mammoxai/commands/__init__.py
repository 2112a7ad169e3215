"""The ``mammoxai`` subcommands, one module each; :mod:`mammoxai.cli` only assembles them.

Every module here defines ``HELP`` (one line for ``mammoxai --help``), ``add_arguments(parser)``
and ``run(args, settings) -> int``. Module-level imports stay light (stdlib, config, errors) so
that ``mammoxai --help`` and ``mammoxai send`` never load torch; a command imports the layers it
drives inside ``run``.
"""

from __future__ import annotations

#: subcommand -> module under ``mammoxai.commands``, in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "serve": "serve",
    "explain": "explain",
    "send": "send",
    "echo": "echo",
    "jobs": "jobs",
    "train": "train",
    "validate": "validate",
    "evaluate": "evaluate",
    "sanity": "sanity",
    "domain": "domain",
    "bench": "bench",
}
