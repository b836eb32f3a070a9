"""The asyncio API (``ferropool._asyncio``): ``await pool.run(...)``, ``pool.map_async`` and
``pool.map_unordered_async``, on every executor kind.

Rules as in the conformance suite: tasks block on :class:`helpers.Gate`, never on ``sleep``; every
``asyncio.run`` is bounded by ``asyncio.wait_for``; a task that is meant to be stopped blocks on a
gate that the teardown opens, so a failure to stop it cannot hang the suite.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures as cf
import doctest
import itertools
import os

import pytest

import helpers
from ferropool import TaskTimeoutError
from helpers import BLOCK, block_on, echo, mul, signal_and_wait

pytestmark = pytest.mark.ferropool_only("the asyncio API is ferropool's own")

#: Bound on each test's event loop.
T = 20.0


def arun(coro):
    """Runs ``coro`` in a fresh event loop, failing after ``T`` seconds."""
    return asyncio.run(asyncio.wait_for(coro, T))


async def off_loop(fn, *args):
    """Runs a blocking call (a gate wait) in the loop's default executor."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


def fail_on(x, bad):
    if x == bad:
        raise ValueError(f"item {x} failed")
    return x


# Items that ran, in this process (thread pools only): shows which queued tasks were cancelled.
_RAN: list = []


def record_then_block(value, started, release):
    _RAN.append(value)
    if value == BLOCK:
        started.set()
        helpers.wait_for(release)
    return value


async def open_when_started(started, release) -> str:
    """Opens ``release`` once a task has opened ``started``: a coroutine that can only run if
    the event loop is not blocked."""
    assert await off_loop(started.wait)
    release.set()
    return "opened"


def test_docstring_examples_run():
    from ferropool import _asyncio

    failures, tried = doctest.testmod(_asyncio, raise_on_error=False, verbose=False)
    assert tried >= 3 and failures == 0


# ------------------------------------------------------------------------- run


def test_run_returns_the_result(make_executor):
    pool = make_executor()

    async def main():
        return await pool.run(mul, 6, 7), await pool.run(helpers.capture, 1, key="v")

    assert arun(main()) == (42, ((1,), {"key": "v"}))


def test_run_raises_the_tasks_exception_at_the_await(make_executor):
    pool = make_executor()

    async def main():
        with pytest.raises(helpers.TaskError) as info:
            await pool.run(helpers.raise_task_error, 7, "seven")
        assert info.value.args == (7, "seven")
        return await pool.run(mul, 2, 3)  # the pool still works

    assert arun(main()) == 6


def test_run_does_not_block_the_event_loop(make_executor, make_gate):
    # The task waits for a gate that only another coroutine opens: if run blocked the loop,
    # that coroutine could not run and the task would time out waiting.
    pool = make_executor()
    started, release = make_gate(), make_gate()

    async def main():
        return await asyncio.gather(
            pool.run(signal_and_wait, started, release, "done"), open_when_started(started, release)
        )

    assert arun(main()) == ["done", "opened"]


def test_run_does_not_block_the_loop_when_submit_waits_for_max_pending(make_executor, executor_kind, make_gate):
    # max_pending=1: the second submit waits for the first task to finish, which waits for a
    # gate only a coroutine opens; so that submit must not run on the loop.
    pool = make_executor(max_workers=1, max_pending=1)
    started, release = make_gate(), make_gate()

    async def opener():
        await open_when_started(started, release)

    async def main():
        return await asyncio.gather(pool.run(signal_and_wait, started, release, 1), pool.run(mul, 2, 1), opener())

    assert arun(main()) == [1, 2, None]


@pytest.mark.parametrize("how", ["cancel", "wait_for", "timeout"])
def test_cancelling_the_awaiting_task_cancels_the_call(make_executor, executor_kind, make_gate, how):
    pool = make_executor(max_workers=1)
    started, release = make_gate(), make_gate()

    async def main():
        pid = await pool.run(os.getpid)
        call = pool.run(signal_and_wait, started, release)
        if how == "cancel":
            task = asyncio.ensure_future(call)
            assert await off_loop(started.wait)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        elif how == "wait_for":
            # Time-based: if the task had not started within the timeout, cancelling it took it
            # off the queue instead, which is also right (checked below).
            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(call, 1.0)
        else:
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(None) as deadline:
                    task = asyncio.ensure_future(call)
                    assert await off_loop(started.wait)
                    deadline.reschedule(asyncio.get_running_loop().time())  # expire now
                    await task
        return pid

    pid = arun(main())
    if executor_kind.stops_running_tasks and started.is_set():
        assert helpers.gone_within([pid], 5.0), "the worker running the cancelled call was not stopped"
    release.set()  # a thread cannot be stopped: let it finish
    assert arun(pool.run(mul, 3, 3)) == 9, "the pool is usable after the cancellation"


def test_run_raises_cancelled_error_when_the_pool_cancels_the_call(make_executor, make_gate):
    pool = make_executor(max_workers=1)
    started, release = make_gate(), make_gate()

    async def main():
        first = asyncio.ensure_future(pool.run(signal_and_wait, started, release, 1))
        assert await off_loop(started.wait)
        queued = asyncio.ensure_future(pool.run(mul, 2, 2))
        await asyncio.sleep(0)  # a yield, so that the queued call is submitted
        pool.shutdown(wait=False, cancel_futures=True)
        # The pool's cancellation is not the awaiting task's: it arrives as an ordinary error.
        with pytest.raises(cf.CancelledError):
            await queued
        release.set()
        await asyncio.gather(first, return_exceptions=True)

    arun(main())


def test_run_after_shutdown_raises_runtime_error(make_executor):
    pool = make_executor()
    pool.shutdown()

    async def main():
        with pytest.raises(RuntimeError):
            await pool.run(mul, 1, 1)
        with pytest.raises(RuntimeError):
            await pool.map_async(abs, [1]).__anext__()

    arun(main())


@pytest.mark.kinds("process")
def test_run_on_a_task_options_view_raises_task_timeout_at_the_await(make_executor, make_gate):
    pool = make_executor(max_workers=1)
    started = make_gate()

    async def main():
        pid = await pool.run(os.getpid)
        with pytest.raises(TaskTimeoutError):
            await pool.options(task_timeout=0.5).run(helpers.started_then_sleep, started, 3600)
        return pid

    pid = arun(main())
    assert helpers.gone_within([pid], 5.0)
    assert arun(pool.run(mul, 4, 4)) == 16


# ------------------------------------------------------------------- map_async


async def collect(aiterator):
    return [x async for x in aiterator]


@pytest.mark.parametrize("chunksize", [None, 1, 7])
def test_map_async_yields_in_input_order(make_executor, chunksize):
    pool = make_executor()
    got = arun(collect(pool.map_async(mul, range(500), range(1, 501), chunksize=chunksize)))
    assert got == [x * (x + 1) for x in range(500)]


def test_map_async_of_nothing_yields_nothing(make_executor):
    pool = make_executor()
    assert arun(collect(pool.map_async(abs, []))) == []
    assert arun(collect(pool.map_unordered_async(abs, []))) == []


def block_or_signal(value, release, reached):
    """Waits for ``release`` if ``value == BLOCK``, else opens ``reached``; returns ``value``."""
    if value == BLOCK:
        helpers.wait_for(release)
    else:
        reached.set()
    return value


def test_map_async_waits_for_an_earlier_item_in_order(make_executor, make_gate):
    pool = make_executor()
    release, reached = make_gate(), make_gate()

    async def main():
        results = pool.map_async(block_or_signal, [BLOCK, 1], itertools.repeat(release), itertools.repeat(reached))
        first = asyncio.ensure_future(results.__anext__())
        # The second item has run, the first is still blocked: nothing may be yielded yet.
        assert await off_loop(reached.wait)
        for _ in range(5):
            await asyncio.sleep(0)  # yields: let the second result land on the loop
        assert not first.done()
        release.set()
        return [await first] + [x async for x in results]

    assert arun(main()) == [BLOCK, 1]


def test_map_async_reads_its_input_lazily(make_executor):
    pool = make_executor()
    read = [0]

    def endless():
        for i in itertools.count():
            read[0] += 1
            yield i

    async def main():
        results = pool.map_async(abs, endless())
        await asyncio.sleep(0)
        assert read[0] == 0, "nothing is read before the first __anext__"
        got = []
        async for x in results:
            got.append(x)
            if len(got) == 1000:
                break
        return got

    assert arun(main()) == list(range(1000))
    # The input is read at most a bounded window ahead of the consumer, and no more once closed.
    from ferropool import _executor

    assert read[0] <= 1000 + 2 * _executor.window_for(2) * _executor.MAX_CHUNK


def test_map_async_accepts_async_iterables(make_executor):
    pool = make_executor()

    async def numbers(n):
        for i in range(n):
            if i % 10 == 0:
                await asyncio.sleep(0)  # a real suspension point, not synchronisation
            yield i

    async def main():
        a = await collect(pool.map_async(abs, numbers(300)))
        b = await collect(pool.map_async(mul, numbers(300), range(100)))  # zip with a plain one
        c = sorted(await collect(pool.map_unordered_async(abs, numbers(300))))
        return a, b, c

    a, b, c = arun(main())
    assert a == c == list(range(300))
    assert b == [i * i for i in range(100)]


@pytest.mark.parametrize("chunksize", [None, 1, 3])
def test_map_async_raises_at_the_failing_item(make_executor, chunksize):
    pool = make_executor()

    async def main():
        results = pool.map_async(fail_on, range(20), itertools.repeat(5), chunksize=chunksize)
        got = []
        with pytest.raises(ValueError, match="item 5 failed"):
            async for x in results:
                got.append(x)
        with pytest.raises(StopAsyncIteration):  # the iterator is closed after an error
            await results.__anext__()
        return got

    assert arun(main()) == [0, 1, 2, 3, 4]


def test_map_async_raises_the_inputs_error_in_order(make_executor):
    pool = make_executor()

    def broken():
        yield from range(30)
        raise KeyError("input")

    async def main():
        got = []
        with pytest.raises(KeyError, match="input"):
            async for x in pool.map_async(abs, broken()):
                got.append(x)
        return got

    assert arun(main()) == list(range(30))


def test_map_unordered_async_yields_every_item_exactly_once(make_executor):
    pool = make_executor()
    got = arun(collect(pool.map_unordered_async(echo, range(2000))))
    assert collections.Counter(got) == collections.Counter(range(2000))


def test_map_unordered_async_yields_finished_items_first(make_executor, make_gate):
    pool = make_executor()
    gate = make_gate()

    async def main():
        got = []
        async for x in pool.map_unordered_async(block_on, [BLOCK, *range(20)], itertools.repeat(gate)):
            # Later items arrive while the first is blocked. (Not necessarily all of them: a
            # process pool may have queued some at the blocked worker.)
            got.append(x)
            gate.set()
        return got

    got = arun(main())
    assert got[0] != BLOCK
    assert collections.Counter(got) == collections.Counter([BLOCK, *range(20)])


def test_map_unordered_async_raises_when_the_failing_item_arrives(make_executor):
    pool = make_executor()

    async def main():
        got = []
        with pytest.raises(ValueError, match="item 7 failed"):
            async for x in pool.map_unordered_async(fail_on, range(40), itertools.repeat(7), chunksize=1):
                got.append(x)
        return got

    got = arun(main())
    assert 7 not in got and len(got) == len(set(got))


@pytest.mark.parametrize("how", ["break", "aclose", "async-with", "cancel-consumer"])
def test_closing_map_async_cancels_what_is_outstanding(make_executor, executor_kind, make_gate, how):
    # One worker: the first BLOCK item runs, the rest of the window waits in the queue.
    pool = make_executor(max_workers=1)
    started, release = make_gate(), make_gate()
    _RAN.clear()
    items = [0] + [BLOCK] * 30

    async def consume(results):
        async for x in results:
            assert x == 0
            if how == "cancel-consumer":
                continue  # on to wait for the blocked item, until cancelled
            assert await off_loop(started.wait)
            if how == "break":
                break
            if how == "aclose":
                await results.aclose()
                with pytest.raises(StopAsyncIteration):
                    await results.__anext__()
                return
            if how == "async-with":
                return

    async def main():
        pid = await pool.run(os.getpid)
        results = pool.map_async(
            record_then_block, items, itertools.repeat(started), itertools.repeat(release), chunksize=1
        )
        if how == "async-with":
            async with results:
                await consume(results)
        elif how == "cancel-consumer":
            task = asyncio.ensure_future(consume(results))
            assert await off_loop(started.wait)
            await asyncio.sleep(0)  # a yield: let the consumer reach its next __anext__
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        else:
            await consume(results)
            # ``async for`` does not close an iterator it leaves; dropping it does (as for map).
            del results
        if executor_kind.stops_running_tasks:
            assert await off_loop(helpers.gone_within, [pid], 5.0), (
                "the worker running an outstanding chunk was not stopped"
            )

    arun(main())
    release.set()
    assert arun(pool.run(mul, 5, 5)) == 25, "the pool is usable after closing the iterator"
    if not executor_kind.is_process:
        helpers.shutdown_bounded(pool, wait=True)
        assert _RAN == [0, BLOCK], "queued chunks were cancelled, not run"


@pytest.mark.kinds("process")
def test_map_async_on_a_task_options_view_raises_task_timeout_at_the_item(make_executor):
    pool = make_executor()

    async def main():
        got = []
        with pytest.raises(TaskTimeoutError):
            async for x in pool.options(task_timeout=0.5).map_async(
                helpers.sleep_and_return, [0, 0, 3600, 0], range(4)
            ):
                got.append(x)
        return got

    assert arun(main()) == [0, 1]


def test_map_async_never_blocks_the_event_loop(make_executor, make_gate):
    # A ticker on the same loop keeps running while every worker is busy with a blocked item.
    pool = make_executor()
    started, release = make_gate(), make_gate()

    async def main():
        values = [BLOCK] * 4
        return await asyncio.gather(
            collect(pool.map_async(record_then_block, values, itertools.repeat(started), itertools.repeat(release))),
            open_when_started(started, release),
        )

    assert arun(main()) == [[BLOCK] * 4, "opened"]
