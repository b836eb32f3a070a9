"""ferropool: parallel computing for Python with a Rust core.

``ProcessPool`` and ``ThreadPool`` are drop-in ``concurrent.futures`` executors::

    from ferropool import ProcessPool

    with ProcessPool() as pool:
        print(sum(pool.map(abs, range(-5, 5))))
"""

from __future__ import annotations

import importlib

from . import errors
from ._core import __version__
from .errors import FerropoolError, RemoteError, SerializationError, TaskTimeoutError

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs workers ~10 ms
if TYPE_CHECKING:
    from ._auto import Pool
    from ._cluster.dask import DaskPool
    from ._cluster.ray import RayPool
    from ._future import TaskFuture
    from ._hybrid import HybridPool
    from ._process import ProcessPool
    from ._progress import progress
    from ._stats import PoolStats, Restart, WorkerStats
    from ._thread import ThreadPool
    from .errors import BrokenPoolError, WorkerDiedError

# Imported on first use, so that worker processes (which import ``ferropool._worker``, and so
# this package) start without loading concurrent.futures and multiprocessing.
_LAZY = {
    "Pool": "._auto",
    "ProcessPool": "._process",
    "HybridPool": "._hybrid",
    "TaskFuture": "._future",
    "ThreadPool": "._thread",
    "BrokenPoolError": ".errors",
    "WorkerDiedError": ".errors",
    "progress": "._progress",
    "PoolStats": "._stats",
    "WorkerStats": "._stats",
    "Restart": "._stats",
    # Need the extras ferropool[dask] / ferropool[ray]; the ImportError says so.
    "DaskPool": "._cluster.dask",
    "RayPool": "._cluster.ray",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "BrokenPoolError",
    "DaskPool",
    "FerropoolError",
    "HybridPool",
    "Pool",
    "PoolStats",
    "ProcessPool",
    "RayPool",
    "RemoteError",
    "Restart",
    "SerializationError",
    "TaskFuture",
    "TaskTimeoutError",
    "ThreadPool",
    "WorkerDiedError",
    "WorkerStats",
    "__version__",
    "errors",
    "progress",
]
