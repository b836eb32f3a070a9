"""The clocks and meters behind the probe's samples: a call's wall and CPU time, the pickled size
of its arguments and result, and how long a thread sat waiting for a CPU behind other programs.

Everything that reads a clock lives here; ``probe.py`` only does arithmetic on what it is given.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import pickle
import time
from collections.abc import Callable
from typing import Any

from .._core import runqueue_wait_ns
from .probe import Sizes

__all__ = ["Call", "measure_sizes", "run_measured", "runqueue_wait_s"]


class Call:
    """One call waiting for, or run by, the probe."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(
        self, future: cf.Future[Any], fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


def runqueue_wait_s() -> float | None:
    """Returns the seconds this thread has spent runnable but waiting for a CPU (Linux
    ``schedstat``), or None where that cannot be read. Waiting for the GIL is sleeping, not
    this: it only grows when other threads hold every core. Read in Rust without giving the GIL
    away: a Python file read would, and winning it back from a thread running pure-Python code
    takes up to a switch interval per system call."""
    ns = runqueue_wait_ns()
    return None if ns is None else ns / 1e9


def queued_since(q0: float | None) -> float | None:
    """Seconds this thread waited for a CPU since ``runqueue_wait_s()`` returned ``q0``; None
    where that cannot be read."""
    if q0 is None:
        return None
    q1 = runqueue_wait_s()
    return None if q1 is None else q1 - q0


def run_measured(
    call: Call,
    with_sizes: bool = False,
    record: Callable[[tuple[float, float], Sizes | None], None] | None = None,
) -> tuple[tuple[float, float] | None, Sizes | None, float]:
    """Runs ``call`` unless it was cancelled, delivers its outcome to its future, and returns its
    (wall, CPU) seconds (None if cancelled), ``with_sizes`` what its arguments and result pickle
    to, and the seconds its thread waited for a CPU during the call, which are already taken out
    of the wall time (never below the CPU time): other programs' load is not the function's
    waiting. Both are measured, and passed to ``record``, before the future is settled: whoever
    waits for it then finds the call counted."""
    if not call.future.set_running_or_notify_cancel():
        return None, None, 0.0
    failed = None
    q0 = runqueue_wait_s()  # read outside the timed span: it costs a few microseconds
    t0 = time.perf_counter()
    c0 = time.thread_time()
    try:
        result = call.fn(*call.args, **call.kwargs)
    except BaseException as exc:  # delivered to the future, as a pool's worker would
        failed = exc
        result = None
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    queued = max(0.0, min(queued_since(q0) or 0.0, wall - cpu))
    wall -= queued
    sizes = measure_sizes(call, result) if with_sizes else None
    if record is not None:
        record((wall, cpu), sizes)
    if failed is not None:
        call.future.set_exception(failed)
        del failed
    else:
        call.future.set_result(result)
    return (wall, cpu), sizes, queued


def measure_sizes(call: Call, result: Any) -> Sizes:
    """Returns what ``call``'s arguments and ``result`` pickle to and how long that takes."""
    try:
        arg_bytes, arg_s = _pickled((call.args, call.kwargs))
        result_bytes, result_s = _pickled(result)
    except Exception:  # a lock, a socket, a lambda as argument...: no process can take it
        return Sizes.unpicklable()
    return Sizes(arg_bytes, result_bytes, arg_s + result_s, True)


def _pickled(obj: Any) -> tuple[int, float]:
    """Returns the bytes ``obj`` pickles to (protocol 5; out-of-band buffers counted by size,
    not copied) and the seconds pickling took."""
    oob = 0

    def count(buf: pickle.PickleBuffer) -> bool:
        nonlocal oob
        oob += buf.raw().nbytes
        return False  # keep it out of band: it would be sent through shared memory

    best = math.inf
    for _ in range(2):  # the first pickle of a type pays for warming up; take the faster
        oob = 0
        t0 = time.perf_counter()
        data = pickle.dumps(obj, protocol=5, buffer_callback=count)
        best = min(best, time.perf_counter() - t0)
    return len(data) + oob, best
