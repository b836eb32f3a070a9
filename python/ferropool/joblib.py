"""joblib backends on ferropool's pools; importing this module registers them.

    import ferropool.joblib                      # registers "ferropool" and "ferropool-threads"
    from joblib import Parallel, delayed, parallel_config

    with parallel_config(backend="ferropool"):
        Parallel(n_jobs=2)(delayed(f)(x) for x in xs)

``import ferropool`` alone does not import joblib (it stays cheap); this module must be imported
once, anywhere, before ``parallel_config(backend="ferropool")`` is used.

joblib keeps doing what it does on its own backends: it batches calls (auto-batching, as with
loky), supports ``return_as="generator"`` and ``"generator_unordered"``, enforces
``Parallel(timeout=...)`` (raising ``TimeoutError``) and re-raises a task's exception as its
own type. ferropool adds: a task's exception carries the worker's traceback as ``__cause__``, a
crashed worker fails its batch with ``WorkerDiedError`` and is replaced, and when joblib aborts
a call (an exception, a timeout) the batches still running are stopped, not left to finish.

``"ferropool"`` runs batches on a ``ProcessPool``, ``"ferropool-threads"`` on a ``ThreadPool``.
Pools are kept between ``Parallel`` calls, so that a loop of small ``Parallel`` calls does not
start workers each time:

* process pools are shared, one per ``n_jobs``, as loky shares its executor: aborting a call
  stops its running batches (their workers are replaced), so no call leaves work behind that
  would hold up the next one;
* a thread pool belongs to one call at a time. A running thread cannot be stopped, so a call
  that is aborted, or ends with batches still running, shuts its pool down without waiting and
  leaves those threads to finish on their own, as joblib's threading backend does; a call that
  ends cleanly hands its idle pool on to the next call. A ``Parallel`` call nested in a batch
  therefore never queues behind the batches that wait for it.

Batches carry the backend registration with them: a ``Parallel(backend="ferropool")`` call
inside a batch on a worker process finds both backends registered there too.
"""

from __future__ import annotations

import atexit
import collections
import functools
import os
import threading
import weakref
from concurrent.futures import CancelledError, Future, InvalidStateError

try:
    from joblib import register_parallel_backend
    from joblib.parallel import AutoBatchingMixin, ParallelBackendBase
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("ferropool.joblib needs joblib: pip install 'ferropool[joblib]'", name=exc.name) from exc

from ._util import usable_cpu_count

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._executor import PoolExecutor

__all__ = ["FerropoolBackend", "FerropoolThreadsBackend"]

_pools: dict = {}
_pools_lock = threading.Lock()


def _process_pool(n_jobs: int) -> PoolExecutor:
    """Returns the shared process pool with ``n_jobs`` workers, starting it if needed."""
    with _pools_lock:
        pool = _pools.get(("process", n_jobs))
        if pool is None or pool._shutdown:
            from ._process import ProcessPool

            pool = ProcessPool(n_jobs)
            _pools[("process", n_jobs)] = pool
        return pool


def _take_thread_pool(n_jobs: int) -> PoolExecutor:
    """Takes an idle thread pool with ``n_jobs`` threads out of the cache, or starts one: the
    caller owns it until it gives it back with ``_give_back_thread_pool``."""
    with _pools_lock:
        pool = _pools.pop(("thread", n_jobs), None)
    if pool is None or pool._shutdown:
        from ._thread import ThreadPool

        pool = ThreadPool(n_jobs)
    return pool


def _give_back_thread_pool(n_jobs: int, pool: PoolExecutor) -> None:
    """Keeps an idle thread pool for the next call (one per ``n_jobs``), or shuts it down."""
    with _pools_lock:
        if ("thread", n_jobs) not in _pools:
            _pools[("thread", n_jobs)] = pool
            return
    pool.shutdown(wait=False)


def _forget_pools_in_child() -> None:
    # A fork of this process (a multiprocessing worker running joblib code, say) gets copies of
    # the cached pools without their threads or workers: it must start its own. The lock may
    # have been held by another thread at the fork, so it is replaced, not taken.
    global _pools_lock
    _pools.clear()
    _pools_lock = threading.Lock()


os.register_at_fork(after_in_child=_forget_pools_in_child)


@atexit.register
def _shutdown_pools() -> None:
    with _pools_lock:
        pools = list(_pools.values())
        _pools.clear()
    for pool in pools:
        pool.shutdown(wait=True, cancel_futures=True)


# joblib ships no type information: its base classes are Any to mypy.
class FerropoolBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib backend ``"ferropool"``: batches run in a ferropool ``ProcessPool``."""

    supports_retrieve_callback = True  # so joblib supports timeouts and return_as="generator"
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, nesting_level=None, inner_max_num_threads=None, **backend_kwargs):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self._pool: PoolExecutor | None = None
        self._batches: _Batches | None = None
        self._futures: weakref.WeakSet = weakref.WeakSet()  # the thread backend's

    def effective_n_jobs(self, n_jobs):
        """Returns how many workers ``n_jobs`` means: negative counts back from the CPU count
        (-1: all), None means 1, as for joblib's own backends."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            return 1
        if n_jobs < 0:
            return max(usable_cpu_count() + 1 + n_jobs, 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_kwargs):
        """Takes a pool for ``n_jobs`` workers; returns the number of workers."""
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        self._n_jobs = n_jobs
        self._pool = _process_pool(n_jobs)
        self._batches = _Batches(self._pool, n_jobs)
        return n_jobs

    def submit(self, func, callback=None):
        """Schedules one batch (a ``BatchedCalls``) and returns its ``concurrent.futures.Future``."""
        if self._pool is None:
            raise RuntimeError("the ferropool joblib backend has no pool: joblib calls configure() first")
        future = self._send(func)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def _send(self, batch) -> Future:
        assert self._batches is not None  # set with the pool
        return self._batches.submit(_Batch(batch))

    apply_async = submit  # the name joblib before 1.5 calls

    def retrieve_result_callback(self, future):
        """Returns the batch's results, or raises its exception."""
        return future.result()

    def abort_everything(self, ensure_ready=True):
        """Cancels every batch of this call: waiting ones are dropped and running ones are
        stopped (their workers are replaced). The shared pool stays usable."""
        if self._batches is not None:
            self._batches.cancel_all()

    def terminate(self):
        """Ends a ``Parallel`` call; the shared pool is kept for the next one."""
        self._pool = None
        self._batches = None
        self.reset_batch_stats()


class _BatchFuture(Future):
    """The future of one batch of a ``"ferropool"`` call: pending until the batch is done,
    whether it still waits in ``_Batches`` or runs in the pool; ``cancel`` stops it either way."""

    _submitted: Future | None = None

    def cancel(self) -> bool:
        submitted = self._submitted
        if submitted is not None:
            submitted.cancel()  # stops it if it runs; its result is ignored below
        return super().cancel()


class _Batches:
    """Sends a call's batches to the shared process pool at most ``limit`` at a time.

    The pool sends a worker more tasks than it runs at once when its tasks have been short, so
    a batch sent while every worker is busy may wait behind one that turns out long, while
    another worker goes idle. Holding batches here until one of this call's batches finishes
    keeps them in a queue any worker serves, as in loky; joblib's auto-batching keeps batches
    long enough (0.2 s and up) that the round trip this costs is small beside them.
    """

    def __init__(self, pool: PoolExecutor, limit: int):
        self._pool = pool
        self._limit = limit
        self._lock = threading.Lock()
        self._running = 0
        self._waiting: collections.deque[tuple[_BatchFuture, _Batch]] = collections.deque()
        self._futures: weakref.WeakSet[_BatchFuture] = weakref.WeakSet()

    def submit(self, batch: _Batch) -> _BatchFuture:
        future = _BatchFuture()
        with self._lock:
            self._waiting.append((future, batch))
            self._futures.add(future)
        self._send()
        return future

    def cancel_all(self) -> None:
        """Cancels every batch: the waiting ones are dropped, the running ones stopped."""
        with self._lock:
            self._waiting.clear()
            futures = list(self._futures)
        for future in futures:
            future.cancel()

    def _send(self) -> None:
        # Never holds the lock while submitting or settling a future: joblib's callbacks run
        # in settling and submit the next batch from there.
        while True:
            with self._lock:
                if self._running >= self._limit or not self._waiting:
                    return
                future, batch = self._waiting.popleft()
                if future.cancelled():
                    continue
                self._running += 1
            try:
                submitted = self._pool.submit(batch)
            except BaseException as exc:
                with self._lock:
                    self._running -= 1
                _settle(future, exc=exc)
                continue
            future._submitted = submitted
            if future.cancelled():  # cancelled between the check above and now
                submitted.cancel()
            submitted.add_done_callback(functools.partial(self._finished, future))

    def _finished(self, future: _BatchFuture, submitted: Future) -> None:
        with self._lock:
            self._running -= 1
        if submitted.cancelled():
            _settle(future, exc=CancelledError())
        elif (exc := submitted.exception()) is not None:
            _settle(future, exc=exc)
        else:
            _settle(future, result=submitted.result())
        self._send()


def _settle(future: Future, result: object = None, exc: BaseException | None = None) -> None:
    """Sets a batch's outcome unless the batch was cancelled meanwhile."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except InvalidStateError:
        pass


class FerropoolThreadsBackend(FerropoolBackend):
    """joblib backend ``"ferropool-threads"``: batches run in a ferropool ``ThreadPool``
    (shared memory, no pickling; for work that releases the GIL). The pool is this call's own
    until the call ends (see the module's docstring)."""

    uses_threads = True
    supports_sharedmem = True

    def configure(self, n_jobs=1, parallel=None, prefer=None, require=None, **backend_kwargs):
        """Takes an idle thread pool for ``n_jobs`` threads; returns the number of threads."""
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        self._n_jobs = n_jobs
        self._pool = _take_thread_pool(n_jobs)
        return n_jobs

    def _send(self, batch) -> Future:
        assert self._pool is not None
        # Threads share the caller's modules: the batch needs no wrapper to find the backends,
        # and the pool's queue is served by every thread, so no batch waits behind a long one.
        future = self._pool.submit(batch)
        self._futures.add(future)
        return future

    def abort_everything(self, ensure_ready=True):
        """Cancels the queued batches and leaves the running ones to finish on their own
        threads: the pool is shut down without waiting and, with ``ensure_ready``, replaced
        by a fresh one for the next call of a ``with Parallel(...)`` block."""
        self._drop_pool()
        if ensure_ready:
            self._pool = _take_thread_pool(self._n_jobs)

    def terminate(self):
        """Ends a ``Parallel`` call: an idle pool is kept for the next call, one with batches
        still running is shut down without waiting for them."""
        pool, self._pool = self._pool, None
        if pool is not None:
            if any(not future.done() for future in self._futures):
                pool.shutdown(wait=False, cancel_futures=True)
            else:
                _give_back_thread_pool(self._n_jobs, pool)
        self._futures = weakref.WeakSet()
        self.reset_batch_stats()

    def _drop_pool(self) -> None:
        pool, self._pool = self._pool, None
        # A batch still queued or running is referenced by the pool, so it is in the weak set.
        for future in list(self._futures):
            future.cancel()
        self._futures = weakref.WeakSet()
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


class _Batch:
    """A joblib batch on its way to a worker process. Unpickling it imports this module there,
    which registers the backends, so that a ``Parallel`` call inside the batch can name them."""

    __slots__ = ("batch",)

    def __init__(self, batch):
        self.batch = batch

    def __call__(self):
        return self.batch()

    def __reduce__(self):
        return (_Batch, (self.batch,))


register_parallel_backend("ferropool", FerropoolBackend)
register_parallel_backend("ferropool-threads", FerropoolThreadsBackend)
