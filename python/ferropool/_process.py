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
import logging
import os
import sys
import threading
import time
import weakref
from collections.abc import Callable

from . import _core, errors
from ._core import (
    OUTCOME_CANCELLED,
    OUTCOME_RAISED,
    OUTCOME_TIMED_OUT,
    OUTCOME_WORKER_DIED,
    SERIALIZE_SAMPLE_EVERY,
)
from ._executor import PoolExecutor, TaskOptions, chunk_runner, is_coroutine_function, run_items
from ._future import TaskFuture, cancel_removed
from ._logs import RecordCounter
from ._serialize import (
    DEFAULT_ZERO_COPY_THRESHOLD,
    dumps,
    dumps_call,
    dumps_call_by_reference,
    loads,
    loads_exception,
)
from ._spawning import dumps_for_start, parent_authkey
from ._spawning import release as release_shared
from ._util import check_seconds, usable_cpu_count
from ._worker import bootstrap_command
from .errors import SerializationError, TaskTimeoutError

# Imported where first needed, not here: what they import (concurrent.futures.process, and so
# multiprocessing; dataclasses and inspect) would add about a third to ``import`` + first result.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ._process_handle import WorkerProcess
    from ._stats import PoolStats
    from .errors import BrokenPoolError, WorkerDiedError

#: ``_force_shutdown`` operations, named as in Python 3.14's ``concurrent.futures.process``.
_TERMINATE = "terminate"
_KILL = "kill"
#: Seconds a pool left running at interpreter exit gets to finish its tasks by default.
DEFAULT_EXIT_TIMEOUT = 5.0
# Lines of a dead worker's stderr quoted in its WorkerDiedError message (all are in stderr_tail).
_TAIL_LINES = 20
_perf = time.perf_counter_ns

_live_pools: weakref.WeakSet[ProcessPool] = weakref.WeakSet()
#: Taken to add to ``_live_pools`` and to copy it: a pool made on another thread while it is
#: copied would change it under the copy (a free-threaded build has no GIL to order them).
_live_pools_lock = threading.Lock()
#: Engines whose work is not finished, kept alive even when their ProcessPool object is dropped,
#: so that interpreter exit still finishes (or, past exit_timeout, stops) their tasks.
_unfinished: set[_Running] = set()


def native_threads_per_worker(workers: int, threads_per_worker: int = 1) -> int:
    """Native threads (OpenMP, BLAS...) each task thread may use so that ``workers`` processes of
    ``threads_per_worker`` threads never run more threads than there are usable CPUs."""
    return max(1, usable_cpu_count() // max(1, workers * threads_per_worker))


class _State:
    """What the pool and its result thread share (the thread must not keep the pool alive)."""

    def __init__(self) -> None:
        self.broken: BaseException | None = None
        #: Nanoseconds spent pickling the calls of sampled tasks: those whose id is a multiple
        #: of SERIALIZE_SAMPLE_EVERY (the engine times unpickling their results).
        self.sampled_dumps_ns = 0
        self.logs = RecordCounter()


class ProcessPool(PoolExecutor):
    """Runs calls in worker processes; a drop-in for ``concurrent.futures.ProcessPoolExecutor``.

    ``max_workers`` defaults to the number of usable CPUs. Workers are fresh interpreters, never
    a ``fork`` of this process, so starting a pool is safe with threads running; ``mp_context``
    is accepted for compatibility and ignored. Functions defined in ``__main__``, lambdas and
    closures work without an ``if __name__ == "__main__"`` guard.

    ``initializer(*initargs)`` runs once in each worker; if it raises, every task fails with
    ``BrokenPoolError`` whose ``__cause__`` is that exception. An ``async def`` initializer runs
    on the worker's event loop, the one its ``async def`` tasks then run on; an async generator's
    code after its ``yield`` runs there at the worker's shutdown (``docs/usage.md``, "Async
    initializers"). ``max_tasks_per_child`` replaces
    a worker after that many tasks, ``max_memory_per_child`` (bytes) once its private resident
    memory (what its tasks allocated: resident pages less those shared with files, so the
    memory files that carry large arguments and results do not count) exceeds that, checked
    as it answers: either way between tasks, failing none.
    ``max_pending`` bounds the tasks submitted and not yet finished: ``submit`` blocks
    (interruptibly) while there are that many, so a fast producer cannot grow memory without
    bound. ``map`` is always bounded.

    ``task_timeout`` (seconds) limits how long each task may run: past it, the task's future
    raises ``TaskTimeoutError`` (a ``TimeoutError``) and its worker is stopped (SIGTERM, then
    SIGKILL a second later) and replaced. ``pool.options(task_timeout=...)`` sets it for some
    calls only. ``future.cancel()`` stops a running task the same way.

    Large buffers — numpy arrays, ``bytes``, ``bytearray``, ``memoryview`` and anything that
    pickles with protocol-5 out-of-band buffers — of at least ``zero_copy_threshold`` bytes
    (default 64 KiB; ``None``: never) travel through shared memory in both directions instead of
    being copied through the pickle: each goes into an anonymous memory file whose descriptor
    crosses the socket. The receiver gets an ordinary writable numpy array or memoryview mapped
    on it (copy-on-write in the worker), freed when its last reference goes; ``bytes`` and
    ``bytearray`` arrive as themselves, at the cost of one copy out of the mapping.

    Native thread pools in workers (OpenMP, OpenBLAS, MKL, BLIS, numexpr) are limited to
    ``native_threads`` threads each — by default the usable CPUs divided by ``max_workers``, at
    least 1 — so that workers running numpy code do not oversubscribe the cores: the worker
    sets ``OMP_NUM_THREADS`` and the like before anything is imported (unless this process's
    environment sets them already), and limits libraries its initializer loaded with
    threadpoolctl when that is installed.

    A pool still running at interpreter exit (never shut down, or shut down without waiting)
    finishes its tasks first, as the standard library's does, but for at most ``exit_timeout``
    seconds (``None``: no limit); then it stops them and says so on stderr, so that a stuck
    task cannot hang the program's exit.

    Workers' output reaches this process whole lines at a time: what they print goes to its
    stdout and stderr without lines of two workers ever mixing, and their ``logging`` records
    go to this process's loggers (see ``stats`` for the figures of each worker).
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
        task_timeout: float | None = None,
        exit_timeout: float | None = DEFAULT_EXIT_TIMEOUT,
        zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD,
        native_threads: int | None = None,
        _threads_per_worker: int = 1,
    ) -> None:
        if max_workers is None:
            max_workers = usable_cpu_count()
        elif max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if max_tasks_per_child is not None:
            if isinstance(max_tasks_per_child, bool) or not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        for name, value in (("max_memory_per_child", max_memory_per_child), ("max_pending", max_pending)):
            if value is not None:
                if isinstance(value, bool) or not isinstance(value, int):
                    raise TypeError(f"{name} must be an integer")
                if value <= 0:
                    raise ValueError(f"{name} must be >= 1")
        if zero_copy_threshold is not None:
            if isinstance(zero_copy_threshold, bool) or not isinstance(zero_copy_threshold, int):
                raise TypeError("zero_copy_threshold must be a number of bytes or None")
            if zero_copy_threshold < 0:
                raise ValueError("zero_copy_threshold must be >= 0")
        self._zero_copy_threshold = zero_copy_threshold
        self._max_pending = max_pending  # submit may block: the asyncio API submits off the loop
        if native_threads is None:
            native_threads = native_threads_per_worker(max_workers, _threads_per_worker)
        elif isinstance(native_threads, bool) or not isinstance(native_threads, int) or native_threads < 1:
            raise ValueError(f"native_threads must be a positive integer or None, not {native_threads!r}")
        self._native_threads = native_threads
        self._task_timeout = check_seconds("task_timeout", task_timeout)
        self._exit_timeout = check_seconds("exit_timeout", exit_timeout)
        self._max_workers = max_workers
        self._owner_pid = os.getpid()
        # The initializer is pickled on its own: the worker can only unpickle it after it has
        # taken our sys.path and working directory from the outer, plain part.
        # multiprocessing's objects among initargs travel as spawn sends them (_spawning.py).
        call = None
        if initializer is not None:
            call, shared_keys = dumps_for_start((initializer, tuple(initargs)), "initializer")
            if shared_keys:
                weakref.finalize(self, release_shared, shared_keys)
        init = dumps(
            {
                "sys_path": list(sys.path),
                "cwd": os.getcwd(),
                "initializer": call,
                "zero_copy_threshold": zero_copy_threshold,
                "native_threads": native_threads,
                "threads": _threads_per_worker,
                "log_level": logging.getLogger().getEffectiveLevel(),
                "authkey": parent_authkey(),
            }
        )
        self._engine = _core.ProcessPoolEngine(
            max_workers,
            bootstrap_command(native_threads=native_threads),
            init,
            max_tasks_per_child=max_tasks_per_child,
            max_memory_per_child=max_memory_per_child,
            max_pending=max_pending,
            threads_per_worker=_threads_per_worker,
        )
        self._futures: dict[int, TaskFuture] = {}
        self._ids = itertools.count(1)
        self._state = _State()
        self._shutdown_lock = threading.Lock()
        self._shutdown = False
        self._shutdown_reason = "cannot schedule new futures after shutdown"
        self._handles: dict[int, WorkerProcess] = {}  # for _processes
        self._handles_lock = threading.Lock()
        self._running = _Running(self._engine, self._futures, self._exit_timeout)
        self._collector = threading.Thread(
            target=_collect,
            args=(self._engine, self._futures, self._state, self._running),
            name="ferropool-results",
            daemon=True,
        )
        self._running.collector = self._collector
        _unfinished.add(self._running)
        self._collector.start()
        # Dropping the pool without shutdown lets queued work finish in the background.
        weakref.finalize(self, self._engine.close)
        with _live_pools_lock:
            _live_pools.add(self)

    #: Workers run coroutine functions on their event loops (``map`` keeps more of them in flight).
    _runs_coroutines = True

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Schedules ``fn(*args, **kwargs)`` and returns its future. Blocks only with
        ``max_pending``, while that many tasks are unfinished.

        Raises ``SerializationError`` (a ``TypeError``) at once if the call cannot be pickled,
        ``RuntimeError`` after ``shutdown``, ``BrokenPoolError`` if the pool is broken.
        """
        return self._submit(fn, args, kwargs, self._task_timeout, fn)

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        return self._submit(chunk_runner(fn), (fn, items), {}, self._task_timeout, fn)

    def _submit_items(self, fn: Callable[..., Any], items: list, cut_after_ns: int | None = None) -> cf.Future:
        return self._submit(run_items, (fn, items, cut_after_ns), {}, self._task_timeout, fn)

    #: What runs a chunk of ``map`` in a worker (``TaskOptions`` asks for it).
    _chunk_runner = staticmethod(chunk_runner)

    def _submit(
        self, fn: Callable[..., Any], args: tuple, kwargs: dict, task_timeout: float | None, shown: Callable[..., Any]
    ) -> cf.Future:
        """Queues ``fn(*args, **kwargs)``; ``shown`` is the function that errors name (the
        user's, where ``fn`` is ``run_chunk``)."""
        if self._shutdown:
            raise RuntimeError(self._shutdown_reason)
        if self._state.broken is not None:
            raise self._broken_error()
        tid = next(self._ids)
        sampled = not tid % SERIALIZE_SAMPLE_EVERY
        if sampled:
            started = _perf()
        # A function sent by name with plain values, the common tiny task: its cached opcodes.
        payload = None if kwargs else dumps_call_by_reference(fn, args)
        if payload is None:
            payload, buffers = dumps_call(fn, args, kwargs, self._zero_copy_threshold)
        else:
            buffers = None
        if sampled:
            self._state.sampled_dumps_ns += _perf() - started
        is_async = is_coroutine_function(fn)
        fut = TaskFuture(self._engine, tid, self._futures, shown)
        self._futures[tid] = fut
        try:
            self._engine.submit(tid, payload, task_timeout, buffers, is_async)
        except BaseException as exc:  # including Ctrl-C while blocked by max_pending
            self._futures.pop(tid, None)
            if isinstance(exc, _core.EngineBrokenError):
                raise self._broken_error() from None
            raise
        return fut

    def options(self, *, task_timeout: float | None) -> TaskOptions:
        """Returns a view of this pool whose ``submit`` and ``map`` apply ``task_timeout``
        (seconds; ``None`` for no limit) instead of the pool's own.

        ``pool.options(task_timeout=2).submit(fn, x)``: ``fn(x)`` may run for two seconds;
        then its future raises ``TaskTimeoutError`` and its worker is replaced. The view shares
        the pool's workers and queue; ``submit(fn, *args, **kwargs)`` keeps the standard
        signature. Raises ``ValueError`` for a timeout that is not a positive number.
        """
        return TaskOptions(self, check_seconds("task_timeout", task_timeout))

    def stats(self, timeout: float = 1.0) -> PoolStats:
        """Returns a snapshot of what each worker has done: tasks, busy and idle time, mean and
        slowest task, time spent pickling (in the worker) and in transport, restarts and their
        causes; ``print(pool.stats())`` shows a table, ``.as_dict()`` gives plain data.

        Waits up to ``timeout`` seconds for the dispatcher's fresh figures (it answers within a
        turn of its loop), then returns the latest it had. Works after ``shutdown`` too (the
        figures at the end). See ``ferropool.PoolStats``.
        """
        from ._stats import PoolStats, WorkerStats

        workers = tuple(WorkerStats.from_engine(w) for w in self._engine.stats(timeout))
        sampled = self._state.sampled_dumps_ns + self._engine.sampled_loads_ns
        return PoolStats.of_workers(
            "ProcessPool",
            workers,
            parent_serialize_s=sampled * SERIALIZE_SAMPLE_EVERY / 1e9,
            log_records=self._state.logs.handled,
            dropped_log_records=self._state.logs.dropped,
        )

    def _broken_error(self) -> BrokenPoolError:
        cause = self._state.broken
        err = errors.BrokenPoolError(f"the pool is broken: {cause}")
        err.__cause__ = cause
        return err

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stops accepting tasks; queued and running tasks still finish, unless
        ``cancel_futures``, which cancels every task that has not started (running tasks still
        finish), as in the standard library. To stop running tasks too, call ``terminate_workers()`` or ``kill_workers()``, or ``cancel()``
        their futures.

        With ``wait``, returns once every task has finished and every worker has exited; a
        worker that does not exit after its last task (a thread stuck in native code, SIGTERM
        ignored) is killed after a few seconds rather than waited for. Safe to call more than
        once.
        """
        if self._owner_pid != os.getpid():
            self._shutdown = True  # inherited through fork: its engine belongs to the parent
            return
        with self._shutdown_lock:
            self._shutdown = True
            if cancel_futures:
                # Tasks a worker holds but has not started are cancelled too (their futures by
                # the result thread): the engine sends a worker many short tasks at once.
                self._cancel_queued_futures(self._engine.cancel_waiting())
            self._engine.close()
        if wait:
            try:
                self._join()
            except KeyboardInterrupt:
                # Ctrl-C while waiting for running tasks: stop them now, as leaving a with
                # block by Ctrl-C does, rather than leave them to the program's exit.
                self._terminate()
                raise
            _core.drop_spare_buffers()  # idle memory back now, not when the next pool sends

    def _cancel_queued_futures(self, ids: list[int]) -> None:
        for tid in ids:
            fut = self._futures.pop(tid, None)
            if fut is not None:  # else cancel() took it first
                cancel_removed(fut)

    def terminate_workers(self) -> None:
        """Shuts the pool down and sends every worker process SIGTERM, as Python 3.14's
        ``ProcessPoolExecutor.terminate_workers()`` does (on every Python version here).

        Tasks no worker has taken are cancelled; the futures of running tasks, and of those a
        worker holds, fail at once with ``BrokenPoolError`` (a ``BrokenProcessPool``); a task
        that ignores SIGTERM is killed a second later. Returns None without waiting for the
        workers to exit (``shutdown(wait=True)`` waits). The pool accepts no more tasks:
        ``submit`` raises ``RuntimeError``. Calling it after ``shutdown`` still stops the
        workers that are left, and is never an error.
        """
        self._force_shutdown(operation=_TERMINATE)

    def kill_workers(self) -> None:
        """As ``terminate_workers()``, but sends SIGKILL (Python 3.14's
        ``ProcessPoolExecutor.kill_workers()``): workers end at once, without running any
        handler or cleanup."""
        self._force_shutdown(operation=_KILL)

    def _force_shutdown(self, operation: str) -> None:
        """Shuts the pool down and signals every worker: ``operation`` is ``"terminate"``
        (SIGTERM) or ``"kill"`` (SIGKILL); anything else raises ``ValueError`` (the hook and
        names Python 3.14's ``ProcessPoolExecutor`` has)."""
        if operation not in (_TERMINATE, _KILL):
            raise ValueError(f"Unsupported operation: {operation!r}")
        if self._owner_pid != os.getpid():
            self._shutdown = True
            return
        processes = self._processes  # before the pool stops: then its workers start to exit
        with self._shutdown_lock:
            self._shutdown = True
            self._cancel_queued_futures(self._engine.cancel_all())
            self._engine.close()
        # Signalled through the handles (as the standard library does), before the engine
        # stops anything itself, so that each worker gets this very signal.
        for proc in processes.values():
            if proc.is_alive():
                proc.terminate() if operation == _TERMINATE else proc.kill()
        with self._shutdown_lock:
            # Every task still here was running, or held by a worker just signalled: fail it
            # now, and make sure the engine neither runs it nor runs it again elsewhere (a task
            # that ignores SIGTERM is stopped as a cancelled one is: SIGKILL a second later).
            for tid in list(self._futures):
                fut = self._futures.pop(tid, None)
                if fut is None:
                    continue  # its outcome is being delivered
                self._engine.cancel(tid)
                _fail(
                    fut,
                    errors.BrokenPoolError(
                        f"{_function_name(fut)} was running or waiting at a worker when "
                        f"{operation}_workers() stopped the pool"
                    ),
                )
            if operation == _KILL:
                self._engine.close(abort=True)

    @property
    def _broken(self) -> str | bool:
        """False, or what broke the pool: a compatibility shim for code that polls
        ``ProcessPoolExecutor._broken``."""
        broken = self._state.broken
        return False if broken is None else f"{type(broken).__name__}: {broken}"

    @property
    def _processes(self) -> dict[int, WorkerProcess]:
        """The live worker processes by pid: a compatibility shim for code written against
        ``ProcessPoolExecutor._processes`` (``len(pool._processes)``, ``for p in
        pool._processes.values(): p.terminate()``). A new dict on each read; the same handle
        for the same process each time. See ``WorkerProcess``.

        Listed in the order the engine hands out work to idle workers (it picks the highest
        slot first), so that ``next(iter(pool._processes.values()))`` is the worker running a
        lone task, as with the standard library, which starts its workers on demand."""
        if self._engine.join(0):  # ended: no workers left
            return {}
        slots = sorted(self._engine.stats(1.0), key=lambda w: w["worker"], reverse=True)
        pids = [w["pid"] for w in slots if w["pid"] is not None]
        with self._handles_lock:
            handles = self._handles
            for pid in set(handles) - set(pids):
                del handles[pid]
            for pid in pids:
                if pid not in handles:
                    from ._process_handle import WorkerProcess

                    handle = WorkerProcess.open(pid)
                    if handle is not None:
                        handles[pid] = handle
            return {pid: handles[pid] for pid in pids if pid in handles and handles[pid].is_alive()}

    def _join(self, timeout: float | None = None) -> bool:
        return self._running.join(timeout)

    def __exit__(self, exc_type, exc_val, exc_tb):
        if _ctrl_c_behind(exc_val):
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
            self._running.terminate()

    @property
    def max_workers(self) -> int:
        """The number of worker processes."""
        return self._max_workers


#: How long stopping at once (Ctrl-C, ``kill``) waits for the result thread after the workers
#: are gone; it is a daemon thread, so one stuck on a lock does not keep the program alive.
STOP_GRACE_S = 1.0


class _Running:
    """What of a pool must live until its work is done, even if the ``ProcessPool`` object is
    dropped first: the engine, the result thread and the futures. Kept in ``_unfinished`` until
    the engine ends, so that interpreter exit still finishes (or stops) the pool's tasks."""

    def __init__(self, engine, futures: dict, exit_timeout: float | None):
        self.engine = engine
        self.futures = futures
        self.exit_timeout = exit_timeout
        self.collector: threading.Thread | None = None

    def join(self, timeout: float | None = None) -> bool:
        """Waits for the workers to exit and every outcome to be delivered; False on timeout."""
        if not self.engine.join(timeout):
            return False
        if self.collector is not None and self.collector is not threading.current_thread():
            self.collector.join()
        return True

    def terminate(self) -> None:
        """Kills the workers at once; every unfinished future is cancelled. Waits for the
        workers to be reaped, and up to ``STOP_GRACE_S`` for the result thread to hand out the
        cancellations: a KeyboardInterrupt raised inside ``Condition.__enter__`` (right after
        the lock was taken) leaves a future's lock held by the interrupted thread, and the
        result thread would then wait on it for ever."""
        _unfinished.discard(self)  # at exit, not stopped a second time
        self.engine.close(abort=True)
        self.engine.join(None)
        if self.collector is not None and self.collector is not threading.current_thread():
            self.collector.join(STOP_GRACE_S)

    def finish_at_exit(self, ended: float) -> None:
        """Lets unfinished tasks run until ``exit_timeout`` seconds after ``ended`` (the
        program's end, ``time.monotonic()``), then stops them; Ctrl-C meanwhile stops them at
        once and raises ``KeyboardInterrupt``."""
        self.engine.close()
        left = None if self.exit_timeout is None else max(0.0, ended + self.exit_timeout - time.monotonic())
        try:
            if self.join(left):
                return
        except KeyboardInterrupt:
            self.terminate()
            raise
        print(
            f"ferropool: stopping {len(self.futures)} task(s) of a ProcessPool still running {self.exit_timeout:g} s "
            "after the program ended (ProcessPool(exit_timeout=...) sets this limit)",
            file=sys.stderr,
            flush=True,
        )
        self.terminate()


def _collect(engine, futures: dict, state: _State, running: _Running) -> None:
    """Result thread: delivers outcomes to futures until the engine ends.

    The common case (a returned value, nobody waiting on the future yet) is handled entirely in
    Rust by ``engine.deliver``; everything else comes back to ``settle``.
    """

    def settle(fut: TaskFuture, code: int, detail: Any, error: BaseException | None) -> None:
        try:
            if error is not None:  # OUTCOME_RETURNED, and loads or set_result failed
                if isinstance(error, cf.InvalidStateError):
                    return  # cancelled or finished meanwhile
                _fail(fut, SerializationError(f"result: could not be unpickled: {error}"))
            elif code == OUTCOME_RAISED:
                _fail(fut, loads_exception(detail))
            elif code == OUTCOME_WORKER_DIED:
                _fail(fut, _died(fut, *detail))
            elif code == OUTCOME_CANCELLED:
                cancel_removed(fut)
            elif code == OUTCOME_TIMED_OUT:
                _fail(fut, _timed_out(fut, *detail))
            else:  # OUTCOME_BROKEN
                _fail(fut, _broken(state, detail))
        except BaseException as exc:  # never let one bad outcome kill the result thread
            _fail(fut, exc)

    handle_records = state.logs.handle_records
    while engine.deliver(futures, loads, settle, handle_records):
        pass
    # The engine has ended and delivered every outcome it had. A future still here lost its
    # task inside the engine (its dispatcher failed): fail it rather than leave waiters hanging.
    for tid in list(futures):
        fut = futures.pop(tid, None)
        if fut is not None:
            _fail(fut, errors.BrokenPoolError("the pool ended without an outcome for this task; the pool is broken"))
    _unfinished.discard(running)


def _fail(fut: cf.Future, exc: BaseException) -> None:
    try:
        fut.set_exception(exc)
    except cf.InvalidStateError:
        pass


def _died(
    fut: TaskFuture, pid: int, code: int | None, sig: int | None, stderr_tail: bytes, reason: str | None
) -> WorkerDiedError:
    function = _function_name(fut)
    if reason is not None:
        how = f"was stopped by the pool: {reason}"
    elif sig is not None:
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
    elif code is not None:
        how = f"exited with code {code}"
    else:
        how = (
            "exited; its exit status was collected by someone else (the program ignores SIGCHLD "
            "or calls os.waitpid(-1, ...))"
        )
    tail = stderr_tail.decode("utf-8", "replace").rstrip()
    message = f"the worker process (pid {pid}) running {function} {how}"
    if tail:
        lines = tail.splitlines()[-_TAIL_LINES:]
        message += "; the last lines it wrote to stderr:\n" + "\n".join("    " + line for line in lines)
    err = errors.WorkerDiedError(message, pid=pid, exitcode=code, signal=sig, function=function, stderr_tail=tail)
    # What the standard library attaches to its BrokenProcessPool (from Python 3.15), in its
    # words and with multiprocessing's exit code (minus the signal number if killed); the
    # stderr tail is in the message already.
    exitcode = -sig if sig is not None else code
    remote = f"A worker process (pid {pid}) terminated abruptly"
    if exitcode is not None:
        remote += f" with exit code {exitcode}"
    err.__cause__ = errors.RemoteTraceback(f'\n"""\n{remote}\n"""')
    return err


def _function_name(fut: TaskFuture) -> str:
    fn = fut._function
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _timed_out(fut: TaskFuture, pid: int, seconds: float) -> TaskTimeoutError:
    function = _function_name(fut)
    return TaskTimeoutError(
        f"{function} ran longer than its task_timeout of {seconds:g} s; its worker (pid {pid}) was "
        "stopped and replaced",
        timeout=seconds,
        pid=pid,
        function=function,
    )


def _broken(state: _State, detail: bytes) -> BrokenPoolError:
    if state.broken is None:
        # An initializer's failure comes pickled from the worker; the engine's own reasons
        # (a worker that cannot be started) are plain text.
        if detail[:1] == b"\x80":
            state.broken = loads_exception(detail)
        else:
            state.broken = RuntimeError(detail.decode("utf-8", "replace"))
    err = errors.BrokenPoolError(f"the pool is broken: {type(state.broken).__name__}: {state.broken}")
    err.__cause__ = state.broken
    return err


def _shutdown_all_at_exit() -> None:
    # A program ended by Ctrl-C (CPython records the exception it printed in sys.last_value
    # before finalising) stops its pools at once instead of waiting for their running tasks.
    interrupted = _ctrl_c_behind(getattr(sys, "last_value", None))
    ended = time.monotonic()  # every pool's exit_timeout counts from here, however many wait
    with _live_pools_lock:
        pools = list(_live_pools)
    for pool in pools:
        with pool._shutdown_lock:
            pool._shutdown = True
    for running in list(_unfinished):
        if interrupted:
            running.terminate()
            continue
        try:
            running.finish_at_exit(ended)
        except KeyboardInterrupt:
            # Ctrl-C while the end waits: every pool left stops at once too. Not raised out of
            # this hook, where it would print "Exception ignored": the program is ending anyway.
            interrupted = True


def _ctrl_c_behind(exc: BaseException | None) -> bool:
    """Whether ``exc`` is a ``KeyboardInterrupt`` or was raised while one was being handled.

    The second happens to a Ctrl-C that lands in the standard library's own waits: one caught
    between ``Condition.wait`` letting go of its lock and entering its ``try`` (``cf.wait``,
    ``as_completed``, ``Event.wait``) comes out as ``RuntimeError: cannot release un-acquired
    lock``, with the ``KeyboardInterrupt`` as its context. The user pressed Ctrl-C either way."""
    seen = 0
    while exc is not None and seen < 100:  # a context chain can loop
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__context__
        seen += 1
    return False


def _forget_pools_in_child() -> None:
    # A fork of this process (say, a multiprocessing worker) inherits our pools but none of
    # their threads or workers: at its exit it must not try to shut them down and wait.
    for pool in list(_live_pools):
        pool._owner_pid = -1
        pool._shutdown = True
        pool._shutdown_reason = "this ProcessPool was inherited through fork; create a new pool in this process"
    _live_pools.clear()
    _unfinished.clear()


threading._register_atexit(_shutdown_all_at_exit)  # type: ignore[attr-defined]
os.register_at_fork(after_in_child=_forget_pools_in_child)
