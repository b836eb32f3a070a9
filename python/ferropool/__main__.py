"""Command-line interface: ``ferropool <command>`` or ``python -m ferropool <command>``.

Commands:

- ``compare``: time built-in workloads, or ``module:function``, serially and
  with threads, processes and asyncio at several worker counts, and recommend
  one (see :mod:`ferropool.compare`).

Bad arguments print one line, ``ferropool <command>: error: <what>``, to
stderr and exit with status 2; so does bad input the command finds itself (a
target that cannot be imported, is not callable, or raises), as
``ferropool <command>: <what>``.
"""

from __future__ import annotations

import argparse
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import NoReturn

__all__ = ["main"]


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are a single line (no usage dump) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Return the parser for every ``ferropool`` subcommand."""
    from .compare import cli as compare  # here: ``import ferropool.__main__`` stays cheap

    parser = _Parser(prog="ferropool", description="ferropool command-line tools")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True
    compare.add_parser(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except KeyboardInterrupt:
        print(f"ferropool {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
