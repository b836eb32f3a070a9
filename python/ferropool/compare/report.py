"""How ``ferropool compare`` shows its results: the recommendation, the table, and the progress line.

The recommendation reads a workload's report (see ``measure.run_compare``) by family:
threads (``ThreadPoolExecutor``, ``ferropool.ThreadPool``), processes, processes
x threads (``HybridPool``), asyncio, and ``auto``; each family's figure is its
best speedup over every worker count.  A family must beat serial by
``WORTHWHILE`` to be recommended at all; among those within ``SIGNIFICANT`` of
the fastest, the cheapest to run wins (threads before processes; for
``async def`` work, asyncio first).  Within a family, ferropool's class is named
unless the stdlib's is faster by more than ``SIGNIFICANT``; the worker count is
the smallest within 5 % of that class's best.

The reasons given depend on the interpreter: with the GIL on, threads that do not
scale are put down to the GIL; on a free-threaded build running without it,
threads are expected to run CPU-bound work in parallel, so they are preferred
whenever they are within ``SIGNIFICANT`` of processes (no pickling, shared
memory), and threads that do not scale are put down to the work itself.
"""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from .. import _interpreter
from .strategies import SERIAL, STRATEGIES

__all__ = ["SIGNIFICANT", "WORTHWHILE", "Progress", "format_report", "recommend"]

WORTHWHILE = 1.2
SIGNIFICANT = 1.15
NEAR_BEST = 1.05
# Other programs keeping this many cores busy when the run starts or ends distort CPU-bound figures.
BUSY_CORES = 0.3
# Serial CPU-bound work that gets less than this share of a core was kept waiting by other programs.
FULL_CORE = 0.85
FAMILY = {s.name: s.family for s in STRATEGIES}


def _best_row(entry: dict[str, Any]) -> dict[str, Any] | None:
    """Return the row with the fewest workers among those within NEAR_BEST of the entry's best speedup."""
    rows: list[dict[str, Any]] = [r for r in entry.get("by_workers", []) if r.get("available") and "speedup" in r]
    if not rows:
        return None
    top = max(r["speedup"] for r in rows)
    return next(r for r in rows if r["speedup"] >= top / NEAR_BEST)


def _family_best(strategies: dict[str, Any]) -> dict[str, tuple[float, str, dict[str, Any]]]:
    """Return ``{family: (speedup, strategy name, row)}`` for every family with a timed row."""
    best: dict[str, tuple[float, str, dict[str, Any]]] = {}
    for name, entry in strategies.items():
        family = FAMILY.get(name)
        row = _best_row(entry)
        if family in (None, SERIAL) or row is None:
            continue
        current = best.get(family)
        if current is None:
            best[family] = (row["speedup"], name, row)
            continue
        # ferropool's class keeps its place unless the other is faster by more than SIGNIFICANT
        mine_is_ferropool = name.startswith("ferropool.")
        theirs = current[0] * (1 if mine_is_ferropool else SIGNIFICANT)
        mine = row["speedup"] * (SIGNIFICANT if mine_is_ferropool else 1)
        if mine > theirs:
            best[family] = (row["speedup"], name, row)
    return best


def _x(speedup: float) -> str:
    return f"{speedup:.1f}x" if speedup >= 0.1 else f"{speedup:.2g}x"


def _overhead(wl: dict[str, Any], row: dict[str, Any]) -> str:
    """Return ', ~N us per task against M us of work' when the work per task is tiny, else ''."""
    serial = _best_row(wl["strategies"].get(SERIAL, {}))
    tasks = wl.get("tasks")
    if not serial or not tasks or "median_s" not in serial or row["speedup"] >= 0.5:
        return ""
    work, cost = serial["median_s"] / tasks, row["median_s"] / tasks
    return f": {cost * 1e6:.1f} us per task against {work * 1e6:.2g} us of work"


def _use(name: str, row: dict[str, Any]) -> str:
    """Return how to write the recommended strategy in code."""
    if name == "asyncio":
        return f"asyncio (gather under an asyncio.Semaphore({row['workers']}))"
    if name.endswith("HybridPool"):
        processes, _, threads = row["shape"].partition("x")
        return f"{name}(processes={processes}, threads_per_process={threads})"
    if name.endswith("Pool(auto)"):
        return 'ferropool.Pool(strategy="auto")'
    return f"{name}(max_workers={row['workers']})"


def recommend(wl_name: str, wl: dict[str, Any], cores: int, *, gil_enabled: bool | None = None) -> str:
    """Return a one-line recommendation for a workload's report, with the measured reason.

    ``gil_enabled``: whether the GIL was on for the measurements (default: whether it is on now)."""
    gil = _interpreter.gil_enabled() if gil_enabled is None else gil_enabled
    return _recommend(wl_name, wl, cores, gil) + _contention(wl, cores)


def _recommend(wl_name: str, wl: dict[str, Any], cores: int, gil: bool) -> str:
    best = _family_best(wl["strategies"])
    if not best:
        return f"{wl_name}: nothing could be measured against serial -> see the errors above"
    top = max(b[0] for b in best.values())

    def fig(family: str) -> str:
        return f"{best[family][0]:.1f}x" if family in best else "n/a"

    if top < WORTHWHILE:
        speedup, name, row = max(best.values(), key=lambda b: b[0])
        return (
            f"{wl_name}: the pools' overhead eats the gain (best: {name} {_x(speedup)} with "
            f"{_workers(row)}{_overhead(wl, row)}) -> stay serial, or give each task more work"
        )
    order = ["threads", "processes", "processes x threads", "auto", "asyncio"]
    if wl.get("is_async"):
        order.remove("asyncio")
        order.insert(0, "asyncio")
    family = next(f for f in order if f in best and best[f][0] * SIGNIFICANT >= top)
    speedup, name, row = best[family]
    workers = _workers(row)
    if family == "processes":
        if "threads" in best and best["threads"][0] < WORTHWHILE:
            if gil:
                why = f"the GIL serialises threads ({fig('threads')}); processes give {speedup:.1f}x on {cores} cores"
            else:
                why = (
                    f"threads do not scale ({fig('threads')}) although the GIL is disabled: the work "
                    f"itself serialises them (a lock, shared objects); processes give {speedup:.1f}x on {cores} cores"
                )
        else:
            why = f"processes scale further: {speedup:.1f}x with {workers}, threads {fig('threads')}"
    elif family == "threads":
        reason = (
            "the GIL is disabled, so threads run the work in parallel"
            if not gil
            else "the work releases the GIL or waits"
        )
        why = (
            f"{reason}: threads give {speedup:.1f}x with {workers}, "
            f"processes {fig('processes')}, and threads need no pickling"
        )
    elif family == "asyncio":
        why = (
            f"asyncio gives {speedup:.1f}x with {row['workers']} tasks in flight on one thread; "
            f"threads {fig('threads')}, processes {fig('processes')}"
        )
    else:
        why = f"{name} gives {speedup:.1f}x with {workers}; threads {fig('threads')}, processes {fig('processes')}"
    return f"{wl_name}: {why} -> use {_use(name, row)}"


def _contention(wl: dict[str, Any], cores: int) -> str:
    """Return a caution to append when serial CPU-bound work did not get a whole core, else ''."""
    serial = _best_row(wl["strategies"].get(SERIAL, {}))
    util = serial.get("cpu_utilisation") if serial else None
    if wl.get("kind") != "cpu" or util is None or util * cores >= FULL_CORE:
        return ""
    return (
        f" (caution: serial got {util * cores:.2f} of a core, other programs competed for the CPU: "
        "these figures understate what pools can do)"
    )


# ---------------------------------------------------------------- the table


def _fmt_s(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    return f"{s * 1e3:.1f} ms" if s >= 1e-3 else f"{s * 1e6:.0f} us"


def _workers(row: dict[str, Any]) -> str:
    return f"{row['shape']} worker" + ("" if row["shape"] == "1" else "s")


def _fmt_mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:.0f} MiB"


HEADERS = ("strategy", "workers", "median", "min - max", "speedup", "eff/core", "CPU", "workers' RSS")


def format_report(report: dict[str, Any]) -> str:
    """Return the human-readable table of a report from ``measure.run_compare``."""
    m, cfg = report["machine"], report["config"]
    build = m.get("build") or f"Python {m['python']}"  # reports written before "build" existed
    lines = [
        f"ferropool compare: {m['usable_cores']} usable cores, {build}, "
        f"median of {cfg['repeats']} runs after a warm-up, at each worker count"
    ]
    unavailable: dict[str, str] = {}  # the same for every workload: said once, below the tables
    for name, wl in report["workloads"].items():
        lines += ["", f"{name}: {wl['description']}"]
        if not wl.get("available"):
            lines.append(f"  skipped: {wl['skipped']}")
            continue
        rows, notes = [], []
        for strategy, entry in wl["strategies"].items():
            first = True
            for r in entry.get("by_workers", []):
                label = strategy if first else ""
                first = False
                if not r["available"]:
                    notes.append(f"  {strategy} with {r['shape']} workers failed: {r['error']}")
                    continue
                rows.append(
                    (
                        label,
                        r["shape"],
                        _fmt_s(r["median_s"]),
                        f"{_fmt_s(r['min_s'])} - {_fmt_s(r['max_s'])}",
                        f"{r['speedup']:.2f}x" if "speedup" in r else "-",
                        f"{r['efficiency']:.2f}" if "efficiency" in r else "-",
                        "-" if r["cpu_utilisation"] is None else f"{r['cpu_utilisation'] * 100:.0f}%",
                        _fmt_mib(r.get("workers_peak_rss_bytes")),
                    )
                )
            if not entry.get("by_workers") and not entry.get("available"):
                error = entry.get("error", "?")
                if error.startswith("unavailable: "):
                    unavailable.setdefault(strategy, error)
                else:
                    notes.append(f"  {strategy}: {error}")
        widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(HEADERS)]
        for r in [HEADERS, *rows]:
            lines.append("  " + "  ".join(c.ljust(wd) for c, wd in zip(r, widths, strict=True)).rstrip())
        lines += notes  # errors can be long: keep them out of the columns
        lines.append(f"  -> {wl['recommendation']}")
    lines.append("")
    lines += [f"{strategy}: {error}" for strategy, error in unavailable.items()]
    lines += [
        "eff/core: speedup / min(workers, cores).  CPU: CPU time of this process and the workers over "
        "wall time, share of all cores",
        "  ('-': batches too short for the kernel's 10 ms CPU clock).",
        f"workers' RSS: peak resident memory of the pool's processes; this process peaked at "
        f"{_fmt_mib(report['parent_peak_rss_bytes'])}.",
        f"ProcessPoolExecutor uses the {cfg['stdlib_start_method']} start method (forking a process whose "
        "pools run threads can deadlock).",
        f"Total time: {report['total_s']:.1f} s",
    ]
    for when in ("start", "end"):
        busy = m.get(f"busy_cores_at_{when}")
        if busy is not None and busy >= BUSY_CORES:
            lines.append(
                f"Warning: other programs kept {busy:.1f} cores busy when the run {when}ed, so the figures "
                "for CPU-bound work may understate what pools can do here."
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- progress


class Progress:
    """Shows where the run is on stderr: one updating line on a terminal, a line per workload otherwise.

    ``quiet`` shows nothing.  Never raises on a closed stream.
    """

    def __init__(self, *, quiet: bool = False, stream: TextIO | None = None) -> None:
        self.stream = sys.stderr if stream is None else stream
        self.quiet = quiet
        self.tty = not quiet and self.stream.isatty()
        self.t0 = time.perf_counter()
        self.prefix = ""

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.quiet = True

    def workload(self, name: str, index: int, total: int) -> None:
        """Announce that workload ``index`` (0-based) of ``total`` starts."""
        self.prefix = f"[{index + 1}/{total}] {name}"
        if not self.quiet and not self.tty:
            self._write(f"ferropool compare: {self.prefix} ({time.perf_counter() - self.t0:.0f} s elapsed)\n")

    def step(self, text: str) -> None:
        """Show ``text`` as the current step (terminal only)."""
        if self.tty:
            line = f"ferropool compare [{self.prefix.split(']')[0][1:]}] {text}  {time.perf_counter() - self.t0:.0f} s"
            self._write("\r\033[K" + line[:150])

    def done(self) -> None:
        if self.tty:
            self._write("\r\033[K")
