"""The joblib backends ``"ferropool"`` and ``"ferropool-threads"`` (``ferropool.joblib``)."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

import pytest

joblib = pytest.importorskip("joblib", reason="needs joblib: pip install 'ferropool[joblib]'")

from joblib import Parallel, delayed, parallel_config  # noqa: E402

import ferropool.joblib  # noqa: E402  (registers the backends)
import helpers  # noqa: E402
from ferropool.errors import RemoteTraceback, WorkerDiedError  # noqa: E402

WAIT = 30


def square(x):
    return x * x


def pid_of(_):
    return os.getpid()


def exit_worker(code):
    os._exit(code)


@pytest.fixture(autouse=True)
def fresh_pools():
    """The backend keeps its pools between Parallel calls; each test ends with none left, so
    that the conftest's check for leaked child processes holds."""
    yield
    ferropool.joblib._shutdown_pools()


@pytest.fixture(params=["ferropool", "ferropool-threads"])
def backend(request):
    with parallel_config(backend=request.param):
        yield request.param


def test_importing_ferropool_does_not_import_joblib():
    code = "import sys, ferropool; print('joblib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_results_in_order(backend):
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(100)) == [i * i for i in range(100)]


def test_runs_in_ferropool_workers():
    with parallel_config(backend="ferropool"):
        pids = set(Parallel(n_jobs=2)(delayed(pid_of)(i) for i in range(20)))
    assert os.getpid() not in pids
    pool = ferropool.joblib._pools[("process", 2)]
    assert isinstance(pool, ferropool.ProcessPool)


def test_pool_is_kept_between_calls():
    with parallel_config(backend="ferropool"):
        Parallel(n_jobs=2)(delayed(square)(i) for i in range(4))
        first = ferropool.joblib._pools[("process", 2)]
        Parallel(n_jobs=2)(delayed(square)(i) for i in range(4))
    assert ferropool.joblib._pools[("process", 2)] is first


def test_joblib_batches_tiny_tasks(backend, monkeypatch):
    submitted = []
    submit = ferropool.joblib.FerropoolBackend.submit

    def counting_submit(self, func, callback=None):
        submitted.append(len(func))  # a BatchedCalls: its length is the batch size
        return submit(self, func, callback)

    monkeypatch.setattr(ferropool.joblib.FerropoolBackend, "submit", counting_submit)
    assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(20000)) == [i * i for i in range(20000)]
    assert sum(submitted) == 20000
    assert max(submitted) > 1  # joblib's auto-batching grew the batches


def test_return_as_generator_is_lazy(backend, gate_factory):
    release = gate_factory()
    gen = Parallel(n_jobs=2, return_as="generator")(
        delayed(helpers.block_on)(v, release) for v in [1, 2, helpers.BLOCK]
    )
    assert next(gen) == 1  # before the last task can finish
    assert next(gen) == 2
    release.set()
    assert list(gen) == [helpers.BLOCK]


def test_return_as_generator_unordered(backend):
    gen = Parallel(n_jobs=2, return_as="generator_unordered")(delayed(square)(i) for i in range(10))
    assert sorted(gen) == [i * i for i in range(10)]


def test_timeout_raises_and_stops_running_batches():
    with parallel_config(backend="ferropool"):
        start = time.monotonic()
        with pytest.raises(multiprocessing.TimeoutError):  # what joblib raises on every backend
            Parallel(n_jobs=2, timeout=0.5)(delayed(time.sleep)(s) for s in [0.01, 60, 60])
        assert time.monotonic() - start < 10
        # The sleeping batches were stopped: both workers take new work at once.
        assert Parallel(n_jobs=2, timeout=WAIT)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]


def test_exception_keeps_type_and_remote_traceback():
    with parallel_config(backend="ferropool"):
        with pytest.raises(helpers.TaskError) as info:
            Parallel(n_jobs=2)(delayed(helpers.raise_task_error)(i, "bad") for i in range(3))
    assert isinstance(info.value.__cause__, RemoteTraceback)


def test_exception_in_threads(backend):
    with pytest.raises(KeyError):
        Parallel(n_jobs=2)(delayed(helpers.raise_key_error)(i) for i in range(3))


def test_worker_death_raises_worker_died_error():
    with parallel_config(backend="ferropool"):
        with pytest.raises(WorkerDiedError):
            Parallel(n_jobs=2)(delayed(exit_worker)(1) for _ in range(2))
        assert Parallel(n_jobs=2)(delayed(square)(i) for i in range(3)) == [0, 1, 4]


def test_n_jobs_negative_and_none():
    with parallel_config(backend="ferropool"):
        backend = ferropool.joblib.FerropoolBackend()
        assert backend.effective_n_jobs(None) == 1
        assert backend.effective_n_jobs(-1) >= 1
        with pytest.raises(ValueError):
            backend.effective_n_jobs(0)


def test_grid_search_cv():
    pytest.importorskip("sklearn", reason="needs scikit-learn")
    from sklearn.datasets import load_iris
    from sklearn.model_selection import GridSearchCV
    from sklearn.svm import SVC

    X, y = load_iris(return_X_y=True)
    with parallel_config(backend="ferropool"):
        search = GridSearchCV(SVC(), {"C": [0.1, 1, 10]}, n_jobs=2, cv=3).fit(X, y)
    assert search.best_params_ in ({"C": 1}, {"C": 10})
    assert search.best_score_ > 0.9
    assert ("process", 2) in ferropool.joblib._pools


NESTED_UNDER_FORK = """
import multiprocessing
from joblib import Parallel, delayed, parallel_config
import ferropool.joblib

def inner(backend):
    with parallel_config(backend=backend):
        return sum(Parallel(n_jobs=2)(delayed(abs)(-i) for i in range(10)))

if __name__ == "__main__":
    for backend in ("ferropool", "ferropool-threads"):
        print(backend, inner(backend))  # the parent caches a pool of each kind
        with multiprocessing.get_context("fork").Pool(2) as outer:
            print(backend, outer.map(inner, [backend] * 3))
"""


def test_nested_parallel_in_forked_workers_gets_fresh_pools(tmp_path):
    # joblib's own test_nested_loop: a multiprocessing parent whose forked workers use the
    # backend. They inherited the parent's cached pools, without threads or workers.
    script = tmp_path / "nested.py"
    script.write_text(NESTED_UNDER_FORK)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=45, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "ferropool 45",
        "ferropool [45, 45, 45]",
        "ferropool-threads 45",
        "ferropool-threads [45, 45, 45]",
    ]


def test_unordered_results_do_not_wait_behind_a_long_batch(gate_factory):
    # joblib's test_parallel_unordered_generator_returns_fastest_first. The pool sends a worker
    # a second task while it runs one whose length it cannot know yet; the backend holds each
    # call's batches until a worker is free, so the short ones go to the other worker.
    release = gate_factory()
    values = [0, helpers.BLOCK, *range(2, 10)]
    with parallel_config(backend="ferropool"):
        start = time.monotonic()
        gen = Parallel(n_jobs=2, return_as="generator_unordered")(delayed(helpers.block_on)(v, release) for v in values)
        quick = sorted(next(gen) for _ in range(9))
        elapsed = time.monotonic() - start
        release.set()
        assert list(gen) == [helpers.BLOCK]
    assert quick == [0, *range(2, 10)]
    assert elapsed < helpers.TASK_WAIT_TIMEOUT / 2  # not held until the blocked task gave up


def test_aborted_thread_call_leaves_the_next_call_free_threads(gate_factory):
    # Running threads cannot be stopped: a call that times out must not leave them in the pool
    # the next call takes (joblib's test_parallel_timeout_fail_with_generator).
    release = gate_factory()
    with parallel_config(backend="ferropool-threads"):
        with pytest.raises(multiprocessing.TimeoutError):
            Parallel(n_jobs=2, timeout=0.2)(delayed(helpers.block_on)(helpers.BLOCK, release) for _ in range(4))
        start = time.monotonic()
        assert Parallel(n_jobs=2, timeout=WAIT)(delayed(square)(i) for i in range(4)) == [0, 1, 4, 9]
        assert time.monotonic() - start < helpers.TASK_WAIT_TIMEOUT / 2
    release.set()


NESTED = """
import sys
from joblib import Parallel, delayed
import ferropool.joblib

def inner(backend):
    return sum(Parallel(n_jobs=2, backend=backend)(delayed(abs)(-i) for i in range(10)))

if __name__ == "__main__":
    outer, inner_backend = sys.argv[1:]
    print(Parallel(n_jobs=2, backend=outer)(delayed(inner)(inner_backend) for _ in range(4)))
"""


@pytest.mark.parametrize(
    "outer, inner",
    [
        # Threads: each call takes a pool of its own, so the inner calls do not queue behind
        # the outer batches that wait for them.
        ("ferropool-threads", "ferropool-threads"),
        # Processes: the worker is a fresh interpreter and ``inner`` is pickled by value; the
        # batch wrapper imports ferropool.joblib there, registering the backends.
        ("ferropool", "ferropool"),
        ("ferropool", "ferropool-threads"),
    ],
)
def test_nested_parallel_calls(tmp_path, outer, inner):
    # joblib's test_nested_loop, in a child process: a deadlock there must not hang this one.
    script = tmp_path / "nested.py"
    script.write_text(NESTED)
    proc = subprocess.run(
        [sys.executable, str(script), outer, inner], capture_output=True, text=True, timeout=WAIT, cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[45, 45, 45, 45]"
