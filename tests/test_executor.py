"""The executor base every pool shares (``ferropool._executor``): how ``map`` sizes its chunks
from measured run times, ``run_chunk``, ``is_coroutine_function`` and the ``TaskOptions`` view.

No worker runs here. ``FakePool`` runs each chunk at once in the submitting thread and reports
a run time made up from the items, so chunk sizes depend only on those made-up times and every
expected size below is exact; nothing is timed.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import itertools
import threading

import pytest

from ferropool import _executor
from ferropool._executor import (
    _PARTIAL,
    COROUTINES_IN_FLIGHT_PER_WORKER,
    CUT_AFTER_NS,
    GROWTH,
    MAX_CHUNK,
    MAX_CHUNKS_AHEAD_PER_WINDOW,
    TARGET_CHUNK_S,
    PoolExecutor,
    TaskOptions,
    _Chunk,
    _Mapper,
    chunk_runner,
    is_coroutine_function,
    run_chunk,
    run_chunk_async,
    run_items,
    window_for,
)

#: Items per chunk that ``map`` aims for when each item takes 1 µs (its target run time).
WANTED_AT_1US = int(TARGET_CHUNK_S * 1e9 / 1000)


def done_future(result=None, exception=None) -> cf.Future:
    fut: cf.Future = cf.Future()
    if exception is not None:
        fut.set_exception(exception)
    else:
        fut.set_result(result)
    return fut


class FakePool(PoolExecutor):
    """Runs every call at once in the submitting thread; a chunk reports ``cost(*args)``
    nanoseconds per item as its run time instead of the time it took. Records chunk sizes."""

    def __init__(self, workers: int = 1, cost=lambda *args: 1000, task_timeout=None, runs_coroutines=False):
        self._max_workers = workers
        self._task_timeout = task_timeout
        self._runs_coroutines = runs_coroutines
        self.cost = cost
        self.chunk_sizes: list[int] = []

    def submit(self, fn, /, *args, **kwargs):
        if fn is not run_chunk:
            try:
                return done_future(fn(*args, **kwargs))
            except Exception as exc:
                return done_future(exception=exc)
        chunk_fn, items = args
        self.chunk_sizes.append(len(items))
        try:
            values, _ = run_chunk(chunk_fn, items)
        except Exception as exc:
            return done_future(exception=exc)
        return done_future((values, sum(self.cost(*args) for args in items)))


def identity(x):
    return x


async def async_identity(x):
    return x


# ------------------------------------------------------------------- run_chunk


def test_run_chunk_calls_fn_with_each_items_arguments_in_order():
    values, ns = run_chunk(pow, [(2, 3), (3, 2), (10, 0)])
    assert values == [8, 9, 1]
    assert type(ns) is int and ns >= 0


def test_run_chunk_of_no_items():
    values, ns = run_chunk(pow, [])
    assert values == []
    assert ns >= 0


def test_run_chunk_attaches_the_results_before_the_failing_item():
    with pytest.raises(ZeroDivisionError) as info:
        run_chunk(divmod, [(7, 2), (9, 3), (1, 0), (5, 5)])
    assert getattr(info.value, _PARTIAL) == [(3, 1), (3, 0)]


def test_run_items_calls_fn_with_each_item_and_attaches_the_results_before_a_failure():
    values, ns = run_items(abs, [-2, 3, -4])
    assert values == [2, 3, 4]
    assert type(ns) is int and ns >= 0
    with pytest.raises(ZeroDivisionError) as info:
        run_items((10).__floordiv__, [5, 2, 0, 1])
    assert getattr(info.value, _PARTIAL) == [2, 5]


def test_run_chunk_failing_first_item_attaches_no_results():
    with pytest.raises(ZeroDivisionError) as info:
        run_chunk(divmod, [(1, 0), (4, 2)])
    assert getattr(info.value, _PARTIAL) == []


def test_run_chunk_reraises_the_very_exception_and_base_exceptions_too():
    raised = KeyboardInterrupt("stop")

    def fn(x):
        if x == 2:
            raise raised
        return x

    with pytest.raises(KeyboardInterrupt) as info:
        run_chunk(fn, [(1,), (2,), (3,)])
    assert info.value is raised
    assert getattr(raised, _PARTIAL) == [1]


class Frozen(Exception):
    """An exception that refuses new attributes."""

    def __setattr__(self, name, value):
        raise AttributeError(name)


def test_run_chunk_reraises_an_exception_that_refuses_the_partial_results():
    def fn(x):
        if x:
            raise Frozen("no attributes")
        return x

    with pytest.raises(Frozen, match="no attributes") as info:
        run_chunk(fn, [(0,), (1,)])
    assert not hasattr(info.value, _PARTIAL)


def test_run_chunk_async_awaits_each_call():
    values, ns = asyncio.run(run_chunk_async(async_identity, [(1,), ("a",), (None,)]))
    assert values == [1, "a", None]
    assert type(ns) is int and ns >= 0


def test_run_chunk_async_attaches_the_results_before_the_first_failing_item():
    ran = []

    async def fn(x):
        ran.append(x)
        if x in (2, 4):
            raise ValueError(f"item {x}")
        return x * 10

    with pytest.raises(ValueError, match="item 2") as info:
        asyncio.run(run_chunk_async(fn, [(0,), (1,), (2,), (3,), (4,)]))
    assert getattr(info.value, _PARTIAL) == [0, 10]
    assert sorted(ran) == [0, 1, 2, 3, 4], "the chunk's calls run concurrently, all of them"


# ------------------------------------------------------- is_coroutine_function


class Methods:
    def plain(self):
        return 1

    async def coroutine(self):
        return 1

    @classmethod
    async def class_coroutine(cls):
        return 1

    async def __call__(self):
        return 1


async def async_generator():
    yield 1


@pytest.mark.parametrize(
    "fn, expected",
    [
        (async_identity, True),
        (Methods().coroutine, True),
        (Methods.coroutine, True),
        (Methods.class_coroutine, True),
        (identity, False),
        (lambda: async_identity(1), False),  # returns a coroutine, but is not a coroutine function
        (Methods().plain, False),
        (functools.partial(async_identity, 1), False),  # awaited where it is called
        (Methods(), False),  # an object with an async __call__
        (async_generator, False),
        (len, False),
        (int, False),
    ],
    ids=lambda value: value if isinstance(value, bool) else getattr(value, "__qualname__", type(value).__name__),
)
def test_is_coroutine_function(fn, expected):
    assert is_coroutine_function(fn) is expected


def test_chunk_runner_awaits_chunks_of_coroutine_functions_only():
    assert chunk_runner(async_identity) is run_chunk_async
    assert chunk_runner(Methods().coroutine) is run_chunk_async
    assert chunk_runner(identity) is run_chunk
    assert chunk_runner(functools.partial(async_identity, 1)) is run_chunk


class FakeClock:
    """Stands in for ``_executor._perf``: time moves only when a task says it ran."""

    def __init__(self):
        self.now = 0
        self.ran = 0  # items run so far
        self.reads: list[int] = []  # ``ran`` at each read

    def __call__(self) -> int:
        self.reads.append(self.ran)
        return self.now

    def run(self, ns: int):
        """A task function whose every call takes ``ns`` of this clock's time."""

        def task(item):
            self.now += ns
            self.ran += 1
            return item

        return task


@pytest.fixture
def clock(monkeypatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(_executor, "_perf", fake)
    return fake


def test_run_items_with_a_cut_stops_after_the_run_during_which_the_time_passed(clock):
    values, ns = run_items(clock.run(1000), list(range(100)), cut_after_ns=10_500)
    assert values == list(range(len(values)))
    assert 11 <= len(values) < 100, "it stops once 10.5 us have passed, not before"
    assert ns == 1000 * len(values)


def test_run_items_with_a_cut_checks_the_time_in_runs_that_grow_at_most_growth_fold(clock):
    values, _ = run_items(clock.run(1), list(range(5000)), cut_after_ns=10**9)
    assert values == list(range(5000)), "far from the cut: every item runs"
    runs = [b - a for a, b in itertools.pairwise(clock.reads)]
    assert runs[0] == 1, "the first item runs alone, to be timed"
    assert all(b <= GROWTH * sum(runs[: i + 1]) for i, b in enumerate(runs[1:])), runs
    assert len(runs) <= 8, "the time is read a few times a chunk, not once an item"


def test_run_items_with_a_cut_runs_a_long_first_item_alone(clock):
    values, ns = run_items(clock.run(10**9), [1, 2, 3], cut_after_ns=CUT_AFTER_NS)
    assert (values, ns) == ([1], 10**9)


def test_run_items_with_a_cut_attaches_the_results_before_a_failure():
    with pytest.raises(ZeroDivisionError) as info:
        run_items((10).__floordiv__, [5, 2, 0, 1], cut_after_ns=10**9)
    assert getattr(info.value, _PARTIAL) == [2, 5]


# ---------------------------------------------------------------- chunk sizing
# ``_Mapper`` measures finished chunks in ``_on_done`` and sizes the next one in ``_next_size``;
# these tests feed it finished futures that carry made-up run times.


def make_mapper(workers=1, chunksize=None, total=None, fn=identity, **pool_options) -> _Mapper:
    return _Mapper(FakePool(workers, **pool_options), fn, iter(()), None, chunksize, total)


def measure(mapper: _Mapper, items: int, ns: int) -> None:
    """Report a finished chunk of ``items`` items that ran for ``ns`` nanoseconds."""
    mapper._on_done(done_future(([None] * items, ns)), items)


def sizes(mapper: _Mapper, n: int, ns_per_item: float) -> list[int]:
    """The next ``n`` chunk sizes, each chunk measured at ``ns_per_item`` before the next."""
    out = []
    for _ in range(n):
        size = mapper._next_size()
        out.append(size)
        measure(mapper, size, int(size * ns_per_item))
    return out


@pytest.mark.parametrize("workers, window", [(0, 4), (1, 4), (2, 6), (3, 9), (16, 48)])
def test_window_for(workers, window):
    assert window_for(workers) == window


def test_chunks_hold_one_item_until_a_window_of_items_is_measured():
    mapper = make_mapper(workers=2)
    assert mapper.window == 6
    assert mapper._next_size() == 1, "nothing measured yet"
    for _ in range(5):
        measure(mapper, 1, 1)  # very fast items: sizing would jump if it trusted them
        assert mapper._next_size() == 1
    measure(mapper, 1, 1)
    assert mapper._next_size() == GROWTH


def growth_ramp(limit: int) -> list[int]:
    """The sizes a chunk of one grows through, ``GROWTH``-fold each, while below ``limit``."""
    return list(itertools.takewhile(lambda size: size < limit, (GROWTH**k for k in itertools.count(1))))


def test_chunks_grow_at_most_growth_fold_up_to_the_target_run_time():
    mapper = make_mapper()
    measure(mapper, mapper.window, mapper.window * 1000)
    got = sizes(mapper, 9, 1000)
    ramp = growth_ramp(WANTED_AT_1US)
    expected = [*ramp, *[WANTED_AT_1US] * (9 - len(ramp))]
    assert got == expected
    assert all(b <= a * GROWTH for a, b in itertools.pairwise(got))


def test_chunks_never_exceed_max_chunk():
    mapper = make_mapper()
    measure(mapper, mapper.window, 0)  # items too fast to measure count as 1 ns
    got = sizes(mapper, 12, 0)
    assert max(got) == MAX_CHUNK
    assert got[-3:] == [MAX_CHUNK] * 3


@pytest.mark.parametrize(
    "ns_per_item, size",
    [
        (TARGET_CHUNK_S * 1e9, 1),  # an item takes the whole target
        (TARGET_CHUNK_S * 1e9 * 10, 1),  # longer than the target: still at least one item
        (TARGET_CHUNK_S * 1e9 / 4, 4),
    ],
)
def test_slow_items_get_small_chunks(ns_per_item, size):
    mapper = make_mapper()
    measure(mapper, mapper.window, int(mapper.window * ns_per_item))
    assert sizes(mapper, 3, ns_per_item) == [size] * 3


def test_per_item_time_is_a_running_average_of_chunks():
    mapper = make_mapper()
    measure(mapper, 10, 10 * 1000)
    assert mapper.per_item_ns == 1000
    measure(mapper, 1, 3000)
    assert mapper.per_item_ns == 2000, "each chunk weighs half, whatever its size"
    assert mapper.measured == 11


def test_chunks_shrink_at_once_when_items_slow_down():
    mapper = make_mapper()
    measure(mapper, mapper.window, mapper.window * 1000)
    assert sizes(mapper, 10, 1000)[-1] == WANTED_AT_1US
    # Items now take 99 µs: the running average is (1 + 99) / 2 = 50 µs.
    measure(mapper, 10, 10 * 99_000)
    assert mapper._next_size() == int(TARGET_CHUNK_S * 1e9 / 50_000)


def test_failed_and_cancelled_chunks_are_not_measured():
    mapper = make_mapper()
    mapper._on_done(done_future(exception=ValueError("boom")), 100)
    cancelled: cf.Future = cf.Future()
    cancelled.cancel()
    mapper._on_done(cancelled, 100)
    assert mapper.measured == 0
    assert mapper.per_item_ns is None
    assert mapper._next_size() == 1


def test_known_length_caps_chunks_so_every_worker_gets_several():
    # 1000 items on 2 workers: at most 1000 // (4 * 2) = 125 per chunk.
    mapper = make_mapper(workers=2, total=1000)
    assert mapper.cap == 125
    measure(mapper, mapper.window, 0)
    assert max(sizes(mapper, 8, 0)) == 125


def test_short_known_length_keeps_chunks_of_one():
    mapper = make_mapper(workers=4, total=10)
    assert mapper.cap == 1
    measure(mapper, mapper.window, 0)
    assert sizes(mapper, 4, 0) == [1] * 4


def test_known_length_grows_chunks_before_anything_is_measured_up_to_the_cap():
    # The first item went alone (``start``); tiny tasks need not wait for measurements.
    assert make_mapper(workers=2, total=10**6)._next_size() == 2
    mapper = make_mapper(workers=2, total=100)
    assert [mapper._next_size() for _ in range(5)] == [2, 4, 8, 12, 12]


def pending_chunks(mapper: _Mapper, count: int, items: int) -> None:
    """Put ``count`` chunks of ``items`` items in flight, none finished."""
    for _ in range(count):
        mapper.inflight.append(_Chunk(cf.Future(), items, None))


def test_a_window_of_chunks_in_flight_leaves_no_room_until_measured():
    mapper = make_mapper(workers=1)
    pending_chunks(mapper, mapper.window, 1)
    assert not mapper._has_room()


def test_chunks_measured_far_below_the_target_count_by_their_work():
    mapper = make_mapper(workers=1)
    measure(mapper, mapper.window, mapper.window * 100)  # 100 ns an item
    pending_chunks(mapper, mapper.window, 100)  # 10 us each, against 5 ms asked
    assert mapper._has_room(), "a window of tiny chunks is far from a window of work"
    slow = make_mapper(workers=1)
    measure(slow, slow.window, slow.window * int(TARGET_CHUNK_S * 1e9))  # an item is a whole chunk's work
    pending_chunks(slow, slow.window, 1)
    assert not slow._has_room()


def test_tiny_chunks_in_flight_stay_bounded_in_number_and_items():
    mapper = make_mapper(workers=1)
    measure(mapper, mapper.window, mapper.window)  # 1 ns an item: the budget is huge
    pending_chunks(mapper, MAX_CHUNKS_AHEAD_PER_WINDOW * mapper.window, 1)
    assert not mapper._has_room(), "no bound on the number of chunks"
    many = make_mapper(workers=1)
    measure(many, many.window, many.window)
    pending_chunks(many, many.window, 2 * MAX_CHUNK)
    assert not many._has_room(), "no bound on the items read ahead"


def test_known_length_trusts_the_first_measurements_at_once():
    mapper = make_mapper(workers=2, total=10**6)
    measure(mapper, mapper.window, mapper.window * 1000)  # 1 us an item
    assert mapper._next_size() == WANTED_AT_1US, "no GROWTH-fold ramp under a known length's cap"
    capped = make_mapper(workers=2, total=1000)
    measure(capped, capped.window, 0)
    assert capped._next_size() == capped.cap


def test_fixed_chunksize_ignores_measurements():
    mapper = make_mapper(chunksize=7, total=1000)
    assert mapper._next_size() == 7
    measure(mapper, 100, 100)
    assert sizes(mapper, 3, 1e9) == [7, 7, 7]


def test_pools_that_run_coroutines_keep_many_chunks_of_a_coroutine_function_in_flight():
    assert make_mapper(workers=3, fn=async_identity, runs_coroutines=True).window == (
        COROUTINES_IN_FLIGHT_PER_WORKER * 3
    )
    assert make_mapper(workers=3, fn=identity, runs_coroutines=True).window == window_for(3)
    assert make_mapper(workers=3, fn=async_identity, runs_coroutines=False).window == window_for(3)


def test_no_workers_count_as_one():
    mapper = make_mapper(workers=0, total=100)
    assert mapper.window == window_for(1)
    assert mapper.cap == 100 // 4


# --------------------------------------------------------------- map, end to end


def test_map_sizes_chunks_from_measured_times():
    pool = FakePool(workers=1, cost=lambda item: 1000)
    n = 20_000
    assert list(pool.map(identity, (i for i in range(n)))) == list(range(n))  # no length: no cap
    window = window_for(1)
    ramp = growth_ramp(WANTED_AT_1US)
    head = [1] * window + ramp
    full, left = divmod(n - sum(head), WANTED_AT_1US)
    expected = head + [WANTED_AT_1US] * full + ([left] if left else [])
    assert pool.chunk_sizes == expected


def test_map_chunks_follow_items_that_turn_slow():
    # Items from 5000 on take 1 ms: chunks drop to the target's worth of them.
    pool = FakePool(workers=1, cost=lambda item: 1000 if item < 5000 else 1_000_000)
    assert list(pool.map(identity, iter(range(6000)))) == list(range(6000))
    slow = int(TARGET_CHUNK_S * 1e9 / 1_000_000)
    assert pool.chunk_sizes[-4:-1] == [slow] * 3  # the last chunk holds what is left
    assert sum(pool.chunk_sizes) == 6000


def test_map_with_a_length_caps_chunks():
    pool = FakePool(workers=2, cost=lambda item: 0)
    assert list(pool.map(identity, range(1000))) == list(range(1000))
    assert max(pool.chunk_sizes) == 1000 // (4 * 2)
    assert sum(pool.chunk_sizes) == 1000


def test_map_with_a_task_timeout_sends_one_item_per_task_unless_chunksize_is_given():
    pool = FakePool(cost=lambda item: 0, task_timeout=1.0)
    assert list(pool.map(identity, range(50))) == list(range(50))
    assert pool.chunk_sizes == [1] * 50
    pool.chunk_sizes.clear()
    assert list(pool.map(identity, range(50), chunksize=20)) == list(range(50))
    assert pool.chunk_sizes == [1, 20, 20, 9], "the first item goes alone, from the caller's thread"


@pytest.mark.parametrize("chunksize", [0, -1])
def test_map_chunksize_below_one_raises_value_error(chunksize):
    pool = FakePool()
    with pytest.raises(ValueError, match="chunksize"):
        pool.map(identity, range(3), chunksize=chunksize)
    assert pool.chunk_sizes == [], "nothing was submitted"


def test_map_empty_input_submits_nothing():
    pool = FakePool()
    assert list(pool.map(identity, [])) == []
    assert list(pool.map(pow, [1, 2], [])) == []
    assert pool.chunk_sizes == []


def test_map_yields_the_items_before_a_failing_one_then_raises():
    def fn(x):
        if x == 13:
            raise ValueError("item 13")
        return x

    pool = FakePool()
    got = []
    with pytest.raises(ValueError, match="item 13") as info:
        for value in pool.map(fn, range(40), chunksize=10):
            got.append(value)
    assert got == list(range(13))
    assert not hasattr(info.value, _PARTIAL), "the partial results are not left on the exception"


def test_map_raises_an_input_error_after_the_items_read_before_it():
    def items():
        yield from range(5)
        raise LookupError("input broke")

    pool = FakePool()
    got = []
    with pytest.raises(LookupError, match="input broke"):
        for value in pool.map(identity, items(), chunksize=3):
            got.append(value)
    assert got == [0, 1, 2, 3, 4]


def test_map_iterator_close_ends_it_and_stops_reading_input():
    read: list[int] = []

    def endless():
        for i in itertools.count():
            read.append(i)
            yield i

    pool = FakePool(workers=1, cost=lambda item: 1000)
    it = pool.map(identity, endless())
    assert next(it) == 0
    it.close()
    with pytest.raises(StopIteration):
        next(it)
    feeders = [t for t in threading.enumerate() if t.name == "ferropool-map-feeder"]
    for t in feeders:
        t.join(10)
    assert not any(t.is_alive() for t in feeders), "the feeder kept reading"
    assert len(read) < 3 * window_for(1) * MAX_CHUNK, "it read on past its bound"


class CuttingPool(FakePool):
    """A ``FakePool`` that offers ``_submit_items``, as ``ProcessPool`` does: a chunk stops once
    its made-up run time reaches ``cut_after_ns``, as ``run_items`` stops in a worker.
    ``deferred``: chunks are not run at submit; the test finishes them with ``finish``."""

    def __init__(self, workers=1, cost=lambda *args: 1000, deferred=False):
        super().__init__(workers, cost)
        self.deferred = deferred
        self.pending: list[tuple[cf.Future, list, int | None]] = []
        self.submitted = threading.Condition()

    def _submit_items(self, fn, items, cut_after_ns=None):
        self.chunk_sizes.append(len(items))
        fut: cf.Future = cf.Future()
        with self.submitted:
            self.pending.append((fut, items, cut_after_ns))
            self.submitted.notify_all()
        if not self.deferred:
            self.finish(len(self.pending) - 1)
        return fut

    def finish(self, index: int, ran: int | None = None) -> None:
        """Runs chunk ``index``: ``ran`` items of it, else until its cut."""
        fut, items, cut_after_ns = self.pending[index]
        values, ns = [], 0
        for item in items[:ran]:
            values.append(item)
            ns += self.cost(item)
            if ran is None and cut_after_ns is not None and ns >= cut_after_ns:
                break
        fut.set_result((values, ns))

    def wait_for_chunks(self, count: int) -> None:
        with self.submitted:
            assert self.submitted.wait_for(lambda: len(self.pending) >= count, timeout=10)


def test_map_with_cuts_sends_full_chunks_of_a_known_length_at_once_from_the_caller():
    pool = CuttingPool(workers=2, cost=lambda item: 100)
    results = pool.map(identity, range(1000))
    cap = 1000 // (4 * 2)
    assert pool.chunk_sizes == [cap] * 8, "no ramp: a worker cuts a chunk that runs too long"
    assert not feeder_threads(), "the whole input fitted the window: no feeder thread"
    assert list(results) == list(range(1000))
    assert {cut for _, _, cut in pool.pending} == {CUT_AFTER_NS}


def test_map_sends_the_rest_of_a_chunk_cut_short_in_measured_parts_in_order():
    item_ns = -(-CUT_AFTER_NS // 3)  # a chunk runs 3 items, then stops
    pool = CuttingPool(workers=2, cost=lambda item: item_ns)
    assert list(pool.map(identity, range(200))) == list(range(200))
    cap = 200 // (4 * 2)
    assert item_ns > TARGET_CHUNK_S * 1e9
    measured = 1  # an item runs longer than a chunk should
    # Two full chunks are cut short: a window's worth of items is then measured, and every
    # later chunk, rests and new ones alike, is sized as measured.
    assert pool.chunk_sizes[:2] == [cap, cap]
    assert set(pool.chunk_sizes[2:]) == {measured}
    assert sum(pool.chunk_sizes) == 200 + 2 * (cap - 3), "each item runs once; cut items are sent again"


def test_map_with_a_fixed_chunksize_or_an_input_without_length_asks_for_no_cut():
    pool = CuttingPool(workers=2)
    assert list(pool.map(identity, range(100), chunksize=10)) == list(range(100))
    fixed = len(pool.chunk_sizes)
    assert list(pool.map(identity, iter(range(100)))) == list(range(100))
    assert {cut for _, _, cut in pool.pending} == {None}
    assert pool.chunk_sizes[fixed : fixed + 2] == [1, 1], "without a length, chunks grow from one item"
    assert list(pool.map(pow, range(5), [2] * 5)) == [0, 1, 4, 9, 16]  # _submit_chunk: no cut


def feeder_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ferropool-map-feeder" and t.is_alive()]


def test_a_chunk_cut_short_after_the_input_ended_starts_a_feeder_for_its_rest():
    pool = CuttingPool(workers=1, deferred=True)
    results = pool.map(identity, range(8))
    assert pool.chunk_sizes == [2, 2, 2, 2]
    assert not feeder_threads()
    pool.finish(0, ran=1)  # the first chunk ran 1 of its 2 items
    pool.wait_for_chunks(5)
    assert pool.pending[4][1] == [1], "the rest went again"
    for index in range(1, 5):
        pool.finish(index)
    assert list(results) == list(range(8))
    for t in feeder_threads():
        t.join(10)
    assert not feeder_threads(), "the feeder ends once no rest is left to send"


def test_closing_map_with_a_rest_unsent_cancels_what_is_pending():
    pool = CuttingPool(workers=1, deferred=True)
    results = pool.map(identity, range(8))
    pool.finish(0, ran=1)
    pool.wait_for_chunks(5)
    assert next(results) == 0
    results.close()
    assert all(fut.cancelled() for fut, _, _ in pool.pending[1:]), "chunks still pending are cancelled"


def test_map_of_several_iterables_stops_at_the_shortest():
    pool = FakePool()
    assert list(pool.map(pow, [2, 3, 4], [5, 6])) == [32, 729]


# ----------------------------------------------------------------- TaskOptions


class Backend:
    """What ``TaskOptions`` needs of a pool: ``_submit``, ``_chunk_runner`` and the rest it
    forwards. Runs each call at once and records how it was asked."""

    _max_workers = 3
    _runs_coroutines = True

    def __init__(self):
        self.calls: list[tuple] = []
        self.lock = threading.Lock()

    def _submit(self, fn, args, kwargs, task_timeout, shown):
        with self.lock:
            self.calls.append((fn, args, kwargs, task_timeout, shown))
        try:
            return done_future(fn(*args, **kwargs))
        except Exception as exc:
            return done_future(exception=exc)

    _chunk_runner = staticmethod(chunk_runner)

    def stats(self, *args, **kwargs):
        return ("stats", args, kwargs)

    def shutdown(self, wait=True, *, cancel_futures=False):
        self.calls.append(("shutdown", wait, cancel_futures))

    def __repr__(self):
        return "<Backend>"


def capture(*args, **kwargs):
    return args, kwargs


def test_task_options_takes_the_pools_workers():
    view = TaskOptions(Backend(), 2.5)
    assert view._max_workers == 3
    assert view._runs_coroutines is True
    assert view._task_timeout == 2.5


def test_task_options_submit_passes_its_timeout_and_the_call_unchanged():
    backend = Backend()
    view = TaskOptions(backend, 2.5)
    assert view.submit(capture, 1, fn=2, self=3).result(timeout=0) == ((1,), {"fn": 2, "self": 3})
    assert backend.calls == [(capture, (1,), {"fn": 2, "self": 3}, 2.5, capture)]


def test_task_options_map_sends_one_item_per_task_through_the_pools_chunk_runner():
    backend = Backend()
    view = TaskOptions(backend, 2.5)
    assert list(view.map(pow, [2, 3, 4], [2, 2, 2])) == [4, 9, 16]
    assert backend.calls == [(run_chunk, (pow, [args]), {}, 2.5, pow) for args in [(2, 2), (3, 2), (4, 2)]]


def test_task_options_without_a_timeout_sizes_chunks_itself():
    backend = Backend()
    view = TaskOptions(backend, None)
    assert list(view.map(identity, range(5), chunksize=2)) == [0, 1, 2, 3, 4]
    assert [len(args[1]) for _, args, _, _, _ in backend.calls] == [1, 2, 2]
    assert {timeout for *_, timeout, _ in backend.calls} == {None}


def test_task_options_forwards_stats_shutdown_and_repr_to_the_pool():
    backend = Backend()
    view = TaskOptions(backend, 1.0)
    assert view.stats(0.5) == ("stats", (0.5,), {})
    view.shutdown(wait=False, cancel_futures=True)
    assert backend.calls == [("shutdown", False, True)]
    assert repr(view) == "<TaskOptions task_timeout=1.0 of <Backend>>"


@pytest.mark.parametrize(
    "bad, exc",
    [(0, ValueError), (-0.5, ValueError), (float("inf"), ValueError), ("2", TypeError), (False, TypeError)],
)
def test_options_rejects_a_timeout_that_is_not_a_positive_number_of_seconds(pool, bad, exc):
    with pytest.raises(exc, match="task_timeout"):
        pool.options(task_timeout=bad)


def test_options_takes_seconds_as_a_float_or_none(pool):
    view = pool.options(task_timeout=2)
    assert isinstance(view, TaskOptions)
    assert view._task_timeout == 2.0 and type(view._task_timeout) is float
    assert pool.options(task_timeout=None)._task_timeout is None
