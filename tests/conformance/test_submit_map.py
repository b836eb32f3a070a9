"""Conformance suite: every ``concurrent.futures.Executor`` behaviour x every executor kind.

Modelled on CPython's ``Lib/test/test_concurrent_futures/`` (executor.py,
test_wait.py, test_as_completed.py, test_shutdown.py, test_init.py,
test_process_pool.py, test_thread_pool.py): the facts are theirs, the code is
ours. Run against the reference implementation with
``FERROPOOL_CONFORMANCE_TARGET=stdlib``; see ``conftest.py``.

Rules: tasks block on :class:`helpers.Gate` (never ``sleep`` to synchronise),
every wait is bounded, every gate is opened in ``finally`` and again at
teardown.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import itertools
import os
import re
import subprocess
import sys
import textwrap
import threading
import traceback
import weakref

import pytest

import helpers
from helpers import (
    BLOCK,
    INIT_ERROR_TEXT,
    TaskError,
    block_on,
    capture,
    mul,
    raise_value_error,
    shutdown_bounded,
    signal_and_wait,
    sleep_and_return,
    wait_for,
    wait_then_raise,
)

#: Bound on any single result()/wait() in this file.
T = 10.0


# ----------------------------------------------------------- finished futures
# Stand-alone futures in each terminal state, built through the public API
# (CPython's util.py pokes at private state instead).


def successful_future(value=42) -> cf.Future:
    f = cf.Future()
    f.set_result(value)
    return f


def exception_future() -> cf.Future:
    f = cf.Future()
    f.set_exception(OSError("already failed"))
    return f


def cancelled_future() -> cf.Future:
    """Cancelled but not yet notified: ``wait`` counts it as not done."""
    f = cf.Future()
    assert f.cancel()
    return f


def cancelled_notified_future() -> cf.Future:
    f = cancelled_future()
    assert not f.set_running_or_notify_cancel()
    return f


def warm_up(executor, n: int) -> None:
    """Run ``n`` concurrent no-op tasks so that lazily started workers exist."""
    fs = [executor.submit(mul, i, 1) for i in range(n)]
    assert [f.result(timeout=T) for f in fs] == list(range(n))


# ---------------------------------------------------------------------- submit


def test_submit(make_executor):
    ex = make_executor()
    assert ex.submit(pow, 2, 8).result(timeout=T) == 256


def test_submit_returns_concurrent_futures_future(make_executor):
    ex = make_executor()
    f = ex.submit(mul, 2, 3)
    assert isinstance(f, cf.Future)
    assert f.result(timeout=T) == 6


def test_submit_keyword_arguments(make_executor):
    ex = make_executor()
    assert ex.submit(mul, 2, y=8).result(timeout=T) == 16
    # `fn` is positional-only: the names "fn" and "self" reach the function.
    f = ex.submit(capture, 1, self=2, fn=3)
    assert f.result(timeout=T) == ((1,), {"self": 2, "fn": 3})


def test_submit_fn_only_positional(make_executor):
    ex = make_executor()
    with pytest.raises(TypeError):
        ex.submit(fn=capture, arg=1)
    with pytest.raises(TypeError):
        ex.submit(arg=1)


def test_runs_in_a_worker(make_executor, executor_kind):
    ex = make_executor()
    pid, tid = ex.submit(helpers.where).result(timeout=T)
    if executor_kind.is_process:
        assert pid != os.getpid()
    else:
        assert pid == os.getpid()
        assert tid != threading.get_ident()


# ------------------------------------------------------------------------- map


def test_map_preserves_order(make_executor):
    ex = make_executor()
    assert list(ex.map(pow, range(10), range(10))) == list(map(pow, range(10), range(10)))
    assert list(ex.map(pow, range(10), range(10), chunksize=3)) == list(map(pow, range(10), range(10)))


def test_map_order_when_tasks_finish_out_of_order(make_executor):
    ex = make_executor(max_workers=3)
    # The first item takes longest; results must still come in input order.
    delays = [0.3, 0.0, 0.1, 0.0, 0.05]
    assert list(ex.map(sleep_and_return, delays, range(5))) == [0, 1, 2, 3, 4]


def test_map_several_iterables_stops_at_shortest(make_executor):
    ex = make_executor()
    assert list(ex.map(pow, [2, 3, 4], [5, 6])) == [32, 729]
    assert list(ex.map(mul, "ab", itertools.repeat(3))) == ["aaa", "bbb"]


def test_map_empty_iterable(make_executor):
    ex = make_executor()
    assert list(ex.map(mul, [], [])) == []
    assert list(ex.map(abs, iter(()))) == []


def test_map_exception_raised_when_its_item_is_reached(make_executor):
    ex = make_executor()
    it = ex.map(divmod, [1, 1, 1, 1], [2, 3, 0, 5])
    assert next(it) == (0, 1)
    assert next(it) == (1 // 3, 1 % 3)
    with pytest.raises(ZeroDivisionError):
        next(it)


def test_map_timeout(make_executor, make_gate):
    ex = make_executor(max_workers=3)
    warm_up(ex, 3)
    gate = make_gate()
    results = []
    try:
        with pytest.raises(cf.TimeoutError):
            for value in ex.map(block_on, [1, 2, BLOCK], itertools.repeat(gate), timeout=2):
                results.append(value)
    finally:
        gate.set()
    assert results == [1, 2]


@pytest.mark.parametrize("chunksize", [1, 3, 6, 40, 50])
def test_map_chunksize(make_executor, chunksize):
    ex = make_executor()
    expected = list(map(pow, range(40), range(40)))
    assert list(ex.map(pow, range(40), range(40), chunksize=chunksize)) == expected


@pytest.mark.kinds("process")
@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_chunksize_below_one_raises_value_error(make_executor, chunksize):
    ex = make_executor()
    with pytest.raises(ValueError):
        list(ex.map(pow, range(40), range(40), chunksize=chunksize))


@pytest.mark.ferropool_only(reason="stdlib Executor.map submits the whole input before returning (no lazy input)")
def test_map_consumes_generator_lazily(make_executor):
    ex = make_executor()
    first_result_seen = threading.Event()
    produced = []

    def numbers():
        for i in range(3):
            produced.append(i)
            yield i
        # An eager map blocks here until the timeout, and no result comes first.
        produced.append(("first result seen before input ran out", first_result_seen.wait(5)))
        for i in range(3, 6):
            produced.append(i)
            yield i

    it = ex.map(abs, numbers(), chunksize=1)
    try:
        first = next(it)
    finally:
        first_result_seen.set()
    rest = list(it)
    assert [first, *rest] == [0, 1, 2, 3, 4, 5]
    assert ("first result seen before input ran out", True) in produced


@pytest.mark.ferropool_only(
    reason="stdlib Executor.map reads its whole input before returning (never ends on an endless one)"
)
def test_map_reads_ahead_boundedly_on_endless_input(make_executor):
    ex = make_executor()
    limit = 100_000
    pulled = []

    def endless():
        for i in itertools.count():
            if i >= limit:  # an eager map reaches this inside map() itself
                raise AssertionError(f"map read {limit} items ahead of the consumer")
            pulled.append(i)
            yield i

    it = ex.map(abs, endless())
    try:
        assert list(itertools.islice(it, 5)) == [0, 1, 2, 3, 4]
    finally:
        it.close()
    assert len(pulled) < limit


def test_map_does_not_keep_results(make_executor):
    # CPython issue 14406: the result iterator must not keep a reference to
    # results it has already yielded.
    ex = make_executor()
    for obj in ex.map(helpers.make_dummy_object, range(10)):
        ref = weakref.ref(obj)
        del obj
        gc.collect()
        assert ref() is None


def test_map_without_iterating_then_shutdown(make_executor):
    # CPython issue 12456: shutdown must not hang with map work in flight.
    ex = make_executor()
    ex.map(str, [2] * 3)
    shutdown_bounded(ex, wait=True)


# ------------------------------------------------------------------------ wait


def test_wait_duplicate_futures(make_executor):
    # CPython issue 20369.
    ex = make_executor()
    f = ex.submit(mul, 1, 2)
    done, not_done = cf.wait([f, f], timeout=T, return_when=cf.ALL_COMPLETED)
    assert done == {f}
    assert not_done == set()


def test_wait_first_completed(make_executor, make_gate):
    ex = make_executor(max_workers=2)
    gate = make_gate()
    cancelled = cancelled_future()
    f1 = ex.submit(mul, 21, 2)
    f2 = ex.submit(wait_for, gate)
    try:
        done, not_done = cf.wait([cancelled, f1, f2], timeout=T, return_when=cf.FIRST_COMPLETED)
        assert done == {f1}
        assert not_done == {cancelled, f2}
    finally:
        gate.set()
    assert f2.result(timeout=T) is None


def test_wait_first_completed_some_already_completed(make_executor, make_gate):
    ex = make_executor()
    gate = make_gate()
    notified, success = cancelled_notified_future(), successful_future()
    f1 = ex.submit(wait_for, gate)
    try:
        done, not_done = cf.wait([notified, success, f1], timeout=T, return_when=cf.FIRST_COMPLETED)
        assert done == {notified, success}
        assert not_done == {f1}
    finally:
        gate.set()
    f1.result(timeout=T)


def test_wait_first_exception(make_executor, make_gate):
    ex = make_executor(max_workers=3)
    raise_gate, block_gate = make_gate(), make_gate()
    try:
        f1 = ex.submit(mul, 2, 21)
        f2 = ex.submit(wait_then_raise, raise_gate)
        f3 = ex.submit(wait_for, block_gate)

        def release_f2_after_f1():  # f1 must finish before f2 raises
            try:
                f1.result(timeout=T)
            finally:
                raise_gate.set()

        helper = threading.Thread(target=release_f2_after_f1)
        helper.start()
        done, not_done = cf.wait([f1, f2, f3], timeout=T, return_when=cf.FIRST_EXCEPTION)
        helper.join(T)
        assert not helper.is_alive()
        assert done == {f1, f2}
        assert not_done == {f3}
    finally:
        raise_gate.set()
        block_gate.set()
    f3.result(timeout=T)


def test_wait_first_exception_some_already_complete(make_executor, make_gate):
    ex = make_executor()
    gate = make_gate()
    success, cancelled, notified = successful_future(), cancelled_future(), cancelled_notified_future()
    f1 = ex.submit(divmod, 21, 0)
    f2 = ex.submit(wait_for, gate)
    try:
        done, not_done = cf.wait([success, cancelled, notified, f1, f2], timeout=T, return_when=cf.FIRST_EXCEPTION)
        assert done == {success, notified, f1}
        assert not_done == {cancelled, f2}
    finally:
        gate.set()
    f2.result(timeout=T)


def test_wait_first_exception_one_already_failed(make_executor, make_gate):
    ex = make_executor()
    gate = make_gate()
    failed = exception_future()
    f1 = ex.submit(wait_for, gate)
    try:
        done, not_done = cf.wait([failed, f1], timeout=T, return_when=cf.FIRST_EXCEPTION)
        assert done == {failed}
        assert not_done == {f1}
    finally:
        gate.set()
    f1.result(timeout=T)


def test_wait_all_completed(make_executor):
    ex = make_executor()
    success, notified, failed = successful_future(), cancelled_notified_future(), exception_future()
    f1 = ex.submit(divmod, 2, 0)
    f2 = ex.submit(mul, 2, 21)
    done, not_done = cf.wait([success, notified, failed, f1, f2], timeout=T, return_when=cf.ALL_COMPLETED)
    assert done == {success, notified, failed, f1, f2}
    assert not_done == set()


def test_wait_timeout(make_executor, make_gate):
    ex = make_executor()
    gate = make_gate()
    notified, failed, success = cancelled_notified_future(), exception_future(), successful_future()
    f = ex.submit(wait_for, gate)
    try:
        done, not_done = cf.wait([notified, failed, success, f], timeout=0.05, return_when=cf.ALL_COMPLETED)
        assert done == {notified, failed, success}
        assert not_done == {f}
    finally:
        gate.set()
    f.result(timeout=T)


# ---------------------------------------------------------------- as_completed


def test_as_completed_no_timeout(make_executor):
    ex = make_executor()
    finished = {cancelled_notified_future(), exception_future(), successful_future()}
    f1, f2 = ex.submit(mul, 2, 21), ex.submit(mul, 7, 6)
    assert set(cf.as_completed(finished | {f1, f2}, timeout=T)) == finished | {f1, f2}
    assert f1.result() == f2.result() == 42


@pytest.mark.parametrize("timeout", [0, 0.1])
def test_as_completed_times_out(make_executor, make_gate, timeout):
    ex = make_executor()
    gate = make_gate()
    finished = {cancelled_notified_future(), exception_future(), successful_future()}
    f = ex.submit(wait_for, gate)
    yielded = set()
    try:
        with pytest.raises(cf.TimeoutError):
            for done in cf.as_completed(finished | {f}, timeout=timeout):
                yielded.add(done)
        assert yielded == finished
        assert not f.done()
    finally:
        gate.set()
    f.result(timeout=T)


def test_as_completed_duplicate_futures(make_executor):
    # CPython issues 20367 and 31641 (any iterable).
    ex = make_executor()
    f = ex.submit(sleep_and_return, 0.1, "x")
    assert list(cf.as_completed(itertools.repeat(f, 3), timeout=T)) == [f]


def test_as_completed_yields_in_completion_order(make_executor, make_gate):
    ex = make_executor()
    gate = make_gate()
    slow = ex.submit(wait_for, gate, "slow")
    fast = ex.submit(mul, 6, 7)
    order = []
    try:
        for f in cf.as_completed([slow, fast], timeout=T):
            order.append(f)
            gate.set()  # release `slow` only once `fast` has been yielded
    finally:
        gate.set()
    assert order == [fast, slow]


def test_as_completed_mixes_with_other_executors_futures(make_executor):
    ex = make_executor()
    already = successful_future("done before")
    with cf.ThreadPoolExecutor(max_workers=1) as other:
        foreign = other.submit(mul, 3, 3)
        ours = ex.submit(mul, 4, 4)
        yielded = list(cf.as_completed([already, foreign, ours], timeout=T))
    assert set(yielded) == {already, foreign, ours}
    assert len(yielded) == 3
    assert (foreign.result(), ours.result()) == (9, 16)


# ------------------------------------------------------------------ exceptions


@pytest.mark.parametrize(
    "fn, arg, exc_type",
    [(raise_value_error, "boom", ValueError), (helpers.raise_key_error, "missing", KeyError)],
)
def test_exception_type_and_args(make_executor, fn, arg, exc_type):
    ex = make_executor()
    f = ex.submit(fn, arg)
    with pytest.raises(exc_type) as info:
        f.result(timeout=T)
    assert type(info.value) is exc_type
    assert info.value.args == (arg,)
    assert type(f.exception(timeout=T)) is exc_type


def test_user_exception_with_several_args(make_executor):
    ex = make_executor()
    with pytest.raises(TaskError) as info:
        ex.submit(helpers.raise_task_error, 3, "bad input").result(timeout=T)
    assert info.value.args == (3, "bad input")


def test_builtin_raising(make_executor):
    ex = make_executor()
    with pytest.raises(ZeroDivisionError):
        ex.submit(divmod, 1, 0).result(timeout=T)


@pytest.mark.kinds("process")
def test_remote_traceback_in_cause(make_executor, executor_kind):
    ex = make_executor()
    with pytest.raises(ValueError) as info:
        ex.submit(raise_value_error, "remote boom").result(timeout=T)
    exc = info.value
    assert exc.args == ("remote boom",)
    cause = exc.__cause__
    assert cause is not None, "the worker's traceback must be attached as __cause__"
    assert "raise_value_error" in str(cause)
    if executor_kind.is_stdlib:
        assert type(cause).__name__ == "_RemoteTraceback"
        assert "raise ValueError(text)" in str(cause)
    # What a user sees when the exception is printed.
    assert "raise_value_error" in "".join(traceback.format_exception(exc))


@pytest.mark.kinds("thread")
def test_thread_traceback_includes_task_frame(make_executor):
    ex = make_executor()
    with pytest.raises(ValueError) as info:
        ex.submit(raise_value_error, "boom").result(timeout=T)
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "raise_value_error" in names


# --------------------------------------------------- future state and callbacks


def test_running_and_done(make_executor, make_gate, executor_kind):
    ex = make_executor()
    started, release = make_gate(), make_gate()
    f = ex.submit(signal_and_wait, started, release, 7)
    try:
        assert started.wait(T)
        assert f.running()
        assert not f.done()
        if executor_kind.stops_running_tasks:
            assert f.cancel(), "ProcessPool stops a running task on cancel()"
            assert f.cancelled() and f.done() and not f.running()
            with pytest.raises(cf.CancelledError):
                f.result(timeout=0)
            assert ex.submit(mul, 2, 3).result(timeout=T) == 6, "the stopped worker was replaced"
            return
        assert not f.cancel(), "a running future cannot be cancelled"
    finally:
        release.set()
    assert f.result(timeout=T) == 7
    assert f.done()
    assert not f.running()
    assert not f.cancelled()


def test_cancel_pending_future(make_executor, make_gate):
    ex = make_executor(max_workers=1)
    started, release = make_gate(), make_gate()
    blocker = ex.submit(signal_and_wait, started, release, "blocker")
    try:
        assert started.wait(T)
        # The stdlib process pool moves one call beyond max_workers into its
        # call queue; the last of several queued calls is still pending.
        queued = [ex.submit(mul, i, 1) for i in range(5)]
        assert queued[-1].cancel()
        assert queued[-1].cancelled()
        assert queued[-1].done()
        assert not queued[-1].running()
        with pytest.raises(cf.CancelledError):
            queued[-1].result(timeout=0)
    finally:
        release.set()
    assert blocker.result(timeout=T) == "blocker"
    assert [f.result(timeout=T) for f in queued[:-1]] == [0, 1, 2, 3]


def test_add_done_callback(make_executor):
    ex = make_executor()
    called = threading.Event()
    seen = []

    def callback(fut):
        seen.append((fut, fut.done(), fut.result()))
        called.set()

    f = ex.submit(mul, 6, 7)
    f.add_done_callback(callback)
    assert called.wait(T)
    assert seen == [(f, True, 42)]
    # A callback added after completion runs at once, in the caller's thread.
    late = []
    f.add_done_callback(lambda fut: late.append((fut, threading.get_ident())))
    assert late == [(f, threading.get_ident())]


def test_add_done_callback_on_cancelled_future(make_executor, make_gate):
    ex = make_executor(max_workers=1)
    started, release = make_gate(), make_gate()
    blocker = ex.submit(signal_and_wait, started, release)
    try:
        assert started.wait(T)
        queued = [ex.submit(mul, i, 1) for i in range(5)]
        seen = []
        queued[-1].add_done_callback(lambda fut: seen.append(fut.cancelled()))
        assert queued[-1].cancel()
        assert seen == [True]
    finally:
        release.set()
    blocker.result(timeout=T)


def test_no_stale_reference_to_submitted_callable(make_executor):
    # CPython issue 16284: a finished task's callable must be released.
    ex = make_executor()
    obj = helpers.MyObject()
    collected = threading.Event()
    ref = weakref.ref(obj, lambda _: collected.set())
    ex.submit(obj.my_method)  # future deliberately dropped
    del obj
    if not collected.wait(5):
        gc.collect()
    assert collected.wait(1), "executor still holds the callable of a finished task"
    assert ref() is None


# -------------------------------------------------------------------- shutdown


def test_submit_after_shutdown_raises_runtime_error(make_executor):
    ex = make_executor()
    ex.shutdown()
    with pytest.raises(RuntimeError):
        ex.submit(pow, 2, 5)


def test_map_after_shutdown_raises_runtime_error(make_executor):
    ex = make_executor()
    ex.shutdown()
    with pytest.raises(RuntimeError):
        list(ex.map(abs, [1, 2]))


def test_shutdown_wait_true_waits_for_all(make_executor):
    # CPython issue 12364.
    ex = make_executor()
    fs = [ex.submit(sleep_and_return, 0.05, i) for i in range(8)]
    shutdown_bounded(ex, wait=True)
    assert all(f.done() for f in fs)
    assert [f.result(timeout=0) for f in fs] == list(range(8))


def test_shutdown_wait_false_returns_while_task_runs(make_executor, make_gate):
    ex = make_executor()
    started, release = make_gate(), make_gate()
    f = ex.submit(signal_and_wait, started, release, "finished anyway")
    try:
        assert started.wait(T)
        shutdown_bounded(ex, wait=False)
        assert not f.done(), "shutdown(wait=False) waited for the running task"
        with pytest.raises(RuntimeError):
            ex.submit(pow, 2, 2)
    finally:
        release.set()
    assert f.result(timeout=T) == "finished anyway"


@pytest.mark.parametrize("wait", [False, True])
def test_shutdown_cancel_futures(make_executor, make_gate, wait, executor_kind):
    if executor_kind.stops_running_tasks:
        pytest.skip("ProcessPool also stops the running task: test_faults.py covers it")
    ex = make_executor(max_workers=1)
    started, release = make_gate(), make_gate()
    blocker = ex.submit(signal_and_wait, started, release, "blocker")
    shutter = None
    try:
        assert started.wait(T)
        queued = [ex.submit(mul, i, 1) for i in range(10)]
        last_done = threading.Event()
        queued[-1].add_done_callback(lambda _: last_done.set())
        if wait:
            shutter = threading.Thread(target=ex.shutdown, kwargs={"wait": True, "cancel_futures": True}, daemon=True)
            shutter.start()
        else:
            shutdown_bounded(ex, wait=False, cancel_futures=True)
        # Pending calls are cancelled while the running one still blocks.
        assert last_done.wait(T), "pending futures not cancelled while a task runs"
        assert queued[-1].cancelled()
        if shutter is not None:
            assert shutter.is_alive(), "shutdown(wait=True) returned while a task was running"
    finally:
        release.set()
    if shutter is not None:
        shutter.join(T)
        assert not shutter.is_alive()
    shutdown_bounded(ex, wait=True)
    assert blocker.result(timeout=T) == "blocker"
    cancelled = [f for f in queued if f.cancelled()]
    others = [f for f in queued if not f.cancelled()]
    assert len(cancelled) >= 5
    # Prefetched calls may still run, and must then finish cleanly. (After
    # shutdown(wait=False) the stdlib's second shutdown(wait=True) no longer waits.)
    for f in others:
        assert f.exception(timeout=T) is None


def test_shutdown_after_cancel_does_not_hang(make_executor):
    # CPython issue 94440.
    ex = make_executor(max_workers=1)
    assert ex.submit(int).result(timeout=T) == 0
    ex.submit(int).cancel()
    shutdown_bounded(ex, wait=True)


def test_shutdown_twice(make_executor):
    ex = make_executor()
    assert ex.submit(mul, 2, 2).result(timeout=T) == 4
    shutdown_bounded(ex, wait=True)
    shutdown_bounded(ex, wait=True)


def test_context_manager_shuts_down(make_executor):
    executor = make_executor()
    with executor as ex:
        assert ex is executor
        f = ex.submit(sleep_and_return, 0.05, "in context")
        assert list(ex.map(abs, range(-5, 5))) == [5, 4, 3, 2, 1, 0, 1, 2, 3, 4]
    assert f.done(), "leaving the with-block must wait for pending work"
    assert f.result(timeout=0) == "in context"
    with pytest.raises(RuntimeError):
        executor.submit(pow, 2, 2)


def test_interpreter_exit_runs_submitted_work(executor_kind):
    # CPython's test_interpreter_shutdown: a script that submits work and exits
    # without shutdown() still runs it, and exits cleanly.
    cls = executor_kind.cls
    context = ", mp_context=get_context('forkserver')" if executor_kind.is_stdlib and executor_kind.is_process else ""
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(helpers.__file__))!r})
        from multiprocessing import get_context
        from {cls.__module__} import {cls.__name__}
        import helpers
        if __name__ == "__main__":
            ex = {cls.__name__}(max_workers=2{context})
            ex.submit(helpers.sleep_and_print, 0.2, "apple")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "apple"
    assert proc.stderr == ""


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_not_positive_raises_value_error(executor_kind, max_workers):
    with pytest.raises(ValueError, match="max_workers"):
        ex = executor_kind.create(max_workers=max_workers)
        shutdown_bounded(ex, wait=True)  # only reached when no error was raised


# ---------------------------------------------------------------- initializers


def test_initializer_runs_in_each_worker(make_executor):
    tag = f"initialized-{os.urandom(4).hex()}"
    ex = make_executor(max_workers=2, initializer=helpers.record_init, initargs=(tag,))
    fs = [ex.submit(sleep_and_return, 0.05, None) for _ in range(4)]
    fs += [ex.submit(helpers.get_init_tag) for _ in range(6)]
    assert [f.result(timeout=T) for f in fs[4:]] == [tag] * 6


def _exception_texts(exc: BaseException) -> str:
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__
    return "\n".join(texts)


def test_initializer_failure(make_executor, executor_kind):
    ex = make_executor(max_workers=2, initializer=helpers.init_fail)
    try:
        f = ex.submit(helpers.get_init_tag)
    except cf.BrokenExecutor:
        assert executor_kind.is_stdlib, "submit must return a future that fails"
        return
    with pytest.raises(Exception) as info:
        f.result(timeout=T)
    if executor_kind.is_stdlib:
        # The stdlib breaks the pool, without saying why.
        assert isinstance(info.value, cf.BrokenExecutor)
    else:
        assert INIT_ERROR_TEXT in _exception_texts(info.value)


@pytest.mark.kinds("process")
def test_max_tasks_per_child_replaces_worker(make_executor):
    ex = make_executor(max_workers=1, max_tasks_per_child=2)
    pids = [ex.submit(os.getpid).result(timeout=T) for _ in range(5)]
    assert pids[0] == pids[1]
    assert pids[2] == pids[3]
    assert len({pids[0], pids[2], pids[4]}) == 3, pids
    assert os.getpid() not in pids


@pytest.mark.kinds("process")
@pytest.mark.ferropool_only(
    reason="CPython gh-115634: the stdlib before 3.14 deadlocks when workers retire "
    "at max_tasks_per_child with a backlog queued"
)
@pytest.mark.parametrize("max_workers, max_tasks, n_tasks", [(1, 2, 6), (2, 2, 8)])
def test_max_tasks_per_child_with_backlog(make_executor, max_workers, max_tasks, n_tasks):
    # CPython gh-115634: queued work must still run when workers retire.
    ex = make_executor(max_workers=max_workers, max_tasks_per_child=max_tasks)
    fs = [ex.submit(mul, i, 2) for i in range(n_tasks)]
    assert [f.result(timeout=T) for f in fs] == [i * 2 for i in range(n_tasks)]


@pytest.mark.kinds("thread")
def test_thread_name_prefix(make_executor):
    ex = make_executor(max_workers=2, thread_name_prefix="SpecialPool")
    names = {f.result(timeout=T) for f in [ex.submit(helpers.current_thread_name) for _ in range(4)]}
    assert names
    for name in names:
        assert re.fullmatch(r"SpecialPool_\d+", name), name


# --------------------------------------------------------------------- asyncio


def test_asyncio_wrap_future(make_executor):
    ex = make_executor()

    async def main():
        return await asyncio.wait_for(asyncio.wrap_future(ex.submit(mul, 6, 7)), T)

    assert asyncio.run(main()) == 42


def test_asyncio_run_in_executor(make_executor):
    ex = make_executor()

    async def main():
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(ex, mul, i, 2) for i in range(5)]
        return await asyncio.wait_for(asyncio.gather(*calls), T)

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]


# -------------------------------------------------- callables defined in tests


@pytest.mark.ferropool_only(
    reason="stdlib pickles functions by reference: lambdas cannot reach a process",
    kinds=("process",),
)
def test_lambda(make_executor):
    ex = make_executor()
    assert ex.submit(lambda x: x * 3, 14).result(timeout=T) == 42
    assert list(ex.map(lambda x, y: x - y, [5, 6], [1, 2])) == [4, 4]


@pytest.mark.ferropool_only(
    reason="stdlib pickles functions by reference: closures cannot reach a process",
    kinds=("process",),
)
def test_closure(make_executor):
    ex = make_executor()
    factor = 7

    def scale(x):
        return x * factor

    assert ex.submit(scale, 6).result(timeout=T) == 42
    assert list(ex.map(scale, range(4))) == [0, 7, 14, 21]


# ------------------------------------------------------------------- big & many


def test_big_argument_and_result_round_trip(make_executor):
    ex = make_executor()
    n = 10 * 1024 * 1024
    data = os.urandom(n)
    assert ex.submit(helpers.sha256, data).result(timeout=T) == helpers.sha256(data)
    echoed = ex.submit(helpers.echo, data).result(timeout=T)
    assert echoed == data
    made = ex.submit(helpers.make_pattern, n).result(timeout=T)
    assert len(made) == n
    assert made == helpers.make_pattern(n)


def test_many_tiny_tasks(make_executor):
    ex = make_executor()
    n = 10_000
    fs = [ex.submit(mul, i, 2) for i in range(n)]
    done, not_done = cf.wait(fs, timeout=30)
    assert not not_done, f"{len(not_done)} of {n} tasks unfinished"
    assert [f.result() for f in fs] == [i * 2 for i in range(n)]


def test_map_many_tiny_items(make_executor):
    ex = make_executor()
    n = 10_000
    assert list(ex.map(mul, range(n), itertools.repeat(3), timeout=30)) == [i * 3 for i in range(n)]
