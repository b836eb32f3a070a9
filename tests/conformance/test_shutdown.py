"""Executor.shutdown: ``wait``, ``cancel_futures``, repeated calls, the context manager, and work
submitted before the interpreter exits (CPython's ``test_shutdown.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading

import pytest

import helpers
from helpers import mul, shutdown_bounded, signal_and_wait, sleep_and_return, started_then_sleep

from .util import T, warm_up


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
def test_shutdown_cancel_futures(make_executor, make_gate, wait):
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


def test_cancel_futures_cancels_queued_and_finishes_running(make_executor, make_gate):
    # CPython's test_cancel_futures: many queued calls, few workers; here the first one has
    # surely started when the pool shuts down.
    ex = make_executor(max_workers=2)
    warm_up(ex, 2)
    started = make_gate()
    fs = [ex.submit(started_then_sleep, started, 0.1)]
    fs += [ex.submit(sleep_and_return, 0.1, i) for i in range(49)]
    assert started.wait(T)
    shutdown_bounded(ex, wait=True, cancel_futures=True)
    cancelled = [f for f in fs if f.cancelled()]
    others = [f for f in fs if not f.cancelled()]
    assert len(cancelled) > 20
    assert others, "running calls were cancelled"
    for f in others:
        assert f.done()
        assert f.exception(timeout=0) is None
