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
Pools are kept between ``Parallel`` calls, one per kind and ``n_jobs``, as loky keeps its
executor, so that a loop of small ``Parallel`` calls does not start workers each time.
"""

from __future__ import annotations

import atexit
import os
import threading
import weakref

from joblib import register_parallel_backend
from joblib.parallel import AutoBatchingMixin, ParallelBackendBase

from ._util import usable_cpu_count

TYPE_CHECKING = False
if TYPE_CHECKING:
    from ._executor import PoolExecutor

__all__ = ["FerropoolBackend", "FerropoolThreadsBackend"]

_pools: dict = {}
_pools_lock = threading.Lock()


def _pool(kind: str, n_jobs: int) -> PoolExecutor:
    """Returns the shared pool of ``kind`` with ``n_jobs`` workers, starting it if needed."""
    with _pools_lock:
        pool = _pools.get((kind, n_jobs))
        if pool is None or pool._shutdown:
            if kind == "process":
                from ._process import ProcessPool

                pool = ProcessPool(n_jobs)
            else:
                from ._thread import ThreadPool

                pool = ThreadPool(n_jobs)
            _pools[(kind, n_jobs)] = pool
        return pool


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

    _kind = "process"
    supports_retrieve_callback = True  # so joblib supports timeouts and return_as="generator"
    supports_inner_max_num_threads = False
    uses_threads = False
    supports_sharedmem = False

    def __init__(self, nesting_level=None, inner_max_num_threads=None, **backend_kwargs):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads, **backend_kwargs)
        self._pool: PoolExecutor | None = None
        self._futures: weakref.WeakSet = weakref.WeakSet()

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
        """Takes the shared pool for ``n_jobs`` workers; returns the number of workers."""
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        self._pool = _pool(self._kind, n_jobs)
        return n_jobs

    def submit(self, func, callback=None):
        """Schedules one batch (a ``BatchedCalls``) and returns its ``concurrent.futures.Future``."""
        if self._pool is None:
            raise RuntimeError("the ferropool joblib backend has no pool: joblib calls configure() first")
        future = self._pool.submit(func)
        self._futures.add(future)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    apply_async = submit  # the name joblib before 1.5 calls

    def retrieve_result_callback(self, future):
        """Returns the batch's results, or raises its exception."""
        return future.result()

    def abort_everything(self, ensure_ready=True):
        """Cancels every batch of this call: queued ones are dropped and, on processes, running
        ones are stopped. The shared pool stays usable."""
        for future in list(self._futures):
            future.cancel()
        self._futures = weakref.WeakSet()

    def terminate(self):
        """Ends a ``Parallel`` call; the shared pool is kept for the next one."""
        self._pool = None
        self._futures = weakref.WeakSet()
        self.reset_batch_stats()


class FerropoolThreadsBackend(FerropoolBackend):
    """joblib backend ``"ferropool-threads"``: batches run in a ferropool ``ThreadPool``
    (shared memory, no pickling; for work that releases the GIL)."""

    _kind = "thread"
    uses_threads = True
    supports_sharedmem = True


register_parallel_backend("ferropool", FerropoolBackend)
register_parallel_backend("ferropool-threads", FerropoolThreadsBackend)
