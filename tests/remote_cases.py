"""Behaviour every cluster-backed pool (``DaskPool``, ``RayPool``) must show, written once.

``tests/test_dask.py`` and ``tests/test_ray.py`` import these tests and provide the fixtures
``rpool`` (a pool on the module's cluster, shut down after the test) and ``make_rpool``. Task
functions live here or in ``helpers`` at module level, so that cluster workers import them.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import gc
import os
import threading
import time

import pytest

import helpers
from ferropool.errors import RemoteTraceback, SerializationError, TaskTimeoutError, WorkerDiedError

#: Longest a test waits for one result from the cluster.
WAIT = 30


def square(x):
    return x * x


def spin(seconds):
    """Pure-Python busy loop: stoppable without killing the worker."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def exit_worker(code):
    os._exit(code)


def return_lock(_):
    return threading.Lock()


def array_sum(a, scale=1):
    return float(a.sum()) * scale


def test_submit_returns_a_concurrent_future(rpool):
    fut = rpool.submit(square, 7)
    assert isinstance(fut, cf.Future)
    assert fut.result(timeout=WAIT) == 49


def test_map_chunks_and_keeps_order(rpool):
    assert list(rpool.map(square, range(2000), timeout=WAIT)) == [x * x for x in range(2000)]
    # Chunked: far fewer tasks than items.
    assert rpool.stats().as_dict()["submitted"] < 2000


def test_wait_as_completed_and_asyncio(rpool):
    futs = [rpool.submit(square, i) for i in range(20)]
    _, not_done = cf.wait(futs, timeout=WAIT)
    assert not not_done
    assert sorted(f.result() for f in cf.as_completed(futs, timeout=WAIT)) == sorted(i * i for i in range(20))

    async def main():
        return await asyncio.gather(*(asyncio.wrap_future(rpool.submit(square, i)) for i in range(5)))

    assert asyncio.run(asyncio.wait_for(main(), WAIT)) == [0, 1, 4, 9, 16]


def test_exception_keeps_its_type_and_remote_traceback(rpool):
    fut = rpool.submit(helpers.raise_task_error, 3, "three")
    with pytest.raises(helpers.TaskError) as info:
        fut.result(timeout=WAIT)
    assert info.value.args == (3, "three")
    assert isinstance(info.value.__cause__, RemoteTraceback)
    assert "raise_task_error" in str(info.value.__cause__)


def test_map_raises_at_the_failing_item(rpool):
    it = rpool.map(helpers.block_on, [1, 2, "x"], [None] * 3, timeout=WAIT)
    assert next(it) == 1
    results = rpool.map(helpers.raise_value_error, ["boom"], timeout=WAIT)
    with pytest.raises(ValueError, match="boom"):
        list(results)


def test_unpicklable_argument_fails_at_submit(rpool):
    with pytest.raises(SerializationError, match=r"args\[0\]"):
        rpool.submit(helpers.echo, threading.Lock())
    assert rpool.stats().as_dict()["submitted"] == 0


def test_unpicklable_result_names_result(rpool):
    with pytest.raises(SerializationError, match="result"):
        rpool.submit(return_lock, 1).result(timeout=WAIT)


def test_task_timeout_stops_pure_python_task(rpool):
    start = time.monotonic()
    fut = rpool.options(task_timeout=0.5).submit(spin, 60)
    with pytest.raises(TaskTimeoutError) as info:
        fut.result(timeout=WAIT)
    assert info.value.timeout == 0.5
    assert time.monotonic() - start < 10
    assert rpool.stats().as_dict()["timed_out"] == 1
    # The cluster's capacity is back: every worker can take a task.
    assert list(rpool.map(spin, [0.01] * rpool.max_workers, timeout=WAIT))


def test_task_timeout_stops_task_blocked_in_c(make_rpool):
    pool = make_rpool()
    fut = pool.options(task_timeout=0.5).submit(time.sleep, 60)
    with pytest.raises(TimeoutError):
        fut.result(timeout=WAIT)
    # Untimed: the worker that had to be killed may still be restarting, and a timed task's
    # clock would count that wait (see docs/scale-out.md).
    assert [f.result(timeout=WAIT) for f in [pool.submit(square, i) for i in range(4)]] == [0, 1, 4, 9]


def test_timeout_counts_run_time_not_queue_time(make_rpool):
    pool = make_rpool(task_timeout=5)
    # 3 x workers tasks of 0.5 s each: the last start ~1.5 s after submit but each runs 0.5 s.
    n = 3 * pool.max_workers
    assert list(pool.map(helpers.sleep_and_return, [0.5] * n, range(n), timeout=WAIT)) == list(range(n))


def test_cancel_stops_running_task(rpool, gate_factory):
    started = gate_factory()
    fut = rpool.submit(helpers.started_then_sleep, started, 60)
    assert started.wait(WAIT)
    assert fut.cancel()
    assert fut.cancelled()
    done, _ = cf.wait([fut], timeout=1)
    assert done == {fut}
    # Both workers (one replaced, if it had to be killed) take new tasks.
    assert list(rpool.map(square, range(rpool.max_workers), chunksize=1, timeout=WAIT))
    assert rpool.stats().as_dict()["cancelled"] == 1


def test_cancel_queued_task(make_rpool, gate_factory):
    pool = make_rpool()
    release = gate_factory()
    blockers = [pool.submit(helpers.wait_for, release) for _ in range(pool.max_workers)]
    queued = pool.submit(square, 3)
    assert queued.cancel()
    release.set()
    assert [b.result(timeout=WAIT) for b in blockers] == [None] * pool.max_workers
    assert queued.cancelled()


def test_cancel_twice_or_from_many_threads_at_once_cancels_once(make_rpool, gate_factory):
    # As concurrent.futures.Future.cancel: True again for a cancelled future, never an error,
    # and the task is counted and stopped once however many threads cancel it together.
    pool = make_rpool()
    release = gate_factory()
    blockers = [pool.submit(helpers.wait_for, release) for _ in range(pool.max_workers)]
    queued = [pool.submit(square, i) for i in range(20)]
    callbacks = []
    for fut in queued:
        fut.add_done_callback(callbacks.append)
    start = threading.Barrier(4)
    answers: list = []

    def cancel_all() -> None:
        start.wait(timeout=WAIT)
        answers.extend(fut.cancel() for fut in queued)

    threads = [threading.Thread(target=cancel_all) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT)
    assert not any(t.is_alive() for t in threads)
    assert answers == [True] * 80
    assert all(fut.cancel() for fut in queued), "a second cancel() returns True"
    assert sorted(callbacks, key=queued.index) == queued, "each callback ran once"
    assert cf.wait(queued, timeout=0).not_done == set()
    release.set()
    assert [b.result(timeout=WAIT) for b in blockers] == [None] * pool.max_workers
    assert pool.stats().as_dict()["cancelled"] == 20


def test_worker_death_raises_worker_died_error(rpool):
    fut = rpool.submit(exit_worker, 3)
    with pytest.raises(WorkerDiedError) as info:
        fut.result(timeout=WAIT)
    assert "exit_worker" in str(info.value)
    assert rpool.submit(square, 5).result(timeout=WAIT) == 25


def test_large_array_goes_through_the_object_store_once(rpool):
    np = pytest.importorskip("numpy")
    a = np.ones(1 << 18)  # 2 MiB
    futs = [rpool.submit(array_sum, a, scale=i) for i in range(3)]
    assert [f.result(timeout=WAIT) for f in futs] == [0.0, float(1 << 18), float(2 << 18)]
    assert len(rpool._shared) == 1
    del a, futs
    gc.collect()
    assert len(rpool._shared) == 0


def test_small_array_is_pickled(rpool):
    np = pytest.importorskip("numpy")
    assert rpool.submit(array_sum, np.ones(10)).result(timeout=WAIT) == 10.0
    assert len(rpool._shared) == 0


def test_stats(rpool):
    [f.result(timeout=WAIT) for f in [rpool.submit(square, i) for i in range(3)]]
    with pytest.raises(ValueError):
        rpool.submit(helpers.raise_value_error, "x").result(timeout=WAIT)
    stats = rpool.stats().as_dict()
    assert {k: stats[k] for k in ("submitted", "done", "failed", "cancelled", "timed_out", "running")} == {
        "submitted": 4,
        "done": 3,
        "failed": 1,
        "cancelled": 0,
        "timed_out": 0,
        "running": 0,
    }
    assert stats["mean_task_s"] >= 0


def test_shutdown_refuses_new_tasks(make_rpool):
    pool = make_rpool()
    fut = pool.submit(helpers.sleep_and_return, 0.2, "done")
    pool.shutdown(wait=True)
    assert fut.result(timeout=0) == "done"
    with pytest.raises(RuntimeError):
        pool.submit(square, 1)


def test_shutdown_cancel_futures(make_rpool, gate_factory):
    pool = make_rpool()
    if type(pool).__name__ == "DaskPool":
        # Dask tells running tasks from queued ones: the standard library's meaning.
        started, release = gate_factory(), gate_factory()
        running = pool.submit(helpers.signal_and_wait, started, release, "finished")
        assert started.wait(WAIT)
        queued = [pool.submit(square, i) for i in range(5)]
        stopper = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True}, daemon=True)
        stopper.start()
        done, _ = cf.wait(queued, timeout=WAIT)
        assert len(done) == len(queued), "the queued tasks were not cancelled while one ran"
        assert not running.done(), "the running task was cancelled"
        release.set()
        stopper.join(WAIT)
        assert not stopper.is_alive()
        assert running.result(timeout=0) == "finished"
        assert all(f.cancelled() or f.result(timeout=0) == i * i for i, f in enumerate(queued))
        return
    # Ray cannot tell them apart: every unfinished task is cancelled, running ones stopped.
    started = gate_factory()
    running = pool.submit(helpers.started_then_sleep, started, 60)
    assert started.wait(WAIT)
    queued = [pool.submit(square, i) for i in range(5)]
    pool.shutdown(wait=True, cancel_futures=True)
    assert running.cancelled()
    assert all(f.done() for f in queued)


def test_the_asyncio_api_and_progress_bars_work_as_on_one_machine(rpool):
    import io

    async def main():
        first = await rpool.run(square, 6)
        ordered = [x async for x in rpool.map_async(square, range(20))]
        unordered = sorted([x async for x in rpool.map_unordered_async(square, range(20))])
        return first, ordered, unordered

    first, ordered, unordered = asyncio.run(asyncio.wait_for(main(), WAIT))
    assert first == 36 and ordered == unordered == [x * x for x in range(20)]
    bar = io.StringIO()
    assert list(rpool.map(square, range(50), progress={"file": bar})) == [x * x for x in range(50)]
    assert "50/50" in bar.getvalue()
