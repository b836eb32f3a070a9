"""ferropool: parallel computing for Python with a Rust core.

``ProcessPool`` and ``ThreadPool`` are drop-in ``concurrent.futures`` executors::

    from ferropool import ProcessPool

    with ProcessPool() as pool:
        print(sum(pool.map(abs, range(-5, 5))))
"""

from __future__ import annotations

from . import errors
from ._core import __version__
from ._process import ProcessPool, TaskFuture
from ._thread import ThreadPool
from .errors import BrokenPoolError, FerropoolError, RemoteError, SerializationError, WorkerDiedError

__all__ = [
    "ProcessPool",
    "ThreadPool",
    "TaskFuture",
    "FerropoolError",
    "SerializationError",
    "BrokenPoolError",
    "WorkerDiedError",
    "RemoteError",
    "errors",
    "__version__",
]
