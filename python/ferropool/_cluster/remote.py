"""What ``DaskPool`` and ``RayPool`` share: a ferropool executor whose workers belong to a
cluster engine (Dask distributed, Ray) instead of to ferropool.

A task's life::

    submit(fn, *args)                                                   caller's thread
      ├─ large numpy arrays -> engine handles (scatter / ray.put), once per array
      ├─ dumps_remote_call -> bytes          (fails here, at the call, if unpicklable)
      └─ RemoteFuture  ──► _dispatch: engine.submit(run_task, payload, token, *handles)
                                               cluster worker: run_task unpickles, runs fn,
                                               pickles the result or the exception itself
    engine callback ──► _settle: loads the outcome into the RemoteFuture; counts stats()

The worker pickles the outcome itself (``run_task``), so what reaches the caller is exactly what
a ``ProcessPool`` gives: the task's exception re-raised as its own type with the worker's
traceback as ``__cause__``, ``SerializationError`` naming ``result`` for a result that cannot be
pickled, ``WorkerDiedError`` when the engine reports the worker lost. The engine only ever
carries bytes and array handles.

Per-task timeouts are kept by the parent: one timer thread (``_Deadlines``) fails the future
with ``TaskTimeoutError`` and asks the engine to stop the task. So that the clock measures run
time rather than time spent queued on the cluster, tasks with a timeout are sent to the engine
only while fewer than ``max_workers`` of them are out (``_TimedGate``); the clock starts when a
task is sent.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import heapq
import itertools
import os
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable
from typing import Any

from .._executor import PoolExecutor, TaskOptions, run_chunk
from .._future import mark_cancelled
from .._serialize import (
    PROTOCOL,
    _cloud,
    _fails,
    _plain,
    describe_failure,
    dumps,
    dumps_exception,
    loads,
    loads_exception,
)
from .._stats import PoolStats
from .._util import check_seconds
from ..errors import SerializationError, TaskTimeoutError, WorkerDiedError

#: Arrays at least this large (bytes) go through the engine's own data path by default.
SHARE_THRESHOLD = 1 << 20
#: Longest ``shutdown(wait=True, cancel_futures=True)`` waits for the engine to carry out the
#: stops of running tasks (seconds).
STOP_WAIT_S = 30.0


# ---------------------------------------------------------------- worker side


class _Shared:
    """Stands in, inside a pickled call, for the engine handle at ``index`` of ``run_task``'s
    ``shared`` arguments, which the engine has already turned back into the array."""

    __slots__ = ("index",)

    def __init__(self, index: int):
        self.index = index

    def __reduce__(self):
        return (_Shared, (self.index,))


class _Stopped(BaseException):
    """Raised asynchronously in a task's thread to stop it (see ``stop_task``)."""


# token -> [thread ident, stopped?] for tasks running in this worker process.
_running: dict[str, list] = {}
_running_lock = threading.Lock()
#: Notified whenever a task leaves ``_running`` (the stop watchdog waits on it).
_task_left = threading.Condition(_running_lock)


def run_task(payload: bytes, token: str, *shared: Any) -> tuple[bool, bytes, int]:
    """Runs a pickled call in a cluster worker; returns ``(ok, pickled outcome, run time ns)``.

    Never raises for the task's own failures: the exception is pickled with its traceback
    (``dumps_exception``) and re-raised by the parent, so the engine sees every task succeed.
    """
    entry = [threading.get_ident(), False]
    with _running_lock:
        _running[token] = entry
    start = time.perf_counter_ns()
    try:
        try:
            fn, args, kwargs = loads(payload)
            if shared:
                args = tuple(shared[a.index] if type(a) is _Shared else a for a in args)
                kwargs = {k: shared[v.index] if type(v) is _Shared else v for k, v in kwargs.items()}
            result = fn(*args, **kwargs)
            try:
                return True, dumps(result, "result"), time.perf_counter_ns() - start
            except SerializationError as exc:
                raise SerializationError(f"{exc} (the task's return value could not be sent back)") from None
        except _Stopped:
            raise
        except BaseException as exc:
            return False, dumps_exception(exc), time.perf_counter_ns() - start
    finally:
        with _running_lock:
            del _running[token]
            if entry[1]:  # a stop request may still be pending on this thread: drop it
                _async_raise(entry[0], None)
            _task_left.notify_all()


def running_tasks() -> int:
    """Returns how many ferropool tasks run in this worker process (for tests and debugging)."""
    with _running_lock:
        return len(_running)


def running_tokens() -> list[str]:
    """Returns the tokens of the ferropool tasks running in this worker process."""
    with _running_lock:
        return list(_running)


def _async_raise(ident: int, exc_type: type | None) -> None:
    import ctypes

    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident), ctypes.py_object(exc_type) if exc_type else None)


def stop_task(token: str, grace: float = 1.0) -> bool:
    """Stops the task ``token`` if it runs in this process; returns whether it did.

    Raises ``_Stopped`` in the task's thread, which ends pure-Python code at once. Code blocked
    in C (``time.sleep``, a lock, a native library) cannot be interrupted that way: if the task
    still runs ``grace`` seconds later, this process kills itself (SIGKILL), so that the
    engine replaces the worker, as ``ProcessPool`` replaces a worker it stops.
    """
    with _running_lock:
        entry = _running.get(token)
        if entry is None:
            return False
        entry[1] = True
        _async_raise(entry[0], _Stopped)

    def watchdog() -> None:
        with _task_left:
            if _task_left.wait_for(lambda: token not in _running, timeout=grace):
                return
        import signal

        os.kill(os.getpid(), signal.SIGKILL)

    threading.Thread(target=watchdog, name="ferropool-stop", daemon=True).start()
    return True


# ---------------------------------------------------------------- parent side


def dumps_remote_call(fn: Any, args: tuple, kwargs: dict) -> bytes:
    """Pickles ``fn(*args, **kwargs)`` for a cluster worker; errors name ``fn``, ``args[i]``
    or ``kwargs[k]``. Functions the worker cannot import (``__main__``, lambdas) go by value
    with cloudpickle on every call: cluster workers are shared between clients, so the
    per-process cache of ``ProcessPool`` cannot be used."""
    call = (fn, args, kwargs)
    data = _plain(call)
    if data is not None:
        return data
    try:
        return _cloud().dumps(call, PROTOCOL)
    except Exception as exc:
        for part, name in ((fn, "fn"), (args, "args"), (kwargs, "kwargs")):
            if _fails(part):
                raise SerializationError(describe_failure(part, name, exc)) from exc
        raise SerializationError(f"call: {exc}") from exc


class RemoteFuture(cf.Future):
    """A ``concurrent.futures.Future`` for a task on a cluster; ``cancel()`` stops it there,
    running or not. Stays PENDING until it finishes (``running()`` is always False)."""

    def __init__(self, pool: RemotePool, fn: Callable[..., Any]) -> None:
        super().__init__()
        self._pool = pool
        self._fn = fn
        self._handle: Any = None  # the engine's future, once sent
        self._token = uuid.uuid4().hex
        self._timeout: float | None = None

    def cancel(self) -> bool:
        """Cancels the task, stopping it on its worker if it runs; False once it finished."""
        return self._cancel(stop_running=True)

    def _cancel(self, stop_running: bool) -> bool:
        with self._condition:
            if not mark_cancelled(self):  # CANCELLED_AND_NOTIFIED: cf.wait counts it done
                return self.cancelled()
            # Read with the state change: a task sent meanwhile is stopped by its sender.
            handle = self._handle
        self._invoke_callbacks()  # type: ignore[attr-defined]  # private to cf.Future, untyped
        self._pool._count("cancelled")
        if handle is not None:
            self._pool._stop(self, handle, stop_running)
        return True


def _finish(fut: cf.Future, *, result: Any = None, error: BaseException | None = None) -> bool:
    try:
        if error is not None:
            fut.set_exception(error)
        else:
            fut.set_result(result)
        return True
    except cf.InvalidStateError:  # cancelled or timed out meanwhile
        return False


class _Deadlines:
    """One timer thread per pool: fails futures still unfinished at their deadline."""

    def __init__(self, on_expiry: Callable[[RemoteFuture], None]):
        self.on_expiry = on_expiry
        self.heap: list = []
        self.order = itertools.count()
        self.cond = threading.Condition()
        self.thread: threading.Thread | None = None
        self.closed = False

    def add(self, fut: RemoteFuture, seconds: float) -> None:
        with self.cond:
            heapq.heappush(self.heap, (time.monotonic() + seconds, next(self.order), fut))
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="ferropool-deadlines", daemon=True)
                self.thread.start()
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify()

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and (not self.heap or self.heap[0][0] > time.monotonic()):
                    self.cond.wait(self.heap[0][0] - time.monotonic() if self.heap else None)
                if self.closed:
                    return
                _, _, fut = heapq.heappop(self.heap)
            if not fut.done():
                try:
                    self.on_expiry(fut)
                except Exception:  # never let one failed stop kill the timer
                    pass


class _TimedGate:
    """Sends tasks that have a timeout only while fewer than ``slots`` of them are out, so that
    their clock starts about when a worker takes them."""

    def __init__(self, slots: int):
        self.slots = slots
        self.out = 0
        self.waiting: collections.deque = collections.deque()
        self.lock = threading.Lock()

    def enter(self, send: Callable[[], None]) -> None:
        with self.lock:
            if self.out >= self.slots:
                self.waiting.append(send)
                return
            self.out += 1
        send()

    def leave(self) -> None:
        with self.lock:
            send = self.waiting.popleft() if self.waiting else None
            if send is None:
                self.out -= 1
        if send is not None:
            send()


class RemotePool(PoolExecutor):
    """Base of the cluster-backed pools. Subclasses implement the ``_engine_*`` methods."""

    _engine_name = "engine"

    def __init__(self, *, task_timeout: float | None, share_threshold: int | None) -> None:
        self._task_timeout = check_seconds("task_timeout", task_timeout)
        self._share_threshold = share_threshold
        self._shared: dict[int, Any] = {}  # id(array) -> engine handle, while the array lives
        self._shared_lock = threading.Lock()
        self._futures: set[RemoteFuture] = set()
        self._futures_lock = threading.Lock()
        self._all_done = threading.Condition(self._futures_lock)
        self._shutdown = False
        self._closed = False
        self._deadlines = _Deadlines(self._expire)
        self._gate = _TimedGate(max(1, self._max_workers))
        self._stats = dict.fromkeys(("submitted", "done", "failed", "cancelled", "timed_out"), 0)
        self._run_ns = 0
        self._timed_runs = 0

    # -- engine interface -------------------------------------------------------------

    def _engine_submit(self, fut: RemoteFuture, payload: bytes, shared: list) -> Any:
        """Sends ``run_task(payload, fut._token, *shared)``; returns the engine's future. Arranges
        for ``self._settle(fut, outcome_or_error)`` to be called when it ends."""
        raise NotImplementedError

    def _engine_share(self, array: Any) -> Any:
        """Puts ``array`` into the engine's object store; returns its handle."""
        raise NotImplementedError

    def _engine_stop(self, fut: RemoteFuture, handle: Any) -> None:
        """Stops the task: drops it from the queue, or stops it where it runs."""
        raise NotImplementedError

    def _engine_running(self) -> set[str] | None:
        """The tokens of the tasks that have begun on the cluster, or None if the engine cannot
        tell them from queued ones."""
        return None

    def _engine_drop(self, fut: RemoteFuture, handle: Any) -> None:
        """Drops the task from the engine's queue without stopping it if it has begun."""
        self._engine_stop(fut, handle)

    def _engine_error(self, fut: RemoteFuture, exc: BaseException) -> BaseException:
        """Translates an engine's own failure (a lost worker...) into ferropool's exception."""
        return exc

    def _engine_await_stopped(self, handles: list, timeout: float) -> None:
        """Waits, up to ``timeout`` seconds, until the engine has carried out the stops of
        ``handles`` (their tasks ended), for ``shutdown(wait=True)``. By default a stop is
        done when ``_engine_stop`` returns."""

    def _engine_close(self) -> None:
        """Releases what the pool created (a client, a cluster connection)."""

    # -- executor API -----------------------------------------------------------------

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Schedules ``fn(*args, **kwargs)`` on the cluster; returns a ``concurrent.futures.Future``.

        Raises ``SerializationError`` (a ``TypeError``) at once if the call cannot be pickled and
        ``RuntimeError`` after ``shutdown``. Never blocks on the cluster.
        """
        return self._submit(fn, args, kwargs, self._task_timeout, fn)

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        return self._submit(run_chunk, (fn, items), {}, self._task_timeout, fn)

    #: What runs a chunk of ``map`` on a cluster worker (``TaskOptions`` asks for it).
    _chunk_runner = staticmethod(lambda fn: run_chunk)

    def options(self, *, task_timeout: float | None) -> TaskOptions:
        """Returns a view of this pool whose ``submit`` and ``map`` apply ``task_timeout``
        (seconds; ``None`` for no limit), as ``ProcessPool.options`` does."""
        return TaskOptions(self, check_seconds("task_timeout", task_timeout))

    def _submit(self, fn, args: tuple, kwargs: dict, task_timeout: float | None, shown) -> cf.Future:
        if self._shutdown:
            raise RuntimeError("cannot schedule new futures after shutdown")
        shared: list = []
        if self._share_threshold is not None:
            args, kwargs = self._share_arrays(args, kwargs, shared)
        payload = dumps_remote_call(fn, args, kwargs)
        fut = RemoteFuture(self, shown)
        fut._timeout = task_timeout
        with self._futures_lock:
            self._futures.add(fut)
            self._stats["submitted"] += 1
        send = lambda: self._dispatch(fut, payload, shared)  # noqa: E731
        if task_timeout is None:
            send()
        else:
            self._gate.enter(send)
        return fut

    def _dispatch(self, fut: RemoteFuture, payload: bytes, shared: list) -> None:
        if fut.cancelled():
            if fut._timeout is not None:
                self._gate.leave()
            return
        try:
            handle = self._engine_submit(fut, payload, shared)
        except BaseException as exc:
            self._settle(fut, None, exc)
            return
        if fut._timeout is not None:
            self._deadlines.add(fut, fut._timeout)
        with fut._condition:
            fut._handle = handle
            cancelled = fut.cancelled()
        if cancelled:  # cancel() ran while the task was being sent
            self._stop(fut, handle)

    def _settle(self, fut: RemoteFuture, outcome: tuple | None, error: BaseException | None) -> None:
        """Called by the engine's callback with ``run_task``'s outcome or the engine's error."""
        if fut._timeout is not None:
            self._gate.leave()
        kind = "failed"
        if error is not None:
            _finish(fut, error=self._engine_error(fut, error))
        else:
            ok, data, ns = outcome  # type: ignore[misc]
            if ok:
                try:
                    value = loads(data)
                except Exception as exc:
                    _finish(fut, error=SerializationError(f"result: could not be unpickled: {exc}"))
                else:
                    if _finish(fut, result=value):
                        kind = "done"
            else:
                _finish(fut, error=loads_exception(data))
            with self._futures_lock:
                self._run_ns += ns
                self._timed_runs += 1
        with self._futures_lock:
            if not fut.cancelled() and not isinstance(fut.exception(), TaskTimeoutError):
                self._stats[kind] += 1
            self._futures.discard(fut)
            self._all_done.notify_all()
        if self._shutdown:
            self._close_when_idle()

    def _expire(self, fut: RemoteFuture) -> None:
        fn = fut._fn
        function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
        err = TaskTimeoutError(
            f"{function} ran longer than its task_timeout of {fut._timeout:g} s on the "
            f"{self._engine_name} cluster and was stopped",
            timeout=fut._timeout,
            function=function,
        )
        if _finish(fut, error=err):
            self._count("timed_out")
            with fut._condition:
                handle = fut._handle
            if handle is not None:
                self._stop(fut, handle)

    def _stop(self, fut: RemoteFuture, handle: Any, stop_running: bool = True) -> None:
        try:
            if stop_running:
                self._engine_stop(fut, handle)
            else:
                self._engine_drop(fut, handle)
        except Exception:
            pass  # the cluster is gone or the task ended meanwhile: nothing left to stop
        with self._futures_lock:
            self._futures.discard(fut)
            self._all_done.notify_all()
        if self._shutdown:
            self._close_when_idle()

    def _count(self, key: str) -> None:
        with self._futures_lock:
            self._stats[key] += 1

    def stats(self) -> PoolStats:
        """Returns a snapshot (``ferropool.PoolStats``) with pool totals only: the cluster
        schedules tasks, so there are no per-worker figures. ``extra`` (and ``as_dict()``)
        has tasks ``submitted``, ``done`` (returned), ``failed`` (raised, or their worker
        died), ``cancelled``, ``timed_out``, ``running`` (sent and unfinished, or queued here)
        and ``mean_task_s``, the mean run time in the workers (None before any task ended).
        ``map`` counts each chunk as one task."""
        with self._futures_lock:
            snap: dict[str, Any] = dict(self._stats)
            snap["running"] = len(self._futures)
            snap["mean_task_s"] = self._run_ns / self._timed_runs / 1e9 if self._timed_runs else None
            busy_s = self._run_ns / 1e9
        return PoolStats(
            kind=type(self).__name__,
            tasks=snap["done"] + snap["failed"],
            failed=snap["failed"],
            busy_s=busy_s,
            max_task_s=None,
            restarts=0,
            extra=types.MappingProxyType(snap),
        )

    def _share_arrays(self, args: tuple, kwargs: dict, shared: list) -> tuple[tuple, dict]:
        np = sys.modules.get("numpy")
        if np is None:
            return args, kwargs

        def swap(value: Any) -> Any:
            if type(value) is np.ndarray and value.nbytes >= self._share_threshold:
                shared.append(self._handle_for(value))
                return _Shared(len(shared) - 1)
            return value

        return tuple(swap(a) for a in args), {k: swap(v) for k, v in kwargs.items()}

    def _handle_for(self, array: Any) -> Any:
        """Returns the engine handle of ``array``, putting it once per array object; the handle
        is released when the array is garbage-collected. Arrays are taken as read-only: one
        changed in place after its first use is not sent again."""
        import weakref

        key = id(array)
        with self._shared_lock:
            handle = self._shared.get(key)
            if handle is None:
                handle = self._shared[key] = self._engine_share(array)
                weakref.finalize(array, self._shared.pop, key, None)
            return handle

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting tasks. ``cancel_futures`` cancels every task that has not begun, as
        in the standard library, where the engine can tell (Dask); where it cannot (Ray), every
        unfinished task, stopping running ones. ``wait`` returns once every task has ended.
        Then releases what the pool created (its client or cluster connection). Safe to call
        twice."""
        if self._shutdown and not wait:
            return
        self._shutdown = True
        stopped = []
        if cancel_futures:
            with self._futures_lock:
                pending = list(self._futures)
            try:
                running = self._engine_running()
            except Exception:
                running = None  # the cluster is going: cancel all, as an engine that cannot tell
            for fut in pending:
                if running is None:
                    with fut._condition:
                        handle = fut._handle
                    if fut.cancel() and handle is not None:
                        stopped.append(handle)
                elif fut._token not in running:
                    # One that begins meanwhile runs on; its result is dropped.
                    fut._cancel(stop_running=False)
        if wait:
            with self._all_done:
                while self._futures:
                    self._all_done.wait()
            if stopped:
                # A stop is carried out by the engine after ``cancel()`` returns (Ray kills the
                # worker): once shutdown returns, none may still land on a later pool's task.
                try:
                    self._engine_await_stopped(stopped, STOP_WAIT_S)
                except Exception:
                    pass  # the cluster is gone: nothing is left to stop
        self._close_when_idle()

    def _close_when_idle(self) -> None:
        """After ``shutdown``, once no task is left, releases the engine (exactly once)."""
        with self._futures_lock:
            if not self._shutdown or self._futures or self._closed:
                return
            self._closed = True
        self._deadlines.close()
        self._shared.clear()
        self._engine_close()

    @property
    def max_workers(self) -> int:
        """The number of tasks the cluster runs at once (its threads or CPUs), as seen at start."""
        return self._max_workers


def died(fut: RemoteFuture, engine: str, detail: str) -> WorkerDiedError:
    """A ``WorkerDiedError`` for a task whose worker the engine reports lost."""
    fn = fut._fn
    function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    return WorkerDiedError(f"the {engine} worker running {function} died: {detail}", function=function)
