"""ThreadPool: a drop-in ``concurrent.futures.ThreadPoolExecutor`` whose queue and worker loop live in Rust.

A task's life::

    submit(fn, *args) ──► (future, fn, args, kwargs) ──► ThreadWorkQueue (Rust, Mutex + Condvar)
                                                              │  pop: under the GIL while work is
                                                              │  queued, detached only to block
    future.result() ◄── set_result / set_exception ◄── run_worker loop (Rust, one per thread)

Threads start lazily, as in the standard library: ``submit`` starts one only when no worker thread
is idle, up to ``max_workers``. Futures are plain ``concurrent.futures.Future`` objects. A failing
``initializer`` breaks the pool (``concurrent.futures.thread.BrokenThreadPool``). At interpreter
exit every pool's queue is closed and its threads are joined after they drain it, as the
standard library does.
"""

from __future__ import annotations

import itertools
import os
import threading
import weakref
from concurrent.futures import Future, _base
from concurrent.futures.thread import BrokenThreadPool

from ferropool._core import ThreadWorkQueue
from ferropool._executor import PoolExecutor, is_coroutine_function, run_items
from ferropool._future import InterruptSafeCondition

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from ferropool._stats import PoolStats

__all__ = ["ThreadPool"]

# Worker threads of every pool, and their queues, so that interpreter exit can close and join them.
_threads_queues: weakref.WeakKeyDictionary[threading.Thread, ThreadWorkQueue] = weakref.WeakKeyDictionary()
_shutdown = False
# Orders pool shutdowns and thread starts against interpreter exit (as the standard library does).
_global_shutdown_lock = threading.Lock()


def _python_exit() -> None:
    global _shutdown
    with _global_shutdown_lock:
        _shutdown = True
    items = list(_threads_queues.items())
    for _, queue in items:
        queue.close()
    for thread, _ in items:
        thread.join()


# Runs before threading's own shutdown joins non-daemon threads, so workers can still finish
# (same hook as concurrent.futures.thread).
threading._register_atexit(_python_exit)  # type: ignore[attr-defined]

#: This process's id, kept current across ``fork``: ``submit`` compares it with the pool's owner
#: on every call, and ``os.getpid()`` is a system call.
_pid = os.getpid()


def _after_fork_in_child() -> None:
    global _pid
    _pid = os.getpid()
    _threads_queues.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _default_max_workers() -> int:
    cpu_count = getattr(os, "process_cpu_count", os.cpu_count)
    return min(32, (cpu_count() or 1) + 4)


def _worker(queue: ThreadWorkQueue, pool_ref: weakref.ref[ThreadPool], initializer, initargs) -> None:
    if initializer is not None:
        try:
            initializer(*initargs)
        except BaseException as exc:
            _base.LOGGER.critical("Exception in initializer:", exc_info=True)
            pool = pool_ref()
            if pool is not None:
                pool._initializer_failed(exc)
            return
    queue.run_worker()


class _Room:
    """Bounds the tasks submitted and not yet finished (``max_pending``): ``take`` blocks while
    there are ``limit`` of them; a finished (or cancelled) future gives its place back."""

    def __init__(self, limit: int):
        self.limit = limit
        self.unfinished = 0
        self.closed = False
        self.cond = InterruptSafeCondition()  # a submitter waits on it, in the caller's thread

    def take(self) -> bool:
        """Waits for room (interruptibly); returns False if the pool shut down meanwhile."""
        with self.cond:
            while self.unfinished >= self.limit and not self.closed:
                self.cond.wait()
            if self.closed:
                return False
            self.unfinished += 1
            return True

    def give(self, _future: object = None) -> None:
        with self.cond:
            self.unfinished -= 1
            self.cond.notify()

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class EventLoopThread:
    """An event loop in a daemon thread of its own: where a ``ThreadPool`` (and ``Pool``'s
    asyncio strategy) runs coroutine functions, so that any number of them can wait at once
    without taking a worker thread."""

    def __init__(self, name: str):
        import asyncio

        self._asyncio = asyncio
        self.loop = asyncio.new_event_loop()
        self.pending: set[Future] = set()
        self.closing = False
        ready = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.loop.call_soon(ready.set)
            self.loop.run_forever()
            self.loop.close()

        self.thread = threading.Thread(target=run, name=name, daemon=True)
        self.thread.start()
        ready.wait()

    def submit(self, coroutine) -> Future:
        future = self._asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        self.pending.add(future)
        future.add_done_callback(self.pending.discard)

        def close_if_cancelled(f: Future) -> None:
            if f.cancelled():
                _close_if_never_started(coroutine)

        future.add_done_callback(close_if_cancelled)
        return future

    def close(self, wait: bool, cancel: bool) -> None:
        """Stops the loop once its coroutines are done (or cancelled, with ``cancel``). Safe to
        call more than once."""
        if self.closing:
            if wait:
                self.thread.join()
            return
        self.closing = True
        if cancel:
            for future in list(self.pending):
                future.cancel()
        if wait:
            _base.wait(list(self.pending))
        self.loop.call_soon_threadsafe(self.loop.stop)
        if wait:
            self.thread.join()


def _is_async_function(fn) -> bool:
    import inspect

    return inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn)


def _close_if_never_started(coroutine) -> None:
    # Cancelled before the loop took it: close it, or it warns that it was never awaited.
    import inspect

    if inspect.getcoroutinestate(coroutine) == inspect.CORO_CREATED:
        coroutine.close()


class ThreadPool(PoolExecutor):
    """Run calls on a pool of threads; same contract as ``concurrent.futures.ThreadPoolExecutor``.

    ``max_workers`` defaults to ``min(32, cpu_count + 4)``; ``max_workers <= 0`` raises
    ``ValueError``. Worker threads are named ``f"{thread_name_prefix}_{n}"``. ``initializer``
    runs once in each worker thread; if it raises, the pool becomes broken: queued futures fail
    with ``BrokenThreadPool``, ``submit`` raises it, and its ``__cause__`` is the initializer's
    exception; an async initializer raises ``TypeError`` (a process pool's workers run one on
    their event loop). ``max_pending`` bounds the tasks submitted and not yet finished: ``submit``
    blocks (interruptibly) while there are that many, so a fast producer cannot grow memory
    without bound; ``shutdown`` releases a blocked ``submit`` with ``RuntimeError``. ``map`` is
    always bounded.

    ``async def`` functions are awaited on an event loop in a thread of the pool's own (started
    on first use), so any number of them wait at once without taking a worker thread; their
    futures are ordinary ``concurrent.futures.Future`` objects, and ``cancel()`` cancels the
    coroutine. (The standard library's executor would return the un-awaited coroutine instead.)
    """

    _counter = itertools.count().__next__

    def __init__(
        self,
        max_workers: int | None = None,
        thread_name_prefix: str = "",
        initializer=None,
        initargs=(),
        *,
        max_pending: int | None = None,
    ):
        if max_workers is None:
            max_workers = _default_max_workers()
        if max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        if initializer is not None and _is_async_function(initializer):
            raise TypeError(
                "ThreadPool does not take an async initializer: it runs the initializer in each of its "
                "threads, and its coroutine tasks share one event loop; create the resource in a "
                "coroutine of your own, or use ProcessPool or HybridPool, whose workers run an async "
                f"initializer on their event loop (got {initializer!r})"
            )
        if max_pending is not None:
            if isinstance(max_pending, bool) or not isinstance(max_pending, int):
                raise TypeError("max_pending must be an integer")
            if max_pending <= 0:
                raise ValueError("max_pending must be >= 1")
        self._room = _Room(max_pending) if max_pending is not None else None
        self._loop: EventLoopThread | None = None
        self._max_workers = max_workers
        self._queue = ThreadWorkQueue(max_workers)
        self._put = self._queue.put
        self._threads: set[threading.Thread] = set()
        #: Set once ``max_workers`` threads run: then ``submit`` needs no lock (see there).
        self._all_started = False
        self._broken: str | bool = False
        self._initializer_error: BaseException | None = None
        self._shutdown = False
        self._shutdown_lock = threading.Lock()
        self._thread_name_prefix = thread_name_prefix or f"ThreadPool-{self._counter()}"
        self._initializer = initializer
        self._initargs = initargs
        self._owner_pid = _pid

    def submit(self, fn, /, *args, **kwargs) -> Future:
        """Schedule ``fn(*args, **kwargs)`` and return its ``Future``. Blocks only with
        ``max_pending``, while that many tasks are unfinished.

        Raises ``RuntimeError`` after ``shutdown`` (or at interpreter exit), in a process that
        inherited the pool through ``fork`` (its threads stayed in the parent), and
        ``BrokenThreadPool`` once an initializer has failed.
        """
        if _shutdown or self._owner_pid != _pid:
            raise self._closed_error()
        if is_coroutine_function(fn):
            return self._submit_coroutine(fn, args, kwargs)
        room = self._room
        if room is not None and not room.take():
            raise self._closed_error()
        future: Future[Any] = Future()
        if room is not None:
            future.add_done_callback(room.give)
        if self._all_started:
            # Every thread runs already, so this put cannot ask for one: queueing is the whole
            # step, and the queue's own lock orders it against shutdown's close.
            try:
                self._put(future, fn, args, kwargs)
            except RuntimeError:
                if room is not None:
                    room.give()
                raise self._closed_error()  # noqa: B904 (the queue's own error is noise)
            return future
        # The lock makes "queued" and "thread started" one step, so shutdown(wait=True) waits for
        # every task whose submit returned (the standard library holds the same lock here).
        with self._shutdown_lock:
            try:
                start_thread = self._put(future, fn, args, kwargs)
            except RuntimeError:
                if room is not None:
                    room.give()
                raise self._closed_error()  # noqa: B904 (the queue's own error is noise)
            if start_thread:
                self._start_thread()
        return future

    def _submit_items(self, fn, items: list, cut_after_ns: int | None = None) -> Future:
        # ``map`` over one iterable: each item is the argument itself, not a 1-tuple.
        return self.submit(run_items, fn, items, cut_after_ns)

    def _submit_coroutine(self, fn, args, kwargs) -> Future:
        with self._shutdown_lock:
            if self._shutdown or self._broken or self._owner_pid != _pid:
                raise self._closed_error()
            if self._loop is None:
                self._loop = EventLoopThread(f"{self._thread_name_prefix}_loop")
            return self._loop.submit(fn(*args, **kwargs))

    def _closed_error(self) -> Exception:
        """Returns the error for a submit that the closed queue refused."""
        error: Exception
        if self._broken:
            error = self._broken_error()
            error.__suppress_context__ = True
            return error
        if self._owner_pid != _pid:
            error = RuntimeError(
                f"this ThreadPool was created in process {self._owner_pid} and inherited through fork; "
                "its threads did not survive the fork: create a new pool in this process"
            )
        elif _shutdown:
            error = RuntimeError("cannot schedule new futures after interpreter shutdown")
        else:
            error = RuntimeError("cannot schedule new futures after shutdown")
        error.__suppress_context__ = True
        return error

    def _start_thread(self) -> None:
        queue = self._queue
        with _global_shutdown_lock:
            if _shutdown:
                # Too late to start threads; run nothing rather than strand the task silently.
                queue.close()
                for future, *_ in queue.drain():
                    future.cancel()
                raise RuntimeError("cannot schedule new futures after interpreter shutdown")
            # The worker holds only a weak reference to the pool: a forgotten pool closes its
            # queue when collected, and its threads drain it and exit.
            pool_ref = weakref.ref(self, lambda _: queue.close())
            t = threading.Thread(
                name=f"{self._thread_name_prefix}_{len(self._threads)}",
                target=_worker,
                args=(queue, pool_ref, self._initializer, self._initargs),
            )
            t.start()
            self._threads.add(t)
            _threads_queues[t] = queue
            self._all_started = len(self._threads) >= self._max_workers

    def stats(self) -> PoolStats:
        """Returns a snapshot of what each worker thread has done: tasks and busy time (each
        task's run time, measured in the Rust worker loop), mean and slowest task. Threads do
        not restart; ``failed`` is not counted (0). ``print(pool.stats())`` shows a table."""
        from ._stats import PoolStats, WorkerStats

        workers = tuple(
            WorkerStats(worker=i, pid=None, tasks=tasks, failed=0, busy_s=busy / 1e9, max_task_s=longest / 1e9)
            for i, (tasks, busy, longest) in enumerate(self._queue.stats())
        )
        return PoolStats.of_workers("ThreadPool", workers)

    def _broken_error(self) -> BrokenThreadPool:
        """Returns the error for a broken pool, with the initializer's exception as its cause."""
        error = BrokenThreadPool(self._broken)
        error.__cause__ = self._initializer_error
        return error

    def _initializer_failed(self, exc: BaseException) -> None:
        with self._shutdown_lock:
            self._broken = "A thread initializer failed, the thread pool is not usable anymore"
            self._initializer_error = exc
            self._queue.close()
            items = self._queue.drain()
        for future, *_ in items:
            if future.set_running_or_notify_cancel():
                future.set_exception(self._broken_error())

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Stop accepting tasks; with ``wait``, block until every started task has finished.

        Queued tasks still run unless ``cancel_futures`` is true, in which case they are
        cancelled. Calling it again is harmless. In a process that inherited the pool through
        ``fork`` it only marks the copy shut down: the threads and tasks are the parent's.
        """
        if self._owner_pid != _pid:
            self._shutdown = True
            return
        with self._shutdown_lock:
            self._shutdown = True
            self._queue.close()
            if self._room is not None:
                self._room.close()
            if cancel_futures:
                for future, *_ in self._queue.drain():
                    future.cancel()
            threads = list(self._threads)
            loop, self._loop = self._loop, None
        if wait:
            for t in threads:
                t.join()
        if loop is not None:
            loop.close(wait, cancel_futures)
