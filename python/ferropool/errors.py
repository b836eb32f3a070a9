"""Exceptions raised by ferropool.

Every class says when it is raised and what to do about it. They subclass the standard
exceptions they refine, so ``except TypeError`` or ``except BrokenProcessPool`` clauses written
for ``concurrent.futures`` keep working.

``BrokenPoolError``, ``WorkerDiedError`` and ``RemoteTraceback`` are created on first use (PEP
562 ``__getattr__``): their base classes live in ``concurrent.futures.process``, which imports all
of ``multiprocessing`` (about 30 ms), and worker processes, which import this module, never need
them.
"""

from __future__ import annotations

# _pickle, not pickle: the same classes (pickle re-exports them) without importing re and
# enum, which every worker would pay for at start-up.
import _pickle

__all__ = [
    "BrokenPoolError",
    "FerropoolError",
    "RemoteError",
    "RemoteTraceback",
    "SerializationError",
    "TaskTimeoutError",
    "WorkerDiedError",
]


class FerropoolError(Exception):
    """Base class of every exception that ferropool itself raises."""


class SerializationError(FerropoolError, _pickle.PicklingError, TypeError):
    """An argument, result or exception could not be pickled or unpickled.

    Raised by ``submit``/``map`` at the call that passed the object (the task is not queued and
    the pool is unaffected), or by ``future.result()`` when a worker's result cannot be sent
    back. The message names the object's type and where it sits, e.g.
    ``args[1]['conn']: cannot pickle 'socket' object``. Pass something picklable instead (a
    path rather than an open file, a connection string rather than a connection).
    """


class TaskTimeoutError(FerropoolError, TimeoutError):
    """The task ran longer than its timeout and was stopped.

    Raised by ``future.result()`` for a task submitted with a ``task_timeout`` (pool-wide, or per
    call through ``pool.options(task_timeout=...)``) that was still running when it expired. The
    worker running it was stopped (SIGTERM, then SIGKILL after a second) and replaced; other
    tasks are unaffected. ``timeout`` is the limit in seconds, ``pid`` the stopped worker,
    ``function`` the task's function. It is a ``TimeoutError`` (which
    ``concurrent.futures.TimeoutError`` is, from Python 3.11), so ``except TimeoutError``
    catches it. Raise the limit, or make the task do less per call. It is not a
    ``BrokenProcessPool``: the standard library has no task timeout, and the pool is unaffected.
    """

    def __init__(
        self, message: str, *, timeout: float | None = None, pid: int | None = None, function: str | None = None
    ):
        super().__init__(message)
        self.timeout = timeout
        self.pid = pid
        self.function = function


class RemoteError(FerropoolError):
    """Stands in for an exception raised in a worker that could not be sent back as itself.

    This happens when the exception cannot be pickled or unpickled (for example an
    ``__init__`` with extra required arguments). ``type_name`` is the qualified name of the
    original type, ``message`` its ``str()``; the worker's traceback is the ``__cause__``.
    """

    def __init__(self, type_name: str, message: str):
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.message = message

    def __reduce__(self) -> tuple[type[RemoteError], tuple[str, str]]:
        return (RemoteError, (self.type_name, self.message))


TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers import this module, and typing is slow
if TYPE_CHECKING:
    from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback

    class RemoteTraceback(_RemoteTraceback):
        """Declared for type checkers: at run time this is the standard library's
        ``_RemoteTraceback`` itself, which takes the formatted traceback (typeshed says a
        ``TracebackType``)."""

        tb: str

        def __init__(self, tb: str) -> None: ...

    class BrokenPoolError(FerropoolError, BrokenProcessPool):
        """Declared for type checkers and linters; the class is made by ``_make_stdlib_subclasses``."""

    class WorkerDiedError(FerropoolError, BrokenProcessPool):
        """Declared for type checkers and linters; the class is made by ``_make_stdlib_subclasses``."""

        pid: int | None
        exitcode: int | None
        signal: int | None
        function: str | None
        stderr_tail: str

        def __init__(
            self,
            message: str,
            *,
            pid: int | None = None,
            exitcode: int | None = None,
            signal: int | None = None,
            function: str | None = None,
            stderr_tail: str = "",
        ) -> None: ...


def _make_stdlib_subclasses() -> dict[str, type]:
    """Makes the classes whose bases live in ``concurrent.futures.process``."""
    from concurrent.futures.process import BrokenProcessPool, _RemoteTraceback

    class BrokenPoolError(FerropoolError, BrokenProcessPool):
        """The pool cannot run tasks any more.

        Raised for every pending and later task when a worker's ``initializer`` raised (its
        exception is the ``__cause__``) or when worker processes cannot be started at all, and
        for the tasks that were running or waiting at a worker when ``terminate_workers()`` or
        ``kill_workers()`` stopped the pool. Fix the initializer or the environment and create a
        new pool.
        """

    class WorkerDiedError(FerropoolError, BrokenProcessPool):
        """The worker process running this task died before the task finished.

        Only this task fails: tasks queued behind it run on other workers, and the dead worker is
        replaced, so the pool stays healthy and keeps accepting tasks. ``exitcode`` or
        ``signal`` says how it ended, ``pid`` which process it was, ``function`` what it was
        running, and ``stderr_tail`` the last lines it wrote to stderr (for a crash in native
        code, the Python stack as dumped by faulthandler); in a process pool, the ``__cause__`` is
        a ``concurrent.futures.process._RemoteTraceback`` saying the same, as in the standard
        library. A ``SIGKILL`` nobody
        sent on purpose usually comes from the kernel's out-of-memory killer.

        It is a ``concurrent.futures.process.BrokenProcessPool``, as loky's
        ``TerminatedWorkerError`` is, so that ``except BrokenProcessPool`` clauses written for
        the standard library, where a crashed worker breaks the whole pool, still catch the
        crash. Unlike there, the pool is *not* broken: a handler that rebuilds the executor on
        ``BrokenProcessPool`` still works, but need not; catch ``WorkerDiedError`` (or
        ``FerropoolError``) to retry just this task on the same pool. ``BrokenPoolError`` is
        the one raised when the pool really cannot run tasks.
        """

        def __init__(
            self,
            message: str,
            *,
            pid: int | None = None,
            exitcode: int | None = None,
            signal: int | None = None,
            function: str | None = None,
            stderr_tail: str = "",
        ):
            super().__init__(message)
            self.pid = pid
            self.exitcode = exitcode
            self.signal = signal
            self.function = function
            self.stderr_tail = stderr_tail

    classes: dict[str, type] = {"BrokenPoolError": BrokenPoolError, "WorkerDiedError": WorkerDiedError}
    for name, cls in classes.items():
        cls.__module__ = __name__
        cls.__qualname__ = name
    # The standard library's own class, so that code checking for it (``isinstance(exc.__cause__,
    # _RemoteTraceback)``, CPython's tests) finds the workers' tracebacks.
    classes["RemoteTraceback"] = _RemoteTraceback
    return classes


def __getattr__(name: str) -> type:
    if name in ("BrokenPoolError", "WorkerDiedError", "RemoteTraceback"):
        made = _make_stdlib_subclasses()
        globals().update(made)
        return made[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
