"""``ferropool compare``: time built-in workloads serially and with each pool, then recommend one.

For every selected workload (``cpu``: a pure-Python loop that holds the GIL;
``sleep``: blocking I/O that releases it) and every strategy (serial, ferropool
``ThreadPool`` and ``ProcessPool``, stdlib ``ThreadPoolExecutor`` and
``ProcessPoolExecutor``), it submits the workload's tasks, gathers the results,
and repeats; the figure is the median wall time, the speedup is serial's median
over the strategy's.  Each pool is created once, warmed up (its workers started
with a few tiny tasks), reused for every workload and repeat, and always shut
down, even on error or Ctrl-C.  Repeats are interleaved across strategies so
that background load drifting during the run does not favour any of them.

A strategy that cannot be built (say ferropool's core is missing) is reported
as unavailable with the reason; the others still run.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from contextlib import ExitStack
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from statistics import median
from typing import Callable, Optional

from ._workloads import calibrate_spin, sleep_task, spin

__all__ = ["add_arguments", "run"]

SERIAL = "serial"
STRATEGIES = (
    SERIAL,
    "ferropool.ThreadPool",
    "ferropool.ProcessPool",
    "ThreadPoolExecutor",
    "ProcessPoolExecutor",
)
WORKLOAD_NAMES = ("cpu", "sleep")
STDLIB_START_METHOD = "forkserver"
# A pool must beat serial by this factor to be worth recommending over serial,
# and one pool must beat the other by SIGNIFICANT to be preferred for speed.
WORTHWHILE = 1.2
SIGNIFICANT = 1.15


@dataclass(frozen=True)
class Workload:
    """One built-in workload: ``n_tasks`` calls of ``fn(arg)``, each expected to return ``expect``."""

    name: str
    description: str
    fn: Callable
    arg: object
    n_tasks: int
    expect: object
    warmup_arg: object


def build_workloads(names, *, quick: bool) -> list:
    """Return the selected workloads, sized so the default run takes about half a minute on 2 cores.

    Calibrates the CPU loop here (blocks ~0.1-0.4 s) so every strategy runs the same loop count.
    """
    out = []
    for name in names:
        if name == "cpu":
            n_tasks, task_s = (4, 0.01) if quick else (16, 0.1)
            n = calibrate_spin(task_s)
            out.append(Workload("cpu", f"{n_tasks} pure-Python loops of ~{task_s * 1e3:.0f} ms (hold the GIL)",
                                spin, n, n_tasks, spin(n), 1_000))
        elif name == "sleep":
            n_tasks, task_s = (8, 0.005) if quick else (24, 0.05)
            out.append(Workload("sleep", f"{n_tasks} blocking sleeps of {task_s * 1e3:.0f} ms (release the GIL)",
                                sleep_task, task_s, n_tasks, task_s, 0.0))
        else:  # argparse validated the names; this guards direct callers
            raise ValueError(f"unknown workload {name!r}")
    return out


def _make_pool(strategy: str, workers: Optional[int]):
    """Return a new executor for ``strategy`` (None for serial); raise if it cannot be built."""
    if strategy == SERIAL:
        return None
    if strategy == "ThreadPoolExecutor":
        return ThreadPoolExecutor(workers)
    if strategy == "ProcessPoolExecutor":
        # Every pool stays alive during the run, so this process has threads; forking
        # it (the Linux default before 3.14) can deadlock the children.  forkserver
        # forks from a clean single-threaded server instead, and is 3.14's default.
        return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(STDLIB_START_METHOD))
    import ferropool  # imported here so a broken build only disables the ferropool rows

    cls = getattr(ferropool, strategy.split(".", 1)[1])
    return cls(max_workers=workers)


def _max_workers(pool) -> Optional[int]:
    if pool is None:
        return 1
    for attr in ("max_workers", "_max_workers"):
        value = getattr(pool, attr, None)
        if isinstance(value, int):
            return value
    return None


def _run_once(pool, wl: Workload, arg=None, n_tasks=None) -> list:
    arg = wl.arg if arg is None else arg
    n_tasks = wl.n_tasks if n_tasks is None else n_tasks
    if pool is None:
        return [wl.fn(arg) for _ in range(n_tasks)]
    futures = [pool.submit(wl.fn, arg) for _ in range(n_tasks)]
    return [f.result() for f in futures]


def _time_all(workloads, repeats: int, workers: Optional[int], progress) -> dict:
    """Return ``{strategy: {workload: result dict}}``; failures become ``available: False``.

    All pools stay alive together and the repeats are interleaved (repeat 1 of
    every strategy, then repeat 2, ...), so a change in background load during
    the run spreads over all strategies instead of biasing the ones timed last.
    """
    out = {s: {} for s in STRATEGIES}
    with ExitStack() as stack:
        pools = {}
        for strategy in STRATEGIES:
            try:
                pool = _make_pool(strategy, workers)
            except Exception as exc:  # noqa: BLE001 - any failure to build means "unavailable"
                reason = f"cannot create {strategy}: {type(exc).__name__}: {exc}"
                out[strategy] = {wl.name: {"available": False, "error": reason} for wl in workloads}
                continue
            if pool is not None:
                stack.callback(pool.shutdown, wait=True, cancel_futures=True)
            pools[strategy] = pool
        for wl in workloads:
            live, runs = dict(pools), {s: [] for s in pools}
            for strategy, pool in pools.items():
                try:
                    # Warm-up: start every worker and import the workload's module in it.
                    _run_once(pool, wl, wl.warmup_arg, n_tasks=2 * (_max_workers(pool) or 2))
                except Exception as exc:  # noqa: BLE001 - report it, keep timing the others
                    out[strategy][wl.name] = {"available": False, "error": f"warm-up failed: {type(exc).__name__}: {exc}"}
                    del live[strategy]
            for i in range(repeats):
                progress(f"{wl.name}: run {i + 1} of {repeats}")
                for strategy, pool in list(live.items()):
                    try:
                        t0 = time.perf_counter()
                        results = _run_once(pool, wl)
                        runs[strategy].append(time.perf_counter() - t0)
                        if results != [wl.expect] * wl.n_tasks:
                            raise AssertionError(f"wrong results for {wl.name}")
                    except Exception as exc:  # noqa: BLE001 - report it, keep timing the others
                        out[strategy][wl.name] = {"available": False, "error": f"{type(exc).__name__}: {exc}"}
                        del live[strategy]
            for strategy, pool in live.items():
                r = runs[strategy]
                out[strategy][wl.name] = {
                    "available": True,
                    "max_workers": _max_workers(pool),
                    "median_s": median(r),
                    "min_s": min(r),
                    "max_s": max(r),
                    "runs_s": r,
                }
    return out


def _speedup(entry: dict) -> Optional[float]:
    return entry.get("speedup") if entry.get("available") else None


def recommend(wl_name: str, strategies: dict, cores: int) -> str:
    """Return a one-line recommendation for a workload, with the measured reason."""

    def pick(ferro: str, stdlib: str):
        for name in (ferro, stdlib):
            s = _speedup(strategies.get(name, {}))
            if s is not None:
                return name.split(".")[-1], s, strategies[name].get("max_workers")
        return None, None, None

    t_name, ts, t_workers = pick("ferropool.ThreadPool", "ThreadPoolExecutor")
    p_name, ps, p_workers = pick("ferropool.ProcessPool", "ProcessPoolExecutor")
    if ts is None and ps is None:
        return f"{wl_name}: no pool could be measured -> see the errors above"
    ts_txt = "threads could not be measured" if ts is None else f"threads give {ts:.1f}x"
    ps_txt = "processes could not be measured" if ps is None else f"processes give {ps:.1f}x"
    workers_txt = f" with {p_workers} workers" if p_workers else ""
    best = max(s for s in (ts, ps) if s is not None)
    if best < WORTHWHILE:
        return (f"{wl_name}: {ts_txt}, {ps_txt}; the pool overhead eats the gain -> "
                "stay serial, or give each task more work")
    if ps is not None and (ts is None or ps >= ts * SIGNIFICANT):
        why = "work holds the GIL" if ts is not None and ts < WORTHWHILE else "processes scale further"
        return f"{wl_name}: {why}, {ts_txt}; {ps_txt}{workers_txt} on {cores} cores -> use {p_name}"
    why = "work releases the GIL" if ts is not None and ts >= WORTHWHILE else "threads are as fast"
    t_workers_txt = f" with {t_workers} workers" if t_workers else ""
    return (f"{wl_name}: {why}, {ts_txt}{t_workers_txt}; {ps_txt}{workers_txt} -> use {t_name} "
            "(no pickling, no extra processes)")


def run_compare(names, *, repeats: int, workers: Optional[int], quick: bool, progress=lambda msg: None) -> dict:
    """Run the comparison and return its JSON-ready report (see ``ferropool compare --json``)."""
    t_start = time.perf_counter()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workloads = build_workloads(names, quick=quick)
    by_strategy = _time_all(workloads, repeats, workers, progress)
    report_wl = {}
    for wl in workloads:
        strategies = {s: by_strategy[s][wl.name] for s in STRATEGIES}
        serial = strategies[SERIAL]
        for entry in strategies.values():
            if entry.get("available") and serial.get("available"):
                entry["speedup"] = serial["median_s"] / entry["median_s"]
        report_wl[wl.name] = {
            "description": wl.description,
            "tasks": wl.n_tasks,
            "strategies": strategies,
            "recommendation": recommend(wl.name, strategies, cores),
        }
    return {
        "machine": {"usable_cores": cores, "cpu_count": os.cpu_count(), "python": sys.version.split()[0]},
        "config": {"workloads": list(names), "repeats": repeats, "workers": workers, "quick": quick,
                   "stdlib_start_method": STDLIB_START_METHOD},
        "workloads": report_wl,
        "total_s": time.perf_counter() - t_start,
    }


def format_report(report: dict) -> str:
    """Return the human-readable table of a report from :func:`run_compare`."""
    m, cfg = report["machine"], report["config"]
    lines = [f"ferropool compare: {m['usable_cores']} usable cores, Python {m['python']}, "
             f"median of {cfg['repeats']} runs after a warm-up"]
    headers = ("strategy", "workers", "median", "min - max", "speedup")
    for name, wl in report["workloads"].items():
        rows, missing = [], []
        for strategy, e in wl["strategies"].items():
            if not e.get("available"):
                missing.append((strategy, e.get("error", "?")))
                continue
            rows.append((strategy, str(e.get("max_workers") or "default"), _fmt_s(e["median_s"]),
                         f"{_fmt_s(e['min_s'])} - {_fmt_s(e['max_s'])}",
                         f"{e['speedup']:.2f}x" if "speedup" in e else "-"))
        widths = [max([len(h)] + [len(r[i]) for r in rows] + ([len(n) for n, _ in missing] if i == 0 else []))
                  for i, h in enumerate(headers)]
        lines += ["", f"{name}: {wl['description']}"]
        for r in [headers, *rows]:
            lines.append("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        for strategy, error in missing:  # errors can be long: keep them out of the columns
            lines.append(f"  {strategy.ljust(widths[0])}  unavailable: {error}")
        lines.append(f"  -> {wl['recommendation']}")
    lines += ["", f"ProcessPoolExecutor uses the {cfg['stdlib_start_method']} start method "
              "(forking a process whose pools run threads can deadlock).",
              f"Total time: {report['total_s']:.1f} s"]
    return "\n".join(lines)


def _fmt_s(s: float) -> str:
    return f"{s:.2f} s" if s >= 1 else f"{s * 1e3:.1f} ms"


# ---------------------------------------------------------------- command line


def _workload_list(text: str) -> list:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"no workload given (choose from {', '.join(WORKLOAD_NAMES)})")
    for n in names:
        if n not in WORKLOAD_NAMES:
            raise argparse.ArgumentTypeError(f"unknown workload {n!r} (choose from {', '.join(WORKLOAD_NAMES)})")
    return list(dict.fromkeys(names))  # drop duplicates, keep order


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``compare`` subcommand's options to ``parser``."""
    parser.add_argument("--workload", type=_workload_list, default=list(WORKLOAD_NAMES), metavar="LIST",
                        help=f"comma-separated workloads to run (default: {','.join(WORKLOAD_NAMES)})")
    parser.add_argument("--repeats", type=_positive_int, default=None,
                        help="timed runs per strategy and workload (default 3; 2 with --quick)")
    parser.add_argument("--workers", type=_positive_int, default=None,
                        help="max_workers for every pool (default: each pool's own default)")
    parser.add_argument("--quick", action="store_true", help="tiny workloads: a smoke run of a few seconds")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")


def run(args: argparse.Namespace) -> int:
    """Run ``ferropool compare`` with parsed ``args``; print the report; return the exit status."""
    repeats = args.repeats or (2 if args.quick else 3)
    progress = (lambda msg: print(f"  .. {msg}", file=sys.stderr, flush=True)) if sys.stderr.isatty() else (
        lambda msg: None)
    report = run_compare(args.workload, repeats=repeats, workers=args.workers, quick=args.quick, progress=progress)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(format_report(report))
    return 0
