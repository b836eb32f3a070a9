"""``_core.PrefixedMap(values, func, iterable)``: the iterator of a serial ``Pool(strategy="auto")
.map``. It must yield exactly what ``itertools.chain(values, map(func, iterable))`` yields, as
lazily, raise what they raise where they raise it, and own its references as a container does
(no leak, cycles collected)."""

from __future__ import annotations

import functools
import gc
import itertools
import sys
import weakref

import pytest

from ferropool._core import PrefixedMap


def double(x):
    return 2 * x


class Callable:
    """A callable without vectorcall (``tp_call`` only), and weak-referenceable."""

    def __init__(self, fn=double):
        self.fn = fn
        self.calls = 0

    def __call__(self, x):
        self.calls += 1
        return self.fn(x)


def test_yields_the_values_then_func_over_the_rest_as_chain_and_map_do():
    values, items = ["a", "b", "c"], range(10)
    assert list(PrefixedMap(values, double, items)) == list(itertools.chain(values, map(double, items)))
    assert list(PrefixedMap([], double, [1, 2])) == [2, 4]
    assert list(PrefixedMap([1, 2], double, [])) == [1, 2]
    assert list(PrefixedMap([], double, [])) == []


@pytest.mark.parametrize(
    "func",
    [double, Callable(), functools.partial(pow, exp=2), str, "-{}-".format, abs],
    ids=["function", "tp_call", "partial", "type", "bound-method", "builtin"],
)
def test_calls_any_callable_as_map_does(func):
    items = [3, -4, 5]
    assert list(PrefixedMap([0], func, items)) == [0, *map(func, items)]


def test_calls_func_only_as_items_are_asked_for():
    func = Callable()
    it = PrefixedMap([10, 11], func, itertools.count())  # an endless input is fine
    assert iter(it) is it
    assert (next(it), next(it), func.calls) == (10, 11, 0)
    assert next(it) == 0 and func.calls == 1
    assert list(itertools.islice(it, 3)) == [2, 4, 6] and func.calls == 4


def test_an_exception_from_func_is_raised_at_its_item_and_iteration_goes_on():
    def fragile(x):
        if x == 2:
            raise ValueError(f"no {x}")
        return x

    it = PrefixedMap(["p"], fragile, [1, 2, 3])
    assert next(it) == "p" and next(it) == 1
    with pytest.raises(ValueError, match="no 2"):
        next(it)
    assert list(it) == [3]  # as map: the failed item is skipped, the next one follows
    assert next(it, "end") == "end"


def test_an_exception_from_the_input_propagates_and_a_python_iterator_ends_cleanly():
    def source():
        yield 1
        raise KeyError("input broke")

    it = PrefixedMap([], double, source())
    assert next(it) == 2
    with pytest.raises(KeyError, match="input broke"):
        next(it)

    class Countdown:
        def __init__(self):
            self.n = 3

        def __iter__(self):
            return self

        def __next__(self):  # a Python-level iterator: ends by raising StopIteration
            if self.n == 0:
                raise StopIteration
            self.n -= 1
            return self.n

    assert list(PrefixedMap([9], double, Countdown())) == [9, 4, 2, 0]
    assert [x for x in PrefixedMap([], double, Countdown())] == [4, 2, 0]


def test_bad_arguments_raise_type_error_naming_what_was_wrong():
    with pytest.raises(TypeError, match="values must be a list"):
        PrefixedMap((1, 2), double, [])
    with pytest.raises(TypeError, match="func must be callable"):
        PrefixedMap([], 42, [])
    with pytest.raises(TypeError, match="not iterable"):
        PrefixedMap([], double, 42)
    with pytest.raises(TypeError, match="exactly 3 positional arguments"):
        PrefixedMap([], double)
    with pytest.raises(TypeError, match="exactly 3 positional arguments"):
        PrefixedMap([], double, [], extra=1)


def test_holds_no_reference_after_it_is_done_or_dropped():
    value, arg = object(), object()
    func = Callable(lambda x: x)
    watch = weakref.ref(func)
    before = sys.getrefcount(value), sys.getrefcount(arg)
    it = PrefixedMap([value], func, [arg])
    assert list(it) == [value, arg]
    del it
    assert (sys.getrefcount(value), sys.getrefcount(arg)) == before
    del func
    assert watch() is None  # freed at once by reference counting: nothing kept it


def test_a_cycle_through_func_is_collected():
    func = Callable()
    it = PrefixedMap([1], func, [2, 3])
    func.back = it  # func -> iterator -> func: only the collector can free this
    watch = weakref.ref(func)
    assert it in gc.get_referents(func) and func in gc.get_referents(it)
    del func, it
    gc.collect()
    assert watch() is None


def test_func_may_advance_the_same_iterator():
    def greedy(x):
        return (x, next(it, None))  # re-entrant: takes the following item for itself

    it = PrefixedMap([], greedy, [1, 2, 3, 4, 5])
    assert list(it) == [(1, (2, (3, (4, (5, None)))))]


def test_a_values_list_shrunk_behind_its_back_does_not_crash():
    it = PrefixedMap([1, 2, 3], double, [5])
    assert next(it) == 1
    values = next(r for r in gc.get_referents(it) if isinstance(r, list))
    values.clear()
    assert list(it) == [10]


def test_threads_sharing_one_iterator_get_every_item_exactly_once():
    # On a free-threaded build the threads really call next() at once: the prefixed values are
    # claimed under a critical section, so none is yielded twice or lost and the list is freed
    # once. With a GIL this checks the same contract, one thread at a time. (The input iterator
    # is empty: sharing one between threads is only as safe as that iterator is.)
    import threading

    values = list(range(4000))
    it = PrefixedMap(values, int, [])
    del values
    start = threading.Barrier(4)
    got: list[list[int]] = [[] for _ in range(4)]

    def consume(mine: list[int]) -> None:
        start.wait(timeout=10)
        mine.extend(it)

    threads = [threading.Thread(target=consume, args=(mine,)) for mine in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)
    assert sorted(itertools.chain.from_iterable(got)) == list(range(4000))
