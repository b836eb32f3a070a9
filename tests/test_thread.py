"""Tests of ferropool.ThreadPool (python/ferropool/_thread.py) and its Rust ThreadWorkQueue."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import subprocess
import sys
import threading
from concurrent.futures.thread import BrokenThreadPool
from typing import ClassVar

import pytest

from ferropool import ThreadPool
from ferropool._core import ThreadWorkQueue

# Bound for every wait that should finish; a lost wake-up fails the test instead of hanging it.
BOUND = 10


def add_one(x):
    return x + 1


@pytest.fixture
def pool():
    p = ThreadPool(4)
    yield p
    p.shutdown(wait=True, cancel_futures=True)
    for t in p._threads:
        t.join(BOUND)
        assert not t.is_alive(), f"{t.name} outlived shutdown"


def test_submit_returns_plain_future_with_result(pool):
    f = pool.submit(add_one, 41)
    assert type(f) is cf.Future
    assert f.result(BOUND) == 42


def test_kwargs_reach_the_call(pool):
    assert pool.submit(dict, a=1, b=2).result(BOUND) == {"a": 1, "b": 2}
    assert pool.submit(sorted, [3, 1, 2], reverse=True).result(BOUND) == [3, 2, 1]


def test_map(pool):
    assert list(pool.map(add_one, range(100), timeout=BOUND)) == list(range(1, 101))
    assert list(pool.map(pow, [2, 3], [5, 2], timeout=BOUND)) == [32, 9]


def test_tasks_queued_once_every_thread_runs_are_waited_for_by_shutdown():
    # With max_workers threads started, submit queues without the pool's lock: shutdown must
    # still run (and wait for) everything queued before it, and refuse what comes after.
    pool = ThreadPool(2)
    gate = threading.Event()
    busy = [pool.submit(gate.wait, BOUND) for _ in range(2)]
    queued = [pool.submit(add_one, i) for i in range(50)]
    gate.set()
    pool.shutdown(wait=True)
    assert all(f.done() for f in busy + queued)
    assert [f.result() for f in queued] == list(range(1, 51))
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(add_one, 1)


def test_exceptions_propagate_with_original_type(pool):
    def boom():
        raise KeyError("missing")

    with pytest.raises(KeyError, match="missing"):
        pool.submit(boom).result(BOUND)
    # The worker thread survives the exception.
    assert pool.submit(add_one, 1).result(BOUND) == 2


@pytest.mark.parametrize("exc_type", [SystemExit, KeyboardInterrupt])
def test_base_exception_lands_on_future(exc_type):
    def leave():
        raise exc_type("bye")

    with ThreadPool(1) as p:
        f = p.submit(leave)
        assert isinstance(f.exception(BOUND), exc_type)
        # As in the standard library, the worker thread goes on running tasks.
        assert p.submit(add_one, 1).result(BOUND) == 2


def test_thread_names_start_with_prefix():
    with ThreadPool(2, thread_name_prefix="crunch") as p:
        name = p.submit(lambda: threading.current_thread().name).result(BOUND)
    assert name.startswith("crunch_")


def test_default_thread_names_are_distinct_per_pool():
    with ThreadPool(1) as a, ThreadPool(1) as b:
        na = a.submit(lambda: threading.current_thread().name).result(BOUND)
        nb = b.submit(lambda: threading.current_thread().name).result(BOUND)
    assert na != nb and na.startswith("ThreadPool-")


def test_threads_start_lazily_and_are_reused():
    with ThreadPool(8) as p:
        assert p._threads == set()
        # Sequential tasks: each submit finds the previous thread idle, so one thread serves all.
        for i in range(50):
            assert p.submit(add_one, i).result(BOUND) == i + 1
            assert p._queue.wait_idle(1, BOUND)
        assert len(p._threads) == 1


def test_a_submit_right_after_result_reuses_the_thread():
    # The worker counts as free from just before it publishes the outcome, so the caller that
    # result() wakes finds it, with no wait for idleness in between (CPython's
    # test_idle_thread_reuse).
    # Fresh pools: the race this guards against showed right after the first thread started.
    for _ in range(20):
        with ThreadPool(8) as p:
            for i in range(3):
                assert p.submit(add_one, i).result(BOUND) == i + 1
            assert len(p._threads) == 1


def test_threads_grow_to_max_workers_under_blocked_tasks():
    n = 3
    barrier = threading.Barrier(n + 1, timeout=BOUND)
    with ThreadPool(n) as p:
        fs = [p.submit(barrier.wait) for _ in range(n)]
        barrier.wait()  # only passes if n tasks run at once, on n threads
        cf.wait(fs, timeout=BOUND)
        assert len(p._threads) == n
        # Never more than max_workers, however many tasks queue up.
        more = [p.submit(add_one, i) for i in range(100)]
        assert [f.result(BOUND) for f in more] == list(range(1, 101))
        assert len(p._threads) == n


def test_max_workers_validation_and_default():
    with pytest.raises(ValueError):
        ThreadPool(0)
    with pytest.raises(ValueError):
        ThreadPool(-1)
    with pytest.raises(TypeError):
        ThreadPool(1, initializer=42)
    p = ThreadPool()
    assert 5 <= p._max_workers <= 32
    p.shutdown()


def test_initializer_runs_in_each_thread():
    seen = []
    with ThreadPool(1, initializer=seen.append, initargs=("ready",)) as p:
        assert p.submit(lambda: list(seen)).result(BOUND) == ["ready"]


def test_initializer_failure_breaks_pool():
    gate = threading.Event()

    def bad_init():
        gate.wait(BOUND)  # let the submits below queue up first
        raise ValueError("no")

    p = ThreadPool(1, initializer=bad_init)
    try:
        fs = [p.submit(add_one, i) for i in range(5)]
        gate.set()
        for f in fs:
            with pytest.raises(BrokenThreadPool) as info:
                f.result(BOUND)
            assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(BrokenThreadPool) as info:
            p.submit(add_one, 1)
        assert str(info.value.__cause__) == "no"
    finally:
        p.shutdown(wait=True)


def test_submit_after_shutdown_raises():
    p = ThreadPool(2)
    p.submit(add_one, 1).result(BOUND)
    p.shutdown()
    with pytest.raises(RuntimeError, match="cannot schedule new futures after shutdown"):
        p.submit(add_one, 1)
    p.shutdown()  # a second shutdown is harmless


def test_shutdown_waits_for_queued_tasks():
    gate = threading.Event()
    p = ThreadPool(1)
    first = p.submit(gate.wait, BOUND)
    rest = [p.submit(add_one, i) for i in range(20)]
    gate.set()
    p.shutdown(wait=True)
    assert first.result(0) is True
    assert [f.result(0) for f in rest] == list(range(1, 21))


def test_shutdown_cancel_futures_cancels_queued_only():
    started, gate = threading.Event(), threading.Event()

    def block():
        started.set()
        return gate.wait(BOUND)

    p = ThreadPool(1)
    running = p.submit(block)
    assert started.wait(BOUND)
    queued = [p.submit(add_one, i) for i in range(10)]
    gate.set()
    p.shutdown(wait=True, cancel_futures=True)
    assert running.result(0) is True
    assert all(f.cancelled() for f in queued)


def test_cancelled_future_is_skipped():
    started, gate = threading.Event(), threading.Event()
    calls = []

    def block():
        started.set()
        gate.wait(BOUND)

    with ThreadPool(1) as p:
        p.submit(block)
        assert started.wait(BOUND)
        f = p.submit(calls.append, 1)
        assert f.cancel()
        gate.set()
    assert calls == []


def test_waiters_and_callbacks_on_a_running_future_are_notified(pool):
    # The worker finishes a future without calling its methods only when nobody waits on it;
    # here everyone is already waiting when it finishes.
    started, gate = threading.Event(), threading.Event()

    def block():
        started.set()
        gate.wait(BOUND)
        return "done"

    f = pool.submit(block)
    assert started.wait(BOUND)
    called = threading.Event()
    f.add_done_callback(lambda fut: called.set())
    waiting = threading.Event()
    results = []

    def wait_result():
        waiting.set()
        results.append(f.result(BOUND))

    t = threading.Thread(target=wait_result)
    t.start()
    assert waiting.wait(BOUND)
    gate.set()
    done, _ = cf.wait([f], timeout=BOUND)
    t.join(BOUND)
    assert f in done and called.wait(BOUND) and results == ["done"]


def test_future_subclass_goes_through_its_methods():
    class Recording(cf.Future):
        calls: ClassVar[list[str]] = []  # shared: the test reads it on the class

        def set_running_or_notify_cancel(self):
            self.calls.append("running")
            return super().set_running_or_notify_cancel()

        def set_result(self, result):
            self.calls.append("result")
            super().set_result(result)

    q = ThreadWorkQueue(1)
    f = Recording()
    q.put(f, add_one, (1,))
    q.close()
    q.run_worker()
    assert f.result(0) == 2 and Recording.calls == ["running", "result"]


def test_many_submitters_lose_no_result():
    submitters, per = 8, 2000
    barrier = threading.Barrier(submitters, timeout=BOUND)
    with ThreadPool(4) as p:

        def submit_many(k):
            barrier.wait()
            return [p.submit(add_one, k * per + i) for i in range(per)]

        with cf.ThreadPoolExecutor(submitters) as outer:
            batches = list(outer.map(submit_many, range(submitters), timeout=BOUND))
        results = sorted(f.result(BOUND) for batch in batches for f in batch)
    assert results == list(range(1, submitters * per + 1))


def test_wait_and_as_completed(pool):
    fs = [pool.submit(add_one, i) for i in range(50)]
    done, not_done = cf.wait(fs, timeout=BOUND)
    assert not not_done and len(done) == 50
    fs = [pool.submit(add_one, i) for i in range(50)]
    assert sorted(f.result() for f in cf.as_completed(fs, timeout=BOUND)) == list(range(1, 51))
    gate = threading.Event()
    blocker = pool.submit(gate.wait, BOUND)
    quick = pool.submit(add_one, 0)
    done, _ = cf.wait([blocker, quick], timeout=BOUND, return_when=cf.FIRST_COMPLETED)
    assert quick in done
    gate.set()


def test_asyncio_interop():
    async def main(p):
        loop = asyncio.get_running_loop()
        a = await asyncio.wrap_future(p.submit(add_one, 1))
        b = await loop.run_in_executor(p, add_one, 2)
        c = await asyncio.gather(*(loop.run_in_executor(p, add_one, i) for i in range(20)))
        return a, b, c

    with ThreadPool(2) as p:
        a, b, c = asyncio.run(asyncio.wait_for(main(p), BOUND))
    assert (a, b, c) == (2, 3, list(range(1, 21)))


def test_done_callbacks_run(pool):
    got = threading.Event()
    f = pool.submit(add_one, 1)
    f.add_done_callback(lambda fut: got.set())
    assert got.wait(BOUND)


def test_forgotten_pool_threads_exit():
    p = ThreadPool(2)
    assert p.submit(add_one, 1).result(BOUND) == 2
    threads = list(p._threads)
    del p  # the weak reference's callback closes the queue; threads drain it and exit
    for t in threads:
        t.join(BOUND)
        assert not t.is_alive()


def test_interpreter_exit_runs_queued_tasks():
    code = """
import threading
from ferropool import ThreadPool
gate = threading.Event()
p = ThreadPool(1)
p.submit(gate.wait, 10)
fs = [p.submit(print, "task", i, flush=True) for i in range(3)]
gate.set()
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=BOUND)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["task 0", "task 1", "task 2"]


class TestThreadWorkQueue:
    def test_put_get_close(self):
        q = ThreadWorkQueue(2)
        fut = cf.Future()
        assert q.put(fut, add_one, (1,), {}) is True  # nobody idle: start a thread
        assert len(q) == 1 and q.threads == 1
        assert q.get(timeout=0) == (fut, add_one, (1,), {})
        with pytest.raises(TimeoutError):
            q.get(timeout=0.01)
        q.close()
        assert q.closed and q.get() is None
        with pytest.raises(RuntimeError):
            q.put(fut, add_one, ())

    def test_put_reserves_at_most_max_threads(self):
        q = ThreadWorkQueue(2)
        starts = [q.put(cf.Future(), add_one, (i,)) for i in range(5)]
        assert starts == [True, True, False, False, False]
        assert [t[2] for t in q.drain()] == [(i,) for i in range(5)]

    def test_close_wakes_blocked_get(self):
        q = ThreadWorkQueue(1)
        got = []
        t = threading.Thread(target=lambda: got.append(q.get(timeout=BOUND)))
        t.start()
        assert q.wait_idle(1, BOUND)
        q.close()
        t.join(BOUND)
        assert got == [None]

    def test_idle_waiter_absorbs_put(self):
        q = ThreadWorkQueue(4)
        t = threading.Thread(target=q.run_worker)
        t.start()
        assert q.wait_idle(1, BOUND)
        fut = cf.Future()
        assert q.put(fut, add_one, (1,)) is False  # the idle worker takes it
        assert fut.result(BOUND) == 2
        q.close()
        t.join(BOUND)
        assert not t.is_alive()

    def test_run_worker_reports_broken_future_and_goes_on(self):
        q = ThreadWorkQueue(1)
        done = cf.Future()
        done.set_result(None)  # set_running_or_notify_cancel raises on a finished future
        good = cf.Future()
        q.put(done, add_one, (1,))
        q.put(good, add_one, (1,))
        q.close()
        seen = []
        old, sys.unraisablehook = sys.unraisablehook, seen.append
        try:
            q.run_worker()
        finally:
            sys.unraisablehook = old
        assert good.result(0) == 2
        assert len(seen) == 1 and isinstance(seen[0].exc_value, RuntimeError)


# ------------------------------------------------------------------ backpressure


def test_max_pending_blocks_submit_until_a_task_finishes():
    release = threading.Event()
    p = ThreadPool(1, max_pending=3)
    submitted = []
    producer_blocked = threading.Event()

    def produce():
        for i in range(10):
            if len(submitted) == 3:
                producer_blocked.set()  # the next submit must block
            submitted.append(p.submit(lambda i=i: release.wait(BOUND) and i))

    t = threading.Thread(target=produce)
    try:
        t.start()
        assert producer_blocked.wait(BOUND)
        t.join(0.2)
        assert t.is_alive() and len(submitted) == 3, "submit went past max_pending unfinished tasks"
        release.set()
        t.join(BOUND)
        assert [f.result(BOUND) for f in submitted] == list(range(10))
    finally:
        release.set()
        p.shutdown(wait=True)


def test_shutdown_releases_a_submit_blocked_by_max_pending():
    release = threading.Event()
    p = ThreadPool(1, max_pending=1)
    first = p.submit(release.wait, BOUND)
    errors = []

    def blocked():
        try:
            p.submit(add_one, 1)
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=blocked)
    t.start()
    p.shutdown(wait=False)
    t.join(BOUND)
    assert not t.is_alive() and len(errors) == 1 and "shutdown" in str(errors[0])
    release.set()
    assert first.result(BOUND) is True
    p.shutdown(wait=True)


def test_cancelled_tasks_give_their_place_back():
    release = threading.Event()
    with ThreadPool(1, max_pending=2) as p:
        running = p.submit(release.wait, BOUND)
        queued = p.submit(add_one, 1)
        assert queued.cancel()
        more = p.submit(add_one, 2)  # would block forever had the cancelled task kept its place
        release.set()
        assert running.result(BOUND) is True and more.result(BOUND) == 3


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-2, ValueError), (1.5, TypeError), (True, TypeError)])
def test_max_pending_must_be_a_positive_integer(bad, exc):
    with pytest.raises(exc, match="max_pending"):
        ThreadPool(1, max_pending=bad)


# ------------------------------------------------------------------ coroutine functions


async def meet_at(barrier, x):
    await asyncio.wait_for(barrier.wait(), BOUND)  # passes only if all parties run at once
    return x


async def wait_for_event(event):
    await event.wait()
    return "set"


async def fail_async(text):
    await asyncio.sleep(0)
    raise KeyError(text)


def test_coroutine_functions_are_awaited_on_the_pools_event_loop():
    with ThreadPool(2) as p:
        barrier = asyncio.Barrier(50)  # more parties than threads: only an event loop runs them at once
        futures = [p.submit(meet_at, barrier, i) for i in range(50)]
        assert all(type(f) is cf.Future for f in futures)
        assert [f.result(BOUND) for f in futures] == list(range(50))
        with pytest.raises(KeyError, match="async failure"):
            p.submit(fail_async, "async failure").result(BOUND)


def test_cancelling_a_coroutine_future_cancels_the_coroutine_and_shutdown_waits_for_the_rest():
    p = ThreadPool(1)
    event = asyncio.Event()
    blocked = p.submit(wait_for_event, event)
    assert blocked.cancel()
    with pytest.raises(cf.CancelledError):
        blocked.result(BOUND)
    other = p.submit(wait_for_event, event)
    p._loop.loop.call_soon_threadsafe(event.set)
    p.shutdown(wait=True)
    assert other.result(0) == "set"
    with pytest.raises(RuntimeError):
        p.submit(wait_for_event, event)


def test_shutdown_with_cancel_futures_cancels_waiting_coroutines():
    p = ThreadPool(1)
    f = p.submit(wait_for_event, asyncio.Event())
    p.shutdown(wait=True, cancel_futures=True)
    assert f.cancelled()


INHERITED_THROUGH_FORK = """
import multiprocessing, os, threading
from ferropool import ThreadPool

pool = ThreadPool(2)
assert pool.submit(threading.get_ident).result(timeout=30)

def child(q):
    try:
        pool.submit(os.getpid)
        q.put("accepted")  # its threads stayed in the parent: it would never run
    except RuntimeError as e:
        q.put(str(e))
    pool.shutdown()  # the parent's threads: nothing to join here
    with ThreadPool(2) as mine:
        q.put(sum(mine.map(abs, range(-3, 3))))

ctx = multiprocessing.get_context("fork")
q = ctx.Queue()
p = ctx.Process(target=child, args=(q,))
p.start()
print(q.get(timeout=30))
print(q.get(timeout=30))
p.join(30)
print("child exit code", p.exitcode)
print("parent pool", pool.submit(abs, -7).result(timeout=30))
pool.shutdown()
"""


def test_a_pool_inherited_through_fork_refuses_work_and_a_new_one_works(tmp_path):
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", INHERITED_THROUGH_FORK], capture_output=True, text=True, timeout=45, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("this ThreadPool was created in process ") and "inherited through fork" in lines[0]
    assert lines[1:] == ["9", "child exit code 0", "parent pool 7"]
