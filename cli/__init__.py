"""The ``traffic`` command line: one sub-command module per task (network, route, serve, ...).

Each module in ``_COMMANDS`` exposes ``register(subparsers)``, which adds its parser and sets
``func`` to a callable taking the parsed arguments and returning an exit status. Errors a user
can act on are printed as one line (no traceback) with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from graph.errors import NetworkError

_COMMANDS = (
    "cli.network", "cli.route", "cli.snapshot",
    "cli.serve", "cli.replay", "cli.speeds",
)

#: Exceptions that carry a message meant for the user; anything else is a bug and shows a traceback.
USER_ERRORS: tuple[type[BaseException], ...] = (
    NetworkError,
    FileNotFoundError,
    PermissionError,
    IsADirectoryError,
    ValueError,
    LookupError,
)


def build_parser() -> argparse.ArgumentParser:
    """Build the top-level parser with every registered sub-command."""
    parser = argparse.ArgumentParser(
        prog="traffic", description="Live traffic estimation, routing and road networks."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in _COMMANDS:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    from traffic.native_memory import set_jemalloc_default

    set_jemalloc_default()  # before any sub-command imports polars
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except USER_ERRORS as exc:
        print(f"traffic {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The reader of our output went away (`traffic network info NET | head`): not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
