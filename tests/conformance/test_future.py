"""The state of an executor's futures (running, done, cancelled) and their done-callbacks
(CPython's ``test_future.py``, on futures an executor made)."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import threading
import weakref

import pytest

import helpers
from helpers import mul, signal_and_wait

from .util import T


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
