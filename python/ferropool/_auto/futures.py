"""Future plumbing of ``Pool(strategy="auto")``: joining the futures the probe hands out to the
chosen backend's, gathering probed items into a chunk's future, and reading results in order."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time
from collections.abc import Iterator
from typing import Any

from .._executor import _PARTIAL

__all__ = ["copy_outcome", "gather_chunk", "left", "results_in_order", "values_if_settled"]


def left(deadline: float | None) -> float | None:
    """Seconds left before ``deadline`` (``time.monotonic``; None: no limit); raises
    ``TimeoutError`` once past it."""
    if deadline is None:
        return None
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise cf.TimeoutError()
    return remaining


def results_in_order(futures: list[cf.Future[Any]], deadline: float | None) -> Iterator[Any]:
    """Yields each future's result in turn; leaving early cancels those not started."""
    try:
        while futures:
            yield futures[0].result(timeout=left(deadline))
            del futures[0]
    finally:
        for fut in futures:
            fut.cancel()


def values_if_settled(futures: list[cf.Future[Any]]) -> list[Any] | None:
    """Returns the results of ``futures`` if every one has finished without raising, else None."""
    values = []
    for fut in futures:
        if not fut.done() or fut.cancelled() or fut.exception() is not None:
            return None
        values.append(fut.result())
    return values


def copy_outcome(src: cf.Future[Any], dst: cf.Future[Any]) -> None:
    """Settles ``dst`` (running) as the finished ``src`` settled."""
    if src.cancelled():
        dst.set_exception(cf.CancelledError())
    elif (exc := src.exception()) is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(src.result())


def gather_chunk(futures: list[cf.Future[Any]]) -> cf.Future[Any]:
    """Returns a future of ``(results, ns)`` for items probed one by one, as ``run_chunk``
    returns for a chunk: on an error, the results before it ride on the exception. Cancelling
    it cancels the items not started."""
    chunk: cf.Future[Any] = cf.Future()
    remaining = [len(futures)]
    lock = threading.Lock()
    start = time.perf_counter_ns()

    def one_done(_f: cf.Future[Any]) -> None:
        with lock:
            remaining[0] -= 1
            if remaining[0]:
                return
        values: list[Any] = []
        for f in futures:
            error: BaseException | None = cf.CancelledError() if f.cancelled() else f.exception()
            if error is not None:
                try:
                    setattr(error, _PARTIAL, values)
                except Exception:
                    pass
                _settle(chunk, error=error)
                return
            values.append(f.result())
        _settle(chunk, result=(values, time.perf_counter_ns() - start))

    def cancelled(c: cf.Future[Any]) -> None:
        if c.cancelled():
            for f in futures:
                f.cancel()

    chunk.add_done_callback(cancelled)
    for f in futures:
        f.add_done_callback(one_done)
    return chunk


def _settle(chunk: cf.Future[Any], *, result: Any = None, error: BaseException | None = None) -> None:
    try:
        if error is not None:
            chunk.set_exception(error)
        else:
            chunk.set_result(result)
    except cf.InvalidStateError:  # cancelled by map meanwhile
        pass
