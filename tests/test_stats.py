"""``pool.stats()``: per-worker counts and times, restarts with their causes, the table and the
dict (``python/ferropool/_stats.py``, counted in ``crates/ferropool-engine/src/stats.rs``).

Restarts are recorded when the old process's exit is handled, which happens before its
replacement runs anything: so each test waits for a task on the replacement, never sleeps."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

import helpers
from ferropool import PoolStats, TaskTimeoutError, ThreadPool, WorkerDiedError

WAIT = 30


def pid_after(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


def exit_with(code: int) -> None:
    os._exit(code)


def kill_self(sig: int) -> None:
    os.kill(os.getpid(), sig)


def test_counts_are_exact_per_worker(make_pool):
    pool = make_pool(2)
    futures = [pool.submit(helpers.echo, i) for i in range(50)]
    failing = [pool.submit(helpers.raise_value_error, "x") for _ in range(3)]
    assert [f.result(timeout=WAIT) for f in futures] == list(range(50))
    for f in failing:
        with pytest.raises(ValueError):
            f.result(timeout=WAIT)
    stats = pool.stats()
    assert isinstance(stats, PoolStats)
    assert len(stats.workers) == 2
    assert [w.worker for w in stats.workers] == [0, 1]
    assert sum(w.tasks for w in stats.workers) == stats.tasks == 53
    assert sum(w.failed for w in stats.workers) == stats.failed == 3
    assert all(w.pid is not None and w.restarts == 0 for w in stats.workers)
    for w in stats.workers:
        assert 0 <= w.serialize_s <= w.busy_s + 1e-6
        assert w.transport_s >= 0
        # alive_s runs from when the dispatcher read the worker's Ready, busy_s is what the
        # worker measured: a busy dispatcher can read Ready after the first tasks began.
        assert w.alive_s >= w.busy_s - 0.05


def test_busy_time_covers_the_tasks_and_the_slowest_is_kept(make_pool):
    pool = make_pool(2)
    sleeps = [0.02] * 6 + [0.3]
    pids = [f.result(timeout=WAIT) for f in [pool.submit(pid_after, s) for s in sleeps]]
    stats = pool.stats()
    assert stats.busy_s >= sum(sleeps)
    assert stats.max_task_s >= 0.3
    slow = next(w for w in stats.workers if w.pid == pids[-1])
    assert slow.max_task_s >= 0.3
    assert slow.mean_task_s is not None and slow.mean_task_s <= slow.max_task_s
    assert all(w.idle_s is not None and w.idle_s >= 0 for w in stats.workers)


def test_crashes_are_restarts_with_their_exit(make_pool):
    pool = make_pool(1)
    with pytest.raises(WorkerDiedError):
        pool.submit(exit_with, 3).result(timeout=WAIT)
    with pytest.raises(WorkerDiedError):
        pool.submit(kill_self, signal.SIGSEGV).result(timeout=WAIT)
    assert pool.submit(helpers.echo, "after").result(timeout=WAIT) == "after"
    (w,) = pool.stats().workers
    assert w.restarts == 2
    first, second = w.recent_restarts
    assert (first.cause, first.exitcode, first.signal) == ("crashed", 3, None)
    assert (second.cause, second.signal) == ("crashed", signal.SIGSEGV)
    assert "killed by SIGSEGV" in str(second)
    assert "exit code 3" in str(first)


def test_a_timeout_stop_is_a_restart_with_its_cause(make_pool):
    pool = make_pool(1)
    with pytest.raises(TaskTimeoutError):
        pool.options(task_timeout=0.3).submit(time.sleep, 60).result(timeout=WAIT)
    assert pool.submit(helpers.echo, 1).result(timeout=WAIT) == 1  # runs on the replacement
    (w,) = pool.stats().workers
    assert [r.cause for r in w.recent_restarts] == ["task_timeout"]
    assert w.recent_restarts[0].signal == signal.SIGTERM
    assert w.tasks == 1, "the stopped task was not answered"


def test_recycling_is_a_restart_with_its_cause(make_pool):
    pool = make_pool(1, max_tasks_per_child=2)
    pids = [pool.submit(pid_after, 0).result(timeout=WAIT) for _ in range(3)]
    assert pids[0] == pids[1] != pids[2]
    (w,) = pool.stats().workers
    assert [(r.cause, r.pid, r.exitcode) for r in w.recent_restarts] == [("max_tasks_per_child", pids[0], 0)]
    assert (w.tasks, w.pid) == (3, pids[2])


def test_the_table_has_a_header_and_a_line_per_worker_and_the_dict_is_json(make_pool):
    pool = make_pool(2)
    [f.result(timeout=WAIT) for f in [pool.submit(helpers.echo, i) for i in range(200)]]
    stats = pool.stats()
    lines = str(stats).splitlines()
    assert lines[0].startswith("ProcessPool: 2 workers, 200 tasks (0 failed), 0 restarts")
    assert lines[1].split()[:4] == ["worker", "pid", "tasks", "failed"]
    assert [line.split()[0] for line in lines[2:]] == ["0", "1"]
    data = json.loads(json.dumps(stats.as_dict()))
    assert data["tasks"] == 200 and len(data["workers"]) == 2
    assert data["parent_serialize_s"] > 0, "ids 64, 128 and 192 were timed"
    with pytest.raises(AttributeError):
        stats.tasks = 0  # type: ignore[misc]  # a frozen snapshot


def test_stats_after_shutdown_keep_the_totals(make_pool):
    pool = make_pool(2)
    [f.result(timeout=WAIT) for f in [pool.submit(helpers.echo, i) for i in range(10)]]
    pool.shutdown(wait=True)
    stats = pool.stats()
    assert stats.tasks == 10
    assert all(w.pid is None for w in stats.workers)
    assert stats.restarts == 0, "exiting at shutdown is not a restart"


def test_thread_pool_counts_tasks_per_thread():
    with ThreadPool(3) as pool:
        [f.result(timeout=WAIT) for f in [pool.submit(time.sleep, 0.01) for _ in range(12)]]
        stats = pool.stats()
    assert stats.kind == "ThreadPool"
    assert stats.tasks == 12 == sum(w.tasks for w in stats.workers)
    assert 1 <= len(stats.workers) <= 3
    assert stats.busy_s >= 0.12
    assert str(stats).startswith("ThreadPool: ")
    json.dumps(stats.as_dict())
