"""The strategies ``ferropool compare`` times, each built by a small factory.

A strategy turns a worker count into a :class:`Runner`, which runs one batch of
a workload's tasks and returns their results in order:

============================  ==================================================================
``serial``                    a plain loop in this thread (``async def`` tasks: awaited in turn)
``ThreadPoolExecutor``        stdlib threads
``ProcessPoolExecutor``       stdlib processes, forkserver start method (see ``STDLIB_START_METHOD``)
``ferropool.ThreadPool``      ferropool threads
``ferropool.ProcessPool``     ferropool processes
``ferropool.HybridPool``      P processes x T threads each (``HybridPool(processes=, threads_per_process=)``)
``asyncio``                   one event loop, at most N tasks in flight (see :class:`AsyncioRunner`)
``ferropool.Pool(auto)``      ``ferropool.Pool(strategy="auto")``, which picks its own workers
============================  ==================================================================

Executors receive ``fn(item)`` for a sync task and ``run_async(afn, item)``
(a new event loop per call, in the worker) for an ``async def`` one.  ferropool
classes are looked up with ``getattr`` when a runner is built, so a strategy
whose class this version lacks is reported as unavailable, with the reason, and
lights up without code changes once the class exists.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .tasks import add_one, close_loop_sessions, run_async

__all__ = ["SERIAL", "STDLIB_START_METHOD", "STRATEGIES", "Runner", "Strategy", "Unavailable", "prepare"]

SERIAL = "serial"
# Every pool of a phase stays alive while the others run, so this process has threads; forking
# it (the Linux default before 3.14) can deadlock the children.  forkserver forks from a clean
# single-threaded server instead, and is 3.14's default.
STDLIB_START_METHOD = "forkserver"


class Unavailable(Exception):
    """Raised by a factory whose strategy cannot exist here (a class this version lacks)."""


class Runner:
    """Runs batches of a workload's tasks for one strategy and worker count; ``close()`` releases it.

    ``workers`` is the concurrency actually used (None if the pool does not say), ``shape`` how the
    table shows it.  ``run`` blocks until every task has finished and raises the first task error.
    """

    workers: int | None = 1
    shape: str = "1"

    def run(self, fn: Callable | None, afn: Callable | None, items: Sequence) -> list:
        raise NotImplementedError

    def start(self) -> None:
        """Start every worker now, so that start-up is not timed (submits a few tiny tasks)."""
        self.run(add_one, None, range(2 * (self.workers or 2)))

    def close(self) -> None:
        pass


class SerialRunner(Runner):
    """Calls each task in turn in this thread; ``async def`` tasks are awaited in turn on one loop."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None

    def run(self, fn, afn, items):
        if fn is not None:
            return [fn(x) for x in items]
        if self._loop is None:
            self._loop = asyncio.new_event_loop()

        async def in_turn():
            return [await afn(x) for x in items]

        return self._loop.run_until_complete(in_turn())

    def close(self) -> None:
        _close_loop(self._loop)


class ExecutorRunner(Runner):
    """Submits every task to a ``concurrent.futures.Executor``, then gathers the results in order."""

    def __init__(self, executor: Executor, workers: int | None, shape: str | None = None) -> None:
        self.executor, self.workers = executor, workers
        self.shape = shape or (str(workers) if workers else "auto")

    def run(self, fn, afn, items):
        if fn is not None:
            futures = [self.executor.submit(fn, x) for x in items]
        else:
            futures = [self.executor.submit(run_async, afn, x) for x in items]
        return [f.result() for f in futures]

    def close(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=True)


class AsyncioRunner(Runner):
    """Runs a batch on one event loop (kept for the runner's life) with at most ``workers`` tasks in flight.

    ``async def`` tasks are gathered under a semaphore of ``workers``.  A sync task cannot
    overlap on an event loop by itself, so it goes to ``loop.run_in_executor`` on a thread pool
    of ``workers`` threads, which is what ``asyncio.to_thread`` does (with the loop's default
    pool): for sync work this strategy is threads plus the loop's overhead.
    """

    workers: int

    def __init__(self, workers: int) -> None:
        self.workers, self.shape = workers, str(workers)
        self._loop = asyncio.new_event_loop()
        self._threads = ThreadPoolExecutor(workers, thread_name_prefix="compare-asyncio")

    def run(self, fn, afn, items):
        async def gather():
            limit = asyncio.Semaphore(self.workers)
            loop = asyncio.get_running_loop()

            async def one(x):
                async with limit:
                    if afn is not None:
                        return await afn(x)
                    return await loop.run_in_executor(self._threads, fn, x)

            return await asyncio.gather(*(one(x) for x in items))

        return self._loop.run_until_complete(gather())

    def close(self) -> None:
        _close_loop(self._loop)
        self._threads.shutdown(wait=True, cancel_futures=True)


def _close_loop(loop: asyncio.AbstractEventLoop | None) -> None:
    if loop is not None and not loop.is_closed():
        loop.run_until_complete(close_loop_sessions())
        loop.close()


def _max_workers(pool: Any) -> int | None:
    for attr in ("max_workers", "_max_workers"):
        value = getattr(pool, attr, None)
        if isinstance(value, int):
            return value
    return None


def _ferropool_class(name: str):
    """Return ``ferropool.<name>``; raise :class:`Unavailable` if this version has none."""
    import ferropool  # here, so that a broken build only disables the ferropool rows

    cls = getattr(ferropool, name, None)
    if cls is None:
        raise Unavailable(f"ferropool {ferropool.__version__} has no {name}")
    return cls


# ------------------------------------------------- factories: (workers, cores) -> Runner; None workers: one per core


def _serial(workers: int | None, cores: int) -> Runner:
    return SerialRunner()


def _stdlib_threads(workers: int | None, cores: int) -> Runner:
    workers = workers or cores
    return ExecutorRunner(ThreadPoolExecutor(workers), workers)


def _stdlib_processes(workers: int | None, cores: int) -> Runner:
    workers = workers or cores
    ctx = multiprocessing.get_context(STDLIB_START_METHOD)
    return ExecutorRunner(ProcessPoolExecutor(workers, mp_context=ctx), workers)


def _ferropool_threads(workers: int | None, cores: int) -> Runner:
    workers = workers or cores
    return ExecutorRunner(_ferropool_class("ThreadPool")(max_workers=workers), workers)


def _ferropool_processes(workers: int | None, cores: int) -> Runner:
    workers = workers or cores
    return ExecutorRunner(_ferropool_class("ProcessPool")(max_workers=workers), workers)


def _ferropool_hybrid(workers: int | None, cores: int) -> Runner:
    """One process per core (at most ``workers``), and enough threads in each to reach ``workers``."""
    cls = _ferropool_class("HybridPool")
    workers = workers or cores
    processes = max(1, min(workers, cores))
    threads = math.ceil(workers / processes)
    return ExecutorRunner(
        cls(processes=processes, threads_per_process=threads), processes * threads, f"{processes}x{threads}"
    )


def _asyncio(workers: int | None, cores: int) -> Runner:
    return AsyncioRunner(workers or cores)


def _ferropool_auto(workers: int | None, cores: int) -> Runner:
    pool = _ferropool_class("Pool")(strategy="auto")
    n = _max_workers(pool)
    return ExecutorRunner(pool, n, f"auto ({n})" if n else "auto")


@dataclass(frozen=True)
class Strategy:
    """A named way to run tasks; ``make(workers, cores)`` builds a runner or raises (see Unavailable).

    ``sweeps``: whether it is timed at each worker count of the sweep (else once, ``workers=None``).
    ``family``: what the recommendation calls it (``threads``, ``processes``, ...).
    """

    name: str
    family: str
    sweeps: bool
    make: Callable[[int | None, int], Runner]


STRATEGIES = (
    Strategy(SERIAL, "serial", False, _serial),
    Strategy("ThreadPoolExecutor", "threads", True, _stdlib_threads),
    Strategy("ProcessPoolExecutor", "processes", True, _stdlib_processes),
    Strategy("ferropool.ThreadPool", "threads", True, _ferropool_threads),
    Strategy("ferropool.ProcessPool", "processes", True, _ferropool_processes),
    Strategy("ferropool.HybridPool", "processes x threads", True, _ferropool_hybrid),
    Strategy("asyncio", "asyncio", True, _asyncio),
    Strategy("ferropool.Pool(auto)", "auto", False, _ferropool_auto),
)


def prepare(strategies: Sequence[Strategy]) -> None:
    """Start the helper processes that outlive any one pool (the stdlib's forkserver), so that
    they are not counted as some pool's workers."""
    if any(s.make is _stdlib_processes for s in strategies):
        from multiprocessing import forkserver

        forkserver.ensure_running()
