"""The ``robustreid`` command line: the parser and the exit codes.

Every subcommand is a module of :mod:`robustreid.commands` with ``add_parser(subparsers)``
and ``run(args) -> int``, discovered here; the work itself is in the library
(:mod:`robustreid.jobs` and the packages under it).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
from collections.abc import Sequence
from typing import Any

from robustreid.distributed import DistributedError
from robustreid.errors import RunInterrupted, UserError


def _command_modules() -> dict[str, Any]:
    """The subcommand modules of :mod:`robustreid.commands`, by command name."""
    import robustreid.commands as package

    return {info.name: importlib.import_module(f"{package.__name__}.{info.name}")
            for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")}


def build_parser() -> argparse.ArgumentParser:
    """The ``robustreid`` parser with every command's sub-parser."""
    parser = argparse.ArgumentParser(
        prog="robustreid",
        description="Unsupervised person re-identification with robust cluster prototypes.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in _command_modules().values():
        module.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run a command. A user error (bad configuration, file, folder or value;
    :class:`~robustreid.errors.UserError`) is one line and exit status 2; a stop on a signal
    is ``128 + signum``; a failed or hung peer process is one line and status 1. Anything
    else is a bug and keeps its traceback (exit 1)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    run = _command_modules()[args.command].run
    try:
        return run(args)
    except UserError as err:
        print(f"robustreid {args.command}: error: {err}", file=sys.stderr)
        return 2
    except RunInterrupted as err:
        print(f"robustreid {args.command}: {err}", file=sys.stderr)
        return 128 + err.signum
    except DistributedError as err:  # a peer process failed or hangs: say so, in one line
        print(f"robustreid {args.command}: error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
