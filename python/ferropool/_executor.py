"""What every ferropool executor shares: the lazy, self-chunking ``map``.

``map`` never materialises its input. A feeder thread reads it and submits chunks while the
caller consumes results, keeping a bounded window of chunks running (``window_for``) and at
most twice that unconsumed. Reading on a thread of its own means a slow or blocking input
never holds back results that are already done, and an input that waits for the consumer's
progress (a pipeline fed by its own results) still flows. The first item is read and submitted
in the caller's thread, so ``map`` after ``shutdown`` or with an unpicklable first item fails at
the call, as in the standard library.

Chunks size themselves: they hold one item each until a window's worth of items has been
measured (so a few odd early items, or a short input, never get batched behind one another);
after that each is sized to run for about ``TARGET_CHUNK_S`` in a worker, judged from measured run time per item, growing at most
``GROWTH``-fold per chunk and never past ``MAX_CHUNK``. When the input has a length, chunks are
also capped so that every worker gets several, which keeps the tail balanced.

A chunk is one ordinary task running ``run_chunk(fn, items)``; with one input iterable on a pool
that offers ``_submit_items`` (``ProcessPool``, ``ThreadPool``), ``run_items(fn, items)`` instead,
whose items are the input's own values rather than 1-tuples of them: a process pool then pickles
a plain list (no tuple per item, no memo entry per tuple), and the worker calls ``fn`` from C.
If an item raises, the chunk stops there and the exception carries the results before it, so
``map`` yields exactly the items before the failing one and then raises, as with
``chunksize=1``.

Cut chunks. With ``run_items``, automatic sizes and an input of known length, a worker stops a
chunk once it has run for ``CUT_AFTER_S`` and returns the results so far; the rest of the chunk
(``_Chunk`` keeps its items until its outcome is known: the input, a container, holds them
anyway) goes again, in parts sized as measured, right after it in the order. A chunk therefore
holds its other items back for no longer than that, whatever its items turn out to cost, so
nothing needs measuring before big chunks go: ``map`` submits the first window of full, capped
chunks from the caller's thread at once (the standard library's ``Pool.map`` sends all its
chunks up front), and a short input needs no feeder thread at all. A feeder ends when the input
does; a chunk cut short later starts one to send its rest.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Generator, Iterable, Iterator

from ._asyncio import AsyncMixin
from ._future import InterruptSafeCondition

TYPE_CHECKING = False  # typing is not imported at run time: it costs a pool's start-up
if TYPE_CHECKING:
    from typing import Any

TARGET_CHUNK_S = 0.005
GROWTH = 4
#: Largest chunk: past a few thousand items per-chunk overhead is already negligible, and
#: this keeps the items read ahead of the consumer bounded (at most 2 x window x MAX_CHUNK).
MAX_CHUNK = 8192
#: Most chunks ``map`` keeps submitted and not consumed, per chunk of its window, however small
#: their measured work (each costs a future and a round trip to a worker).
MAX_CHUNKS_AHEAD_PER_WINDOW = 8
#: A worker stops a chunk of ``map`` that has run this long, and the rest is sent again in
#: measured parts: so big chunks can go before anything is measured, and a chunk of items
#: that turn out long holds its other items back for no more than this.
CUT_AFTER_S = 4 * TARGET_CHUNK_S
CUT_AFTER_NS = int(CUT_AFTER_S * 1e9)
_PARTIAL = "_ferropool_partial_results"
#: Chunks of a coroutine function ``map`` keeps in flight per worker process.
COROUTINES_IN_FLIGHT_PER_WORKER = 256
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
        _keep_partial(exc, out)
        raise
    return out, _perf() - start


def run_items(fn: Callable[..., Any], items: list, cut_after_ns: int | None = None) -> tuple[list, int]:
    """``run_chunk`` for one input iterable: calls ``fn(item)`` for each item. With
    ``cut_after_ns``, stops early once the chunk has run that long (returning fewer results
    than items: the caller sends the rest again), checking the time between runs of items
    that grow at most ``GROWTH``-fold and are sized to end near that time."""
    start = _perf()
    out: list = []
    try:
        # list.extend keeps what it appended before ``fn`` raised (CPython 3.9 to 3.14).
        if cut_after_ns is None:
            out.extend(map(fn, items))
        else:
            _run_until(fn, items, out, start, start + cut_after_ns)
    except BaseException as exc:
        _keep_partial(exc, out)
        raise
    return out, _perf() - start


def _run_until(fn: Callable[..., Any], items: list, out: list, start: int, deadline: int) -> None:
    """Appends ``fn(item)`` to ``out`` for the items in order, stopping after the run of items
    during which ``deadline`` passed."""
    it = iter(items)
    left = len(items)
    step = 1
    while step < left:
        out.extend(map(fn, itertools.islice(it, step)))
        left -= step
        now = _perf()
        if now >= deadline:
            return
        done = len(out)
        fits = (deadline - now) * done // max(now - start, 1)  # items left to the deadline
        step = max(1, min(GROWTH * done, fits))
    out.extend(map(fn, it))  # the rest, without islice's cost per item


def _keep_partial(exc: BaseException, out: list) -> None:
    """Attaches the results a chunk got before ``exc`` to it (see ``run_chunk``), where the
    exception takes attributes."""
    try:
        setattr(exc, _PARTIAL, out)
    except Exception:
        pass


async def run_chunk_async(fn: Callable[..., Any], items: list) -> tuple[list, int]:
    """``run_chunk`` for a coroutine function: awaits the chunk's calls concurrently. On an
    exception, the results before the first failing item are attached to it, as in
    ``run_chunk``."""
    import asyncio

    start = _perf()
    outcomes = await asyncio.gather(*(fn(*args) for args in items), return_exceptions=True)
    for i, out in enumerate(outcomes):
        if isinstance(out, BaseException):
            try:
                setattr(out, _PARTIAL, outcomes[:i])
            except Exception:
                pass
            raise out
    return outcomes, _perf() - start


_CO_COROUTINE = 0x80  # inspect.CO_COROUTINE, without importing inspect on the hot path


def is_coroutine_function(fn: Any) -> bool:
    """True for ``async def`` functions (and bound methods of them), which pools run on an
    event loop. Cheaper than ``inspect.iscoroutinefunction``; a callable that merely returns a
    coroutine (a ``functools.partial``...) is awaited where it was called instead."""
    try:  # a plain function: the common case, on every submit
        return bool(fn.__code__.co_flags & _CO_COROUTINE)
    except AttributeError:
        code = getattr(getattr(fn, "__func__", None), "__code__", None)
        return code is not None and bool(code.co_flags & _CO_COROUTINE)


def chunk_runner(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The function that runs a chunk of calls of ``fn`` in a worker process."""
    return run_chunk_async if is_coroutine_function(fn) else run_chunk


class PoolExecutor(AsyncMixin, cf.Executor):
    """Base of ferropool's executors: subclasses provide ``submit`` and ``_max_workers``;
    ``AsyncMixin`` adds ``run``, ``map_async`` and ``map_unordered_async`` for asyncio."""

    _max_workers: int
    #: Seconds each task may run (process pools); with one, ``map`` sends an item per task.
    _task_timeout: float | None = None

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        return self.submit(run_chunk, fn, items)

    def map(
        self,
        fn: Callable[..., Any],
        *iterables: Iterable[Any],
        timeout: float | None = None,
        chunksize: int | None = None,
        buffersize: int | None = None,
        progress: bool | str | dict | None = None,
    ) -> Iterator[Any]:
        """Returns an iterator equivalent to ``map(fn, *iterables)`` run on the pool.

        Lazy on its input and bounded in memory; chunks are sized automatically unless
        ``chunksize`` is given. ``timeout`` (seconds, from this call) bounds the wait for each
        result: past it, ``next()`` raises ``TimeoutError``. An exception raised by ``fn`` is
        raised when its item is reached. Breaking out of the loop cancels the rest (on a process
        pool, chunks that are running are stopped).

        ``buffersize`` (Python 3.14's, on every version) bounds the tasks submitted whose results
        have not been yielded: at most that many are submitted ahead of the consumer, the first
        ones before ``map`` returns and more as the consumer takes results, so the input is read
        no further ahead than that. With ``chunksize`` a task is a chunk, as in the standard
        library; with automatic chunking it is an item (chunks are cut to fit), as with the
        standard library's default ``chunksize=1``. It must be a positive integer or None
        (``TypeError`` or ``ValueError`` otherwise, with the standard library's messages).

        With a task timeout (``ProcessPool(task_timeout=...)`` or ``pool.options``), each item
        is a task of its own, so the limit applies per item, unless ``chunksize`` is given: then
        it applies to each chunk as a whole.

        ``progress=True`` (or a description, or a dict of ``ferropool.progress`` keywords) shows
        a bar on stderr that counts items as their chunks finish; it closes when the iterator
        ends, raises or is dropped.
        """
        check_buffersize(buffersize)
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize is None and self._task_timeout is not None:
            chunksize = 1
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            total = min(len(it) for it in iterables) if iterables else 0  # type: ignore[arg-type]
        except TypeError:
            total = None
        bar = None
        if progress:
            from ._progress import map_bar

            bar = map_bar(progress, total)
        submit_items = getattr(self, "_submit_items", None)
        if len(iterables) == 1 and submit_items is not None and not is_coroutine_function(fn):
            items: Iterator[Any] = iter(iterables[0])
        else:
            items, submit_items = zip(*iterables, strict=False), None
        mapper = _Mapper(self, fn, items, deadline, chunksize, total, bar, buffersize, submit_items)
        try:
            mapper.start()
        except BaseException:
            mapper.stop()  # closes the bar
            raise
        results = map_results(mapper.chunks())
        # An iterator dropped unfinished (or never started) stops its feeder thread.
        weakref.finalize(results, mapper.stop)
        return results


def check_buffersize(buffersize: Any) -> None:
    """Raises as Python 3.14's ``Executor.map`` does for a ``buffersize`` that is not a positive
    integer or None."""
    if buffersize is not None and not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize is not None and buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


def window_for(workers: int) -> int:
    """Chunks kept running at once by ``map`` for a pool of ``workers``."""
    return max(4, 3 * max(1, workers))


class _Chunk:
    """One chunk of a ``map`` in flight, in input order among the others.

    ``fut`` is None while the chunk waits to be sent: the rest of a chunk that a worker cut
    short, which the feeder sends on in parts. ``items`` holds the chunk's input while a worker
    may still cut it short (from ``start``; only where ``cuts``), so that the rest can be
    sent again; ``n`` counts the items from ``start``. ``settled``: its outcome was measured.
    """

    __slots__ = ("fut", "items", "n", "settled", "start")

    def __init__(self, fut: cf.Future | None, n: int, items: list | None, start: int = 0):
        self.fut = fut
        self.n = n
        self.items = items
        self.start = start
        self.settled = False


class _Mapper:
    """State shared by one ``map`` call's feeder thread and its results iterator.

    Everything mutable is guarded by ``cond``, which is notified when a chunk is submitted, a
    chunk finishes, the consumer takes a chunk, the feeder ends, or the consumer stops.
    """

    def __init__(
        self,
        pool: PoolExecutor,
        fn,
        items: Iterator[Any],
        deadline,
        chunksize,
        total,
        bar=None,
        buffersize=None,
        submit_items=None,
    ):
        self.pool = pool
        #: Submits a chunk of ``items``: ``pool._submit_chunk`` (each item a tuple of arguments),
        #: or ``pool._submit_items`` (each item the one argument).
        self.submit_chunk: Callable[[Callable[..., Any], list], cf.Future] = (
            submit_items if submit_items is not None else pool._submit_chunk
        )
        #: With ``_submit_items``, automatic sizes and an input of known length (a container,
        #: which holds the items anyway while a chunk keeps them for its rest), a worker stops a
        #: chunk that has run this long (``run_items``) and the rest is sent again.
        self.cuts = submit_items is not None and chunksize is None and bool(total)
        if submit_items is not None and self.cuts:
            self.submit_chunk = lambda fn, items: submit_items(fn, items, CUT_AFTER_NS)
        self.fn = fn
        self.items = items
        self.deadline = deadline
        self.fixed = chunksize
        workers = max(1, pool._max_workers)
        self.window = window_for(workers)
        if getattr(pool, "_runs_coroutines", False) and chunk_runner(fn) is run_chunk_async:
            # Coroutines wait concurrently on each worker's event loop: keep many in flight.
            self.window = max(self.window, COROUTINES_IN_FLIGHT_PER_WORKER * workers)
        # With a known length, never make chunks so big that a worker gets fewer than ~4.
        self.cap = max(1, total // (4 * workers)) if total else None
        self.size = 1
        self.per_item_ns: float | None = None
        self.measured = 0  # items in finished chunks
        self.cond = InterruptSafeCondition()  # the consumer waits on it in the caller's thread
        self.inflight: collections.deque[_Chunk] = collections.deque()
        self.unsent = 0  # chunks in ``inflight`` cut short whose rest is not all sent yet
        self.reading = True  # the input has more items, as far as the feeder knows
        self.feeding = True  # a feeder thread runs, or is about to
        self.stopped = False
        self.error: BaseException | None = None
        self.bar = bar  # a ferropool._progress._Bar: counts items per finished chunk
        #: Most tasks submitted ahead of the consumer (see ``_ahead``); None: ``2 * window`` chunks.
        self.buffersize = buffersize
        self.consumed = 0  # items in chunks the consumer has taken

    def start(self) -> None:
        """Submits the first chunks in the caller's thread, then starts the feeder if input is
        left. The first item goes alone; with a ``buffersize``, the first ``buffersize`` chunks
        go, as the standard library does. With a known length and chunks that workers cut
        short, the first window's chunks go at once, full-sized: no worker waits for the
        feeder thread to start, and a short input needs none. Failing to submit the first
        chunk fails the call; later chunks, and the input's own errors, fail in order, where
        the results iterator reaches them, as the feeder's do."""
        if self.cuts:  # a known length
            self._read(self._next_size())  # submit errors are the call's; input errors in order
        else:
            first = list(itertools.islice(self.items, 1))
            if first:
                self._submit(first)
            else:
                self.reading = False
        while self.reading and (self.buffersize is not None or self.cuts):
            with self.cond:
                if not self._has_room():
                    break
                size = self._next_size()
            if self.buffersize is None:
                try:
                    self._read(size)
                except Exception as exc:  # submit refused: raised in order, as by the feeder
                    with self.cond:
                        self.error = exc
                        self.reading = False
                continue
            chunk = list(itertools.islice(self.items, size))  # errors at the call, as there
            if not chunk:
                self.reading = False
                break
            self._submit(chunk)
        with self.cond:
            self.feeding = self.reading or self.unsent > 0
            if self.feeding:
                self._start_feeder()

    def _start_feeder(self) -> None:
        threading.Thread(target=self._feed, name="ferropool-map-feeder", daemon=True).start()

    def stop(self) -> None:
        """Stops feeding and cancels every chunk that has not started."""
        with self.cond:
            self.stopped = True
            pending = list(self.inflight)
            self.inflight.clear()
            self.cond.notify_all()
        for chunk in pending:
            if chunk.fut is not None:
                chunk.fut.cancel()
        if self.bar is not None:
            # A chunk's done callback may still be on its way when the consumer has its values.
            self.bar.close(at_least=self.consumed)

    def _submit(self, items: list) -> None:
        chunk = _Chunk(None, len(items), items if self.cuts else None)
        with self.cond:
            self.inflight.append(chunk)
        self._send(chunk, items)

    def _send(self, chunk: _Chunk, items: list) -> None:
        """Submits ``items``, the input of ``chunk``, which is already in ``inflight``."""
        fut = self.submit_chunk(self.fn, items)
        with self.cond:
            chunk.fut = fut
            self.cond.notify_all()
        fut.add_done_callback(lambda _: self._chunk_done(chunk))

    def _chunk_done(self, chunk: _Chunk) -> None:
        fut = chunk.fut
        assert fut is not None
        added = 0
        with self.cond:
            if fut.cancelled() or fut.exception() is not None:
                chunk.settled = True  # the consumer raises it, or has stopped
            else:
                added = self._settle(chunk, *fut.result())
            self.cond.notify_all()
        if added and self.bar is not None:
            self.bar.add(added)

    def _settle(self, chunk: _Chunk, values: list, ns: int) -> int:
        """Measures a chunk that returned ``values`` in ``ns``, once, before the consumer takes
        them; if a worker cut it short, queues its rest, to be sent right after it. Returns the
        items it ran the first time, else 0. With ``cond`` held."""
        if chunk.settled or self.stopped:
            return 0
        chunk.settled = True
        done = len(values)
        if done < chunk.n:
            assert chunk.items is not None and done
            rest = _Chunk(None, chunk.n - done, chunk.items, chunk.start + done)
            self.inflight.insert(self.inflight.index(chunk) + 1, rest)
            self.unsent += 1
            chunk.n = done
            if not self.feeding:  # it ended with the input: another sends the rest
                self.feeding = True
                self._start_feeder()
        chunk.items = None
        self._measure(done, ns)
        return done

    def _on_done(self, fut: cf.Future, n: int) -> None:
        """Measures a finished chunk of ``n`` items (the asyncio ``map`` sizes its chunks here)."""
        if not fut.cancelled() and fut.exception() is None:
            with self.cond:
                self._measure(n, fut.result()[1])
                self.cond.notify_all()

    def _measure(self, n: int, ns: int) -> None:
        per_item = ns / n
        self.per_item_ns = per_item if self.per_item_ns is None else 0.5 * self.per_item_ns + 0.5 * per_item
        self.measured += n

    def _running(self) -> int:
        return sum(1 for c in self.inflight if c.fut is not None and not c.fut.done())

    def _has_room(self) -> bool:
        if self.buffersize is not None and self._ahead() >= self.buffersize:
            return False
        running = running_items = ahead = 0
        for c in self.inflight:
            ahead += c.n
            if c.fut is not None and not c.fut.done():
                running += 1
                running_items += c.n
        # A window of chunks runs, and another waits for the consumer. Chunks that a worker
        # cuts short hold at most ``CUT_AFTER_S`` of work each: both windows may run.
        if len(self.inflight) < 2 * self.window and (running < self.window or self.cuts):
            return True
        if self.fixed or self.per_item_ns is None:
            return False
        # Chunks measured to run far below the target (tiny tasks, cut by the length's cap) count
        # by their work, not their number: a window of target-sized chunks' worth may run, and
        # twice that wait for the consumer, within the same bound on items read ahead.
        budget = self.window * TARGET_CHUNK_S * 1e9 / max(self.per_item_ns, 1.0)
        return (
            running_items < budget
            and ahead < 2 * budget
            and ahead <= (2 * self.window - 1) * MAX_CHUNK  # so that the next chunk fits too
            and len(self.inflight) < MAX_CHUNKS_AHEAD_PER_WINDOW * self.window
        )

    def _ahead(self) -> int:
        """What ``buffersize`` counts: chunks submitted and not taken by the consumer when
        ``chunksize`` was given (the standard library's tasks), else their items (automatic
        chunks stand in for the standard library's one task per item)."""
        if self.fixed:
            return len(self.inflight)
        return sum(c.n for c in self.inflight)

    def _next_size(self) -> int:
        if self.fixed:
            return self.fixed
        size = self.size
        if self.per_item_ns is not None and self.measured >= self.window:
            # A known length caps the chunks already: trust the measurement at once.
            size = self._measured_size() if self.cap else min(self._measured_size(), size * GROWTH)
        elif self.cap:
            # Known length, nothing measured yet: tiny tasks should not wait for measurements
            # in small chunks. Where a worker cuts chunks short, send the cap at once (a long
            # item holds its chunk's other items for no more than ``CUT_AFTER_S``); else grow,
            # bounded by the cap (long items get small chunks once measured; the big early
            # chunks are far from the end, where balance counts).
            size = self.cap if self.cuts else size * 2
        self.size = min(size, MAX_CHUNK, self.cap or MAX_CHUNK)
        if self.buffersize is not None:
            return max(1, min(self.size, self.buffersize - self._ahead()))
        return self.size

    def _measured_size(self) -> int:
        """Items that run for about ``TARGET_CHUNK_S``, as measured so far."""
        assert self.per_item_ns is not None
        return max(1, int(TARGET_CHUNK_S * 1e9 / max(self.per_item_ns, 1.0)))

    def _next_part(self) -> tuple[_Chunk, list] | None:
        """The next part of the first cut-short chunk's rest, sized as measured, placed before
        what is left of that rest, unless both windows of chunks run. With ``cond`` held. Rests
        come before new chunks, and only running chunks hold them back, not finished ones the
        consumer has yet to take: it may be waiting for this rest."""
        if not self.unsent or self._running() >= 2 * self.window:
            return None
        rest = next(c for c in self.inflight if c.fut is None)
        assert rest.items is not None
        size = min(self._measured_size(), MAX_CHUNK, self.cap or MAX_CHUNK)
        items = rest.items[rest.start : rest.start + size]
        if size >= rest.n:
            self.unsent -= 1
            return rest, items
        part = _Chunk(None, size, rest.items, rest.start)
        rest.start += size
        rest.n -= size
        self.inflight.insert(self.inflight.index(rest), part)
        return part, items

    def _feed(self) -> None:
        try:
            while True:
                with self.cond:
                    while True:
                        part = None if self.stopped else self._next_part()
                        if part is not None or (self.reading and not self.stopped and self._has_room()):
                            break
                        if self.stopped or not (self.reading or self.unsent):
                            # Decided under the lock that a cut (``_settle``) takes: a chunk
                            # cut short from now on starts another feeder.
                            self.feeding = False
                            self.cond.notify_all()
                            return
                        self.cond.wait()
                    if part is None:
                        size = self._next_size()
                if part is not None:
                    self._send(*part)
                else:
                    self._read(size)
        except BaseException as exc:  # submit refused: the consumer re-raises it in order
            with self.cond:
                self.error = exc
                self.reading = self.feeding = False
                self.cond.notify_all()

    def _read(self, size: int) -> None:
        """Reads and submits the next chunk of the input. At its end, or when it raises (the
        consumer re-raises that after the items before it), reading stops; rests of chunks cut
        short are still sent."""
        chunk: list = []
        try:
            chunk.extend(itertools.islice(self.items, size))
        except BaseException as exc:
            with self.cond:
                self.error = exc
                self.reading = False
        if not chunk:
            with self.cond:
                self.reading = False
        elif not self.stopped:  # items read before an error still run
            self._submit(chunk)

    def _remaining(self) -> float | None:
        if self.deadline is None:
            return None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise cf.TimeoutError()
        return left

    def chunks(self) -> Generator[Iterator[Any], None, None]:
        """Yields, for each chunk in order, an iterator over its results that forgets each one
        it yields (``MapResults`` takes the items out); raises where the first failing item
        was, after the items of its chunk before it."""
        try:
            while True:
                with self.cond:
                    while self.feeding and (not self.inflight or self.inflight[0].fut is None):
                        if not self.cond.wait(self._remaining()):
                            raise cf.TimeoutError()
                    if not self.inflight or self.inflight[0].fut is None:
                        # The end, or the feeder failed: the input raised, or this chunk (or a
                        # rest of one) could not be submitted.
                        if self.error is not None:
                            raise self.error
                        return
                    chunk = self.inflight[0]
                    fut = chunk.fut
                    assert fut is not None
                try:
                    values, ns = fut.result(timeout=self._remaining())
                except cf.TimeoutError:
                    raise
                except BaseException as exc:
                    partial = getattr(exc, _PARTIAL, None)
                    if partial is not None:
                        try:
                            delattr(exc, _PARTIAL)
                        except Exception:
                            pass
                        yield _forgetting(partial)
                    raise
                finally:
                    del fut
                with self.cond:
                    added = self._settle(chunk, values, ns)
                    self.inflight.popleft()
                    self.consumed += len(values)
                    self.cond.notify_all()
                if added and self.bar is not None:
                    self.bar.add(added)
                yield _forgetting(values)
                del values
        finally:
            self.stop()


def _forgetting(values: list) -> Iterator[Any]:
    """Iterates over ``values`` in order, in C, removing each value from the list as it is
    yielded, so that a result the consumer dropped is freed at once."""
    values.reverse()
    return itertools.starmap(values.pop, itertools.repeat((), len(values)))


class MapResults(itertools.chain):
    """The iterator ``map`` returns. Its items come out of each finished chunk's list of
    results in C (``itertools.chain`` over ``_forgetting``): a generator stepping through them
    would cost more per item than a tiny task's whole round trip. ``close()`` stops the ``map``
    as dropping the iterator does: no more input is read, chunks not started are cancelled, and
    ``next()`` raises ``StopIteration``, as after a generator's ``close()``."""

    _chunks: Generator[Iterator[Any], None, None]

    def close(self) -> None:
        self._chunks.close()
        collections.deque(self, maxlen=0)  # and the rest of the chunk at hand: next() then stops


def map_results(chunks: Generator[Iterator[Any], None, None]) -> MapResults:
    results = MapResults.from_iterable(chunks)
    assert isinstance(results, MapResults)  # from_iterable builds its own class
    results._chunks = chunks
    return results


class TaskOptions(PoolExecutor):
    """A pool seen with other per-task options; made by its ``options(task_timeout=...)``.

    ``submit`` and ``map`` (and the asyncio methods) queue onto the pool's own workers with
    these options; everything else (``shutdown``, ``stats``, the context manager) acts on the
    pool itself. The pool provides ``_submit(fn, args, kwargs, task_timeout, shown)`` and
    ``_chunk_runner(fn)``.
    """

    def __init__(self, pool: Any, task_timeout: float | None):
        self._pool = pool
        self._task_timeout = task_timeout
        self._max_workers = pool._max_workers
        self._runs_coroutines = getattr(pool, "_runs_coroutines", False)

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> cf.Future:
        """Like the pool's ``submit``, with this view's options."""
        return self._pool._submit(fn, args, kwargs, self._task_timeout, fn)

    def _submit_chunk(self, fn: Callable[..., Any], items: list) -> cf.Future:
        return self._pool._submit(self._pool._chunk_runner(fn), (fn, items), {}, self._task_timeout, fn)

    def stats(self, *args: Any, **kwargs: Any) -> Any:
        """The pool's statistics."""
        return self._pool.stats(*args, **kwargs)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shuts the pool itself down."""
        self._pool.shutdown(wait, cancel_futures=cancel_futures)

    def __repr__(self) -> str:
        return f"<TaskOptions task_timeout={self._task_timeout!r} of {self._pool!r}>"
