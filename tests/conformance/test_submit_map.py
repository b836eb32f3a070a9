"""Executor.submit and Executor.map: arguments, results, order, chunking, laziness, and
callables and payloads of every size (CPython's ``executor.py``)."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import itertools
import os
import sys
import threading
import weakref

import pytest

import helpers
from helpers import BLOCK, block_on, capture, mul, shutdown_bounded, sleep_and_return

from .util import T, warm_up

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


# ------------------------------------------------------------------ big & many


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
    _, not_done = cf.wait(fs, timeout=30)
    assert not not_done, f"{len(not_done)} of {n} tasks unfinished"
    assert [f.result() for f in fs] == [i * 2 for i in range(n)]


def test_map_many_tiny_items(make_executor):
    ex = make_executor()
    n = 10_000
    assert list(ex.map(mul, range(n), itertools.repeat(3), timeout=30)) == [i * 3 for i in range(n)]


def _needs_buffersize(executor_kind) -> None:
    if executor_kind.is_stdlib and sys.version_info < (3, 14):
        pytest.skip("Executor.map(buffersize=) is new in Python 3.14")


@pytest.mark.parametrize("buffersize", ["foo", 2.0])
def test_map_buffersize_of_wrong_type_raises_type_error(make_executor, executor_kind, buffersize):
    _needs_buffersize(executor_kind)
    with pytest.raises(TypeError, match="buffersize must be an integer or None"):
        make_executor().map(str, range(4), buffersize=buffersize)


@pytest.mark.parametrize("buffersize", [0, -1])
def test_map_buffersize_below_one_raises_value_error(make_executor, executor_kind, buffersize):
    _needs_buffersize(executor_kind)
    with pytest.raises(ValueError, match=r"buffersize must be None or > 0"):
        make_executor().map(str, range(4), buffersize=buffersize)


@pytest.mark.parametrize("buffersize", [1, 2, 4, 8])
def test_map_buffersize_gives_every_result_in_order(make_executor, executor_kind, buffersize):
    _needs_buffersize(executor_kind)
    ex = make_executor()
    assert list(ex.map(str, range(4), buffersize=buffersize)) == ["0", "1", "2", "3"]
    assert list(ex.map(mul, range(4), range(4), buffersize=buffersize)) == [0, 1, 4, 9]
    assert list(ex.map(str, range(40), chunksize=3, buffersize=buffersize)) == [str(i) for i in range(40)]
    assert next(ex.map(str, [], buffersize=buffersize), None) is None
    assert next(ex.map(str, buffersize=buffersize), None) is None


def test_map_buffersize_on_endless_input(make_executor, executor_kind):
    _needs_buffersize(executor_kind)
    results = make_executor().map(str, itertools.count(), buffersize=2)
    assert [next(results), next(results), next(results)] == ["0", "1", "2"]


@pytest.mark.parametrize("buffersize", [1, 3])
def test_map_buffersize_reads_only_that_far_ahead(make_executor, executor_kind, buffersize):
    # CPython's test_map_buffersize_when_buffer_is_full, and the bound as results are taken.
    _needs_buffersize(executor_kind)
    ex = make_executor()
    read = []

    def numbers():
        for i in itertools.count():
            read.append(i)
            yield i

    results = ex.map(str, numbers(), buffersize=buffersize)
    assert len(read) == buffersize, "map must submit exactly buffersize tasks before returning"
    for taken in range(1, 20):
        assert next(results) == str(taken - 1)
        # Automatic chunks count as their items. The bound is an upper one: the feeder
        # thread may not have refilled yet (the standard library refills in next()).
        assert len(read) <= taken + buffersize
    results.close()
    ints = iter(range(10))
    ex.map(str, ints, buffersize=buffersize)
    shutdown_bounded(ex, wait=True)
    assert next(ints) == buffersize
