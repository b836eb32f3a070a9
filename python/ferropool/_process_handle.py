"""``WorkerProcess``: a handle on one worker process, for code written against the standard
library's private ``ProcessPoolExecutor._processes`` mapping.

Widely copied recipes stop a hung pool with ``for p in pool._processes.values(): p.terminate()``
and count workers with ``len(pool._processes)``. ``ProcessPool._processes`` offers the same
mapping of pid to handle, as a compatibility shim: each handle has the ``multiprocessing.Process``
methods those recipes use (``pid``, ``is_alive()``, ``terminate()``, ``kill()``, ``join()``,
``sentinel``). The pool's engine owns and reaps the processes; the handle signals them through
a pidfd, which names one process for as long as it is open, so a handle never signals an
unrelated process that later got the same pid.
"""

from __future__ import annotations

import os
import select
import signal


class WorkerProcess:
    """One worker process of a ``ProcessPool``, as ``pool._processes`` gives it.

    Signalling a worker from here is like any other crash: the task it was running fails with
    ``WorkerDiedError`` and the pool replaces the worker. ``is_alive()`` is False once the
    process has exited, whether or not the pool has reaped it yet.
    """

    pid: int

    def __init__(self, pid: int, pidfd: int):
        self.pid = pid
        self._pidfd: int | None = pidfd

    @classmethod
    def open(cls, pid: int) -> WorkerProcess | None:
        """Returns a handle on child process ``pid``, or None if it is gone (or is not a child
        of this process any more: its pid was reused)."""
        try:
            pidfd = os.pidfd_open(pid)
        except (ProcessLookupError, OSError):
            return None
        # Opened after the pool's snapshot: make sure the pid still names our child, not a
        # process that took the number after the pool reaped the worker.
        if _parent_of(pid) != os.getpid():
            os.close(pidfd)
            return None
        return cls(pid, pidfd)

    @property
    def sentinel(self) -> int:
        """A descriptor that becomes readable when the process ends (as ``Process.sentinel``);
        ``ValueError`` once the handle is closed."""
        if self._pidfd is None:
            raise ValueError("the handle of this worker process is closed")
        return self._pidfd

    def is_alive(self) -> bool:
        """Returns whether the process is still running."""
        return not self._wait(0)

    def join(self, timeout: float | None = None) -> None:
        """Waits for the process to end, at most ``timeout`` seconds (None: no limit)."""
        self._wait(timeout)

    def terminate(self) -> None:
        """Sends the process SIGTERM; does nothing if it has already ended."""
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        """Sends the process SIGKILL; does nothing if it has already ended."""
        self._signal(signal.SIGKILL)

    def close(self) -> None:
        """Releases the handle's descriptor (the process itself is unaffected)."""
        pidfd, self._pidfd = getattr(self, "_pidfd", None), None
        if pidfd is not None:
            os.close(pidfd)

    def _wait(self, timeout: float | None) -> bool:
        """Returns True once the process has ended, waiting up to ``timeout`` seconds."""
        if self._pidfd is None:
            raise ValueError("the handle of this worker process is closed")
        poller = select.poll()
        poller.register(self._pidfd, select.POLLIN)
        return bool(poller.poll(None if timeout is None else max(0, int(timeout * 1000))))

    def _signal(self, sig: int) -> None:
        if self._pidfd is None:
            raise ValueError("the handle of this worker process is closed")
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass  # already ended

    def __del__(self) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._pidfd is None else ("alive" if self.is_alive() else "ended")
        return f"<WorkerProcess pid={self.pid} {state}>"


def _parent_of(pid: int) -> int | None:
    """The parent pid of process ``pid`` (from ``/proc``), None if it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may contain anything, spaces included.
    fields = stat[stat.rindex(b")") + 2 :].split()
    return int(fields[1])
