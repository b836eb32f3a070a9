"""``HybridPool``: worker processes that each run tasks on several threads.

Processes beat the GIL for pure-Python work; threads overlap waiting (I/O, sleeps) and
GIL-releasing native code (numpy, hashlib, compression) without pickling between them. Real
workloads mix both, and a ``HybridPool`` runs each task on one of ``threads_per_process``
threads inside one of ``processes`` worker processes.

It is a ``ProcessPool`` whose workers were told to run that many task threads: the same engine,
scheduling, fault handling (a dying worker fails the tasks running on it; the ones queued behind
are re-run), timeouts, shared-memory buffers and asyncio API. What differs, because several tasks
share a process:

* cancelling or timing out a running task asks its worker to stop just that task: a coroutine
  stops at once; a thread cannot be stopped from outside, so if the task is still running a
  second later the whole worker is stopped and the other tasks that were running on it are
  re-run elsewhere;
* native thread pools (OpenMP, BLAS) get ``cores / (processes x threads_per_process)`` threads
  each, so the three levels of parallelism together never oversubscribe the machine.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._process import ProcessPool
from ._util import usable_cpu_count

#: Threads per process by default: enough to overlap waits and GIL-free native calls with work
#: on the other threads, few enough that pure-Python tasks do not fight over the GIL for long.
DEFAULT_THREADS_PER_PROCESS = 4


class HybridPool(ProcessPool):
    """Runs calls on ``threads_per_process`` threads in each of ``processes`` worker processes.

    ``processes`` defaults to the number of usable CPUs (one process per core keeps every core
    busy with pure-Python work), ``threads_per_process`` to 4 (overlaps I/O waits and GIL-free
    native code within each process). ``max_workers`` is ``processes * threads_per_process``:
    that many tasks run at once. Every other option is ``ProcessPool``'s (``initializer`` runs
    once per process, ``max_tasks_per_child`` counts a process's tasks, ``task_timeout``...).

    Use it for tasks that mix CPU work with waiting or native calls; for pure-Python CPU work a
    ``ProcessPool`` is as fast, and for pure waiting a ``ThreadPool`` (or asyncio) is lighter.
    """

    def __init__(
        self,
        processes: int | None = None,
        threads_per_process: int | None = None,
        *,
        initializer: Callable[..., Any] | None = None,
        initargs: tuple[Any, ...] = (),
        **options: Any,
    ) -> None:
        if processes is None:
            processes = usable_cpu_count()
        if threads_per_process is None:
            threads_per_process = DEFAULT_THREADS_PER_PROCESS
        for name, value in (("processes", processes), ("threads_per_process", threads_per_process)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name} must be an integer")
            if value <= 0:
                raise ValueError(f"{name} must be greater than 0")
        super().__init__(processes, None, initializer, initargs, _threads_per_worker=threads_per_process, **options)
        self._process_count = processes
        self._threads_per_process = threads_per_process
        # Tasks that run at once: what map sizes its window by.
        self._max_workers = processes * threads_per_process

    @property
    def processes(self) -> int:
        """The number of worker processes."""
        return self._process_count

    @property
    def threads_per_process(self) -> int:
        """The number of task threads in each worker process."""
        return self._threads_per_process

    @property
    def max_workers(self) -> int:
        """Tasks that run at once: ``processes * threads_per_process``."""
        return self._max_workers

    def __repr__(self) -> str:
        return f"<HybridPool processes={self._process_count} threads_per_process={self._threads_per_process}>"
