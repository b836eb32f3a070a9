"""``Pool(strategy="auto")``: measures a function's first calls, then runs the rest where they go fastest.

A function's life in the pool (decisions are per callable: one pool may run several)::

    submit(fn, ...) / map(fn, ...)
      │  no plan for fn yet: the call is queued on fn's _Plan and a probe step starts
      ▼
    probe steps, on helper threads of this process (each call is real work; its result
    goes to its future, nothing runs twice):
      1. solo: calls one after another (up to SOLO_CALLS or SOLO_BUDGET_S): wall time
         (perf_counter, less any time the thread sat queued for a CPU behind other programs)
         and CPU time (thread_time) of each call; the first call's arguments and result are
         pickled once, to learn their size and the cost of sending them; meanwhile a helper
         thread (_GilSampler) notes how late it gets the GIL back after short naps: about a
         switch interval late means the calls hold the GIL
      2. pair: two threads start together on the next calls; their CPU time over the span
         they took gives the 2-thread speedup (~1: the code holds the GIL; ~2: it releases it);
         a pair whose threads waited for CPUs is run once more before that is believed.
         Calls of EARLY_MIN_S or more that a process pool would take if they hold the GIL are
         decided as the pair starts when the solo calls' GIL samples say "held", so that the
         process pool boots on the core the pair leaves idle (the pair's calls still finish);
         with no samples to go by, a third thread watches the pair's first stretch instead
      │
      ▼
    decide(Figures) -> Decision: estimates the time per call of each strategy from the
    figures and per-task overheads, takes the simplest one within TOLERANCE of the fastest
      │
      ▼
    calls queued meanwhile, and every later call, go to the chosen backend: serial (in the
    calling thread), a ThreadPool, a ProcessPool, a HybridPool, or a private event loop

``async def`` functions skip the probe: they run as tasks on the pool's event loop. A forced
``strategy=`` skips it too. ``map`` measures its first items in the calling thread (it blocks
for the probe anyway), then chains their results with the chosen pool's own ``map`` of the
rest, or, when serial, returns one ``PrefixedMap`` (``_core``): the probed results, then ``fn``
over the rest at the built-in ``map``'s cost per item. ``map_async`` (``AsyncMixin``) goes
through ``_submit_chunk``.
"""

from __future__ import annotations

import _thread
import collections
import concurrent.futures as cf
import inspect
import itertools
import math
import pickle
import statistics
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from .._core import PrefixedMap, runqueue_wait_ns
from .._executor import _PARTIAL, PoolExecutor, run_chunk
from .._process import usable_cpu_count
from .decide import (
    BUSY_MACHINE,
    EARLY_MIN_S,
    GIL_HELD_USE,
    GIL_SAMPLE_S,
    MAP_PROBE_AHEAD,
    PAIR_MAX_CALLS,
    PAIR_MIN_S,
    PAIR_TARGET_S,
    PROBE_CALLS,
    SOLO_BUDGET_S,
    SOLO_CALLS,
    STRATEGIES,
    WAITING,
    Decision,
    Figures,
    decide,
    describe,
)

__all__ = ["STRATEGIES", "Decision", "Figures", "Pool", "decide"]


class _Call:
    """One call waiting in, or run by, the probe."""

    __slots__ = ("args", "fn", "future", "kwargs")

    def __init__(self, future: cf.Future, fn: Callable[..., Any], args: tuple, kwargs: dict):
        self.future, self.fn, self.args, self.kwargs = future, fn, args, kwargs


class _Plan:
    """One function's probe and decision; everything mutable is guarded by the pool's lock."""

    def __init__(self, name: str, lock: threading.Lock):
        self.name = name
        self.changed = threading.Condition(lock)  # a probed call finished, or a decision
        self.decision: Decision | None = None
        self.backend: Any = None  # set with decision
        self.pending: collections.deque[_Call] = collections.deque()
        # Calls the decision sent to the backend: (their future, the backend's future or what
        # its submit raised), to be joined by _hand_off outside the lock.
        self.handoff: list[tuple[cf.Future, Any]] = []
        self.solo: list[tuple[float, float]] = []  # (wall, cpu) per call
        self.pair_calls = 0
        self.pair_speedup: float | None = None
        self.free_cores: float | None = None
        self.pair_done = False
        self.sizes: tuple[int | None, int | None, float | None, bool] | None = None
        self.via_map = False
        self.stepping = False
        self.watched: float | None = None  # cores the pair's threads used as _watch_pair looked
        self.rechecked = False  # the pair was run again: other programs held the cores the first time
        self.solo_queued = 0.0  # seconds the solo calls spent queued for a CPU (taken out of their wall)
        self.gil_late: float | None = None  # median seconds _GilSampler waited for the GIL during solo calls


def _name_of(fn: Callable[..., Any]) -> str:
    inner = getattr(fn, "func", fn)  # functools.partial
    module = getattr(inner, "__module__", None) or "?"
    return f"{module}.{getattr(inner, '__qualname__', None) or type(inner).__name__}"


def _key_of(fn: Callable[..., Any]) -> Any:
    try:
        hash(fn)
    except TypeError:
        return ("id", id(fn))
    return fn


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


def _measure_sizes(call: _Call, result: Any) -> tuple[int | None, int | None, float | None, bool]:
    try:
        arg_bytes, arg_s = _pickled((call.args, call.kwargs))
        result_bytes, result_s = _pickled(result)
    except Exception:  # a lock, a socket, a lambda as argument...: no process can take it
        return None, None, None, False
    return arg_bytes, result_bytes, arg_s + result_s, True


def _run_coroutine(afn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs ``afn(*args, **kwargs)`` to completion on a new event loop (a coroutine function
    forced onto threads, processes or serial)."""
    import asyncio

    return asyncio.run(afn(*args, **kwargs))


# --------------------------------------------------------------------- backends


class _Serial:
    """Runs each call at once in the calling thread; returns finished futures."""

    _max_workers = 1

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        fut: cf.Future = cf.Future()
        fut.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            fut.set_exception(exc)
        except BaseException as exc:  # Ctrl-C and the like stop the caller, as a loop would
            fut.set_exception(exc)
            raise
        else:
            fut.set_result(result)
        return fut

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        return self.submit(run_chunk, fn, items)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class _EventLoop:
    """A private event loop on its own thread (``EventLoopThread``); coroutine calls run there
    as tasks, at most ``limit`` at a time. Sync callables given to it go to ``threads``."""

    def __init__(self, limit: int, threads: Callable[[], Any]):
        from .._thread import EventLoopThread

        self._max_workers = limit
        self._threads = threads
        self._loop = EventLoopThread("ferropool-auto-loop")
        self._limit: Any = None  # an asyncio.Semaphore, made on the loop

    async def _limited(self, afn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        import asyncio

        if self._limit is None:
            self._limit = asyncio.Semaphore(self._max_workers)
        async with self._limit:
            return await afn(*args, **kwargs)

    async def _chunk(self, afn: Callable[..., Any], items: list) -> tuple[list, int]:
        start = time.perf_counter_ns()
        out: list = []
        try:
            for args in items:
                out.append(await self._limited(afn, args, {}))
        except BaseException as exc:
            setattr(exc, _PARTIAL, out)
            raise
        return out, time.perf_counter_ns() - start

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        if not inspect.iscoroutinefunction(fn):
            return self._threads().submit(fn, *args, **kwargs)
        return self._loop.submit(self._limited(fn, args, kwargs))

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        if not inspect.iscoroutinefunction(fn):
            return self._threads()._submit_chunk(fn, items)
        return self._loop.submit(self._chunk(fn, items))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._loop.close(wait, cancel_futures)


# ------------------------------------------------------------------------ pool


class Pool(PoolExecutor):
    """An executor that picks, per function, how to run its calls: serially in the calling
    thread, on threads, on processes, on a ``HybridPool`` (processes x threads, where this
    version of ferropool has one) or on an event loop (``async def`` functions).

    With ``strategy="auto"`` (the default) the first calls of each function are measured before
    any pool is chosen: they run on helper threads of this process, first one after another and
    then two at a time. So **the first few calls of a function run in this process** whatever is
    chosen afterwards (mind side effects that expect a separate process). Their results and
    exceptions reach their futures as any other's; nothing runs twice. ``explain()`` says what
    was chosen for each function and from which figures; ``decisions`` holds the same as data.
    ``strategy=`` one of ``"serial"``, ``"threads"``, ``"processes"``, ``"hybrid"``,
    ``"asyncio"`` forces that strategy for every function (``"asyncio"``: coroutine functions
    on the event loop, other callables on threads); an unknown name raises ``ValueError``.

    ``max_workers`` caps the workers of whatever pool is chosen; by default CPU-bound work gets
    one thread or process per usable core and waiting work ``min(32, 4 * cores)`` threads (or
    coroutines in flight). Pools are created when first chosen and shut down by ``shutdown``.
    With the serial strategy ``submit`` runs the call before returning (a finished future) and
    ``map`` runs chunks on its own feeder thread. ``probe_calls`` is how many calls are
    measured at least before deciding.
    """

    _task_timeout = None

    def __init__(self, max_workers: int | None = None, *, strategy: str = "auto", probe_calls: int = PROBE_CALLS):
        if strategy not in STRATEGIES:
            raise ValueError(f"unknown strategy {strategy!r}: expected one of {', '.join(map(repr, STRATEGIES))}")
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if isinstance(probe_calls, bool) or not isinstance(probe_calls, int) or probe_calls < 2:
            raise ValueError("probe_calls must be an integer >= 2")
        self._strategy = strategy
        self._cores = usable_cpu_count()
        self._requested_workers = max_workers
        self._io_workers = max_workers or min(32, 4 * self._cores)
        # The most calls any chosen pool runs at once; map's window is sized from it.
        self._max_workers = max(self._io_workers, max_workers or self._cores)
        self._probe_calls = probe_calls
        self._lock = threading.Lock()
        self._plans: dict[Any, _Plan] = {}
        self._backends: dict[tuple, Any] = {}
        self._probe_threads: set[threading.Thread] = set()
        self._closed = False

    # ---------------------------------------------------------------- public

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Schedules ``fn(*args, **kwargs)`` and returns its ``concurrent.futures.Future``.

        While ``fn`` is being measured the call is queued for the probe and returns at once;
        afterwards it goes to the chosen pool's ``submit`` (serial: runs here, then returns).
        Raises ``RuntimeError`` after ``shutdown``, and what the chosen pool's ``submit``
        raises (``SerializationError`` for an unpicklable call on processes).
        """
        plan = self._plan(fn)
        backend = plan.backend
        if backend is not None and not self._closed:
            return backend.submit(fn, *args, **kwargs)
        return self._queue(plan, [_Call(cf.Future(), fn, args, kwargs)])[0]

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        plan = self._plan(fn)
        backend = plan.backend
        if backend is not None and not self._closed:
            return (
                backend._submit_chunk(fn, items)
                if hasattr(backend, "_submit_chunk")
                else backend.submit(run_chunk, fn, items)
            )
        futures = self._queue(plan, [_Call(cf.Future(), fn, args, {}) for args in items], via_map=True)
        return _gather_chunk(futures)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Any,
        timeout: float | None = None,
        chunksize: int | None = None,
        progress: Any = None,
    ) -> Any:
        """Returns an iterator of ``fn(*args)`` for ``args`` in ``zip(*iterables)``, in order.

        Lazy on its input. While ``fn`` is being measured, its first items (at most
        ``MAP_PROBE_AHEAD`` at a time) go to the probe; once decided, the rest goes to the chosen
        pool's ``map`` (chunked, bounded, ``chunksize``/``progress`` as there) or, for the serial
        strategy, to the built-in ``map`` in the consuming thread, which no ``timeout`` can
        interrupt. An exception raised by ``fn`` is raised when its item is reached; leaving
        the loop early cancels what has not started. Raises ``RuntimeError`` after ``shutdown``.
        """
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        plan = self._plan(fn)
        deadline = None if timeout is None else time.monotonic() + timeout
        its = [iter(it) for it in iterables]
        if plan.backend is None or self._closed:
            return self._probing_map(plan, fn, its, deadline, chunksize, progress)
        return self._decided_map(plan, fn, its, deadline, chunksize, progress)

    def _decided_map(self, plan: _Plan, fn, its: list, deadline, chunksize, progress) -> Any:
        backend = plan.backend
        if isinstance(backend, _Serial):
            return map(fn, *its)
        if isinstance(backend, (_EventLoop, _CoroutineAdapter)):
            return PoolExecutor.map(self, fn, *its, timeout=_left(deadline), chunksize=chunksize, progress=progress)
        return backend.map(fn, *its, timeout=_left(deadline), chunksize=chunksize, progress=progress)

    def _probing_map(self, plan: _Plan, fn, its: list, deadline, chunksize, progress) -> Any:
        """Feeds the first items to the probe until ``fn`` is decided or the input ends (this
        blocks for the probe: a few calls), then returns their results chained with the chosen
        pool's map of the rest. A serial decision returns a ``PrefixedMap`` (``_core``): the
        probed values, then ``fn`` over the rest, at the built-in ``map``'s cost per item; an
        ``itertools.chain`` there cost calls as small as ``x + 1`` 4-10% more."""
        items = zip(*its)
        head: list[cf.Future] = []
        changed = plan.changed

        def notify(_f: cf.Future) -> None:
            with changed:
                changed.notify_all()

        exhausted = False
        # A function nobody has measured yet: time its first calls right here, in the calling
        # thread (map blocks for the probe anyway), which spares tiny calls the probe thread
        # and its hand-offs; a decision often follows at once.
        with self._lock:
            inline = not plan.solo and not plan.stepping and plan.decision is None and not self._closed
            if inline:
                plan.stepping = True
                plan.via_map = True
        if inline:
            samples: list[tuple[float, float]] = []
            queued: list[_Call] = []
            q0, queued_s = _runqueue_wait_s(), 0.0
            sampler = _GilSampler()
            t0 = time.perf_counter()
            try:
                while len(samples) < SOLO_CALLS and (not samples or time.perf_counter() - t0 < SOLO_BUDGET_S):
                    if len(samples) >= self._probe_calls and statistics.median(w for w, _ in samples) >= PAIR_MIN_S:
                        break  # long enough to tell apart: the pair step decides the rest
                    args = next(items, None)
                    if args is None:
                        exhausted = True
                        break
                    call = _Call(cf.Future(), fn, args, {})
                    sample = _run_measured(call, plan if plan.sizes is None else None)
                    head.append(call.future)
                    if sample is not None:
                        samples.append(sample)
                samples, queued_s = _without_cpu_waits(samples, q0)
                if samples and not exhausted:
                    wall = statistics.median(w for w, _ in samples)
                    if wall >= PAIR_MIN_S:
                        # Queue the next calls for the pair step (two threads at once).
                        per = max(1, min(PAIR_MAX_CALLS, round(PAIR_TARGET_S / wall)))
                        for args in itertools.islice(items, 2 * per):
                            queued.append(_Call(cf.Future(), fn, args, {}))
                        if len(queued) < 2 * per:
                            exhausted = True
            finally:
                gil_late = sampler.stop()
                with self._lock:
                    plan.solo.extend(samples)
                    plan.solo_queued += queued_s
                    plan.gil_late = gil_late
                    plan.pending.extend(queued)
                    plan.stepping = False
                    self._advance(plan)
                self._hand_off(plan)
            for call in queued:
                call.future.add_done_callback(notify)
                head.append(call.future)
        try:
            while plan.backend is None and not exhausted:
                while sum(not f.done() for f in head[-MAP_PROBE_AHEAD:]) < MAP_PROBE_AHEAD and plan.backend is None:
                    args = next(items, None)
                    if args is None:
                        exhausted = True
                        break
                    fut = self._queue(plan, [_Call(cf.Future(), fn, args, {})], via_map=True)[0]
                    fut.add_done_callback(notify)
                    head.append(fut)
                with changed:  # wait for a probed call to finish, or a decision
                    if plan.backend is None and not exhausted and all(not f.done() for f in head[-MAP_PROBE_AHEAD:]):
                        if not changed.wait(_left(deadline)):
                            raise cf.TimeoutError()
        except BaseException:
            for fut in head:
                fut.cancel()
            raise
        done = exhausted or self._closed
        values = _values_if_settled(head)
        if values is not None and not done and len(its) == 1 and isinstance(plan.backend, _Serial):
            # Serial, and every probed call finished without raising (always so after the probe
            # ran here): one iterator does both, as cheaply per item as the built-in map.
            return PrefixedMap(values, fn, its[0])
        rest = iter(()) if done else self._decided_map(plan, fn, its, deadline, chunksize, progress)
        if values is not None:
            # Their values, as a list, in front of the rest (a generator over their futures
            # would cost every later item a step more).
            return itertools.chain(values, rest)
        return itertools.chain(_results_in_order(head, deadline), rest)

    def explain(self) -> str:
        """Returns, in a few lines per function, the strategy chosen and the figures and rule
        it came from (or how far its probe got)."""
        with self._lock:
            plans = list(self._plans.values())
        lines = [f"ferropool.Pool(strategy={self._strategy!r}) on {self._cores} cores"]
        if not plans:
            lines.append("  no function has run yet")
        for plan in plans:
            lines.extend(describe(plan))
        return "\n".join(lines)

    @property
    def decisions(self) -> dict[str, Decision]:
        """The decision made for each function so far, by qualified name (a snapshot)."""
        with self._lock:
            return {p.name: p.decision for p in self._plans.values() if p.decision is not None}

    @property
    def strategy(self) -> str:
        """The ``strategy`` this pool was made with (``"auto"`` or a forced one)."""
        return self._strategy

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting calls and shuts down every pool it created, with the same ``wait``
        and ``cancel_futures``. Calls still queued for the probe are cancelled with
        ``cancel_futures``, else run on the probe's threads. Safe to call more than once."""
        with self._lock:
            self._closed = True
            if cancel_futures:
                for plan in self._plans.values():
                    while plan.pending:
                        plan.pending.popleft().future.cancel()
            for plan in self._plans.values():
                self._advance(plan)
        if wait:
            while True:
                with self._lock:
                    threads = [t for t in self._probe_threads if t is not threading.current_thread()]
                if not threads:
                    break
                for t in threads:
                    t.join()
        with self._lock:
            backends = list(self._backends.values())
        for backend in backends:
            backend.shutdown(wait=wait, cancel_futures=cancel_futures)

    # ----------------------------------------------------------- plans

    def _plan(self, fn: Callable[..., Any]) -> _Plan:
        if self._closed:
            raise RuntimeError("cannot schedule new futures after shutdown")
        key = _key_of(fn)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            plan = self._plans.get(key)
            if plan is None:
                plan = _Plan(_name_of(fn), self._lock)
                is_async = inspect.iscoroutinefunction(fn)
                if self._strategy != "auto":
                    if self._strategy == "hybrid" and _hybrid_class() is None:
                        raise RuntimeError("strategy='hybrid' needs ferropool.HybridPool, which this version lacks")
                    self._settle(plan, self._forced(), fn_is_async=is_async)
                elif is_async:
                    self._settle(
                        plan,
                        Decision("asyncio", self._io_workers, "async def: runs as a task on the pool's event loop"),
                        fn_is_async=True,
                    )
                self._plans[key] = plan
        return plan

    def _forced(self) -> Decision:
        s = self._strategy
        n = self._requested_workers
        workers: Any = {
            "serial": 1,
            "threads": n or self._io_workers,
            "processes": n or self._cores,
            "asyncio": self._io_workers,
        }.get(s)
        if s == "hybrid":
            workers = (self._cores, max(1, math.ceil((n or self._io_workers) / self._cores)))
        return Decision(s, workers, f"forced by strategy={s!r}")

    def _settle(self, plan: _Plan, decision: Decision, *, fn_is_async: bool = False) -> None:
        """Records ``decision`` and its backend; the lock is held."""
        backend = self._backend(decision.strategy, decision.workers)
        if fn_is_async and decision.strategy != "asyncio":
            backend = _CoroutineAdapter(backend)
        plan.decision, plan.backend = decision, backend
        plan.changed.notify_all()

    def _backend(self, strategy: str, workers: Any) -> Any:
        """Returns the pool for ``strategy`` with ``workers``, creating it on first use; the lock is held."""
        key = (strategy, workers)
        backend = self._backends.get(key)
        if backend is None:
            if strategy == "serial":
                backend = _Serial()
            elif strategy == "threads":
                from .._thread import ThreadPool

                backend = ThreadPool(workers, thread_name_prefix="ferropool-auto")
            elif strategy == "processes":
                from .._process import ProcessPool

                backend = ProcessPool(workers)
            elif strategy == "hybrid":
                processes, threads = workers
                backend = _hybrid_class()(processes=processes, threads_per_process=threads)
            else:
                io = self._io_workers
                backend = _EventLoop(workers, lambda: self._backend_locked("threads", io))
            self._backends[key] = backend
        return backend

    def _backend_locked(self, strategy: str, workers: Any) -> Any:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            return self._backend(strategy, workers)

    # ----------------------------------------------------------- probe

    def _queue(self, plan: _Plan, calls: list[_Call], via_map: bool = False) -> list[cf.Future]:
        """Queues ``calls`` for ``plan``'s probe (or its backend, if it decided meanwhile)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            backend = plan.backend
            if backend is None:
                plan.via_map = plan.via_map or via_map
                plan.pending.extend(calls)
                self._advance(plan)
        self._hand_off(plan)
        if backend is not None:
            return [backend.submit(c.fn, *c.args, **c.kwargs) for c in calls]
        return [c.future for c in calls]

    def _advance(self, plan: _Plan) -> None:
        """Starts the next probe step or decides; the lock is held."""
        if plan.stepping or plan.decision is not None:
            return
        if self._closed:  # no new pools: what is queued runs on a probe thread
            if plan.pending:
                self._start_step(plan, [list(plan.pending)])
                plan.pending.clear()
            return
        measured = len(plan.solo) + plan.pair_calls
        if not plan.solo or (plan.pair_done and measured < self._probe_calls):
            if plan.pending:
                self._start_step(plan, None)
            return
        wall = statistics.median(w for w, _ in plan.solo)
        if not plan.pair_done and wall >= PAIR_MIN_S:
            if len(plan.pending) >= 2:
                per = max(1, min(PAIR_MAX_CALLS, round(PAIR_TARGET_S / max(wall, 1e-9)), len(plan.pending) // 2))
                halves = [[plan.pending.popleft() for _ in range(per)] for _ in range(2)]
                # The solo calls' GIL samples decide a candidate now if they say "held"; if they
                # say "released", the pair decides; with no verdict, the watcher may.
                watch = self._watch_candidate(plan, wall)
                held = watch and self._held_while_alone(plan)
                step = self._start_step(plan, halves, watch=watch and plan.gil_late is None)
                if held:  # the solo calls held the GIL: decide as the watcher would, at once
                    self._decide_at_pair_start(plan, step, wall, 1.0)
                return
            if measured < self._probe_calls:  # called one at a time so far: measure alone
                if plan.pending:
                    self._start_step(plan, None)
                return
        elif measured < self._probe_calls or (wall < PAIR_MIN_S and len(plan.solo) < SOLO_CALLS):
            if plan.pending:
                self._start_step(plan, None)
            return
        self._decide(plan, wall)

    def _figures(
        self, plan: _Plan, wall: float, *, pair_calls: int | None = None, pair_speedup: float | None = None
    ) -> Figures:
        """The figures measured so far for ``plan`` (or with the pair's given instead); the lock is held."""
        arg_bytes, result_bytes, pickle_s, picklable = plan.sizes or (None, None, None, True)
        if pair_calls is None:
            pair_calls, pair_speedup = plan.pair_calls, plan.pair_speedup
        return Figures(
            calls=len(plan.solo) + pair_calls,
            wall_s=wall,
            cpu_s=statistics.median(c for _, c in plan.solo),
            pair_speedup=pair_speedup,
            free_cores=plan.free_cores,
            arg_bytes=arg_bytes,
            result_bytes=result_bytes,
            pickle_s=pickle_s,
            picklable=picklable,
            via_map=plan.via_map,
            cores=self._cores,
        )

    def _choose(self, figures: Figures) -> Decision:
        return decide(
            figures,
            max_workers=self._requested_workers,
            io_workers=self._io_workers,
            hybrid=_hybrid_class() is not None,
        )

    def _decide(self, plan: _Plan, wall: float, decision: Decision | None = None) -> None:
        """Decides from the figures (or takes ``decision``) and sends what is queued to the
        chosen backend (their futures are joined to the backend's by ``_hand_off``, once the
        lock is released); the lock is held."""
        figures = self._figures(plan, wall) if decision is None else decision.figures
        try:
            if decision is None:
                decision = self._choose(figures)
            self._settle(plan, decision)
        except Exception as exc:  # the chosen pool could not start: the queued calls must still run
            decision = Decision(
                "serial", 1, f"the chosen pool could not start ({type(exc).__name__}: {exc}); running here", figures
            )
            self._settle(plan, decision)
        pending = list(plan.pending)
        plan.pending.clear()
        if decision.strategy == "serial":
            # Run on a probe thread (joined by shutdown), not here in the lock.
            if pending:
                self._start_step(plan, [pending], measure=False)
            return
        for call in pending:  # submitted here, so that no shutdown comes between
            if call.future.set_running_or_notify_cancel():
                try:
                    plan.handoff.append((call.future, plan.backend.submit(call.fn, *call.args, **call.kwargs)))
                except BaseException as exc:
                    plan.handoff.append((call.future, exc))

    def _hand_off(self, plan: _Plan) -> None:
        """Makes the futures of the calls ``_decide`` sent to the backend follow the backend's.
        Called by whoever decided, after releasing the lock: finishing a future runs its
        callbacks at once, and those may take the lock (map's wake-up) or call the pool."""
        if not plan.handoff:  # read unlocked: whoever fills it (_decide) calls this afterwards
            return
        with self._lock:
            handoff, plan.handoff = plan.handoff, []
        for outer, inner in handoff:
            if isinstance(inner, BaseException):
                outer.set_exception(inner)
            else:
                inner.add_done_callback(lambda f, outer=outer: _copy(f, outer))

    def _start_step(
        self, plan: _Plan, groups: list[list[_Call]] | None, *, measure: bool = True, watch: bool = False
    ) -> _Step:
        """Starts a probe step on new threads: ``None`` is a solo step that takes queued calls as
        they come; one group runs its calls in turn; two groups are a pair step, one thread
        each, started together, and with ``watch`` a third that may decide early
        (``_watch_pair``). The lock is held."""
        plan.stepping = True
        if groups is None:
            step = _Step(plan, [None], pair=False, measure=True)
        else:
            pair = len(groups) > 1
            step = _Step(plan, groups, pair=pair, measure=measure, watch=watch and pair)
        step.threads = [
            threading.Thread(target=self._step_member, args=(step, index), name="ferropool-auto-probe", daemon=True)
            for index in range(len(step.groups))
        ]
        threads = list(step.threads)
        if step.watch:
            threads.append(
                threading.Thread(target=self._watch_pair, args=(step,), name="ferropool-auto-watch", daemon=True)
            )
        for t in threads:
            self._probe_threads.add(t)
            t.start()
        return step

    def _step_member(self, step: _Step, index: int) -> None:
        plan = step.plan
        try:
            if step.pair:
                try:
                    step.start.wait(timeout=5.0)
                except threading.BrokenBarrierError:
                    pass
            q0 = _runqueue_wait_s() if step.measure else None
            t0, c0, ran = time.perf_counter(), time.thread_time(), 0
            calls = step.groups[index]
            samples: list[tuple[float, float]] = []
            sampler = _GilSampler() if step.measure and not step.pair else None
            while True:
                if calls is None:  # solo: take the next queued call, if any
                    with self._lock:
                        if (
                            not plan.pending
                            or plan.decision is not None
                            or ran >= SOLO_CALLS
                            or (ran and time.perf_counter() - t0 >= SOLO_BUDGET_S)
                        ):
                            break
                        call = plan.pending.popleft()
                elif ran < len(calls):
                    call = calls[ran]
                else:
                    break
                sample = _run_measured(call, plan if plan.sizes is None and step.measure else None)
                ran += 1
                if sample is not None and step.measure and not step.pair:
                    samples.append(sample)
                    with self._lock:  # explain() shows the count as it grows
                        plan.solo.append(sample)
            gil_late = sampler.stop() if sampler is not None else None
            if samples:
                corrected, queued_s = _without_cpu_waits(samples, q0)
                with self._lock:  # the solo step running is the only one adding to plan.solo
                    plan.solo[-len(samples) :] = corrected
                    plan.solo_queued += queued_s
                    plan.gil_late = gil_late
            step.spans[index] = (t0, time.perf_counter(), time.thread_time() - c0, ran)
            q1 = _runqueue_wait_s() if step.pair else None
            step.waits[index] = None if q0 is None or q1 is None else q1 - q0
        finally:
            with self._lock:
                self._probe_threads.discard(threading.current_thread())
                step.left -= 1
                if step.left == 0:
                    step.finished.set()
                    if step.pair:
                        self._pair_finished(plan, step)
                    plan.stepping = False
                    self._advance(plan)
            self._hand_off(plan)

    def _watch_candidate(self, plan: _Plan, wall: float) -> bool:
        """Whether to watch ``plan``'s pair step (``_watch_pair``): its calls are long (EARLY_MIN_S)
        and CPU-bound, can be pickled, and would go to a process or hybrid pool if the pair
        showed that they hold the GIL. The lock is held."""
        if self._closed or self._cores < 2 or wall < EARLY_MIN_S or plan.sizes is None or not plan.sizes[3]:
            return False
        if statistics.median(c for _, c in plan.solo) < WAITING * wall:
            return False
        return self._choose(self._figures(plan, wall, pair_calls=2, pair_speedup=1.0)).strategy in (
            "processes",
            "hybrid",
        )

    def _decide_at_pair_start(self, plan: _Plan, step: _Step, wall: float, speedup: float) -> None:
        """Decides ``plan`` now, from the solo figures and a 2-thread ``speedup`` seen before the
        pair ``step`` ended, if that makes it a process or hybrid pool's (else the whole pair
        decides); the pair's calls count as measured. The lock is held."""
        calls = sum(len(g) for g in step.groups)
        if len(plan.solo) + calls < self._probe_calls:
            return
        decision = self._choose(self._figures(plan, wall, pair_calls=calls, pair_speedup=speedup))
        if decision.strategy not in ("processes", "hybrid"):
            return
        plan.pair_done, plan.pair_calls, plan.pair_speedup = True, calls, decision.figures.pair_speedup
        step.decided = True
        self._decide(plan, wall, decision)

    def _held_while_alone(self, plan: _Plan) -> bool:
        """Whether ``plan``'s solo calls held the GIL throughout (``_GilSampler``: a helper thread
        got it only when the interpreter forced a switch), with other programs' load too small
        to have delayed the helper instead. The lock is held."""
        if plan.gil_late is None:
            return False
        solo_wall = sum(w for w, _ in plan.solo)
        return plan.gil_late >= 0.5 * sys.getswitchinterval() and plan.solo_queued <= BUSY_MACHINE * solo_wall

    def _watch_pair(self, step: _Step) -> None:
        """Watches a pair step for about a quarter of a call (1-10 ms) from its start. If its two
        threads used between 1 - BUSY_MACHINE and GIL_HELD_USE cores between them (one at a
        time, as calls that hold the GIL run) and this thread, when its wait ended, got the GIL
        back only after the interpreter forced a switch (about the switch interval late, not
        counting its own wait for a CPU), decides now from that stretch, rather than when the
        pair's calls end: a process pool then boots on the core the pair leaves idle. The pair's
        calls still finish on their threads, and their results are delivered as usual; a
        decision for anything but a process or hybrid pool waits for the whole pair. (Used when
        the solo calls gave ``_GilSampler`` no verdict: see ``_held_while_alone``.)

        Only clocks are read while the calls run (CPU clocks, and this thread's wait for a CPU
        in Rust): nothing that gives the GIL away, since winning it back from calls that hold it
        can take several switch intervals."""
        plan = step.plan
        try:
            try:  # the threads wait for this one at the barrier: they are alive
                clocks = [time.pthread_getcpuclockid(t.ident) for t in step.threads]
            except (AttributeError, OSError, TypeError):  # no per-thread CPU clocks here
                clocks = None
            # Read before the calls start, while nothing holds the GIL for long: the solo figures
            # (which no one changes during a pair). Taking the pool's lock once the calls run
            # could wait tens of ms: a thread holding it may be waiting for the GIL behind them.
            with self._lock:
                wall = statistics.median(w for w, _ in plan.solo)
                ratio = statistics.median(c for _, c in plan.solo) / wall if wall > 0 else 1.0
            try:
                step.start.wait(timeout=5.0)
            except threading.BrokenBarrierError:
                return
            if clocks is None:
                return
            t0 = time.perf_counter()
            c0 = [time.clock_gettime(c) for c in clocks]
            end = t0 + min(max(wall / 4, 1e-3), 1e-2)
            late = 0.0  # the most this thread got the GIL back late after a nap (see below)
            while (left := end - time.perf_counter()) > 0:
                lag = _late_after_nap(step.finished, min(left, GIL_SAMPLE_S))
                if lag is None:
                    return  # the pair ended first: it decides
                late = max(late, lag)
            try:
                c1 = [time.clock_gettime(c) for c in clocks]
            except OSError:  # a thread has ended: so has the pair, nearly
                return
            used = sum(b - a for a, b in zip(c0, c1)) / (time.perf_counter() - t0)
            plan.watched = used
            if not (1.0 - BUSY_MACHINE <= used and _holds_gil(used, 1.0)):
                return  # parallel, or other programs' load: the whole pair decides
            # One core's worth between them: the GIL, or both threads kept to one CPU while
            # other programs held the rest (seen: 3 stretches in 60 of two hashlib threads).
            # Only the first is a verdict, and only the first kept this thread from the GIL
            # until a forced switch (which the other pair thread may request first: anywhere
            # from 0 to one switch interval late, hence the most of a few naps); the whole pair
            # decides the other.
            if late < 0.2 * sys.getswitchinterval():
                return
            with self._lock:
                if self._closed or plan.decision is not None or step.finished.is_set():
                    return
                self._decide_at_pair_start(plan, step, wall, used / ratio)
            self._hand_off(plan)
        finally:
            with self._lock:
                self._probe_threads.discard(threading.current_thread())

    def _pair_finished(self, plan: _Plan, step: _Step) -> None:
        """Records the 2-thread speedup from a pair step's spans; the lock is held.

        Alone, the pair's calls would have taken their CPU time over the CPU/wall ratio measured
        alone (CPU time does not count waiting for the GIL, so this holds for code that holds
        it); for waiting code, the solo wall time per call."""
        plan.pair_done = True
        spans = step.spans
        if step.decided:
            return  # from the pair's first stretch (_watch_pair): its figures stand
        if any(s is None or s[3] == 0 for s in spans) or not plan.solo:
            return
        solo_wall = statistics.median(w for w, _ in plan.solo)
        solo_cpu = statistics.median(c for _, c in plan.solo)
        span = max(s[1] for s in spans) - min(s[0] for s in spans)
        ran = sum(s[3] for s in spans)
        ratio = solo_cpu / solo_wall if solo_wall > 0 else 1.0
        alone = sum(s[2] for s in spans) / ratio if ratio >= WAITING else ran * solo_wall
        # Runnable but not running for much of the pair, and short of the cores by half a core
        # or more: other programs held cores, and parallel work gets only the cores the pair
        # got. (Waits alone are not enough: two threads that start on one core wait there for a
        # few ms until one is moved, and still use ~1.8 of 2 cores over a 20 ms pair.)
        got = sum(s[2] for s in spans) / span if span > 0 else 0.0
        busy = (
            all(q is not None for q in step.waits)
            and span > 0
            and sum(step.waits) / span > BUSY_MACHINE
            and got < self._cores - 0.5
        )
        plan.pair_calls = ran
        plan.pair_speedup = alone / span if span > 0 else None
        plan.free_cores = got if busy else None
        if busy and not plan.rechecked:
            # That is often a moment's load (a few ms): measure the pair once more, if calls are
            # queued for it, rather than decide every later call from it (_advance).
            plan.rechecked = True
            plan.pair_done = False
        plan.changed.notify_all()


class _Step:
    """One probe step: its plan, the calls of each thread (None: take queued calls as they
    come), and what each thread measured: (start, end, CPU seconds, calls run)."""

    def __init__(self, plan: _Plan, groups: list, *, pair: bool, measure: bool, watch: bool = False):
        self.plan, self.groups, self.pair, self.measure = plan, groups, pair, measure
        self.left = len(groups)
        self.spans: list = [None] * len(groups)
        self.watch = watch  # a third thread watches the pair's start (Pool._watch_pair)
        self.start = threading.Barrier(len(groups) + watch) if pair else None
        self.waits: list = [None] * len(groups)  # seconds each thread waited for a CPU
        self.threads: list[threading.Thread] = []
        self.finished = threading.Event()
        self.decided = False  # the watcher decided from the pair's first stretch


def _runqueue_wait_s() -> float | None:
    """Returns the seconds this thread has spent runnable but waiting for a CPU (Linux
    ``schedstat``), or None where that cannot be read. Waiting for the GIL is sleeping, not
    this: it only grows when other threads hold every core. Read in Rust without giving the GIL
    away: a Python file read would, and winning it back from a thread running pure-Python code
    takes up to a switch interval per system call."""
    ns = runqueue_wait_ns()
    return None if ns is None else ns / 1e9


class _GilSampler:
    """Samples, from a helper thread, how long other threads keep the GIL while a solo step runs.

    The helper waits GIL_SAMPLE_S, then needs the GIL to go on; how late it gets it (less its
    own wait for a CPU) is how long another thread kept the GIL without letting go. Code that
    holds the GIL keeps it until the interpreter forces a switch (``sys.getswitchinterval()``,
    5 ms by default): the helper is ~5 ms late every time. Code in sleep, I/O or a C library
    that releases the GIL (hashlib, numpy) lets the helper in at once (~0.1 ms here). Sampling
    costs the measured calls one GIL hand-off per sample; starting the helper, ~0.07 ms."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._late: list[float] = []
        # A bare thread: threading.Thread.start() waits for the thread to run, and join() for
        # it to end, which made the probe of a tiny function 0.4 ms slower. This one ends by
        # itself as soon as stop() is called (a daemon: it never holds up the interpreter).
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        while (late := _late_after_nap(self._stop, GIL_SAMPLE_S)) is not None:
            self._late.append(late)

    def stop(self) -> float | None:
        """Stops sampling; returns the median delay in seconds (None: fewer than two samples)."""
        self._stop.set()
        late = list(self._late)
        return statistics.median(late) if len(late) >= 2 else None


def _late_after_nap(event: threading.Event, nap: float) -> float | None:
    """Waits up to ``nap`` seconds for ``event``; returns None if it was set, else how late
    this thread got the GIL back after the nap, less the time it sat queued for a CPU behind
    other programs meanwhile (that is not the GIL)."""
    q0, t0 = _runqueue_wait_s(), time.perf_counter()
    if event.wait(nap):
        return None
    late = time.perf_counter() - t0 - nap
    q1 = _runqueue_wait_s()
    return late - (q1 - q0) if q0 is not None and q1 is not None else late


def _without_cpu_waits(samples: list[tuple[float, float]], q0: float | None) -> tuple[list[tuple[float, float]], float]:
    """Returns the (wall, CPU) ``samples`` of calls this thread just ran one after another, less
    the time it spent queued for a CPU since ``q0`` (``_runqueue_wait_s``), shared evenly among
    them and never below their CPU time, and the seconds taken out. Other programs' load is not
    the function's waiting: a CPU-bound call on a machine whose cores are all busy would
    otherwise look like one that sleeps (CPU/wall 0.5) and go to threads."""
    q1 = _runqueue_wait_s() if q0 is not None else None
    if q1 is None or q0 is None or q1 <= q0 or not samples:
        return samples, 0.0
    each = (q1 - q0) / len(samples)
    out = [(max(cpu, wall - each), cpu) for wall, cpu in samples]
    return out, sum(w for w, _ in samples) - sum(w for w, _ in out)


def _holds_gil(cpu_s: float, seconds: float) -> bool:
    """Whether two threads that ran together for ``seconds`` and used ``cpu_s`` of CPU between
    them ran one at a time, as calls that hold the GIL do (two parallel threads use ~2 cores)."""
    return cpu_s <= GIL_HELD_USE * seconds


def _results_in_order(futures: list[cf.Future], deadline: float | None) -> Any:
    """Yields each future's result in turn; leaving early cancels those not started."""
    try:
        while futures:
            yield futures[0].result(timeout=_left(deadline))
            del futures[0]
    finally:
        for fut in futures:
            fut.cancel()


def _values_if_settled(futures: list[cf.Future]) -> list | None:
    """Returns the results of ``futures`` if every one has finished without raising, else None."""
    values = []
    for fut in futures:
        if not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        values.append(fut.result())
    return values


def _left(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (None: no limit); raises ``TimeoutError`` once past it."""
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise cf.TimeoutError()
    return left


def _run_measured(call: _Call, sizes_for: _Plan | None) -> tuple[float, float] | None:
    """Runs ``call`` unless it was cancelled, delivers its outcome, and returns its (wall, CPU)
    seconds (None if cancelled). With ``sizes_for``, first records the pickled sizes there."""
    if not call.future.set_running_or_notify_cancel():
        return None
    failed = None
    t0 = time.perf_counter()
    c0 = time.thread_time()
    try:
        result = call.fn(*call.args, **call.kwargs)
    except BaseException as exc:  # delivered to the future, as a pool's worker would
        failed = exc
        result = None
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    if sizes_for is not None and sizes_for.sizes is None:
        sizes_for.sizes = _measure_sizes(call, result)
    if failed is not None:
        call.future.set_exception(failed)
        del failed
    else:
        call.future.set_result(result)
    return wall, cpu


def _copy(src: cf.Future, dst: cf.Future) -> None:
    if src.cancelled():
        dst.set_exception(cf.CancelledError())
    elif src.exception() is not None:
        dst.set_exception(src.exception())
    else:
        dst.set_result(src.result())


def _gather_chunk(futures: list[cf.Future]) -> cf.Future:
    """Returns a future of ``(results, ns)`` for items probed one by one, as ``run_chunk``
    returns for a chunk: on an error, the results before it ride on the exception."""
    chunk: cf.Future = cf.Future()
    left = [len(futures)]
    lock = threading.Lock()
    start = time.perf_counter_ns()

    def one_done(_f: cf.Future) -> None:
        with lock:
            left[0] -= 1
            if left[0]:
                return
        values = []
        for f in futures:
            if f.cancelled():
                error: BaseException = cf.CancelledError()
            else:
                error = f.exception()
            if error is not None:
                try:
                    setattr(error, _PARTIAL, values)
                except Exception:
                    pass
                _settle_chunk(chunk, error=error)
                return
            values.append(f.result())
        _settle_chunk(chunk, result=(values, time.perf_counter_ns() - start))

    def cancelled(c: cf.Future) -> None:
        if c.cancelled():
            for f in futures:
                f.cancel()

    chunk.add_done_callback(cancelled)
    for f in futures:
        f.add_done_callback(one_done)
    return chunk


def _settle_chunk(chunk: cf.Future, *, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            chunk.set_exception(error)
        else:
            chunk.set_result(result)
    except cf.InvalidStateError:  # cancelled by map meanwhile
        pass


class _CoroutineAdapter:
    """Runs a coroutine function on a non-asyncio backend: each call is ``asyncio.run`` there."""

    def __init__(self, backend: Any):
        self._backend = backend

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        return self._backend.submit(_run_coroutine, fn, *args, **kwargs)

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        import functools

        return self._backend.submit(run_chunk, functools.partial(_run_coroutine, fn), items)


def _hybrid_class() -> Any:
    import ferropool

    return getattr(ferropool, "HybridPool", None)
