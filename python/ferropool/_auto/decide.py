"""The decision model of ``Pool(strategy="auto")``: from the figures measured on a function's
first calls to a strategy, and the words ``explain()`` uses to say why.

``decide`` estimates the time per call of each strategy — serial, threads, processes, hybrid,
asyncio — from ``Figures`` (wall and CPU time per call, the 2-thread speedup, pickled sizes, free
cores, whether the GIL is on) and the per-task overheads in ``OVERHEAD_S``, and takes the simplest one within
``TOLERANCE`` of the fastest. It measures nothing itself (``probe.py`` and ``measure.py`` do), so it
is tested with made-up figures.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

#: What ``strategy=`` accepts.
STRATEGIES = ("auto", "serial", "threads", "processes", "hybrid", "asyncio")

#: Calls measured before deciding, at least (the solo and pair steps together).
PROBE_CALLS = 3
#: A solo step runs at most this many calls, or stops once it has run this long. Solo calls
#: use one core while the chosen pool would have used them all: 10 ms keeps two samples for
#: calls of 5-10 ms (one for longer ones) without spending a large share of a short map alone.
SOLO_CALLS = 8
SOLO_BUDGET_S = 0.01
#: Calls shorter than this are not worth a pair step: no pool can beat running them here.
PAIR_MIN_S = 20e-6
#: A pair step gives each thread enough calls to run about this long (at most PAIR_MAX_CALLS).
PAIR_TARGET_S = 0.002
PAIR_MAX_CALLS = 16
#: A strategy simpler than the fastest estimate is kept if it is within this factor of it.
TOLERANCE = 1.10
#: The pair's threads waiting for a CPU this share of the pair's span or more means other
#: programs keep cores busy: then only the cores the pair got count as free.
BUSY_MACHINE = 0.2
#: Calls at least this long, CPU-bound alone and picklable, that held the GIL while run alone
#: (see GIL_SAMPLE_S) are decided as their pair step starts, if the decision is a process or
#: hybrid pool: that pool then boots on the core the pair leaves idle rather than after the pair.
EARLY_MIN_S = 0.005
#: A helper thread samples, during solo calls, how late it gets the GIL after waiting this long
#: (``sampler.GilSampler``): half the switch interval late or more means the calls held it.
GIL_SAMPLE_S = 0.001
#: map keeps at most this many of its items queued for, or running on, the probe.
MAP_PROBE_AHEAD = 16
#: CPU/wall below this: the calls mostly wait (I/O, sleep), so threads can outnumber cores.
WAITING = 0.5

#: Time one task costs the calling process on each pool, in seconds: ``submit`` (and its
#: result) on the left, one item of ``map`` (batched into chunks) on the right. From
#: benchmarks/bench_pools.py on a 2-core machine (README, Benchmarks): ProcessPool 6-13 us per
#: submitted task and 0.4-0.5 us per map item, ThreadPool 6-10 us and 0.45 us; rounded up.
OVERHEAD_S = {
    "serial": (1e-6, 0.0),
    "threads": (10e-6, 0.5e-6),
    "processes": (15e-6, 1e-6),
    "hybrid": (15e-6, 1e-6),
}
#: Seconds per byte of an argument or result a process pool moves out of band (through a
#: shared memory file: about 2 GB/s to write it, and as much again to read it; README).
SHARED_MEMORY_S_PER_BYTE = 1e-9


@dataclass(frozen=True)
class Figures:
    """What the probe measured of one function. Times are medians, in seconds."""

    calls: int  # calls measured (solo and pair)
    wall_s: float  # per call, run alone
    cpu_s: float  # per call, run alone (thread CPU time)
    pair_speedup: float | None  # 2 threads against one after another; None: not measured
    arg_bytes: int | None  # pickled size of one call's arguments (in band + out of band)
    result_bytes: int | None
    pickle_s: float | None  # pickling the arguments and the result once (in band)
    picklable: bool
    via_map: bool  # the calls came from map (batched) rather than submit
    cores: int  # usable by this process
    free_cores: float | None = None  # busy with the pair or idle during it (others' load excluded)
    gil_enabled: bool = True  # False on a free-threaded build running without the GIL

    @property
    def cpu_ratio(self) -> float:
        return self.cpu_s / self.wall_s if self.wall_s > 0 else 1.0


@dataclass(frozen=True)
class Decision:
    """Where a function's calls run, and why: ``strategy`` (one of ``STRATEGIES`` but auto),
    ``workers`` (threads, processes, ``(processes, threads)`` for hybrid, tasks in flight for
    asyncio; 1 for serial), the ``rule`` that fired, and the ``figures`` and per-call
    ``estimates`` (seconds per strategy) it came from (None and {} when not measured)."""

    strategy: str
    workers: Any
    rule: str
    figures: Figures | None = None
    estimates: dict[str, float] = field(default_factory=dict)


def decide(
    fig: Figures, *, max_workers: int | None = None, io_workers: int | None = None, hybrid: bool = False
) -> Decision:
    """Returns the strategy whose estimated time per call is lowest, preferring the simpler of
    two within ``TOLERANCE`` (serial < threads < processes < hybrid).

    The model, per call of wall time ``d``, CPU time ``c``, on ``P`` cores:

    - serial: ``d``;
    - threads (n): ``max(d / n, c / P, h)`` + overhead, where ``h``, the time a call holds the
      GIL, comes from the 2-thread speedup ``g`` (Amdahl: ``h = d * (2 / g - 1)``); unmeasured,
      ``h`` is the CPU time ``c``. With the GIL off (``fig.gil_enabled`` False) ``h`` is 0:
      threads run CPU-bound calls in parallel, and the pair's speedup only informs free cores;
    - processes (n <= P): ``max(d / n, c / P)`` + overhead + pickling + shared-memory copies,
      all paid by the calling process; impossible if the call or its result cannot be pickled;
    - hybrid (P x T): as processes, with ``P * T`` calls in flight and ``h / P`` per call.
    """
    usable = max(1, fig.cores)
    io_workers = io_workers or max_workers or min(32, 4 * usable)
    cpu_workers = max_workers or usable
    cores: float = usable  # the parallel capacity the estimates use
    if fig.free_cores is not None:  # other programs' load: parallel work gets only what is free
        cores = max(1.0, min(float(usable), fig.free_cores))
    d, c = fig.wall_s, min(fig.cpu_s, fig.wall_s)
    waiting = fig.cpu_ratio < WAITING
    if not fig.gil_enabled:
        held = 0.0
    elif fig.pair_speedup is None:
        held = c
    else:
        held = d * min(1.0, max(0.0, 2.0 / max(fig.pair_speedup, 1e-9) - 1.0))
    column = 1 if fig.via_map else 0
    thread_n = io_workers if waiting else cpu_workers
    proc_n = min(cpu_workers, usable) if not waiting else min(max_workers or usable, io_workers)
    moved = (fig.arg_bytes or 0) + (fig.result_bytes or 0)
    transfer = (fig.pickle_s or 0.0) + moved * SHARED_MEMORY_S_PER_BYTE
    proc_par = min(proc_n, cores)
    est = {
        "serial": d + OVERHEAD_S["serial"][column],
        "threads": max(d / thread_n, c / cores, held) + OVERHEAD_S["threads"][column],
    }
    workers: dict[str, Any] = {"serial": 1, "threads": thread_n}
    if fig.picklable:
        est["processes"] = (
            max(d / proc_par if not waiting else d / proc_n, c / cores) + OVERHEAD_S["processes"][column] + transfer
        )
        workers["processes"] = proc_n
        if hybrid:
            per = max(1, math.ceil(io_workers / usable)) if waiting or held < d else 1
            est["hybrid"] = (
                max(d / (proc_n * per), c / cores, held / min(cores, proc_n)) + OVERHEAD_S["hybrid"][column] + transfer
            )
            workers["hybrid"] = (usable, per)
    best = min(est.values())
    choice = next(name for name in est if est[name] <= best * TOLERANCE)
    return Decision(choice, workers[choice], _rule(choice, fig, held, transfer), fig, est)


def _rule(choice: str, fig: Figures, held: float, transfer: float) -> str:
    """Names, in words, why ``choice`` won."""
    d = fig.wall_s
    if not fig.gil_enabled:
        return _rule_without_gil(choice, fig, transfer)
    if choice == "serial":
        if d < OVERHEAD_S["threads"][1 if fig.via_map else 0] * 4:
            return "tiny calls: any pool's per-task overhead costs more than the call itself"
        if fig.cpu_ratio >= WAITING and held >= 0.8 * d and not fig.picklable:
            return "holds the GIL and cannot be pickled for processes: nothing runs it faster than a loop"
        return "no pool is estimated to beat a plain loop by more than 10%"
    if choice == "threads":
        if fig.cpu_ratio < WAITING:
            return "waiting (CPU/wall below 0.5): threads overlap the waits, more threads than cores"
        if transfer > 0.25 * d:
            return "releases the GIL and moves large data: threads share it, processes would copy it"
        return "CPU-bound but releases the GIL (2 threads run in parallel): threads, no pickling"
    if choice == "processes":
        return "holds the GIL: only processes run it in parallel"
    return "waits and holds the GIL in turns: processes for the GIL, threads in each for the waits"


def _rule_without_gil(choice: str, fig: Figures, transfer: float) -> str:
    """``_rule`` for a free-threaded interpreter running without the GIL."""
    if choice == "serial":
        if fig.wall_s < OVERHEAD_S["threads"][1 if fig.via_map else 0] * 4:
            return "tiny calls: any pool's per-task overhead costs more than the call itself"
        return "no pool is estimated to beat a plain loop by more than 10%"
    if choice == "threads":
        if fig.cpu_ratio < WAITING:
            return "waiting (CPU/wall below 0.5): threads overlap the waits, more threads than cores"
        if transfer > 0.25 * fig.wall_s:
            return "GIL disabled: threads run the calls in parallel and share their data, processes would copy it"
        return "CPU-bound and the GIL is disabled: threads run the calls in parallel, no pickling"
    return "GIL disabled, yet processes are estimated faster than threads here"
