"""The timing loop of ``ferropool compare``: every strategy at every worker count, serial alongside.

For each workload (built-in, see ``workloads.BUILTIN``, or the user's
``module:function``) and each worker count of its sweep (1, 2, the usable cores,
and twice the cores for I/O), every strategy of ``strategies`` is
built fresh, started, warmed up on the workload, and timed for ``repeats``
batches, together with serial: the repeats are interleaved across the strategies
of one worker count, so that background load drifting during the run does not
favour any of them.  Each figure is the median wall time, with the min-max
spread, the speedup over serial's median at the same worker count, the efficiency per core (speedup / min(workers, cores)), the CPU
utilisation (CPU seconds of this process and the strategy's worker processes
over wall seconds, as a share of the usable cores) and the workers' peak RSS.
Every runner is closed after its worker count, even on error or Ctrl-C.

Flow: ``cli.run`` (command line) -> ``run_compare`` -> ``_measure`` per workload
-> ``report`` (recommendation, table) and ``plot``.

A strategy that cannot exist here (a ferropool class this version lacks) is
reported as unavailable with the reason; one that fails is reported with its
error; the others still run.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Sequence
from contextlib import ExitStack
from statistics import median
from typing import Any

from .._interpreter import describe_build, free_threaded_build, gil_enabled
from .._util import usable_cpu_count
from . import usage
from .report import Progress, recommend
from .strategies import SERIAL, STDLIB_START_METHOD, STRATEGIES, Runner, Strategy, Unavailable, prepare
from .workloads import Skipped, Workload

__all__ = ["SCHEMA", "run_compare", "worker_sweep"]

SCHEMA = 2
MIN_CPU_WALL_S = 0.2


def worker_sweep(kind: str, cores: int) -> tuple[int, ...]:
    """Return the worker counts to time: 1, 2 and ``cores``; for I/O and user code also ``2 * cores``."""
    counts = {1, 2, cores} | ({2 * cores} if kind != "cpu" else set())
    return tuple(sorted(counts))


class _Timed:
    """One runner being timed on one workload: its wall and CPU seconds per batch."""

    def __init__(self, strategy: Strategy, runner: Runner, pids: set[int]) -> None:
        self.strategy, self.runner, self.pids = strategy, runner, pids
        self.wall: list[float] = []
        self.cpu: list[float] = []

    def time_once(self, wl: Workload) -> None:
        cpu0 = usage.self_cpu_s() + (usage.cpu_s(self.pids) or 0.0)
        t0 = time.perf_counter()
        results = self.runner.run(wl.fn, wl.afn, wl.items)
        wall = time.perf_counter() - t0
        self.cpu.append(usage.self_cpu_s() + (usage.cpu_s(self.pids) or 0.0) - cpu0)
        self.wall.append(wall)
        if wl.expect is not None and list(results) != wl.expect:
            raise AssertionError(f"wrong results from {wl.name}")

    def summary(self, cores: int) -> dict[str, Any]:
        return {
            "workers": self.runner.workers,
            "shape": self.runner.shape,
            "available": True,
            "median_s": median(self.wall),
            "min_s": min(self.wall),
            "max_s": max(self.wall),
            "runs_s": self.wall,
            # /proc counts CPU time in clock ticks (10 ms): too coarse for short batches
            "cpu_utilisation": sum(self.cpu) / sum(self.wall) / cores if sum(self.wall) >= MIN_CPU_WALL_S else None,
            "worker_processes": len(self.pids),
            "workers_peak_rss_bytes": usage.peak_rss_bytes(self.pids) if self.pids else None,
        }


def _error(workers: int | None, exc: BaseException, when: str = "") -> dict[str, Any]:
    return {
        "workers": workers,
        "shape": str(workers or "-"),
        "available": False,
        "error": f"{when}{type(exc).__name__}: {exc}",
    }


def _start(
    s: Strategy,
    n: int | None,
    wl: Workload,
    cores: int,
    stack: ExitStack,
    rows: dict[str, list[dict[str, Any]]],
    unavailable: dict[str, str],
) -> _Timed | None:
    """Build, start and warm up ``s`` with ``n`` workers (closed by ``stack``); None if it could not.

    Its worker processes are the descendants that appeared meanwhile.
    """
    before = usage.descendants()
    try:
        runner = s.make(n, cores)
    except Unavailable as exc:
        unavailable[s.name] = str(exc)
        return None
    except Exception as exc:
        rows[s.name].append(_error(n, exc, "cannot create: "))
        return None
    stack.callback(runner.close)
    try:
        runner.start()
        # Pool(auto) decides how to run a function from its first calls: it warms up on the
        # real items, or it would choose for the warm-up's small ones (sleep(0), 16 floats).
        warm = wl.items if s.family == "auto" else (wl.warmup_items or wl.items)
        k = 2 * (runner.workers or cores)
        runner.run(wl.fn, wl.afn, (warm * k)[:k])  # warm-up: imports, connections, caches
    except Exception as exc:
        rows[s.name].append(_error(runner.workers or n, exc, "warm-up failed: "))
        return None
    return _Timed(s, runner, usage.descendants() - before)


def _measure(
    wl: Workload,
    strategies: Sequence[Strategy],
    sweep: Sequence[int],
    *,
    repeats: int,
    cores: int,
    unavailable: dict[str, str],
    progress: Progress,
) -> dict[str, Any]:
    """Time ``wl`` with every strategy at every worker count of ``sweep``; return ``{strategy: entry}``.

    Serial is timed again at every worker count, interleaved with the pools, and each row's
    ``baseline_s`` is serial's median from the same worker count: a neighbour that starts
    competing for the cores halfway through the sweep then slows the baseline too, instead of
    making later pools look slow (or, had it stopped, fast).  Serial's own row pools all its runs.
    Strategies that raise Unavailable are added to ``unavailable`` (name -> reason) and not built again.
    """
    rows: dict[str, list[dict[str, Any]]] = {s.name: [] for s in strategies}
    with ExitStack() as outer:
        serial = next(
            (_start(s, None, wl, cores, outer, rows, unavailable) for s in strategies if s.name == SERIAL), None
        )
        for phase, workers in enumerate(sweep):
            members = [
                s for s in strategies if s.name != SERIAL and s.name not in unavailable and (s.sweeps or phase == 0)
            ]
            with ExitStack() as stack:
                live = [
                    t
                    for t in (
                        _start(s, workers if s.sweeps else None, wl, cores, stack, rows, unavailable) for s in members
                    )
                    if t is not None
                ]
                timed = ([serial] if serial else []) + live
                for i in range(repeats):
                    progress.step(f"{wl.name}: {workers} worker{'s' if workers > 1 else ''}, run {i + 1} of {repeats}")
                    for t in list(timed):
                        try:
                            t.time_once(wl)
                        except Exception as exc:
                            rows[t.strategy.name].append(_error(t.runner.workers, exc))
                            timed.remove(t)
                            serial = None if t is serial else serial
                baseline = median(serial.wall[-repeats:]) if serial else None
                for t in timed:
                    if t is not serial:
                        rows[t.strategy.name].append({**t.summary(cores), "baseline_s": baseline})
        if serial:
            rows[SERIAL].append({**serial.summary(cores), "baseline_s": median(serial.wall)})
    out = {}
    for s in strategies:
        if s.name in unavailable:
            out[s.name] = {"available": False, "error": f"unavailable: {unavailable[s.name]}"}
            continue
        ok = [r for r in rows[s.name] if r["available"]]
        out[s.name] = {"available": bool(ok), "by_workers": rows[s.name]}
        if not ok:
            out[s.name]["error"] = rows[s.name][0]["error"] if rows[s.name] else "not run"
    return out


def _add_ratios(strategies: dict[str, Any], cores: int) -> None:
    """Add speedup over serial (at the same worker count) and efficiency per core to every timed row (in place)."""
    for entry in strategies.values():
        for r in entry.get("by_workers", []):
            if r["available"] and r.get("baseline_s"):
                r["speedup"] = r["baseline_s"] / r["median_s"]
                r["efficiency"] = r["speedup"] / min(r["workers"] or cores, cores)


def run_compare(
    workloads: Sequence[Workload | Skipped],
    *,
    strategies: Sequence[Strategy] = STRATEGIES,
    repeats: int,
    workers: Sequence[int] | None = None,
    quick: bool = False,
    progress: Progress | None = None,
) -> dict[str, Any]:
    """Time ``workloads`` (Workload or Skipped) and return the JSON-ready report (see ``--json``).

    ``workers`` overrides each workload's sweep.  Blocks for the whole run.
    """
    t_start = time.perf_counter()
    cores = usable_cpu_count()
    busy_at_start = usage.busy_cores()
    progress = progress or Progress(quiet=True)
    prepare(strategies)
    unavailable: dict[str, str] = {}
    report_wl = {}
    for index, wl in enumerate(workloads):
        progress.workload(wl.name, index, len(workloads))
        if isinstance(wl, Skipped):
            report_wl[wl.name] = {"description": wl.description, "available": False, "skipped": wl.reason}
            continue
        sweep = tuple(workers) if workers else worker_sweep(wl.kind, cores)
        by_strategy = _measure(
            wl, strategies, sweep, repeats=repeats, cores=cores, unavailable=unavailable, progress=progress
        )
        _add_ratios(by_strategy, cores)
        report_wl[wl.name] = {
            "description": wl.description,
            "available": True,
            "kind": wl.kind,
            "tasks": len(wl.items),
            "is_async": wl.afn is not None,
            "sweep": list(sweep),
            "strategies": by_strategy,
        }
        report_wl[wl.name]["recommendation"] = recommend(wl.name, report_wl[wl.name], cores, gil_enabled=gil_enabled())
    progress.done()
    gil = gil_enabled()  # after the run: importing an extension that needs the GIL turns it back on
    busy_at_end = usage.busy_cores()  # every pool is closed by now: what remains is other programs
    return {
        "schema": SCHEMA,
        "machine": {
            "usable_cores": cores,
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "build": describe_build(gil=gil),
            "free_threaded": free_threaded_build(),
            "gil_enabled": gil,
            "platform": sys.platform,
            "per_worker_usage": usage.HAVE_PROC,
            "busy_cores_at_start": busy_at_start,
            "busy_cores_at_end": busy_at_end,
        },
        "config": {
            "workloads": [wl.name for wl in workloads],
            "strategies": [s.name for s in strategies],
            "repeats": repeats,
            "workers": list(workers) if workers else None,
            "quick": quick,
            "stdlib_start_method": STDLIB_START_METHOD,
        },
        "workloads": report_wl,
        "parent_peak_rss_bytes": usage.self_peak_rss_bytes(),
        "total_s": time.perf_counter() - t_start,
    }
