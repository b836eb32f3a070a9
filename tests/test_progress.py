"""Tests of progress bars (python/ferropool/_progress.py): ``ferropool.progress`` and
``map(..., progress=...)``, with tqdm and with the text bar that stands in without it.

Every bar made during a test is recorded (``bars``), so tests check the count it reached and
that it closed, not only what it drew."""

from __future__ import annotations

import concurrent.futures as cf
import io
import sys
import threading

import pytest

import ferropool
from ferropool import _progress
from helpers import raise_value_error

pytestmark = pytest.mark.ferropool_only("progress bars are ferropool's")

BOUND = 10  # seconds; every wait that should finish is bounded by it


def add_one(x):
    return x + 1


def fail_at(x, bad):
    if x == bad:
        raise ValueError(f"bad item {x}")
    return x


@pytest.fixture
def bars(monkeypatch):
    """Every ``_Bar`` opened during the test, in order."""
    made = []

    class Recorded(_progress._Bar):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(_progress, "_Bar", Recorded)
    return made


@pytest.fixture
def no_tqdm(monkeypatch):
    """Makes ``import tqdm`` fail, as when the ``progress`` extra is not installed."""
    for name in ("tqdm", "tqdm.auto", "tqdm.std"):
        monkeypatch.setitem(sys.modules, name, None)


class TtyStream(io.StringIO):
    def isatty(self):
        return True


def finished_futures(values):
    futures = [cf.Future() for _ in values]
    for fut, value in zip(futures, values, strict=True):
        fut.set_result(value)
    return futures


# ------------------------------------------------------------------ map


def test_map_bar_counts_every_item_and_closes(make_executor, bars):
    stream = io.StringIO()
    pool = make_executor()
    assert list(pool.map(add_one, range(1000), progress={"file": stream, "desc": "adding"})) == list(range(1, 1001))
    (bar,) = bars
    assert bar.closed and bar.n == 1000 and bar.view.n == 1000 and bar.view.total == 1000
    assert "adding: 100%" in stream.getvalue() and "1000/1000" in stream.getvalue()


def test_map_bar_counts_items_not_chunks(make_executor, bars):
    pool = make_executor()
    results = pool.map(add_one, range(100), chunksize=7, progress={"file": io.StringIO()})
    assert sum(results) == sum(range(1, 101))
    assert bars[0].closed and bars[0].view.n == 100  # 15 chunks, 100 items


def test_map_bar_with_unknown_length(make_executor, bars):
    pool = make_executor()
    assert sum(pool.map(add_one, (i for i in range(500)), progress={"file": io.StringIO()})) == sum(range(1, 501))
    assert bars[0].closed and bars[0].view.total is None and bars[0].view.n == 500


def test_map_early_break_closes_bar(make_executor, bars):
    pool = make_executor()
    results = pool.map(add_one, range(100_000), chunksize=10, progress={"file": io.StringIO()})
    for value in results:
        if value == 5:
            break
    assert not bars[0].closed
    results.close()
    assert bars[0].closed and bars[0].n < 100_000


def test_map_exception_propagates_and_closes_bar(make_executor, bars):
    pool = make_executor()
    seen = []
    with pytest.raises(ValueError, match="bad item 30"):
        for value in pool.map(fail_at, range(100), [30] * 100, chunksize=8, progress={"file": io.StringIO()}):
            seen.append(value)
    assert seen == list(range(30))
    assert bars[0].closed and bars[0].n < 100


def test_map_after_shutdown_closes_bar(make_executor, bars):
    pool = make_executor()
    pool.shutdown()
    with pytest.raises(RuntimeError):
        pool.map(add_one, range(10), progress={"file": io.StringIO()})
    assert bars[0].closed


def test_map_progress_off_opens_no_bar(make_executor, bars):
    pool = make_executor()
    assert list(pool.map(add_one, range(10), progress=False)) == list(range(1, 11))
    assert list(pool.map(add_one, range(10))) == list(range(1, 11))
    assert bars == []


def test_map_rejects_other_progress_values(make_executor):
    with pytest.raises(TypeError, match="progress must be"):
        make_executor().map(add_one, range(10), progress=5)


def test_map_bar_draws_on_stderr_by_default(make_executor, capsys):
    pool = make_executor()
    assert list(pool.map(add_one, range(50), progress="squares")) == list(range(1, 51))
    out, err = capsys.readouterr()
    assert out == ""
    assert "squares: 100%" in err and "50/50" in err


# ------------------------------------------------------------------ ferropool.progress


def test_progress_over_as_completed(make_executor, bars):
    pool = make_executor()
    futures = [pool.submit(add_one, i) for i in range(200)]
    stream = io.StringIO()
    got = [f.result() for f in ferropool.progress(cf.as_completed(futures), total=len(futures), file=stream)]
    assert sorted(got) == list(range(1, 201))
    assert bars[0].closed and bars[0].view.n == 200
    assert "200/200" in stream.getvalue()


def test_progress_over_list_yields_each_future_done(make_executor, bars):
    pool = make_executor()
    futures = [pool.submit(add_one, i) for i in range(200)]
    yielded = []
    for fut in ferropool.progress(futures, desc="list", file=io.StringIO()):
        assert fut.done()
        yielded.append(fut)
    assert set(yielded) == set(futures) and len(yielded) == 200
    assert bars[0].closed and bars[0].view.n == 200 and bars[0].view.total == 200


def test_progress_over_list_yields_in_completion_order(bars):
    release = threading.Event()
    with ferropool.ThreadPool(2) as pool:
        slow = pool.submit(release.wait, BOUND)
        quick = pool.submit(add_one, 1)
        it = ferropool.progress([slow, quick], file=io.StringIO())
        assert next(it) is quick
        assert bars[0].n == 1 and not bars[0].closed
        release.set()
        assert next(it) is slow
        assert list(it) == []
    assert bars[0].closed and bars[0].n == 2


def test_progress_counts_completions_without_iteration(bars):
    """The bar follows done callbacks: it counts while nobody iterates and closes at the last."""
    futures = [cf.Future() for _ in range(3)]
    ferropool.progress(futures, file=io.StringIO())
    futures[1].set_result(1)
    futures[0].set_result(0)
    assert bars[0].n == 2 and not bars[0].closed
    futures[2].set_exception(ValueError("counted too"))
    assert bars[0].closed and bars[0].view.n == 3


def test_progress_over_dict_and_repeated_futures(bars):
    futures = finished_futures([1, 2])
    by_future = {futures[0]: "a", futures[1]: "b"}
    assert set(ferropool.progress(by_future, file=io.StringIO())) == set(futures)
    assert list(ferropool.progress([futures[0], futures[0]], file=io.StringIO())) == [futures[0]]
    assert [bar.view.total for bar in bars] == [2, 1]


def test_progress_over_empty_list_closes_at_once(bars):
    assert list(ferropool.progress([], file=io.StringIO())) == []
    assert bars[0].closed and bars[0].view.total == 0


def test_progress_exception_in_task_propagates_and_bar_closes(make_executor, bars):
    pool = make_executor()
    futures = [pool.submit(add_one, 1), pool.submit(raise_value_error, "boom")]
    with pytest.raises(ValueError, match="boom"):
        with ferropool.progress(cf.as_completed(futures), total=2, file=io.StringIO()) as done:
            for fut in done:
                fut.result()
    assert bars[0].closed


def test_progress_wrapped_iterator_raising_closes_bar(bars):
    def produce():
        yield 1
        raise KeyError("in the input")

    it = ferropool.progress(produce(), file=io.StringIO())
    assert next(it) == 1
    with pytest.raises(KeyError):
        next(it)
    assert bars[0].closed and bars[0].n == 1 and bars[0].view.total is None


def test_progress_wraps_other_iterables_like_tqdm(bars):
    assert list(ferropool.progress([[1], [2]], file=io.StringIO())) == [[1], [2]]
    assert bars[0].closed and bars[0].view.n == 2 and bars[0].view.total == 2


def test_progress_is_exported_lazily():
    assert "progress" in ferropool.__all__
    assert ferropool.progress is _progress.progress


# ------------------------------------------------------------------ without tqdm


def test_fallback_text_bar_on_a_stream(no_tqdm, make_executor, bars):
    stream = io.StringIO()
    pool = make_executor()
    assert sum(pool.map(add_one, range(300), chunksize=10, progress={"file": stream, "desc": "work"})) == sum(
        range(1, 301)
    )
    assert isinstance(bars[0].view, _progress._TextBar) and bars[0].closed
    lines = stream.getvalue().splitlines()
    # Not a terminal: no carriage returns, one line at the end (and one per TEXT_LINE_INTERVAL).
    assert "\r" not in stream.getvalue()
    assert lines[-1].startswith("work: [####################] 300/300 100% ")


def test_fallback_text_bar_on_a_terminal(no_tqdm, bars):
    stream = TtyStream()
    futures = finished_futures(range(4))
    assert len(list(ferropool.progress(futures, desc="tty", file=stream))) == 4
    text = stream.getvalue()
    assert text.startswith("\rtty: [") and text.endswith("\x1b[K\n")
    assert text.rsplit("\r", 1)[1].startswith("tty: [####################] 4/4 100% ")


def test_fallback_without_total_shows_count_and_rate(no_tqdm, bars):
    stream = io.StringIO()
    assert list(ferropool.progress(iter("abc"), file=stream)) == ["a", "b", "c"]
    assert stream.getvalue().startswith("3 ") and "/s" in stream.getvalue()


def test_progress_over_list_closes_early_at_end_of_with(bars):
    futures = [*finished_futures([1]), cf.Future()]
    with ferropool.progress(futures, file=io.StringIO()) as done:
        assert next(done) is futures[0]
    assert bars[0].closed and bars[0].n == 1
    futures[1].set_result(2)  # a late completion is ignored by the closed bar
    assert bars[0].n == 1
