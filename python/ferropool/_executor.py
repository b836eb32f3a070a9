"""What every ferropool executor shares: the lazy, self-chunking ``map``.

``map`` never materialises its input. It keeps a bounded window of chunks in flight, starts
yielding as soon as the first chunk is back, and sizes chunks itself: the first few hold one
item each; after that each chunk is sized so that it runs for about ``TARGET_CHUNK_S`` in a
worker, judged from the measured run time per item (growing at most ``GROWTH``-fold per
chunk, so one odd early item cannot produce a huge chunk). When the input has a length, chunks
are also capped so that every worker gets several, which keeps the tail balanced.

A chunk is one ordinary task running ``run_chunk(fn, items)`` in a worker. If an item raises,
the chunk stops there and the exception carries the results before it, so ``map`` yields
exactly the items before the failing one and then raises, as with ``chunksize=1``.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import time
from typing import Any, Callable, Iterable, Iterator

TARGET_CHUNK_S = 0.005
GROWTH = 4
#: Largest chunk: past a few thousand items per-chunk overhead is already negligible, and
#: this keeps the items read ahead of the consumer bounded (at most 2 x window x MAX_CHUNK).
MAX_CHUNK = 8192
_PARTIAL = "_ferropool_partial_results"
_perf = time.perf_counter_ns


def run_chunk(fn: Callable[..., Any], items: list) -> tuple[list, int]:
    """Calls ``fn(*args)`` for each ``args`` in ``items``; returns the results and the run time
    in nanoseconds. On an exception, attaches the results so far to it and re-raises."""
    start = _perf()
    out: list = []
    append = out.append
    try:
        for args in items:
            append(fn(*args))
    except BaseException as exc:
        try:
            setattr(exc, _PARTIAL, out)
        except Exception:
            pass
        raise
    return out, _perf() - start


class PoolExecutor(cf.Executor):
    """Base of ferropool's executors: subclasses provide ``submit`` and ``_max_workers``."""

    _max_workers: int

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        return self.submit(run_chunk, self._prepare_map_fn(fn), items)

    def _prepare_map_fn(self, fn: Callable[..., Any]) -> Any:
        """Hook for process pools to encode ``fn`` once per ``map`` rather than per chunk."""
        return fn

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any], timeout: float | None = None, chunksize: int | None = None) -> Iterator[Any]:
        """Returns an iterator equivalent to ``map(fn, *iterables)`` run on the pool.

        Lazy on its input and bounded in memory; chunks are sized automatically unless
        ``chunksize`` is given. ``timeout`` (seconds, from this call) bounds the wait for each
        result: past it, ``next()`` raises ``TimeoutError``. An exception raised by ``fn`` is
        raised when its item is reached. Breaking out of the loop cancels what has not started.
        """
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            total = min(len(it) for it in iterables) if iterables else 0  # type: ignore[arg-type]
        except TypeError:
            total = None
        mapper = _Mapper(self, fn, zip(*iterables), deadline, chunksize, total)
        mapper.top_up()  # submit the first window now, so errors raise at the call, like stdlib
        return mapper.results()


def window_for(workers: int) -> int:
    """Chunks kept running at once by ``map`` for a pool of ``workers``."""
    return max(4, 3 * max(1, workers))


class _Mapper:
    def __init__(self, pool: PoolExecutor, fn, items: Iterator[tuple], deadline, chunksize, total):
        self.pool = pool
        self.fn = fn
        self.items = items
        self.deadline = deadline
        self.fixed = chunksize
        workers = max(1, pool._max_workers)
        self.window = window_for(workers)
        # With a known length, never make chunks so big that a worker gets fewer than ~4.
        self.cap = max(1, total // (4 * workers)) if total else None
        self.size = chunksize or 1
        self.per_item_ns: float | None = None
        self.inflight: collections.deque[tuple[cf.Future, int]] = collections.deque()
        self.exhausted = False
        self.learned: set[cf.Future] = set()

    def top_up(self) -> None:
        """Submits chunks until ``window`` are running (and at most twice that are unconsumed)."""
        while not self.exhausted and len(self.inflight) < 2 * self.window:
            if sum(1 for f, _ in self.inflight if not f.done()) >= self.window:
                break
            chunk = list(itertools.islice(self.items, self._next_size()))
            if not chunk:
                self.exhausted = True
                break
            self.inflight.append((self.pool._submit_chunk(self.fn, chunk), len(chunk)))

    def _next_size(self) -> int:
        if self.fixed:
            return self.fixed
        if self.per_item_ns is not None:
            wanted = max(1, int(TARGET_CHUNK_S * 1e9 / max(self.per_item_ns, 1.0)))
            self.size = min(wanted, self.size * GROWTH, MAX_CHUNK)
            if self.cap:
                self.size = min(self.size, self.cap)
        return self.size

    def _learn(self, fut: cf.Future, n: int) -> None:
        if fut in self.learned:
            return
        self.learned.add(fut)
        if fut.cancelled() or fut.exception() is not None:
            return
        ns = fut.result()[1] / n
        self.per_item_ns = ns if self.per_item_ns is None else 0.5 * self.per_item_ns + 0.5 * ns

    def _wait_head(self) -> None:
        """Waits for the oldest chunk, refilling the window as younger chunks finish."""
        head = self.inflight[0][0]
        while not head.done():
            remaining = None if self.deadline is None else self.deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise TimeoutError()
            running = [f for f, _ in self.inflight if not f.done()]
            done, _ = cf.wait(running, timeout=remaining, return_when=cf.FIRST_COMPLETED)
            if not done:
                raise TimeoutError()
            for f, n in self.inflight:
                if f in done:
                    self._learn(f, n)
            self.top_up()

    def results(self) -> Iterator[Any]:
        try:
            while self.inflight:
                self._wait_head()
                fut, n = self.inflight.popleft()
                try:
                    values, _ = fut.result(timeout=0)
                except BaseException as exc:
                    partial = getattr(exc, _PARTIAL, None)
                    if partial is not None:
                        try:
                            delattr(exc, _PARTIAL)
                        except Exception:
                            pass
                        yield from _drain(partial)
                    raise
                self._learn(fut, n)
                self.learned.discard(fut)
                del fut
                self.top_up()
                yield from _drain(values)
        finally:
            for fut, _ in self.inflight:
                fut.cancel()
            self.inflight.clear()


def _drain(values: list) -> Iterator[Any]:
    """Yields and forgets each value, so a result the consumer dropped is freed at once."""
    values.reverse()
    while values:
        yield values.pop()
