"""``ProcessPool``: a drop-in ``concurrent.futures.ProcessPoolExecutor`` on a Rust engine.

A task's life, from ``submit`` to its result::

    submit(fn, *args)                                           caller's thread
      ├─ _serialize.dumps_call  -> bytes    (fails here, at the call, if unpicklable)
      ├─ TaskFuture registered in _futures[id]
      └─ engine.submit(id, bytes)  ──► dispatcher thread (Rust): queue -> worker socket
                                                 worker process: _worker._serve runs fn
    _collect thread               ◄── engine.deliver()  (Rust; GIL released while waiting)
      └─ TaskFuture finished with loads(bytes); errors and deaths via settle()

The engine (``ferropool._core.ProcessPoolEngine``, backed by ``crates/ferropool-engine``) owns
the workers, the socket transport and scheduling; this module owns futures and pickling.
"""

from __future__ import annotations

import concurrent.futures as cf
import itertools
import os
import sys
import threading
import weakref
from typing import Any, Callable

from . import _core
from ._executor import PoolExecutor
from ._future import TaskFuture, cancel_removed
from ._serialize import dumps, dumps_call, loads, loads_exception
from ._worker import bootstrap_command
from .errors import BrokenPoolError, SerializationError, WorkerDiedError

# Outcome codes passed to settle by ProcessPoolEngine.deliver (see src/process_pool.rs).
_RETURNED, _RAISED, _WORKER_DIED, _BROKEN, _CANCELLED = 0, 1, 2, 3, 4
# Lines of a dead worker's stderr quoted in its WorkerDiedError message (all are in stderr_tail).
_TAIL_LINES = 20

_live_pools: "weakref.WeakSet[ProcessPool]" = weakref.WeakSet()


def usable_cpu_count() -> int:
    """Returns the number of CPUs this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


class _State:
    """What the pool and its result thread share (the thread must not keep the pool alive)."""

    def __init__(self) -> None:
        self.broken: BaseException | None = None


class ProcessPool(PoolExecutor):
    """Runs calls in worker processes; a drop-in for ``concurrent.futures.ProcessPoolExecutor``.

    ``max_workers`` defaults to the number of usable CPUs. Workers are fresh interpreters, never
    a ``fork`` of this process, so starting a pool is safe with threads running; ``mp_context``
    is accepted for compatibility and ignored. Functions defined in ``__main__``, lambdas and
    closures work without an ``if __name__ == "__main__"`` guard.

    ``initializer(*initargs)`` runs once in each worker; if it raises, every task fails with
    ``BrokenPoolError`` whose ``__cause__`` is that exception. ``max_tasks_per_child`` replaces
    a worker after that many tasks, ``max_memory_per_child`` (bytes) once its resident memory
    exceeds that, checked as it answers: either way between tasks, failing none. ``max_pending`` bounds the tasks submitted and not yet
    finished: ``submit`` blocks (interruptibly) while there are that many, so a fast producer
    cannot grow memory without bound. ``map`` is always bounded.
    """

    def __init__(
        self,
        max_workers: int | None = None,
        mp_context: Any = None,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple = (),
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        max_pending: int | None = None,
    ) -> None:
        if max_workers is None:
            max_workers = usable_cpu_count()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        for name, value in (("max_memory_per_child", max_memory_per_child), ("max_pending", max_pending)):
            if value is not None:
                if not isinstance(value, int):
                    raise TypeError(f"{name} must be an integer")
                if value <= 0:
                    raise ValueError(f"{name} must be >= 1")
        self._max_workers = max_workers
        self._owner_pid = os.getpid()
        # The initializer is pickled on its own: the worker can only unpickle it after it has
        # taken our sys.path and working directory from the outer, plain part.
        call = dumps((initializer, tuple(initargs)), "initializer") if initializer is not None else None
        init = dumps({"sys_path": list(sys.path), "cwd": os.getcwd(), "initializer": call})
        self._engine = _core.ProcessPoolEngine(max_workers, bootstrap_command(), init, max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child, max_pending=max_pending)
        self._futures: dict[int, TaskFuture] = {}
        self._ids = itertools.count(1)
        self._state = _State()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._shutdown_reason = "cannot schedule new futures after shutdown"
        self._collector = threading.Thread(target=_collect, args=(self._engine, self._futures, self._state), name="ferropool-results", daemon=True)
        self._collector.start()
        # Dropping the pool without shutdown lets queued work finish in the background.
        weakref.finalize(self, self._engine.close)
        _live_pools.add(self)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Schedules ``fn(*args, **kwargs)`` and returns its future. Blocks only with
        ``max_pending``, while that many tasks are unfinished.

        Raises ``SerializationError`` (a ``TypeError``) at once if the call cannot be pickled,
        ``RuntimeError`` after ``shutdown``, ``BrokenPoolError`` if the pool is broken.
        """
        if self._shutdown:
            raise RuntimeError(self._shutdown_reason)
        if self._state.broken is not None:
            raise self._broken_error()
        payload = dumps_call(fn, args, kwargs)
        fut = TaskFuture()
        tid = next(self._ids)
        fut._ferropool = (self._engine, tid, self._futures, fn)
        self._futures[tid] = fut
        try:
            self._engine.submit(tid, payload)
        except BaseException as exc:  # including Ctrl-C while blocked by max_pending
            self._futures.pop(tid, None)
            if isinstance(exc, _core.EngineBrokenError):
                raise self._broken_error() from None
            raise
        return fut

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        fut = super()._submit_chunk(fn, items)
        # Name the user's function, not run_chunk, if a worker dies running this chunk.
        fut._ferropool = fut._ferropool[:3] + (fn,)
        return fut

    def _broken_error(self) -> BrokenPoolError:
        cause = self._state.broken
        err = BrokenPoolError(f"the pool is broken: {cause}")
        err.__cause__ = cause
        return err

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting tasks; queued tasks still run unless ``cancel_futures``.

        With ``wait``, returns once every task has finished and every worker has exited.
        Safe to call more than once.
        """
        if self._owner_pid != os.getpid():
            self._shutdown = True  # inherited through fork: its engine belongs to the parent
            return
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                for tid in self._engine.cancel_all():
                    fut = self._futures.pop(tid, None)
                    if fut is not None:
                        cancel_removed(fut)
            self._engine.close()
        if wait:
            self._engine.join()
            if self._collector is not threading.current_thread():
                self._collector.join()

    def __exit__(self, exc_type, exc_val, exc_tb):
        if exc_type is not None and issubclass(exc_type, KeyboardInterrupt):
            # Ctrl-C: stop now rather than wait for running tasks; a second Ctrl-C is never needed.
            self._terminate()
        else:
            self.shutdown(wait=True)
        return False

    def _terminate(self) -> None:
        """Kills the workers at once; every unfinished future is cancelled. Returns when the
        workers are reaped."""
        if self._owner_pid != os.getpid():
            return
        with self._shutdown_lock:
            self._shutdown = True
            self._engine.close(abort=True)
        self._engine.join()
        if self._collector is not threading.current_thread():
            self._collector.join()

    @property
    def max_workers(self) -> int:
        """The number of worker processes."""
        return self._max_workers


def _collect(engine, futures: dict, state: _State) -> None:
    """Result thread: delivers outcomes to futures until the engine ends.

    The common case (a returned value, nobody waiting on the future yet) is handled entirely in
    Rust by ``engine.deliver``; everything else comes back to ``settle``.
    """

    def settle(fut: cf.Future, code: int, detail: Any, error: BaseException | None) -> None:
        try:
            if error is not None:
                if isinstance(error, cf.InvalidStateError):
                    return  # cancelled or finished meanwhile
                _fail(fut, SerializationError(f"result: could not be unpickled: {error}"))
            elif code == _RAISED:
                _fail(fut, loads_exception(detail))
            elif code == _WORKER_DIED:
                _fail(fut, _died(fut, *detail))
            elif code == _CANCELLED:
                cancel_removed(fut)
            else:
                _fail(fut, _broken(state, detail))
        except BaseException as exc:  # never let one bad outcome kill the result thread
            _fail(fut, exc)

    while engine.deliver(futures, loads, settle):
        pass


def _fail(fut: cf.Future, exc: BaseException) -> None:
    try:
        fut.set_exception(exc)
    except cf.InvalidStateError:
        pass


def _died(fut: TaskFuture, pid: int, code: int | None, sig: int | None, stderr_tail: bytes) -> WorkerDiedError:
    fn = fut._ferropool[3]
    function = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
    if sig is not None:
        import signal as _signal

        try:
            name = _signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        how = f"was killed by {name}"
        if sig == _signal.SIGKILL:
            how += " (possibly out of memory: the kernel's OOM killer sends SIGKILL)"
        elif sig in (_signal.SIGSEGV, _signal.SIGBUS, _signal.SIGILL, _signal.SIGFPE, _signal.SIGABRT):
            how += " (a crash, most likely in native code)"
    else:
        how = f"exited with code {code}"
    tail = stderr_tail.decode("utf-8", "replace").rstrip()
    message = f"the worker process (pid {pid}) running {function} {how}"
    if tail:
        lines = tail.splitlines()[-_TAIL_LINES:]
        message += "; the last lines it wrote to stderr:\n" + "\n".join("    " + line for line in lines)
    return WorkerDiedError(message, pid=pid, exitcode=code, signal=sig, function=function, stderr_tail=tail)


def _broken(state: _State, detail: bytes) -> BrokenPoolError:
    if state.broken is None:
        # An initializer's failure comes pickled from the worker; the engine's own reasons
        # (a worker that cannot be started) are plain text.
        if detail[:1] == b"\x80":
            state.broken = loads_exception(detail)
        else:
            state.broken = RuntimeError(detail.decode("utf-8", "replace"))
    err = BrokenPoolError(f"the pool is broken: {type(state.broken).__name__}: {state.broken}")
    err.__cause__ = state.broken
    return err


def _shutdown_all_at_exit() -> None:
    # A program ended by Ctrl-C (CPython records the exception it printed in sys.last_type
    # before finalising) stops its pools at once instead of waiting for their running tasks.
    interrupted = isinstance(getattr(sys, "last_type", None), type) and issubclass(sys.last_type, KeyboardInterrupt)
    for pool in list(_live_pools):
        if interrupted:
            pool._terminate()
        else:
            pool.shutdown(wait=True)


def _forget_pools_in_child() -> None:
    # A fork of this process (say, a multiprocessing worker) inherits our pools but none of
    # their threads or workers: at its exit it must not try to shut them down and wait.
    for pool in list(_live_pools):
        pool._owner_pid = -1
        pool._shutdown = True
        pool._shutdown_reason = "this ProcessPool was inherited through fork; create a new pool in this process"
    _live_pools.clear()


threading._register_atexit(_shutdown_all_at_exit)  # type: ignore[attr-defined]
os.register_at_fork(after_in_child=_forget_pools_in_child)
