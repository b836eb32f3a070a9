"""What the conformance files share: the bound on every wait, and stand-alone futures in each
terminal state, built through the public API (CPython's ``util.py`` pokes at private state)."""

from __future__ import annotations

import concurrent.futures as cf

from helpers import mul

#: Bound on any single result()/wait() in the suite.
T = 10.0


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
