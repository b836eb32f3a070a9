"""concurrent.futures.as_completed on an executor's futures: completion order, timeouts,
duplicates, futures of other executors (CPython's ``test_as_completed.py``)."""

from __future__ import annotations

import concurrent.futures as cf
import itertools

import pytest

from helpers import mul, sleep_and_return, wait_for

from .util import T, cancelled_notified_future, exception_future, successful_future


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
