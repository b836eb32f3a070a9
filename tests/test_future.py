"""TaskFuture: the lazily created condition and its lock-free finish (by the result thread, in
``ProcessPoolEngine.deliver``) must never lose a wake-up, a callback or a result, whatever races
with the result thread (see ferropool/_future.py)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import random
import threading

import pytest

import helpers
from ferropool import TaskFuture
from ferropool._future import InterruptSafeCondition

RESULT_TIMEOUT = 30
N = 3000


def test_finish_before_anyone_waits_needs_no_condition(pool):
    futures = [pool.submit(helpers.mul, i, 7) for i in range(3)]
    pool.shutdown(wait=True)  # every result delivered, and nothing has touched the futures
    for i, f in enumerate(futures):
        assert "_lazy_condition" not in f.__dict__, "the result thread made a condition"
        assert (f.done(), f.result(), f.exception()) == (True, 7 * i, None)
        assert "_lazy_condition" not in f.__dict__, "reading a finished future creates nothing"


def test_a_waiter_that_came_first_is_woken_by_the_ordinary_path(make_pool, gate_factory):
    pool = make_pool(1)
    gate = gate_factory()
    pool.submit(helpers.wait_for, gate)
    f = pool.submit(helpers.mul, 1, 1)  # runs after the gate opens: one worker, in order
    started = threading.Event()
    got = []

    def wait():
        _ = f._condition  # what result() does first: make the condition
        started.set()
        got.append(f.result(timeout=RESULT_TIMEOUT))

    t = threading.Thread(target=wait)
    t.start()
    assert started.wait(RESULT_TIMEOUT)
    # The waiter has made the condition: the result thread must leave it to set_result, which
    # notifies.
    gate.set()
    t.join(RESULT_TIMEOUT)
    assert got == [1]


def test_wake_after_fast_finish_notifies_waiters_and_runs_callbacks():
    f = TaskFuture()
    calls = []
    f.add_done_callback(lambda fut: calls.append("cb"))  # creates the condition, state still PENDING
    waiter = cf._base._AllCompletedWaiter(1, stop_on_exception=False)
    f._waiters.append(waiter)
    f._result, f._state = 5, cf._base.FINISHED  # as engine.deliver would, had it lost the race
    f._wake_after_fast_finish()
    assert calls == ["cb"]
    assert waiter.event.is_set() and waiter.finished_futures == [f]


def test_many_threads_waiting_while_results_arrive(pool):
    futures = [pool.submit(helpers.mul, i, 2) for i in range(N)]
    errors = []

    def waiter(seed):
        order = list(range(N))
        random.Random(seed).shuffle(order)
        try:
            for i in order:
                assert futures[i].result(timeout=RESULT_TIMEOUT) == 2 * i
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=waiter, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(RESULT_TIMEOUT * 2)
    assert not any(t.is_alive() for t in threads), "a waiter was never woken"
    assert errors == []


def test_as_completed_and_wait_while_results_arrive(pool):
    futures = [pool.submit(helpers.mul, i, 1) for i in range(N)]
    seen = {f.result() for f in cf.as_completed(futures, timeout=RESULT_TIMEOUT)}
    assert seen == set(range(N))
    more = [pool.submit(helpers.mul, i, 1) for i in range(N)]
    done, not_done = cf.wait(more, timeout=RESULT_TIMEOUT)
    assert len(done) == N and not not_done


def test_every_callback_runs_exactly_once(pool):
    counts = [0] * N
    lock = threading.Lock()

    def bump(i):
        def cb(_):
            with lock:
                counts[i] += 1

        return cb

    futures = []
    for i in range(N):
        f = pool.submit(helpers.mul, i, 1)
        f.add_done_callback(bump(i))  # races with delivery: some finish before, some after
        futures.append(f)
    cf.wait(futures, timeout=RESULT_TIMEOUT)
    with lock:
        assert counts == [1] * N


def test_cancel_racing_with_delivery_never_strands_a_future(pool):
    futures = [pool.submit(helpers.mul, i, 1) for i in range(N)]
    cancelled = [f for f in futures[::3] if f.cancel()]
    _, not_done = cf.wait(futures, timeout=RESULT_TIMEOUT)
    assert not not_done, f"{len(not_done)} futures never finished"
    for i, f in enumerate(futures):
        assert f.cancelled() == (f in cancelled)
        if not f.cancelled():
            assert f.result(timeout=0) == i


def test_asyncio_awaits_task_futures(pool):
    async def main():
        return await asyncio.gather(*(asyncio.wrap_future(pool.submit(helpers.mul, i, 3)) for i in range(200)))

    assert asyncio.run(main()) == [3 * i for i in range(200)]


def _lose_the_lock_once(cond: threading.Condition) -> None:
    """Makes ``cond.wait`` raise KeyboardInterrupt where a Ctrl-C handled at its worst instant
    does: after it let go of the lock, before the ``try`` that takes it back."""
    release_save = cond._release_save  # type: ignore[attr-defined]
    armed = [True]

    def _release_save():
        state = release_save()
        if armed[0]:
            armed[0] = False
            raise KeyboardInterrupt
        return state

    cond._release_save = _release_save  # type: ignore[attr-defined]


def test_interrupt_safe_condition_gives_back_a_ctrl_c_as_itself():
    plain = threading.Condition()
    _lose_the_lock_once(plain)
    with pytest.raises(RuntimeError, match="un-acquired lock"):  # the standard library's wait
        with plain:
            plain.wait(RESULT_TIMEOUT)

    cond = InterruptSafeCondition()
    _lose_the_lock_once(cond)
    with pytest.raises(KeyboardInterrupt):
        with cond:
            cond.wait(RESULT_TIMEOUT)
    assert not cond._is_owned(), "the with block let go of the lock that wait took back"  # type: ignore[attr-defined]
    assert not cond._waiters, "the interrupted wait left its entry, which would take a notify()"  # type: ignore[attr-defined]
    # Usable as before: another thread takes it, waits, and is woken.
    woken = threading.Event()

    def waiter():
        with cond:
            ready.set()
            assert cond.wait_for(lambda: flag, RESULT_TIMEOUT)
        woken.set()

    flag = False
    ready = threading.Event()
    t = threading.Thread(target=waiter)
    t.start()
    assert ready.wait(RESULT_TIMEOUT)
    with cond:
        flag = True
        cond.notify()  # one: it must reach the real waiter
    assert woken.wait(RESULT_TIMEOUT)
    t.join(RESULT_TIMEOUT)
