"""How a worker runs tasks concurrently: on several threads (``HybridPool``) and as coroutines.

``_worker._serve`` reads frames on the main thread. A worker of a ``ProcessPool`` runs plain
tasks right there, one at a time. Everything else goes through a ``Runner``:

* **coroutine tasks** (the parent flags them ``FLAG_ASYNC``: the function is ``async def``) run
  on event loops, one per task thread, each in a thread of its own: thousands can wait on I/O at
  once in one process. Cancelling one (a ``Cancel`` frame) cancels its ``asyncio.Task``.
* **plain tasks of a ``HybridPool`` worker** go to a queue that ``threads`` task threads take
  from, so a task runs as soon as a thread is free.

Answers leave through a ``WorkerSender``, which writes on the worker's socket from any thread.
The parent dates a task's start by the order it sent tasks, unless the worker tells it otherwise:
a task started while another task of this worker is still unanswered is announced with a
``Start`` frame (``docs/wire-format.md``), so timeouts count from the real start.

An **async initializer** (``AsyncInitializer``) runs on the worker's first event loop before the
worker says ``Ready``; that loop then runs every coroutine task of the worker, so what the
initializer opened (a connection pool, a client session) belongs to the loop the tasks use. An
async generator initializer's code after its ``yield`` runs on that loop at ``Shutdown``.
"""

from __future__ import annotations

import asyncio
import inspect
import queue
import sys
import threading
import time
import traceback

from . import _core
from ._serialize import dumps_exception, dumps_result, loads

_perf = time.perf_counter_ns
OK, ERR, CANCEL, START = _core.KIND_OK, _core.KIND_ERR, _core.KIND_CANCEL, _core.KIND_START


def _run_us(start: int) -> int:
    return min((_perf() - start) // 1000, 0xFFFFFFFF)


class Runner:
    """Runs the tasks that do not run on the main thread (see the module doc)."""

    def __init__(self, conn, threads: int, setup: AsyncInitializer | None = None):
        self.sender = conn.sender()
        self.plain_threads = max(1, threads)
        # The async initializer's loop is the only one: what it opened is bound to it.
        self.max_loops = 1 if setup is not None else self.plain_threads
        self.cond = threading.Condition()
        self.unanswered = 0  # tasks handed to this runner and not answered
        # Plain tasks queued for a thread, not yet taken; one cancelled meanwhile leaves it (and
        # is answered then), so a thread skips a task it takes that is no longer here.
        self.waiting: set[int] = set()
        self.loops: list[asyncio.AbstractEventLoop] = [setup.loop] if setup is not None else []
        self.next_loop = 0
        self.coroutines: dict[int, asyncio.Task] = {}  # running coroutine tasks, by id
        self.plain: queue.SimpleQueue | None = None
        self.pool_threads: list[threading.Thread] = []

    # ------------------------------------------------------------------ bookkeeping

    def _begin(self) -> bool:
        """Counts one more unanswered task; returns whether another one is unanswered."""
        with self.cond:
            self.unanswered += 1
            return self.unanswered > 1

    def _answer(self, kind: int, task_id: int, out: bytes, run_us: int, buffers) -> None:
        with self.cond:
            self.unanswered -= 1
            more = self.unanswered > 0
            if not more:
                self.cond.notify_all()
        # More tasks running: let the answer wait (at most 1 ms) to share a write with theirs.
        try:
            self.sender.send(kind, task_id, out, run_us, buffers, more)
        except (OSError, MemoryError) as exc:
            from ._worker import answer_unsendable

            answer_unsendable(self.sender.send, exc, task_id, run_us, buffers, more)

    def busy(self) -> bool:
        with self.cond:
            return self.unanswered > 0

    def announce_start(self, task_id: int) -> None:
        """Tells the parent a task the main thread starts now runs beside this runner's."""
        self.sender.send(START, task_id, b"", 0, None, True)

    def wait_idle(self) -> None:
        """Blocks until every task handed to this runner is answered."""
        with self.cond:
            while self.unanswered:
                self.cond.wait()

    # ------------------------------------------------------------------ plain tasks on threads

    def submit_plain(self, task_id: int, payload: bytes, buffers) -> None:
        if self.plain is None:
            self.plain = queue.SimpleQueue()
            for n in range(self.plain_threads):
                t = threading.Thread(target=self._plain_thread, name=f"ferropool-task-{n}", daemon=True)
                t.start()
                self.pool_threads.append(t)
        with self.cond:
            self.unanswered += 1
            self.waiting.add(task_id)
        self.plain.put((task_id, payload, buffers))

    def _plain_thread(self) -> None:
        from ._worker import _Coroutine, _run_here

        assert self.plain is not None
        while True:
            task_id, payload, buffers = self.plain.get()
            with self.cond:
                if task_id not in self.waiting:
                    continue  # cancelled, and answered then
                self.waiting.discard(task_id)
            start = _perf()
            try:
                fn, args, kwargs = loads(payload, buffers=buffers)
                # Every task on a thread is announced, as late as can be: if a task beside it
                # kills the process, the parent fails the tasks it knows had begun and runs the
                # others again elsewhere. (The oldest task need not be the one running: its
                # thread may still wait for the GIL while another runs the tasks behind it.)
                self.announce_start(task_id)
                value = fn(*args, **kwargs)
                if type(value) is _Coroutine:  # from a callable not flagged async (a partial...)
                    value = _run_here(value)
                out, out_buffers, kind = *dumps_result(value), OK
            except BaseException as exc:
                out, out_buffers, kind = dumps_exception(exc), None, ERR
            fn = args = kwargs = buffers = value = None  # a received buffer is unmapped when unused
            self._answer(kind, task_id, out, _run_us(start), out_buffers)

    # ------------------------------------------------------------------ coroutines on loops

    def submit_coroutine(self, task_id: int, payload: bytes, buffers) -> None:
        # Announced always: with several threads the parent does not take the oldest task for
        # the running one (see _plain_thread).
        self._begin()
        self.announce_start(task_id)
        loop = self._loop()
        loop.call_soon_threadsafe(self._create, task_id, payload, buffers)

    def _loop(self) -> asyncio.AbstractEventLoop:
        if len(self.loops) < self.max_loops:
            from ._thread import EventLoopThread

            loop = EventLoopThread(f"ferropool-loop-{len(self.loops)}").loop
            self.loops.append(loop)
            return loop
        loop = self.loops[self.next_loop % len(self.loops)]
        self.next_loop += 1
        return loop

    def _create(self, task_id: int, payload: bytes, buffers) -> None:
        self.coroutines[task_id] = asyncio.get_running_loop().create_task(self._run(task_id, payload, buffers))

    async def _run(self, task_id: int, payload: bytes, buffers) -> None:
        start = _perf()
        try:
            fn, args, kwargs = loads(payload, buffers=buffers)
            result = await fn(*args, **kwargs)
            out, out_buffers, kind = *dumps_result(result), OK
        except asyncio.CancelledError:
            out, out_buffers, kind = b"", None, CANCEL  # stopped at the parent's request
        except BaseException as exc:
            out, out_buffers, kind = dumps_exception(exc), None, ERR
        finally:
            self.coroutines.pop(task_id, None)
        fn = args = kwargs = buffers = result = None
        self._answer(kind, task_id, out, _run_us(start), out_buffers)

    # ------------------------------------------------------------------ cancellation

    def cancel(self, task_id: int, stop: bool) -> None:
        """Acts on a ``Cancel`` frame for a task already handed out: skips it if it waits;
        with ``stop``, also cancels it if it is a running coroutine. A running plain task cannot
        be stopped here (the parent stops the whole worker if it does not end)."""
        if stop:
            for loop in self.loops:
                loop.call_soon_threadsafe(self._cancel_coroutine, task_id)
        with self.cond:
            skipped = task_id in self.waiting
            self.waiting.discard(task_id)
        if skipped:  # answered now: the parent may be waiting on it to report the cancel
            self._answer(CANCEL, task_id, b"", 0, None)

    def _cancel_coroutine(self, task_id: int) -> None:
        task = self.coroutines.get(task_id)
        if task is not None:
            task.cancel()


# ---------------------------------------------------------------------- the async initializer


class AsyncInitializer:
    """Runs an async initializer on a new event loop thread, the worker's loop from then on.

    ``started`` is what calling the initializer returned: a coroutine, awaited to the end, or an
    async generator, run to its first ``yield`` now and resumed by ``finish`` at ``Shutdown``
    (its code after ``yield`` is the cleanup). Raises what the initializer raised.
    """

    def __init__(self, started) -> None:
        from ._thread import EventLoopThread

        self.loop = EventLoopThread("ferropool-loop-0").loop
        self.generator = started if inspect.isasyncgen(started) else None
        asyncio.run_coroutine_threadsafe(self._start(started), self.loop).result()

    async def _start(self, started) -> None:
        if self.generator is None:
            await started
            return
        try:
            await self.generator.__anext__()
        except StopAsyncIteration:
            raise RuntimeError("an async generator initializer must yield once, before the worker's tasks") from None

    def run(self, coroutine):
        """Runs ``coroutine`` on the worker's loop; blocks until it is done, returns its result."""
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result()

    def finish(self) -> None:
        """Runs the initializer's cleanup (an async generator's code after ``yield``) on the
        worker's loop; prints its error, if any, to stderr (the parent relays it)."""
        if self.generator is None:
            return
        try:
            asyncio.run_coroutine_threadsafe(self._finish(), self.loop).result()
        except BaseException:
            print("ferropool: the async initializer's cleanup raised:", file=sys.stderr)
            traceback.print_exc()

    async def _finish(self) -> None:
        assert self.generator is not None
        try:
            await self.generator.__anext__()
        except StopAsyncIteration:
            return
        await self.generator.aclose()
        raise RuntimeError("an async generator initializer must yield only once")
