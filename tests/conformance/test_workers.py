"""The workers themselves: where a task runs, ``max_workers``, ``max_tasks_per_child`` and
``thread_name_prefix`` (CPython's ``test_process_pool.py`` and ``test_thread_pool.py``)."""

from __future__ import annotations

import os
import re
import threading

import pytest

import helpers
from helpers import mul, shutdown_bounded

from .util import T


def test_runs_in_a_worker(make_executor, executor_kind):
    ex = make_executor()
    pid, tid = ex.submit(helpers.where).result(timeout=T)
    if executor_kind.is_process:
        assert pid != os.getpid()
    else:
        assert pid == os.getpid()
        assert tid != threading.get_ident()


@pytest.mark.parametrize("max_workers", [0, -1])
def test_max_workers_not_positive_raises_value_error(executor_kind, max_workers):
    with pytest.raises(ValueError, match="max_workers"):
        ex = executor_kind.create(max_workers=max_workers)
        shutdown_bounded(ex, wait=True)  # only reached when no error was raised


@pytest.mark.kinds("process")
def test_max_tasks_per_child_replaces_worker(make_executor):
    ex = make_executor(max_workers=1, max_tasks_per_child=2)
    pids = [ex.submit(os.getpid).result(timeout=T) for _ in range(5)]
    assert pids[0] == pids[1]
    assert pids[2] == pids[3]
    assert len({pids[0], pids[2], pids[4]}) == 3, pids
    assert os.getpid() not in pids


@pytest.mark.kinds("process")
@pytest.mark.ferropool_only(
    reason="CPython gh-115634: the stdlib before 3.14 deadlocks when workers retire "
    "at max_tasks_per_child with a backlog queued"
)
@pytest.mark.parametrize("max_workers, max_tasks, n_tasks", [(1, 2, 6), (2, 2, 8)])
def test_max_tasks_per_child_with_backlog(make_executor, max_workers, max_tasks, n_tasks):
    # CPython gh-115634: queued work must still run when workers retire.
    ex = make_executor(max_workers=max_workers, max_tasks_per_child=max_tasks)
    fs = [ex.submit(mul, i, 2) for i in range(n_tasks)]
    assert [f.result(timeout=T) for f in fs] == [i * 2 for i in range(n_tasks)]


@pytest.mark.kinds("thread")
def test_thread_name_prefix(make_executor):
    ex = make_executor(max_workers=2, thread_name_prefix="SpecialPool")
    names = {f.result(timeout=T) for f in [ex.submit(helpers.current_thread_name) for _ in range(4)]}
    assert names
    for name in names:
        assert re.fullmatch(r"SpecialPool_\d+", name), name
