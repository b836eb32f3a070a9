"""Task functions of the soak benchmark (``soak.py``), importable by every worker.

Each task first adds one to its own byte of a run counter: a plain file mapped with
``MAP_SHARED`` by every worker (the pool's ``initializer`` maps it), so the parent can tell how
many times each task id began, even when the task then kills its worker. One task id runs in
one process at a time, so the unlocked ``+= 1`` is safe; a write to a shared file mapping
survives ``os._exit`` and ``SIGKILL``. A ``sleep`` task also sets its byte in the second half
of the file when its sleep ends: for a task that was timed out or cancelled while running, that
byte says its worker was not stopped.

The parent finds this module because its folder is first on ``sys.path``, which ferropool
workers receive from the parent.
"""

from __future__ import annotations

import ctypes
import faulthandler
import mmap
import os
import signal
import time

#: Exit code of the ``exit`` crash task, so a WorkerDiedError can be traced to its culprit.
EXIT_CODE = 7

_runs: mmap.mmap | None = None
_n = 0


class SoakError(Exception):
    """A task's own exception type, to check that the type (not only a builtin) comes back."""


def init(path: str, n: int) -> None:
    """Maps the counter file at ``path``, of ``2 * n`` bytes (the pool's initializer)."""
    global _runs, _n
    with open(path, "r+b") as f:
        _runs = mmap.mmap(f.fileno(), 0)
    _n = n


def _begin(tid: int) -> None:
    runs = _runs
    assert runs is not None, "init() did not run"
    if runs[tid] < 255:
        runs[tid] += 1


def tiny(tid: int) -> int:
    _begin(tid)
    return tid * 3 + 1


def crash(tid: int, how: str) -> None:
    _begin(tid)
    if how == "exit":
        os._exit(EXIT_CODE)
    if how == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    # A segfault: without faulthandler's dump, which would flood the parent's stderr.
    faulthandler.disable()
    ctypes.string_at(0)


def fail(tid: int, kind: str) -> None:
    _begin(tid)
    if kind == "value":
        raise ValueError(tid)
    if kind == "key":
        raise KeyError(tid)
    raise SoakError(tid)


def sleep(tid: int, seconds: float) -> int:
    _begin(tid)
    time.sleep(seconds)
    assert _runs is not None
    _runs[_n + tid] = 1
    return tid


def large(tid: int, nbytes: int, as_numpy: bool) -> object:
    """Returns ``nbytes`` bytes of value ``tid % 251``: a numpy array or a bytearray."""
    _begin(tid)
    if as_numpy:
        import numpy as np

        return np.full(nbytes, tid % 251, dtype=np.uint8)
    return bytearray(bytes((tid % 251,)) * nbytes)
