"""``ferropool.compare.run()``: the comparison from Python, and its report in a notebook.

``run`` makes the same choices as the command (your function, or built-in workloads; the
strategies, worker counts and repeats) and returns a :class:`Comparison`: the report that
``--json`` prints, as a ``dict``. Its ``str()`` is the command's table; a notebook shows it as
the chart of time against workers for each workload, inline, above the table
(``_repr_html_``); ``chart()`` returns the charts alone and ``plot(path)`` writes the file of
``--plot``; ``Comparison.load(path)`` reads what ``--json`` wrote. Everything here but
``plot(".png")`` needs only the standard library.
"""

from __future__ import annotations

import html
import inspect
import json
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from typing import Any

from .._util import usable_cpu_count
from .measure import run_compare
from .report import Progress, format_report
from .strategies import SERIAL, STRATEGIES
from .workloads import BUILTIN, Skipped, Workload, build_workloads, check_target, load_target

__all__ = ["Chart", "Comparison", "run"]


class Chart:
    """Charts of median time against workers, one per workload (inline SVG); a notebook shows
    them where a cell ends in ``comparison.chart()``."""

    def __init__(self, svgs: list[str]) -> None:
        self.svgs = svgs

    def _repr_html_(self) -> str:
        return "\n".join(self.svgs) if self.svgs else "<p>no workload ran: nothing to chart</p>"

    def __str__(self) -> str:
        return f"<ferropool.compare.Chart: {len(self.svgs)} chart(s), shown in a notebook>"

    __repr__ = __str__


class Comparison(dict[str, Any]):
    """What ``run`` returns: the JSON-ready report of ``ferropool compare --json``, which prints
    as the command's table and shows in a notebook as charts and that table."""

    @classmethod
    def load(cls, path: str) -> Comparison:
        """Reads a report that ``ferropool compare --json > path`` wrote, to show it here."""
        with open(path, encoding="utf-8") as f:
            return cls(json.load(f))

    def __str__(self) -> str:
        return format_report(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))

    def recommendations(self) -> dict[str, str]:
        """The recommendation for each workload that ran, by workload name."""
        return {name: wl["recommendation"] for name, wl in self["workloads"].items() if wl.get("available")}

    def chart(self) -> Chart:
        """The chart of median time against workers, one per workload, as inline SVG."""
        from .plot import svg

        return Chart([svg(name, wl) for name, wl in self["workloads"].items() if wl.get("available")])

    def plot(self, path: str) -> None:
        """Writes the chart to ``path``: ``.html`` (no dependency) or ``.png`` (matplotlib, the
        ``plot`` extra). Raises ``ValueError`` for a file that cannot be written and
        ``ImportError`` naming the extra when matplotlib is missing."""
        from . import plot

        problem = plot.check_path(path)
        if problem is not None:
            raise (ImportError if "pip install" in problem else ValueError)(problem)
        plot.write(self, path)

    def _repr_html_(self) -> str:
        parts = [self.chart()._repr_html_()]
        for name, text in self.recommendations().items():
            parts.append(f"<p><b>{html.escape(name)}</b>: {html.escape(text)}</p>")
        parts.append(f"<details><summary>table</summary><pre>{html.escape(str(self))}</pre></details>")
        return "\n".join(parts)


def run(
    target: Callable[[Any], Any] | str | None = None,
    *,
    items: int | Iterable[Any] = 20,
    workloads: Sequence[str] | None = None,
    strategies: Sequence[str] | None = None,
    workers: Sequence[int] | None = None,
    repeats: int | None = None,
    quick: bool = False,
    progress: bool = False,
) -> Comparison:
    """Times ``target`` (or the built-in ``workloads``) serially and with each strategy, as
    ``ferropool compare`` does, and returns the report.

    ``target`` is a function (called as ``target(item)`` for each of ``items``: a count means
    ``range(items)``; an ``async def`` function is awaited) or ``"module:function"``; without it
    the built-in workloads run (all, or the names in ``workloads``). ``strategies`` names the
    strategies to time (serial always is), ``workers`` the worker counts, ``repeats`` the timed
    runs (default 5, 3 with ``quick``). ``progress`` shows where the run is on stderr. A
    function defined in a notebook runs in processes too (ferropool's pools send it by value;
    ``ProcessPoolExecutor``, which cannot, shows the error in its rows).

    Raises ``ValueError`` for an unknown name or a bad number, and
    ``ferropool.compare.workloads.TargetError`` if the target cannot be imported or raises
    (its serial warm-up runs first).
    """
    known = [s.name for s in STRATEGIES]
    for name in strategies or ():
        if name not in known:
            raise ValueError(f"unknown strategy {name!r} (choose from {', '.join(known)})")
    for name in workloads or ():
        if name not in BUILTIN:
            raise ValueError(f"unknown workload {name!r} (choose from {', '.join(BUILTIN)})")
    if target is not None and workloads:
        raise ValueError("give either a target or workloads, not both")
    if workers is not None and (not workers or any(not isinstance(n, int) or n < 1 for n in workers)):
        raise ValueError(f"workers must be positive integers, got {workers!r}")
    if repeats is not None and repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}")
    chosen = [s for s in STRATEGIES if s.name == SERIAL or not strategies or s.name in strategies]
    timed: list[Workload | Skipped]
    with ExitStack() as stack:
        if target is not None:
            wl = _workload(target, items)
            check_target(wl)
            timed = [wl]
        else:
            names = list(workloads or BUILTIN)
            server = None
            if {"http", "async_http"} & set(names):
                from .cli import _start_server

                server = _start_server(stack)
            timed = build_workloads(names, quick=quick, cores=usable_cpu_count(), server=server)
        report = run_compare(
            timed,
            strategies=chosen,
            repeats=repeats or (3 if quick else 5),
            workers=sorted(set(workers)) if workers else None,
            quick=quick,
            progress=Progress(quiet=not progress),
        )
    return Comparison(report)


def _workload(target: Callable[[Any], Any] | str, items: int | Iterable[Any]) -> Workload:
    if isinstance(items, int):
        if items < 1:
            raise ValueError(f"items must be >= 1, got {items}")
        calls: tuple[Any, ...] = tuple(range(items))
        over = f"range({items})"
    else:
        calls = tuple(items)
        if not calls:
            raise ValueError("items is empty: nothing to time")
        over = f"{len(calls)} items"
    if isinstance(target, str):
        loaded = load_target(target, items=len(calls))
        return Workload(loaded.name, loaded.description, "user", loaded.fn, loaded.afn, calls, None, ())
    if not callable(target):
        raise ValueError(f"target must be a function or 'module:function', not {type(target).__name__}")
    qualname = getattr(target, "__qualname__", type(target).__name__)
    name = f"{getattr(target, '__module__', None) or '?'}:{qualname}"
    is_async = inspect.iscoroutinefunction(target)
    description = f"{'await ' if is_async else ''}{qualname}(i) for i in {over}"
    return Workload(
        name, description, "user", None if is_async else target, target if is_async else None, calls, None, ()
    )
