"""The executors ``Pool(strategy="auto")`` adds to ferropool's own pools: the serial one (calls run
in the calling thread), a private event loop for coroutine functions, and an adapter that runs
coroutine functions on the other pools."""

from __future__ import annotations

import concurrent.futures as cf
import functools
import inspect
import time
from collections.abc import Callable
from typing import Any

from .._executor import _PARTIAL, run_chunk

__all__ = ["CoroutineAdapter", "EventLoop", "Serial", "hybrid_class", "run_coroutine"]


def run_coroutine(afn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Runs ``afn(*args, **kwargs)`` to completion on a new event loop (a coroutine function
    forced onto threads, processes or serial)."""
    import asyncio  # here, not at the top: most pools never run a coroutine and import is slow

    return asyncio.run(afn(*args, **kwargs))


def hybrid_class() -> Any:
    """Returns ``ferropool.HybridPool``, or None where this version of ferropool has none."""
    import ferropool

    return getattr(ferropool, "HybridPool", None)


class Serial:
    """Runs each call at once in the calling thread; returns finished futures."""

    _max_workers = 1

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        fut: cf.Future[Any] = cf.Future()
        fut.set_running_or_notify_cancel()
        try:
            result = fn(*args, **kwargs)
        except Exception as exc:
            fut.set_exception(exc)
        except BaseException as exc:  # Ctrl-C and the like stop the caller, as a loop would
            fut.set_exception(exc)
            raise
        else:
            fut.set_result(result)
        return fut

    def _submit_chunk(self, fn: Callable[..., Any], items: list[Any]) -> cf.Future[Any]:
        return self.submit(run_chunk, fn, items)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        pass


class EventLoop:
    """A private event loop on its own thread (``EventLoopThread``); coroutine calls run there
    as tasks, at most ``limit`` at a time. Sync callables given to it go to ``threads()``."""

    def __init__(self, limit: int, threads: Callable[[], Any]):
        from .._thread import EventLoopThread

        self._max_workers = limit
        self._threads = threads
        self._loop = EventLoopThread("ferropool-auto-loop")
        self._limit: Any = None  # an asyncio.Semaphore, made on the loop

    async def _limited(self, afn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        import asyncio

        if self._limit is None:
            self._limit = asyncio.Semaphore(self._max_workers)
        async with self._limit:
            return await afn(*args, **kwargs)

    async def _chunk(self, afn: Callable[..., Any], items: list[Any]) -> tuple[list[Any], int]:
        start = time.perf_counter_ns()
        out: list[Any] = []
        try:
            for args in items:
                out.append(await self._limited(afn, args, {}))
        except BaseException as exc:
            setattr(exc, _PARTIAL, out)
            raise
        return out, time.perf_counter_ns() - start

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        if not inspect.iscoroutinefunction(fn):
            return self._threads().submit(fn, *args, **kwargs)  # type: ignore[no-any-return]
        return self._loop.submit(self._limited(fn, args, kwargs))

    def _submit_chunk(self, fn: Callable[..., Any], items: list[Any]) -> cf.Future[Any]:
        if not inspect.iscoroutinefunction(fn):
            return self._threads()._submit_chunk(fn, items)  # type: ignore[no-any-return]
        return self._loop.submit(self._chunk(fn, items))

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        self._loop.close(wait, cancel_futures)


class CoroutineAdapter:
    """Runs a coroutine function on a non-asyncio backend: each call is ``asyncio.run`` there."""

    def __init__(self, backend: Any):
        self._backend = backend

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future[Any]:
        return self._backend.submit(run_coroutine, fn, *args, **kwargs)  # type: ignore[no-any-return]

    def _submit_chunk(self, fn: Callable[..., Any], items: list[Any]) -> cf.Future[Any]:
        return self._backend.submit(run_chunk, functools.partial(run_coroutine, fn), items)  # type: ignore[no-any-return]
