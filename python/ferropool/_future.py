"""``TaskFuture``: the ``concurrent.futures.Future`` that ``ProcessPool.submit`` returns.

Three things differ from the base class, all invisible to code that uses the public API:

**Cancellation stops the work.** ``cancel()`` succeeds on any unfinished task: a task no worker
has yet is removed from the queue, one waiting at a worker is skipped there, and a running one
has its worker stopped and replaced (see ``docs/worker-lifecycle.md``). This is where a
``ProcessPool`` deliberately differs from ``ProcessPoolExecutor``, whose ``cancel()`` returns
False once a task runs: here ``asyncio`` cancellation of an awaited ``wrap_future`` really
stops the task (``shutdown(cancel_futures=True)`` leaves running tasks alone, as in the
standard library; ``terminate_workers()`` stops them). Who finishes a future is decided by
one atomic step, popping it from the pool's ``futures`` dict: the result thread pops before it
delivers, ``cancel()`` pops before it cancels, and whoever comes second leaves the future alone.

**The condition is created on first use.** A stdlib ``Future`` builds a ``threading.Condition``
in ``__init__`` (about 1 µs and seven objects for the garbage collector), yet in the common
``submit``-then-gather pattern most results arrive before anyone waits. Here ``_condition`` is
a property that creates the condition the first time something needs it (``result`` on an
unfinished future, ``wait``, ``as_completed``, ``add_done_callback``, ``cancel``...). The result
thread (``ProcessPoolEngine.deliver``, ``finish_task_future`` in ``src/future.rs``) finishes a
future that has no condition yet without locking, by the protocol below; a future that has one
is finished by the ordinary ``set_result``, which notifies.

Why no wake-up is lost: the finisher checks that there is no condition, writes ``_result`` then
``_state = FINISHED``, then looks for a condition again. A waiter creates the condition (an
atomic ``dict.setdefault``), then reads ``_state`` under it. Whichever goes second sees the
other's write: either the waiter finds the future finished and never waits, or the finisher
finds the condition and notifies under it (``_wake_after_fast_finish``), after the waiter either
checked the state or started waiting, since it holds the lock until ``wait`` releases it.
Callbacks and ``wait()`` waiters are only ever registered under the condition, so they are
found the same way. "Sees the other's write" is what the GIL guarantees; a free-threaded build
does not promise it, so there every future is finished by ``set_result`` (docs/free-threading.md).

**The condition survives Ctrl-C**: it is an ``InterruptSafeCondition``, whose ``wait`` a Ctrl-C
at the wrong instant cannot leave unlocked, so that ``result()`` raises ``KeyboardInterrupt``
rather than ``RuntimeError: cannot release un-acquired lock`` (see the class).
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from _thread import allocate_lock as _allocate_lock
from collections.abc import Callable
from concurrent.futures._base import CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED, PENDING, RUNNING

TYPE_CHECKING = False  # typing is not imported at run time: it costs a pool's start-up
if TYPE_CHECKING:
    from typing import Any

    from ._core import ProcessPoolEngine

_DONE = (CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED)
_COND = "_lazy_condition"


class TaskFuture(cf.Future):
    """A ``concurrent.futures.Future`` for a task of a ``ProcessPool`` (see the module doc)."""

    def __init__(
        self,
        engine: ProcessPoolEngine | None = None,
        task_id: int = 0,
        futures: dict[int, TaskFuture] | None = None,
        function: Callable[..., Any] | None = None,
    ) -> None:
        # Everything cf.Future.__init__ sets except the condition, which is made on first use.
        self._state = PENDING
        self._result = None
        self._exception = None
        self._waiters: list = []
        self._done_callbacks: list = []
        # Given by ProcessPool.submit (as arguments: cheaper than setting attributes after):
        # the pool's engine, the task's id there, the pool's unfinished futures by id (whoever
        # pops this one from it finishes it) and the function that error messages name.
        self._engine = engine
        self._task_id = task_id
        self._futures = futures
        self._function = function

    @property
    def _condition(self) -> threading.Condition:  # type: ignore[override]
        d = self.__dict__
        cond = d.get(_COND)
        if cond is None:
            cond = d.setdefault(_COND, InterruptSafeCondition())
        return cond

    def _wake_after_fast_finish(self) -> None:
        """Notifies waiters and runs callbacks registered while the result was being set
        without a lock (called by ``engine.deliver``, see the module doc)."""
        with self._condition:
            for waiter in self._waiters:
                waiter.add_result(self)
            self._condition.notify_all()
        self._invoke_callbacks()  # type: ignore[attr-defined]  # private to cf.Future, untyped

    # Reads of a finished future need no lock: FINISHED is final and is written last.

    def result(self, timeout: float | None = None) -> Any:
        if self._state == FINISHED:
            if self._exception is not None:
                try:
                    raise self._exception
                finally:
                    self = None  # type: ignore[assignment]  # break the cycle, as cf.Future does
            return self._result
        return super().result(timeout)

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state == FINISHED:
            return self._exception
        return super().exception(timeout)

    def done(self) -> bool:
        return self._state in _DONE

    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def cancel(self) -> bool:
        """Cancels the task, stopping it if it runs; returns False only if it has finished (or
        its result is being delivered at this moment)."""
        with self._condition:
            if self._state == FINISHED:
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            engine, futures = self._engine, self._futures
            assert engine is not None and futures is not None, "not a future of ProcessPool.submit"
            # Popped: the result thread will find no future and drop the outcome. Not there:
            # the result thread popped it first and is finishing it; leave it to that.
            if futures.pop(self._task_id, None) is None:
                return False
            engine.cancel(self._task_id)
        return cancel_removed(self)

    def running(self) -> bool:
        with self._condition:
            if self._state != PENDING:
                return self._state == RUNNING
            assert self._engine is not None, "not a future of ProcessPool.submit"
            return not self._engine.is_queued(self._task_id)


class InterruptSafeCondition(threading.Condition):
    """A ``threading.Condition`` that a Ctrl-C never leaves unlocked. Made without arguments, so
    that its lock is the default ``RLock``, whose ``_is_owned`` says which thread holds it.

    ``Condition.wait`` lets go of the lock, then enters the ``try`` whose ``finally`` takes it
    back. A ``KeyboardInterrupt`` raised between the two (a signal is handled when a call
    returns) leaves the lock released, so the caller's ``with`` block then fails with
    ``RuntimeError: cannot release un-acquired lock``, which replaces the interrupt, and leaves
    the waiter's entry in the condition's list, where it would take a ``notify()`` meant for a
    real waiter. This ``wait`` is the standard library's with that window closed: whatever
    exception leaves it, the lock is held again and the entry is gone. One limit: a lock held
    recursively when ``wait`` was called and interrupted in that window is held once after
    (the count went with the interrupted call); the conditions here are never held twice.
    """

    def wait(self, timeout: float | None = None) -> bool:
        if not self._is_owned():  # type: ignore[attr-defined]  # Condition's, untyped
            raise RuntimeError("cannot wait on un-acquired lock")
        waiter = _allocate_lock()
        waiter.acquire()
        self._waiters.append(waiter)  # type: ignore[attr-defined]
        gotit = False
        try:
            saved = self._release_save()  # type: ignore[attr-defined]
            try:
                if timeout is None:
                    waiter.acquire()
                    gotit = True
                else:
                    gotit = waiter.acquire(True, timeout) if timeout > 0 else waiter.acquire(False)
                return gotit
            finally:
                self._acquire_restore(saved)  # type: ignore[attr-defined]
        finally:
            if not self._is_owned():  # type: ignore[attr-defined]  # interrupted in the window
                self._lock.acquire()  # type: ignore[attr-defined]
            if not gotit:
                try:
                    self._waiters.remove(waiter)  # type: ignore[attr-defined]
                except ValueError:  # notified meanwhile: notify took it out
                    pass


def cancel_removed(fut: cf.Future) -> bool:
    """Cancels a future whose task was taken out of the queue and will never run; returns
    whether this call cancelled it (False: it had finished, or was cancelled already).

    ``cf.wait`` and ``as_completed`` count a future as done only once it is
    CANCELLED_AND_NOTIFIED, a step executors take when their queue reaches the cancelled item;
    this task never will be reached, so the step is taken now.
    """
    with fut._condition:
        if not mark_cancelled(fut):
            return False
    fut._invoke_callbacks()  # type: ignore[attr-defined]  # private to cf.Future, untyped
    return True


def mark_cancelled(fut: cf.Future) -> bool:
    """Moves a PENDING ``fut`` to CANCELLED_AND_NOTIFIED and wakes its waiters; returns whether it
    was PENDING. The caller holds ``fut._condition`` and, on True, runs the done callbacks once
    it has let go of it, as ``cf.Future.cancel`` does.

    ``cf.Future.cancel`` followed by ``set_running_or_notify_cancel`` takes the same two steps
    with the lock let go between them, so a second canceller in between (another thread, or the
    same one again) finds the future cancelled and takes the second step again, which raises."""
    if fut._state != PENDING:
        return False
    fut._state = CANCELLED_AND_NOTIFIED
    for waiter in fut._waiters:
        waiter.add_cancelled(fut)
    fut._condition.notify_all()
    return True
