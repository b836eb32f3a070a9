"""concurrent.futures.wait on an executor's futures mixed with finished stand-alone ones, for
each ``return_when`` (CPython's ``test_wait.py``)."""

from __future__ import annotations

import concurrent.futures as cf
import threading

from helpers import mul, wait_for, wait_then_raise

from .util import T, cancelled_future, cancelled_notified_future, exception_future, successful_future


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
