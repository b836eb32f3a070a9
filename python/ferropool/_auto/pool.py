"""``Pool``: the executor of ``Pool(strategy="auto")`` and of its forced strategies.

The pool is the machinery around ``probe.Probe``: it queues a function's first calls, runs the
probe's steps on helper threads (measured with ``measure.py``'s clocks), hands the samples to the
probe under its lock, and once the probe decides, sends what is queued and every later call to
the chosen backend (``backends.py`` or one of ferropool's pools)::

    submit(fn, ...) / map(fn, ...)
      │  no decision for fn yet: the call is queued on fn's _Plan
      ▼
    _advance: probe.next_action(queued calls)
      ├─ RunSolo ── one thread runs queued calls in turn ──► probe.add_solo / end_solo ─┐
      ├─ RunPair ── two threads start together ──────────► probe.add_pair ─────────────┤
      └─ Decide ─── _decide: settle the backend, hand it what is queued      ◄─── _advance
      ▼
    later calls go straight to the backend

Each probed call is real work: its result goes to its future and nothing runs twice. ``map``
runs its first solo step in the calling thread (it blocks for the probe anyway). How the probe
decides is described in ``docs/auto.md``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import inspect
import itertools
import math
import statistics
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from .._core import PrefixedMap
from .._executor import PoolExecutor, check_buffersize, run_chunk
from .._interpreter import gil_enabled
from .._util import usable_cpu_count
from .backends import CoroutineAdapter, EventLoop, Serial, hybrid_class
from .decide import MAP_PROBE_AHEAD, PROBE_CALLS, STRATEGIES, Decision
from .explain import Explanation, describe, row
from .futures import copy_outcome, gather_chunk, left, results_in_order, values_if_settled
from .measure import Call, queued_since, run_measured, runqueue_wait_s
from .probe import Decide, PairRun, Probe, RunPair, RunSolo, Sizes
from .sampler import GilSampler

__all__ = ["Pool"]


class _Plan:
    """One function's probe, decision and queued calls; everything mutable is guarded by the
    pool's lock."""

    def __init__(self, name: str, lock: threading.Lock, probe: Probe) -> None:
        self.name = name
        self.probe = probe
        self.changed = threading.Condition(lock)  # a probed call finished, or a decision
        self.decision: Decision | None = None
        self.backend: Any = None  # set with decision
        self.pending: collections.deque[Call] = collections.deque()
        # Calls the decision sent to the backend: (their future, the backend's future or what
        # its submit raised), to be joined by _hand_off outside the lock.
        self.handoff: list[tuple[cf.Future[Any], Any]] = []
        self.stepping = False  # a probe step is running


class _Step:
    """One probe step: its plan, the calls of each thread (None: take queued calls as they come),
    and what each thread measured."""

    def __init__(self, plan: _Plan, groups: list[list[Call] | None], *, measure: bool) -> None:
        self.plan, self.groups, self.measure = plan, groups, measure
        self.pair = len(groups) > 1
        self.left = len(groups)
        self.runs: list[PairRun | None] = [None] * len(groups)
        self.start = threading.Barrier(len(groups)) if self.pair else None


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
        self._backends: dict[tuple[str, Any], Any] = {}
        self._probe_threads: set[threading.Thread] = set()
        self._closed = False

    # ---------------------------------------------------------------- public

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        """Schedules ``fn(*args, **kwargs)`` and returns its ``concurrent.futures.Future``.

        While ``fn`` is being measured the call is queued for the probe and returns at once;
        afterwards it goes to the chosen pool's ``submit`` (serial: runs here, then returns).
        Raises ``RuntimeError`` after ``shutdown``, and what the chosen pool's ``submit``
        raises (``SerializationError`` for an unpicklable call on processes).
        """
        plan = self._plan(fn)
        backend = plan.backend
        if backend is not None and not self._closed:
            return backend.submit(fn, *args, **kwargs)  # type: ignore[no-any-return]
        return self._queue(plan, [Call(cf.Future(), fn, args, kwargs)])[0]

    def _submit_chunk(self, fn: Callable[..., Any], items: list[Any]) -> cf.Future[Any]:
        plan = self._plan(fn)
        backend = plan.backend
        if backend is not None and not self._closed:
            if hasattr(backend, "_submit_chunk"):
                return backend._submit_chunk(fn, items)  # type: ignore[no-any-return]
            return backend.submit(run_chunk, fn, items)  # type: ignore[no-any-return]
        futures = self._queue(plan, [Call(cf.Future(), fn, args, {}) for args in items], via_map=True)
        return gather_chunk(futures)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Any,
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: Any = None,
    ) -> Iterator[Any]:
        """Returns an iterator of ``fn(*args)`` for ``args`` in ``zip(*iterables)``, in order.

        Lazy on its input. While ``fn`` is being measured, its first items (at most
        ``MAP_PROBE_AHEAD`` at a time) go to the probe; once decided, the rest goes to the chosen
        pool's ``map`` (chunked, bounded, ``chunksize``/``progress`` as there) or, for the serial
        strategy, to the built-in ``map`` in the consuming thread, which no ``timeout`` can
        interrupt. An exception raised by ``fn`` is raised when its item is reached; leaving
        the loop early cancels what has not started. Raises ``RuntimeError`` after ``shutdown``.
        ``buffersize`` (checked as Python 3.14 does) bounds the chosen pool's map; while ``fn``
        is being measured, the probe's own bound (above) applies instead.
        """
        check_buffersize(buffersize)
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        plan = self._plan(fn)
        deadline = None if timeout is None else time.monotonic() + timeout
        its = [iter(it) for it in iterables]
        if plan.backend is None or self._closed:
            return self._probing_map(plan, fn, its, deadline, chunksize, progress, buffersize)
        return self._decided_map(plan, fn, its, deadline, chunksize, progress, buffersize)

    def explain(self) -> Explanation:
        """Returns, in a few lines per function, the strategy chosen and the figures and rule
        it came from (or how far its probe got): a ``str``, which a notebook shows as a table."""
        with self._lock:
            lines = [f"ferropool.Pool(strategy={self._strategy!r}) on {self._cores} cores"]
            if not self._plans:
                lines.append("  no function has run yet")
            for plan in self._plans.values():
                lines.extend(describe(plan.name, plan.decision, plan.probe))
            rows = [row(plan.name, plan.decision, plan.probe) for plan in self._plans.values()]
        return Explanation(lines[0], rows, "\n".join(lines))

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

    # ------------------------------------------------------------------ map

    def _decided_map(
        self,
        plan: _Plan,
        fn: Callable[..., Any],
        its: list[Iterator[Any]],
        deadline: float | None,
        chunksize: int | None,
        progress: Any,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        backend = plan.backend
        if isinstance(backend, Serial):
            return map(fn, *its) if its else iter(())  # the built-in map needs an iterable
        if isinstance(backend, (EventLoop, CoroutineAdapter)):
            return PoolExecutor.map(
                self, fn, *its, timeout=left(deadline), chunksize=chunksize, buffersize=buffersize, progress=progress
            )
        return backend.map(  # type: ignore[no-any-return]
            fn, *its, timeout=left(deadline), chunksize=chunksize, buffersize=buffersize, progress=progress
        )

    def _probing_map(
        self,
        plan: _Plan,
        fn: Callable[..., Any],
        its: list[Iterator[Any]],
        deadline: float | None,
        chunksize: int | None,
        progress: Any,
        buffersize: int | None = None,
    ) -> Iterator[Any]:
        """Feeds the first items to the probe until ``fn`` is decided or the input ends (this
        blocks for the probe: a few calls), then returns their results chained with the chosen
        pool's map of the rest."""
        items = zip(*its, strict=False)
        head: list[cf.Future[Any]] = []
        changed = plan.changed
        probe = plan.probe

        def notify(_f: cf.Future[Any]) -> None:
            with changed:
                changed.notify_all()

        exhausted = False
        # A function nobody has measured yet: time its first calls right here, in the calling
        # thread (map blocks for the probe anyway), which spares tiny calls the probe thread
        # and its hand-offs; a decision often follows at once.
        with self._lock:
            inline = not probe.solo and not plan.stepping and plan.decision is None and not self._closed
            if inline:
                plan.stepping = True
                probe.via_map = True
        if inline:
            samples: list[tuple[float, float]] = []
            queued: list[Call] = []
            sizes = None
            waited = 0.0  # for a CPU during the calls, taken out of their samples
            # No GIL, nothing to sample: the sampler's thread would only take a core.
            sampler = GilSampler() if probe.gil_enabled else None
            t0 = time.perf_counter()
            try:
                # The probe's limits are constants: read without the lock, which this step holds
                # in effect (plan.stepping).
                while not probe.map_solo_over(samples, time.perf_counter() - t0):
                    args = next(items, None)
                    if args is None:
                        exhausted = True
                        break
                    call = Call(cf.Future(), fn, args, {})
                    sample, measured, queued_s = run_measured(call, with_sizes=sizes is None)
                    sizes = sizes or measured
                    head.append(call.future)
                    if sample is not None:
                        samples.append(sample)
                        waited += queued_s
                if samples and not exhausted:
                    wall = statistics.median(w for w, _ in samples)
                    if probe.wants_pair(wall):  # queue the next calls for the pair step
                        per = probe.pair_size(wall)
                        queued.extend(Call(cf.Future(), fn, args, {}) for args in itertools.islice(items, 2 * per))
                        if len(queued) < 2 * per:
                            exhausted = True
            finally:
                gil_late = sampler.stop() if sampler is not None else None
                with self._lock:
                    if sizes is not None:
                        probe.add_sizes(sizes)
                    for sample in samples:
                        probe.add_solo(*sample)
                    probe.end_solo(len(samples), None, gil_late, taken_s=waited)
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
                    fut = self._queue(plan, [Call(cf.Future(), fn, args, {})], via_map=True)[0]
                    fut.add_done_callback(notify)
                    head.append(fut)
                with changed:  # wait for a probed call to finish, or a decision
                    if plan.backend is None and not exhausted and all(not f.done() for f in head[-MAP_PROBE_AHEAD:]):
                        if not changed.wait(left(deadline)):
                            raise cf.TimeoutError()
        except BaseException:
            for fut in head:
                fut.cancel()
            raise
        done = exhausted or self._closed
        values = values_if_settled(head)
        if values is not None and not done and len(its) == 1 and isinstance(plan.backend, Serial):
            # Serial, and every probed call finished without raising (always so after the probe
            # ran here): one iterator does both, as cheaply per item as the built-in map.
            return PrefixedMap(values, fn, its[0])
        rest = iter(()) if done else self._decided_map(plan, fn, its, deadline, chunksize, progress, buffersize)
        if values is not None:
            # Their values, as a list, in front of the rest (a generator over their futures
            # would cost every later item a step more).
            return itertools.chain(values, rest)
        return itertools.chain(results_in_order(head, deadline), rest)

    # ---------------------------------------------------------------- plans

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
                probe = Probe(
                    cores=self._cores,
                    probe_calls=self._probe_calls,
                    max_workers=self._requested_workers,
                    io_workers=self._io_workers,
                    hybrid=hybrid_class() is not None,
                    switch_interval=sys.getswitchinterval(),
                    gil_enabled=gil_enabled(),
                )
                plan = _Plan(_name_of(fn), self._lock, probe)
                is_async = inspect.iscoroutinefunction(fn)
                if self._strategy != "auto":
                    if self._strategy == "hybrid" and not probe.hybrid:
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
            backend = CoroutineAdapter(backend)
        plan.decision, plan.backend = decision, backend
        plan.changed.notify_all()

    def _backend(self, strategy: str, workers: Any) -> Any:
        """Returns the pool for ``strategy`` with ``workers``, creating it on first use; the lock is held."""
        key = (strategy, workers)
        backend = self._backends.get(key)
        if backend is None:
            if strategy == "serial":
                backend = Serial()
            elif strategy == "threads":
                from .._thread import ThreadPool

                backend = ThreadPool(workers, thread_name_prefix="ferropool-auto")
            elif strategy == "processes":
                from .._process import ProcessPool

                backend = ProcessPool(workers)
            elif strategy == "hybrid":
                processes, threads = workers
                backend = hybrid_class()(processes=processes, threads_per_process=threads)
            else:
                io = self._io_workers
                backend = EventLoop(workers, lambda: self._backend_locked("threads", io))
            self._backends[key] = backend
        return backend

    def _backend_locked(self, strategy: str, workers: Any) -> Any:
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            return self._backend(strategy, workers)

    # ---------------------------------------------------------------- probe

    def _queue(self, plan: _Plan, calls: list[Call], via_map: bool = False) -> list[cf.Future[Any]]:
        """Queues ``calls`` for ``plan``'s probe (or its backend, if it decided meanwhile)."""
        with self._lock:
            if self._closed:
                raise RuntimeError("cannot schedule new futures after shutdown")
            backend = plan.backend
            if backend is None:
                plan.probe.via_map = plan.probe.via_map or via_map
                plan.pending.extend(calls)
                self._advance(plan)
        self._hand_off(plan)
        if backend is not None:
            return [backend.submit(c.fn, *c.args, **c.kwargs) for c in calls]
        return [c.future for c in calls]

    def _advance(self, plan: _Plan) -> None:
        """Does what the probe says next: starts a step, or decides; the lock is held."""
        if plan.stepping or plan.decision is not None:
            return
        if self._closed:  # no new pools: what is queued runs on a probe thread
            if plan.pending:
                self._start_step(plan, [list(plan.pending)])
                plan.pending.clear()
            return
        action = plan.probe.next_action(len(plan.pending))
        if isinstance(action, RunSolo):
            self._start_step(plan, [None])
        elif isinstance(action, RunPair):
            self._start_step(plan, [[plan.pending.popleft() for _ in range(action.per)] for _ in range(2)])
            if action.decision is not None:
                self._decide(plan, action.decision)
        elif isinstance(action, Decide):
            self._decide(plan, action.decision)

    def _decide(self, plan: _Plan, decision: Decision) -> None:
        """Settles ``decision`` and sends what is queued to the chosen backend (their futures are
        joined to the backend's by ``_hand_off``, once the lock is released); the lock is held."""
        try:
            self._settle(plan, decision)
        except Exception as exc:  # the chosen pool could not start: the queued calls must still run
            decision = Decision(
                "serial",
                1,
                f"the chosen pool could not start ({type(exc).__name__}: {exc}); running here",
                decision.figures,
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
                inner.add_done_callback(lambda f, outer=outer: copy_outcome(f, outer))

    def _start_step(self, plan: _Plan, groups: list[list[Call] | None], *, measure: bool = True) -> None:
        """Starts a probe step on new threads, one per group: ``[None]`` is a solo step that takes
        queued calls as they come; one list runs its calls in turn; two lists are a pair step,
        started together. The lock is held."""
        plan.stepping = True
        step = _Step(plan, groups, measure=measure)
        for index in range(len(groups)):
            t = threading.Thread(target=self._run_step, args=(step, index), name="ferropool-auto-probe", daemon=True)
            self._probe_threads.add(t)
            t.start()

    def _run_step(self, step: _Step, index: int) -> None:
        """Runs one thread's share of a probe ``step`` and hands what it measured to the probe."""
        plan, probe = step.plan, step.plan.probe
        sampler = None
        try:
            if step.start is not None:
                try:
                    step.start.wait(timeout=5.0)
                except threading.BrokenBarrierError:
                    pass
            q0 = runqueue_wait_s() if step.measure else None
            t0, c0, ran, recorded = time.perf_counter(), time.thread_time(), 0, 0
            walls: list[float] = []  # each call's, less its waits for a CPU
            waited = 0.0  # those waits, in all
            calls = step.groups[index]
            solo = step.measure and not step.pair
            sampler = GilSampler() if solo and probe.gil_enabled else None

            def record(sample: tuple[float, float], sizes: Sizes | None) -> None:
                nonlocal recorded
                if sizes is None and not solo:
                    return
                with self._lock:  # explain() shows the count as it grows
                    if sizes is not None:
                        probe.add_sizes(sizes)
                    if solo:
                        probe.add_solo(*sample)
                        recorded += 1

            while True:
                if calls is None:  # solo: take the next queued call, if any
                    with self._lock:
                        if (
                            not plan.pending
                            or plan.decision is not None
                            or probe.solo_over(ran, time.perf_counter() - t0)
                        ):
                            break
                        call = plan.pending.popleft()
                elif ran < len(calls):
                    call = calls[ran]
                else:
                    break
                sample, _, queued_s = run_measured(call, with_sizes=step.measure and probe.sizes is None, record=record)
                if sample is not None:
                    walls.append(sample[0])
                    waited += queued_s
                ran += 1
            end, cpu = time.perf_counter(), time.thread_time() - c0
            gil_late = sampler.stop() if sampler is not None else None
            queued = queued_since(q0)
            if recorded:
                with self._lock:  # this step is the only one adding solo samples
                    probe.end_solo(recorded, None, gil_late, taken_s=waited)
            step.runs[index] = PairRun(t0, end, cpu, ran, queued, tuple(walls))
        finally:
            if sampler is not None:
                sampler.stop()  # it samples until told to stop, whatever happened here
            with self._lock:
                self._probe_threads.discard(threading.current_thread())
                step.left -= 1
                if step.left == 0:
                    if step.pair:
                        probe.add_pair(step.runs)
                    plan.stepping = False
                    plan.changed.notify_all()
                    self._advance(plan)
            self._hand_off(plan)
