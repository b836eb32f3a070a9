"""ProcessPool behaviour beyond the shared conformance suite: pickling paths, ``__main__``
without a guard, lazy bounded ``map``, how workers are started, worker crashes."""

from __future__ import annotations

import concurrent.futures as cf
import os
import pickle
import signal
import socket
import subprocess
import sys
import textwrap
import threading

import pytest

import helpers
from ferropool import (
    BrokenPoolError,
    ProcessPool,
    RemoteError,
    SerializationError,
    ThreadPool,
    WorkerDiedError,
    _serialize,
)
from ferropool._executor import CUT_AFTER_S, MAX_CHUNK, window_for
from ferropool._util import usable_cpu_count

RESULT_TIMEOUT = 30


def run_script(tmp_path, source: str, timeout: float = 60) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=timeout, cwd=tmp_path)


# ----------------------------------------------------------------- construction


def test_max_workers_defaults_to_usable_cpus():
    p = ProcessPool()
    try:
        assert p.max_workers == usable_cpu_count() == len(os.sched_getaffinity(0))
    finally:
        p.shutdown()


@pytest.mark.parametrize(
    "kwargs, exc",
    [
        ({"max_workers": 0}, ValueError),
        ({"max_workers": -1}, ValueError),
        ({"max_tasks_per_child": 0}, ValueError),
        ({"initializer": "not callable"}, TypeError),
    ],
)
def test_bad_arguments_raise_at_construction(kwargs, exc):
    with pytest.raises(exc):
        ProcessPool(**kwargs)


def test_workers_are_fresh_interpreters_not_forks(pool):
    pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        argv = f.read().split(b"\0")
    assert argv[0] == sys.executable.encode()
    code = argv.index(b"-c")  # after the interpreter's flags, which workers share
    assert b"-P" in argv[1:code] and b"ferropool._worker" in argv[code + 1]


def test_starting_a_pool_while_a_thread_holds_a_lock_does_not_deadlock(tmp_path):
    # A forked child would inherit the held logging lock and block forever on it.
    proc = run_script(
        tmp_path,
        """
        import logging, threading
        from ferropool import ProcessPool
        held, release = threading.Event(), threading.Event()
        def hold():
            with logging._lock:
                held.set()
                release.wait(30)
        t = threading.Thread(target=hold); t.start(); held.wait(30)
        def log_something():
            logging.getLogger("in-worker").info("x")
            return "ok"
        with ProcessPool(1) as p:
            print(p.submit(log_something).result(timeout=30))
        release.set(); t.join()
    """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_a_fork_child_neither_hangs_at_exit_nor_uses_the_inherited_pool(tmp_path):
    proc = run_script(
        tmp_path,
        """
        import multiprocessing, os
        from ferropool import ProcessPool
        pool = ProcessPool(1)
        pool.submit(os.getpid).result(timeout=30)
        def child(q):
            try:
                pool.submit(os.getpid)
            except RuntimeError as e:
                q.put(str(e))
        ctx = multiprocessing.get_context("fork")
        q = ctx.Queue()
        p = ctx.Process(target=child, args=(q,))
        p.start()
        print(q.get(timeout=30))
        p.join(30)
        print("child exit code", p.exitcode)
        pool.shutdown()
    """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "this ProcessPool was inherited through fork; create a new pool in this process",
        "child exit code 0",
    ]


# --------------------------------------------------------------------- pickling


def test_main_functions_and_lambdas_work_without_a_main_guard(tmp_path):
    proc = run_script(
        tmp_path,
        """
        from ferropool import ProcessPool
        print("top-level code ran")
        def square(x):
            return x * x
        class Point:
            def __init__(self, x): self.x = x
        pool = ProcessPool(2)
        print(list(pool.map(square, range(5))))
        print(pool.submit(lambda p: p.x + 1, Point(41)).result(timeout=30))
        print(type(pool.submit(Point, 3).result(timeout=30)).__name__)
        pool.shutdown()
    """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["top-level code ran", "[0, 1, 4, 9, 16]", "42", "Point"]


def test_closures_work(pool):
    offset = 10

    def add_offset(x):
        return x + offset

    assert pool.submit(add_offset, 1).result(timeout=RESULT_TIMEOUT) == 11
    assert list(pool.map(lambda x: x * offset, [1, 2])) == [10, 20]


def test_importable_functions_never_touch_cloudpickle(pool, monkeypatch):
    def forbidden():
        raise AssertionError("cloudpickle used for an importable function")

    monkeypatch.setattr(_serialize, "_cloud", forbidden)
    assert pool.submit(helpers.mul, 6, 7).result(timeout=RESULT_TIMEOUT) == 42
    assert list(pool.map(helpers.mul, [1, 2], [3, 4])) == [3, 8]


def test_a_by_value_function_is_cloudpickled_once(pool, monkeypatch):
    calls = []
    real = _serialize._cloud()

    class Counting:
        @staticmethod
        def dumps(obj, *args, **kwargs):
            calls.append(obj)
            return real.dumps(obj, *args, **kwargs)

    monkeypatch.setattr(_serialize, "_cloud", lambda: Counting)
    fn = lambda x: x + 1  # noqa: E731
    futures = [pool.submit(fn, i) for i in range(50)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == list(range(1, 51))
    assert len(calls) == 1


def test_unpicklable_argument_fails_the_call_with_its_path(pool):
    sock = socket.socket()
    try:
        with pytest.raises(SerializationError) as info:
            pool.submit(helpers.echo, 1, {"conn": sock})
        assert str(info.value) == "args[1]['conn']: cannot pickle 'socket' object"
        assert isinstance(info.value, TypeError) and isinstance(info.value, pickle.PicklingError)
        with pytest.raises(SerializationError, match=r"^kwargs\['value'\]\.lock: cannot pickle '_thread.lock' object$"):
            pool.submit(helpers.echo, value=Holder())
    finally:
        sock.close()
    assert pool.submit(helpers.mul, 2, 3).result(timeout=RESULT_TIMEOUT) == 6, "the pool is unaffected"


class Holder:
    def __init__(self):
        self.lock = threading.Lock()


def test_unpicklable_result_fails_that_future_only(pool):
    fut = pool.submit(make_lock_list)
    with pytest.raises(SerializationError, match=r"^result\[1\]: cannot pickle '_thread.lock' object$"):
        fut.result(timeout=RESULT_TIMEOUT)
    assert pool.submit(helpers.mul, 2, 3).result(timeout=RESULT_TIMEOUT) == 6


def make_lock_list():
    return [1, threading.Lock()]


class TwoArgError(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def raise_two_arg_error():
    raise TwoArgError("x", "y")


def test_exception_that_cannot_be_rebuilt_arrives_as_remote_error(pool):
    with pytest.raises(RemoteError) as info:
        pool.submit(raise_two_arg_error).result(timeout=RESULT_TIMEOUT)
    assert info.value.type_name.endswith("TwoArgError")
    assert info.value.message == "x/y"
    assert "raise_two_arg_error" in str(info.value.__cause__)
    assert pool.submit(helpers.mul, 2, 3).result(timeout=RESULT_TIMEOUT) == 6


def test_worker_exception_keeps_type_and_remote_traceback(pool):
    with pytest.raises(helpers.TaskError) as info:
        pool.submit(helpers.raise_task_error, 7, "boom").result(timeout=RESULT_TIMEOUT)
    assert "raise_task_error" in str(info.value.__cause__)


# -------------------------------------------------------------------------- map


def test_map_is_lazy_and_bounded_on_an_endless_input(pool):
    consumed = 0

    def endless():
        nonlocal consumed
        while True:
            consumed += 1
            yield consumed

    results = pool.map(helpers.echo, endless())
    first = [next(results) for _ in range(1000)]
    assert first == list(range(1, 1001))
    bound = 2 * window_for(pool.max_workers) * MAX_CHUNK + 1000
    assert consumed <= bound, f"map read {consumed} items ahead of 1000 results (bound {bound})"
    results.close()  # cancels what has not started
    assert pool.submit(helpers.mul, 1, 1).result(timeout=RESULT_TIMEOUT) == 1


def test_map_keeps_memory_flat_on_a_large_generator(tmp_path):
    # Materialising three million (x,) tuples would cost hundreds of MiB.
    proc = run_script(
        tmp_path,
        """
        from ferropool import ProcessPool
        from ferropool.compare.tasks import add_one
        with ProcessPool(2) as pool:
            total = sum(pool.map(add_one, (i for i in range(3_000_000))))
        # VmHWM, not ru_maxrss: the latter carries over the RSS of whoever forked us.
        with open("/proc/self/status") as f:
            hwm_kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
        print(total, hwm_kib // 1024)
    """,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    total, peak_mib = map(int, proc.stdout.split())
    assert total == sum(range(1, 3_000_001))
    assert peak_mib < 150, f"peak RSS {peak_mib} MiB"


def test_map_yields_items_before_a_failing_one_then_raises(pool):
    results = pool.map(raise_value_error_if, range(10), [5] * 10, chunksize=10)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="5"):
        next(results)


def test_map_of_one_iterable_yields_items_before_a_failing_one_then_raises(pool):
    # One iterable: chunks carry the items themselves (run_items), not 1-tuples.
    results = pool.map(helpers.raise_value_error_if_five, range(10), chunksize=10)
    assert [next(results) for _ in range(5)] == [0, 1, 2, 3, 4]
    with pytest.raises(ValueError, match="5"):
        next(results)
    assert list(pool.map(helpers.echo, [(1,), "a", None, [2]])) == [(1,), "a", None, [2]]


@pytest.mark.parametrize("kind", ["process", "thread"])
def test_map_cuts_chunks_of_long_items_short_and_runs_each_item_once(make_pool, kind, tmp_path, monkeypatch):
    # 40 items of at least 10 ms on 2 workers: the first chunks hold 40 // 8 = 5 items, over
    # CUT_AFTER_S, so workers stop them early and the rests are sent again.
    notes = tmp_path / "notes"
    monkeypatch.setenv("FERROPOOL_TEST_NOTES", str(notes))
    assert 5 * 0.01 > CUT_AFTER_S
    pool = make_pool(2) if kind == "process" else ThreadPool(2)
    sent: list[int] = []
    submit_items = pool._submit_items

    def spy(fn, items, *args):
        sent.extend(items)
        return submit_items(fn, items, *args)

    pool._submit_items = spy  # what map submits chunks with
    try:
        assert list(pool.map(helpers.nap_and_note, range(40), timeout=RESULT_TIMEOUT)) == list(range(40))
    finally:
        pool.shutdown()
    assert sorted(int(line) for line in notes.read_text().split()) == list(range(40)), "an item ran twice"
    assert len(sent) > 40, "no chunk was cut short and its rest sent again"


def test_map_of_a_known_length_raises_an_unpicklable_item_in_order(pool):
    # The first chunks go from the caller's thread; only the first one's failure is the call's.
    results = pool.map(helpers.echo, [1, 2, threading.Lock(), 4])
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(SerializationError, match="lock"):
        next(results)


class BreaksAfterTwo:
    """A sized input whose iteration raises after two items."""

    def __len__(self):
        return 100

    def __iter__(self):
        yield 1
        yield 2
        raise LookupError("input broke")


def test_map_of_a_known_length_raises_an_input_error_after_the_items_before_it(pool):
    results = pool.map(helpers.echo, BreaksAfterTwo())
    assert [next(results), next(results)] == [1, 2]
    with pytest.raises(LookupError, match="input broke"):
        next(results)


def test_map_rejects_bad_chunksize(pool):
    with pytest.raises(ValueError):
        pool.map(helpers.echo, [1], chunksize=0)


# ---------------------------------------------------------------------- faults


def test_a_task_never_waits_behind_a_running_one_while_a_worker_is_idle(make_pool, gate_factory):
    pool = make_pool(2)
    started, release = gate_factory(), gate_factory()
    holder = pool.submit(helpers.signal_and_wait, started, release, "held")  # runs until released
    assert started.wait()
    try:
        for i in range(6):
            # 5 ms tasks: the idle worker is then expected to hold just one task at a time, as
            # much room as the holder's worker seems to have; a task queued behind the holder
            # would wait for `release`, which opens only after the loop.
            assert pool.submit(helpers.sleep_and_return, 0.005, i).result(timeout=5) == i
    finally:
        release.set()
    assert holder.result(timeout=RESULT_TIMEOUT) == "held"


def test_sigkilled_worker_fails_only_its_task_and_the_pool_heals(pool, gate_factory, tmp_path):
    started, release = gate_factory(), gate_factory()
    pid_file = str(tmp_path / "pid")
    fut = pool.submit(write_pid_then_wait, pid_file, started, release)
    assert started.wait(RESULT_TIMEOUT)
    with open(pid_file) as f:
        victim = int(f.read())
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerDiedError) as info:
        fut.result(timeout=RESULT_TIMEOUT)
    assert info.value.signal == signal.SIGKILL and info.value.pid == victim
    assert "SIGKILL" in str(info.value)
    futures = [pool.submit(helpers.mul, i, 2) for i in range(20)]
    assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [i * 2 for i in range(20)]


def write_pid_then_wait(path, started, release):
    with open(path, "w") as f:
        f.write(str(os.getpid()))
    return helpers.signal_and_wait(started, release)


def raise_value_error_if(x, bad):
    if x == bad:
        raise ValueError(str(x))
    return x


def test_failing_initializer_breaks_the_pool_with_its_error():
    p = ProcessPool(2, initializer=helpers.init_fail)
    try:
        with pytest.raises(BrokenPoolError) as info:
            p.submit(helpers.mul, 1, 2).result(timeout=RESULT_TIMEOUT)
        assert isinstance(info.value, cf.process.BrokenProcessPool)
        assert "init_fail" in str(info.value.__cause__.__cause__), "the initializer's traceback is kept"
        with pytest.raises(BrokenPoolError):
            p.submit(helpers.mul, 1, 2)
    finally:
        helpers.shutdown_bounded(p)


def test_cancel_pending_but_not_running(pool, gate_factory):
    started, release = gate_factory(), gate_factory()
    running = [pool.submit(helpers.signal_and_wait, started, release, i) for i in range(2)]
    started.wait()
    # Both workers are busy; with prefetch a few tasks may already sit at a worker, so queue
    # plenty and check that cancel() agrees with what later happens.
    queued = [pool.submit(helpers.mul, i, 1) for i in range(200)]
    cancelled = [f for f in queued if f.cancel()]
    assert cancelled, "tasks still in the pool's queue can be cancelled"
    assert all(f.cancelled() for f in cancelled)
    release.set()
    assert [f.result(timeout=RESULT_TIMEOUT) for f in running] == [0, 1]
    for f in queued:
        if f not in cancelled:
            assert f.result(timeout=RESULT_TIMEOUT) == queued.index(f)


def test_cancelled_futures_count_as_done_for_wait_and_as_completed(pool, gate_factory):
    started, release = gate_factory(), gate_factory()
    busy = [pool.submit(helpers.signal_and_wait, started, release, i) for i in range(2)]
    assert started.wait(RESULT_TIMEOUT)
    queued = [pool.submit(helpers.mul, i, 1) for i in range(300)]
    cancelled = [f for f in queued if f.cancel()]
    assert cancelled
    _, not_done = cf.wait(cancelled, timeout=RESULT_TIMEOUT)
    assert not not_done, "a cancelled future never counted as done"
    assert set(cf.as_completed(cancelled, timeout=RESULT_TIMEOUT)) == set(cancelled)
    release.set()
    assert [f.result(timeout=RESULT_TIMEOUT) for f in busy] == [0, 1]


def test_map_yields_every_item_read_before_the_input_raised(pool):
    def items():
        yield from range(30)
        raise KeyError("input broke")

    results = []
    with pytest.raises(KeyError, match="input broke"):
        for r in pool.map(abs, items()):
            results.append(r)
    assert results == list(range(30))


def native_thread_settings():
    import os

    return {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def blas_threads():
    import numpy  # noqa: F401  - loads OpenBLAS, which reads its variable now
    from threadpoolctl import threadpool_info

    return sorted({info["num_threads"] for info in threadpool_info()})


def test_native_thread_pools_are_limited_so_workers_do_not_oversubscribe(make_pool, monkeypatch):
    from ferropool._util import usable_cpu_count

    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)  # an earlier test's library may have set them

    pool = make_pool(2)
    expected = str(max(1, usable_cpu_count() // 2))
    assert pool.submit(native_thread_settings).result(timeout=30) == dict.fromkeys(
        ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), expected
    )
    assert make_pool(1, native_threads=3).submit(native_thread_settings).result(timeout=30)["OMP_NUM_THREADS"] == "3"


def test_the_native_thread_limit_is_in_effect_in_numpy(monkeypatch):
    for variable in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)  # an earlier test's library may have set them
    pytest.importorskip("numpy")
    pytest.importorskip("threadpoolctl")
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    from ferropool import ProcessPool

    if not threadpool_info():
        pytest.skip("this numpy has no BLAS or OpenMP library that threadpoolctl can see")
    with ProcessPool(1, native_threads=1) as pool:
        assert pool.submit(blas_threads).result(timeout=30) == [1]
    with ProcessPool(1, native_threads=2) as pool:
        assert pool.submit(blas_threads).result(timeout=30) == [2], "the limit follows native_threads"


def test_an_explicit_environment_setting_wins(monkeypatch, make_pool):
    monkeypatch.setenv("OMP_NUM_THREADS", "7")
    assert make_pool(1).submit(native_thread_settings).result(timeout=30)["OMP_NUM_THREADS"] == "7"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True])
def test_native_threads_must_be_a_positive_integer(bad):
    from ferropool import ProcessPool

    with pytest.raises(ValueError, match="native_threads"):
        ProcessPool(1, native_threads=bad)


ISOLATED_PARENT = """
import sys
from ferropool import ProcessPool

def flags():
    return (sys.flags.isolated, sys.flags.optimize, sys.flags.dev_mode, sys.flags.safe_path, sys.warnoptions)

with ProcessPool(1) as pool:
    mine = (sys.flags.isolated, sys.flags.optimize, sys.flags.dev_mode, sys.flags.safe_path, sys.warnoptions)
    print(mine == pool.submit(flags).result(timeout=30), pool.submit(flags).result(timeout=30))
"""


def test_workers_take_the_interpreter_flags_and_never_import_from_the_current_directory(tmp_path):
    # A module in the current directory named like one the worker imports while it boots: under
    # `python -I` (and with -P, -P being implied) the current directory is not on the path.
    marker = tmp_path / "imported"
    (tmp_path / "reprlib.py").write_text(f"open({str(marker)!r}, 'w').close()\nfrom _reprlib_missing import *\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    out = subprocess.run(
        [sys.executable, "-I", "-O", "-X", "dev", "-W", "error::DeprecationWarning", "-c", ISOLATED_PARENT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("True "), out.stdout
    assert not marker.exists(), "a worker imported reprlib.py from the current directory"


# ------------------------------------------------- compatibility with ProcessPoolExecutor


def test_private_attributes_that_popular_code_reads(pool):
    assert pool._max_workers == 2
    processes = pool._processes
    assert len(processes) == 2
    assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) in processes
    for pid, handle in processes.items():
        assert handle.pid == pid and handle.is_alive()
        assert processes is not pool._processes and pool._processes[pid] is handle, "a snapshot of the same handles"
    pool.shutdown(wait=True)
    assert pool._processes == {}
    assert not any(h.is_alive() for h in processes.values())


def test_worker_died_error_is_a_broken_process_pool_that_leaves_the_pool_working(pool):
    with pytest.raises(cf.process.BrokenProcessPool) as info:
        pool.submit(os._exit, 99).result(timeout=RESULT_TIMEOUT)
    assert isinstance(info.value, WorkerDiedError) and info.value.exitcode == 99
    cause = info.value.__cause__
    assert type(cause) is cf.process._RemoteTraceback
    assert "terminated abruptly with exit code 99" in cause.tb
    assert pool.submit(helpers.mul, 3, 4).result(timeout=RESULT_TIMEOUT) == 12
    # Pickled and back (a result handed to another process), it is still the same class.
    assert type(pickle.loads(pickle.dumps(info.value))) is WorkerDiedError


@pytest.mark.parametrize("operation, method", [("terminate", "terminate"), ("kill", "kill")])
def test_force_shutdown_signals_every_worker_through_its_handle(gate_factory, operation, method):
    # CPython's test_force_shutdown_workers: the handles in _processes are the ones signalled.
    from unittest import mock

    with ProcessPool(1) as p:
        started = gate_factory()
        running = p.submit(helpers.started_then_sleep, started, 3600)
        assert started.wait(RESULT_TIMEOUT)
        [worker] = p._processes.values()
        setattr(worker, method, mock.Mock(wraps=getattr(worker, method)))
        getattr(p, f"{operation}_workers")()
        worker.join(RESULT_TIMEOUT)
        getattr(worker, method).assert_called()
        assert not worker.is_alive()
        with pytest.raises(BrokenPoolError, match=f"{operation}_workers"):
            running.result(timeout=RESULT_TIMEOUT)
        p.shutdown(wait=True)
        assert all(w.restarts == 0 for w in p.stats().workers), "no replacement escaped the signal"


def test_force_shutdown_refuses_an_unknown_operation(pool):
    with pytest.raises(ValueError, match="Unsupported operation: 'invalid operation'"):
        pool._force_shutdown(operation="invalid operation")
    assert pool.submit(helpers.mul, 2, 2).result(timeout=RESULT_TIMEOUT) == 4, "the pool is untouched"


def test_terminate_workers_on_a_pool_that_never_ran_anything():
    p = ProcessPool(2)
    assert p.terminate_workers() is None
    with pytest.raises(RuntimeError, match="after shutdown"):
        p.submit(helpers.mul, 1, 1)
    helpers.shutdown_bounded(p)


def test_killing_a_hung_pool_through_processes_does_not_hang_the_program(tmp_path):
    # The recipe of many answers for a hung ProcessPoolExecutor, in a program of its own.
    out = run_script(
        tmp_path,
        f"""
        import os, sys
        sys.path.insert(0, {os.path.dirname(os.path.abspath(helpers.__file__))!r})
        from concurrent.futures.process import BrokenProcessPool
        from ferropool import ProcessPool
        import helpers

        pool = ProcessPool(2)
        started = [helpers.Gate(os.path.abspath(f"gate-{{i}}")) for i in range(2)]
        hung = [pool.submit(helpers.started_then_sleep, gate, 3600) for gate in started]
        queued = pool.submit(helpers.mul, 6, 7)
        assert all(gate.wait(30) for gate in started)
        for p in pool._processes.values():
            p.terminate()
        for f in hung:
            try:
                f.result(timeout=30)
            except BrokenProcessPool as exc:
                print(type(exc).__name__)
        print(queued.result(timeout=30))
        pool.shutdown()
        print("done")
        """,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["WorkerDiedError", "WorkerDiedError", "42", "done"]


def test_thread_pool_has_no_terminate_or_kill_workers():
    # As the standard library's ThreadPoolExecutor: a thread cannot be stopped from outside.
    from ferropool import ThreadPool

    with ThreadPool(1) as p:
        assert not hasattr(p, "terminate_workers") and not hasattr(p, "kill_workers")
        assert p._max_workers == 1


def test_the_first_listed_process_runs_a_lone_task(pool, gate_factory):
    # CPython's test_killed_child signals next(iter(_processes.values())), which with on-demand
    # workers is the one running its task.
    started = gate_factory()
    running = pool.submit(helpers.started_then_sleep, started, 3600)
    assert started.wait(RESULT_TIMEOUT)
    next(iter(pool._processes.values())).terminate()
    with pytest.raises(cf.process.BrokenProcessPool):
        running.result(timeout=RESULT_TIMEOUT)
