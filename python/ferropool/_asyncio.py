"""The asyncio face of every ferropool executor: ``await pool.run(...)`` and ``async for`` over
``pool.map_async(...)`` / ``pool.map_unordered_async(...)``.

Nothing here blocks the event loop: a task's completion crosses from the pool's result thread
to the loop by ``call_soon_threadsafe``, and everything else (reading the input, submitting,
counting what is in flight) runs on the loop itself. ``submit`` is called on the loop when it
cannot block; a pool with ``max_pending`` is submitted to from the loop's default executor.

Cancellation flows from the loop to the pool: cancelling the asyncio task that awaits ``run``
(``task.cancel()``, ``asyncio.timeout``, ``asyncio.wait_for``) cancels the task's future, and
closing a ``map_async`` iterator (``break``, ``aclose()``, its consumer cancelled, or the
iterator dropped) cancels every chunk it has outstanding. On a ``ProcessPool`` that stops
running work: its worker is killed and replaced. On a ``ThreadPool`` a running task cannot be
stopped and finishes, its result discarded.

The map iterators reuse ``map``'s plan (``_executor``): a feeder (here an asyncio task, there a
thread) reads the input lazily and submits chunks, sized by ``_executor._Mapper``'s measurements,
while at most a window of chunks runs and at most twice that is unconsumed.

``asyncio`` is imported on first use, not here: worker processes import ``_executor`` (and so
this module) to run chunks, and must not pay for it.
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import functools
import itertools
import weakref
from collections.abc import AsyncIterable, Callable, Iterable

from . import _executor

TYPE_CHECKING = False  # typing is not imported at run time: it costs a pool's start-up
if TYPE_CHECKING:
    import asyncio
    from typing import Any

#: Input for ``map_async``: ordinary iterables are read on the event loop (so they must not
#: block); async iterables are awaited.
if TYPE_CHECKING:
    AnyIterable = Iterable[Any] | AsyncIterable[Any]


class AsyncMixin:
    """``run``, ``map_async`` and ``map_unordered_async`` for any executor with ``submit``."""

    _max_workers: int
    _task_timeout: float | None

    async def run(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        """Runs ``fn(*args, **kwargs)`` on the pool and returns its result, without blocking
        the event loop.

        Raises what ``fn`` raised (from a process, with the worker's traceback as
        ``__cause__``), and whatever ``submit`` raises (``SerializationError``, ``RuntimeError``
        after shutdown, ...). Has no timeout of its own: bound it with ``asyncio.timeout`` or
        ``asyncio.wait_for``, or give the pool a task timeout (``TaskTimeoutError`` is then
        raised here). Cancelling the awaiting task cancels the call: on a ``ProcessPool`` a
        running call is stopped (its worker is replaced); on a ``ThreadPool`` it finishes in
        the background and its result is dropped. If the pool cancels it
        (``shutdown(cancel_futures=True)``), raises ``concurrent.futures.CancelledError``.

        >>> import asyncio
        >>> from ferropool import ThreadPool
        >>> async def main():
        ...     with ThreadPool(2) as pool:
        ...         return await pool.run(pow, 2, 10)
        >>> asyncio.run(main())
        1024
        """
        fut = await _submit(self, functools.partial(self.submit, fn, *args, **kwargs))  # type: ignore[attr-defined]
        return await wait_result(fut)

    def map_async(
        self, fn: Callable[..., Any], *iterables: AnyIterable, chunksize: int | None = None
    ) -> MapAsyncIterator:
        """Returns an async iterator of ``fn(*args)`` for ``args`` in ``zip(*iterables)``, in
        input order, run on the pool.

        Each iterable may be an ordinary or an async iterable; ordinary ones are read on the
        event loop, so they must not block (make an input that waits an async iterable). The
        input is read lazily, starting at the first ``__anext__``, and at most a bounded number
        of chunks is submitted and not yet consumed, so an endless input is fine. Chunks are
        sized as ``map`` sizes them unless ``chunksize`` is given (with a task timeout, one
        item per task). An exception raised by ``fn``, by the input, or by ``submit`` is raised
        at the ``__anext__`` that reaches its item, after the results before it.

        Closing the iterator (leaving ``async for`` by ``break`` or an exception, ``aclose()``,
        the ``async with`` block, cancelling the task that awaits ``__anext__``, or dropping it)
        cancels everything it has outstanding; on a ``ProcessPool`` running chunks are stopped.
        There is no timeout: use ``asyncio.timeout``/``asyncio.wait_for`` around the loop.

        >>> import asyncio
        >>> from ferropool import ThreadPool
        >>> async def main():
        ...     with ThreadPool(2) as pool:
        ...         return [x async for x in pool.map_async(abs, range(-3, 3))]
        >>> asyncio.run(main())
        [3, 2, 1, 0, 1, 2]
        """
        return MapAsyncIterator(_AsyncMap(self, fn, iterables, chunksize, ordered=True))

    def map_unordered_async(
        self, fn: Callable[..., Any], *iterables: AnyIterable, chunksize: int | None = None
    ) -> MapAsyncIterator:
        """Like ``map_async``, but yields each result as soon as its chunk finishes, whatever
        its place in the input (within a chunk, in input order).

        Every item's result is yielded exactly once. An exception from ``fn`` is raised when
        its chunk arrives (after that chunk's results before it); one from the input or
        ``submit`` once everything submitted before it has been yielded.

        >>> import asyncio
        >>> from ferropool import ThreadPool
        >>> async def main():
        ...     with ThreadPool(2) as pool:
        ...         return sorted([x async for x in pool.map_unordered_async(abs, range(-3, 3))])
        >>> asyncio.run(main())
        [0, 1, 1, 2, 2, 3]
        """
        return MapAsyncIterator(_AsyncMap(self, fn, iterables, chunksize, ordered=False))


async def wait_result(fut: cf.Future) -> Any:
    """Waits for ``fut`` without blocking the loop and returns ``fut.result()``.

    Unlike ``await asyncio.wrap_future(fut)``, a future cancelled by its pool raises
    ``concurrent.futures.CancelledError`` (an ``Exception``) rather than the
    ``asyncio.CancelledError`` that means "this task was cancelled". Cancelling the awaiting
    task cancels ``fut``.
    """
    import asyncio

    if not fut.done():
        loop = asyncio.get_running_loop()
        waiter = loop.create_future()
        fut.add_done_callback(functools.partial(_wake_threadsafe, loop, waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            fut.cancel()
            raise
    return fut.result()  # done: returns or raises at once


def _wake_threadsafe(loop: asyncio.AbstractEventLoop, waiter: asyncio.Future, _fut: cf.Future) -> None:
    try:
        loop.call_soon_threadsafe(_wake, waiter)
    except RuntimeError:  # the loop is closed: nobody is waiting any more
        pass


def _wake(waiter: asyncio.Future) -> None:
    if not waiter.done():
        waiter.set_result(None)


def _submit_may_block(pool: Any) -> bool:
    """Whether ``pool.submit`` can block (backpressure from ``max_pending``).

    ThreadPool keeps its limit in ``_room``; a pool that stores ``_max_pending`` is covered too.
    A ``TaskOptions`` view asks its pool.
    """
    pool = getattr(pool, "_pool", pool)
    return getattr(pool, "_room", None) is not None or getattr(pool, "_max_pending", None) is not None


async def _submit(pool: Any, submit: Callable[[], cf.Future]) -> cf.Future:
    """Calls ``submit()`` on the loop if it cannot block, else in the loop's default executor;
    a submission whose caller is cancelled meanwhile is cancelled once it is made."""
    if not _submit_may_block(pool):
        return submit()
    import asyncio

    handoff = asyncio.get_running_loop().run_in_executor(None, submit)
    try:
        return await asyncio.shield(handoff)
    except asyncio.CancelledError:
        handoff.add_done_callback(_cancel_submitted)
        raise


def _cancel_submitted(handoff: asyncio.Future) -> None:
    if not handoff.cancelled() and handoff.exception() is None:
        handoff.result().cancel()


class MapAsyncIterator:
    """The async iterator returned by ``map_async`` and ``map_unordered_async``.

    Also an async context manager: ``async with pool.map_async(...) as results:`` closes it on
    leaving the block. Dropping it unfinished closes it too.
    """

    def __init__(self, state: _AsyncMap) -> None:
        self._state = state
        # Only this object is the user's: the feeder task holds the state, not us, so dropping
        # us (breaking out of ``async for``) stops the work at once.
        finalizer = weakref.finalize(self, state.stop)
        finalizer.atexit = False

    def __aiter__(self) -> MapAsyncIterator:
        return self

    async def __anext__(self) -> Any:
        """Returns the next result; raises ``StopAsyncIteration`` at the end, or the error of
        the item reached (then the iterator is closed)."""
        return await self._state.next()

    async def aclose(self) -> None:
        """Closes the iterator: cancels what it has outstanding and stops reading the input.
        Returns at once, without waiting for stopped work; safe to call more than once."""
        self._state.stop()

    async def __aenter__(self) -> MapAsyncIterator:
        return self

    async def __aexit__(self, *exc_info: Any) -> None:
        self._state.stop()


class _AsyncMap:
    """One ``map_async`` call's state, shared by its feeder task and its consumer.

    Everything here runs on the loop thread (chunk completions arrive by
    ``call_soon_threadsafe``), so no lock is needed: each side re-checks its condition after
    clearing its event, with no ``await`` in between, so no wake-up is lost.
    """

    def __init__(
        self, pool: Any, fn: Callable[..., Any], iterables: tuple, chunksize: int | None, *, ordered: bool
    ) -> None:
        if chunksize is not None and chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize is None and pool._task_timeout is not None:
            chunksize = 1
        try:
            total = min(len(it) for it in iterables) if iterables else 0
        except TypeError:
            total = None
        self.pool = pool
        self.fn = fn
        self.iterables = iterables
        self.ordered = ordered
        # Chunk sizing and the window are map's, measured by its own bookkeeping.
        self.sizer = _executor._Mapper(pool, fn, items=iter(()), deadline=None, chunksize=chunksize, total=total)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.feeder: asyncio.Task | None = None
        self.outstanding: dict[cf.Future, int] = {}  # submitted, not consumed; in submission order
        self.landed: dict[cf.Future, None] = {}  # of those, the finished ones; in order of arrival
        self.unfinished = 0
        self.buffer: collections.deque = collections.deque()  # results of the chunk being consumed
        self.error: BaseException | None = None  # raised once ``buffer`` is empty
        self.input_error: BaseException | None = None  # raised once nothing is outstanding
        self.feeding = True
        self.closed = False

    # ---------------------------------------------------------------- consumer

    async def next(self) -> Any:
        if self.buffer:
            return self.buffer.popleft()
        if self.closed:
            raise StopAsyncIteration
        if self.feeder is None:
            self._start()
        try:
            while True:
                if self.error is not None:
                    error, self.error = self.error, None
                    raise error
                chunk = self._take()
                if chunk is not None:
                    self._unpack(chunk)
                    if self.buffer:
                        return self.buffer.popleft()
                    continue
                if not self.outstanding and not self.feeding:
                    if self.input_error is not None:
                        error, self.input_error = self.input_error, None
                        raise error
                    raise StopAsyncIteration
                self.results_changed.clear()
                await self.results_changed.wait()
        except BaseException:
            # The end, an error, or the consumer cancelled: nothing more will be consumed.
            self.stop()
            raise

    def _take(self) -> cf.Future | None:
        """Removes and returns the next finished chunk to consume, if there is one."""
        if self.ordered:
            head = next(iter(self.outstanding), None)
            if head is None or head not in self.landed:
                return None
        else:
            head = next(iter(self.landed), None)
            if head is None:
                return None
        del self.landed[head]
        del self.outstanding[head]
        self.room_changed.set()
        return head

    def _unpack(self, chunk: cf.Future) -> None:
        try:
            values, _ = chunk.result()  # finished: never blocks
        except BaseException as exc:  # fn raised, the worker died, or the pool cancelled it
            partial = getattr(exc, _executor._PARTIAL, None)
            if partial is not None:
                try:
                    delattr(exc, _executor._PARTIAL)
                except Exception:
                    pass
                self.buffer.extend(partial)
            self.error = exc
        else:
            self.buffer.extend(values)

    def stop(self) -> None:
        """Cancels every outstanding chunk and the feeder; later ``next`` calls end the iteration."""
        if self.closed:
            return
        self.closed = True
        self.buffer.clear()
        self.error = None
        pending = list(self.outstanding)
        self.outstanding.clear()
        self.landed.clear()
        for fut in pending:
            fut.cancel()
        feeder = self.feeder
        if feeder is not None and not feeder.done():
            import asyncio

            if asyncio._get_running_loop() is self.loop:
                feeder.cancel()
            else:  # dropped in another thread, or after the loop stopped
                try:
                    self.loop.call_soon_threadsafe(feeder.cancel)  # type: ignore[union-attr]
                except RuntimeError:
                    pass

    # ------------------------------------------------------------------ feeder

    def _start(self) -> None:
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.results_changed = asyncio.Event()
        self.room_changed = asyncio.Event()
        self.feeder = self.loop.create_task(self._feed())

    def _has_room(self) -> bool:
        window = self.sizer.window
        return self.unfinished < window and len(self.outstanding) < 2 * window

    async def _feed(self) -> None:
        read = self._reader()
        try:
            while True:
                while not self._has_room():
                    self.room_changed.clear()
                    await self.room_changed.wait()
                with self.sizer.cond:
                    size = self.sizer._next_size()
                chunk: list = []
                failed = None
                try:
                    await read(chunk, size)
                except Exception as exc:  # the items read before it still run, and come first
                    failed = exc
                if chunk and not self.closed:
                    fut = await _submit(self.pool, functools.partial(self.pool._submit_chunk, self.fn, chunk))
                    self._track(fut, len(chunk))
                if failed is not None:
                    raise failed
                if not chunk or self.closed:
                    return
        except Exception as exc:  # the input raised, or submit refused: the consumer raises it in order
            self.input_error = exc
        finally:
            self.feeding = False
            self.results_changed.set()

    def _reader(self) -> Callable[[list, int], Any]:
        """Returns ``async read(chunk, n)``, which appends the next up to ``n`` argument tuples
        to ``chunk`` (fewer only at the end); if the input raises, what it read is in ``chunk``."""
        if not any(hasattr(it, "__aiter__") for it in self.iterables):
            items = zip(*self.iterables, strict=False)  # like map(): stops at the shortest

            async def read_sync(chunk: list, n: int) -> None:
                chunk.extend(itertools.islice(items, n))  # keeps what came before an error

            return read_sync
        iterators = [it.__aiter__() if hasattr(it, "__aiter__") else iter(it) for it in self.iterables]
        exhausted = not iterators

        async def read_async(chunk: list, n: int) -> None:
            nonlocal exhausted
            while len(chunk) < n and not exhausted:
                args = []
                for it in iterators:
                    try:
                        args.append(await it.__anext__() if hasattr(it, "__anext__") else next(it))
                    except (StopIteration, StopAsyncIteration):
                        exhausted = True
                        break
                else:
                    chunk.append(tuple(args))

        return read_async

    def _track(self, fut: cf.Future, n: int) -> None:
        if self.closed:
            fut.cancel()
            return
        self.outstanding[fut] = n
        self.unfinished += 1
        loop = self.loop
        fut.add_done_callback(lambda f: _call_threadsafe(loop, self._landed, f))

    def _landed(self, fut: cf.Future) -> None:
        n = self.outstanding.get(fut)
        if n is None:  # stopped meanwhile
            return
        self.unfinished -= 1
        self.landed[fut] = None
        self.sizer._on_done(fut, n)
        self.results_changed.set()
        self.room_changed.set()


def _call_threadsafe(loop: Any, callback: Callable[[cf.Future], None], fut: cf.Future) -> None:
    try:
        loop.call_soon_threadsafe(callback, fut)
    except RuntimeError:  # the loop is closed: nobody is consuming any more
        pass
