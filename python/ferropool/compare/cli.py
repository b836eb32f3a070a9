"""The ``ferropool compare`` subcommand: its options, and the run they describe.

Bad input (a target that cannot be imported, is not callable, or raises; a plot file that
cannot be written; options that contradict each other) prints one line,
``ferropool compare: <what>``, on stderr and exits with status 2 before anything is timed.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

from .._util import usable_cpu_count
from .measure import run_compare
from .report import Progress, format_report
from .strategies import SERIAL, STRATEGIES
from .workloads import (
    BUILTIN,
    Skipped,
    TargetError,
    Workload,
    build_database_workloads,
    build_workloads,
    check_database,
    check_target,
    load_target,
)

if TYPE_CHECKING:
    from .server import DelayServer

__all__ = ["STRATEGY_NAMES", "WORKLOAD_NAMES", "add_arguments", "add_parser", "run"]

WORKLOAD_NAMES = tuple(BUILTIN)
STRATEGY_NAMES = tuple(s.name for s in STRATEGIES)
DESCRIPTION = (
    "``ferropool compare``: time workloads serially and with each strategy at several worker counts, "
    "then recommend one."
)


def add_parser(commands: Any) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand to ``commands`` (what ``add_subparsers`` returned) and return its parser."""
    parser: argparse.ArgumentParser = commands.add_parser(
        "compare",
        help="time workloads (or MODULE:FUNCTION) with threads, processes and asyncio, and recommend one",
        description=DESCRIPTION,
    )
    add_arguments(parser)
    parser.set_defaults(handler=run)
    return parser


def _name_list(choices: Sequence[str], what: str) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        names = [n.strip() for n in text.split(",") if n.strip()]
        if not names:
            raise argparse.ArgumentTypeError(f"no {what} given (choose from {', '.join(choices)})")
        for n in names:
            if n not in choices:
                raise argparse.ArgumentTypeError(f"unknown {what} {n!r} (choose from {', '.join(choices)})")
        return list(dict.fromkeys(names))  # drop duplicates, keep order

    return parse


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _int_list(text: str) -> list[int]:
    parts = [part for part in text.split(",") if part.strip()]
    if not parts:
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers, got {text!r}")
    return sorted({_positive_int(part) for part in parts})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` subcommand's options to ``parser``."""
    parser.add_argument(
        "target",
        nargs="?",
        metavar="MODULE:FUNCTION",
        help="time your own function instead: calls FUNCTION(i) for i in range(--items); "
        "an async def function is awaited",
    )
    parser.add_argument(
        "--items", type=_positive_int, default=None, help="how many calls of the target per batch (default 20)"
    )
    parser.add_argument(
        "--workload",
        type=_name_list(WORKLOAD_NAMES, "workload"),
        default=None,
        metavar="LIST",
        help=f"comma-separated built-in workloads (default: all of {','.join(WORKLOAD_NAMES)})",
    )
    parser.add_argument(
        "--strategy",
        type=_name_list(STRATEGY_NAMES, "strategy"),
        default=None,
        metavar="LIST",
        help=f"comma-separated strategies (default: all; serial is always timed): {','.join(STRATEGY_NAMES)}",
    )
    parser.add_argument(
        "--workers",
        type=_int_list,
        default=None,
        metavar="LIST",
        help="worker counts to sweep, e.g. 1,4,16 (default: 1, 2, cores; and 2x cores for I/O)",
    )
    parser.add_argument(
        "--repeats",
        type=_positive_int,
        default=None,
        help="timed runs per strategy and worker count (default 5; 3 with --quick)",
    )
    parser.add_argument(
        "--mysql",
        metavar="DSN",
        default=None,
        help="also time queries against this MySQL/MariaDB server, with pymysql and aiomysql: "
        "mysql://USER[:PASSWORD]@HOST[:PORT][/DATABASE][?unix_socket=PATH] (never started here)",
    )
    parser.add_argument("--quick", action="store_true", help="tiny workloads: a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument(
        "--plot",
        metavar="FILE",
        default=None,
        help="write a chart of time against workers per strategy: .html (always) or .png (needs matplotlib)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress display on stderr")


def _fail(message: str) -> int:
    print(f"ferropool compare: {message}", file=sys.stderr)
    return 2


def run(args: argparse.Namespace) -> int:
    """Run ``ferropool compare`` with parsed ``args``; print the report; return the exit status.

    Bad input (an unusable target, a plot file that cannot be written) prints one line on
    stderr and returns 2 before anything is timed.
    """
    from . import plot

    if args.target and args.workload:
        return _fail("give either a MODULE:FUNCTION target or --workload, not both")
    if args.items and not args.target:
        return _fail("--items applies to a MODULE:FUNCTION target only")
    if args.mysql and args.target:
        return _fail("--mysql adds workloads to the built-in run; it does not combine with a MODULE:FUNCTION target")
    if args.mysql:
        try:
            check_database(args.mysql)
        except TargetError as exc:
            return _fail(str(exc))
    if args.plot:
        problem = plot.check_path(args.plot)
        if problem:
            return _fail(problem)
    strategies = [s for s in STRATEGIES if s.name == SERIAL or not args.strategy or s.name in args.strategy]
    repeats = args.repeats or (3 if args.quick else 5)
    workloads: list[Workload | Skipped]
    with ExitStack() as stack:
        if args.target:
            try:
                target = load_target(args.target, items=args.items or 20)
                check_target(target)  # the serial warm-up: a raising target stops here
                workloads = [target]
            except TargetError as exc:
                return _fail(str(exc))
        else:
            names = args.workload or list(WORKLOAD_NAMES)
            server = None
            if {"http", "async_http"} & set(names):
                server = _start_server(stack)
            workloads = build_workloads(names, quick=args.quick, cores=usable_cpu_count(), server=server)
            if args.mysql:
                workloads += build_database_workloads(args.mysql, quick=args.quick)
        progress = Progress(quiet=args.quiet)
        report = run_compare(
            workloads, strategies=strategies, repeats=repeats, workers=args.workers, quick=args.quick, progress=progress
        )
    if args.plot:
        plot.write(report, args.plot)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0


def _start_server(stack: ExitStack) -> DelayServer | None:
    """Start the local HTTP server (stopped by ``stack``); None if aiohttp is missing."""
    from .server import DelayServer

    try:
        return stack.enter_context(DelayServer())
    except ImportError:
        return None
