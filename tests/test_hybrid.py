"""``HybridPool`` (``_hybrid.py``) and coroutine tasks (``_concurrent_worker.py``): tasks that run
concurrently inside a worker process, on threads or an event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import os
import signal
import threading
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import helpers
from ferropool import HybridPool, ProcessPool, TaskTimeoutError, WorkerDiedError, shared

RESULT_TIMEOUT = 30


# ---------------------------------------------------------------- task functions


def meet(barrier) -> tuple[int, int]:
    """Waits until ``barrier``'s parties all arrived (proof they run at once); returns where."""
    barrier.wait(20)
    return os.getpid(), threading.get_ident()


def native_threads() -> str | None:
    return os.environ.get("OMP_NUM_THREADS")


def die_after(barrier) -> None:
    barrier.wait(20)
    os._exit(4)


def meet_then_block(barrier) -> None:
    """Meets ``barrier``, then blocks: it is still running when a task beside it ends the process."""
    barrier.wait(20)
    time.sleep(3600)


class SlowToLoad:
    """An argument whose first unpickling (in a worker) blocks until ``go`` is set, after
    setting ``loading``: its task is taken by a thread but has not begun. Later unpicklings pass."""

    def __init__(self, loading, go, loads) -> None:
        self.loading, self.go, self.loads = loading, go, loads

    def __getstate__(self) -> tuple:
        return self.loading, self.go, self.loads

    def __setstate__(self, state: tuple) -> None:
        self.loading, self.go, self.loads = state
        self.loads.add(1)
        if self.loads.value == 1:
            self.loading.set()
            self.go.wait(20)


def loaded(arg: SlowToLoad) -> int:
    return arg.loads.value


def exit_once_loading(loading) -> None:
    loading.wait(20)
    os._exit(5)


def sleep_long() -> None:
    time.sleep(3600)  # blocked in C: only stopping its worker ends it


def sleep_then_pid(seconds: float) -> int:
    time.sleep(seconds)  # the work
    return os.getpid()


async def double_later(x: int) -> int:
    await asyncio.sleep(0.01)
    return 2 * x


async def gather_then_return(counter, parties: int, x: int) -> int:
    """Counts itself in, then waits (bounded) until ``parties`` coroutines have: only
    coroutines running at once on the worker's loop can all get past."""
    counter.add(1)
    for _ in range(2000):
        if counter.value >= parties:
            return x
        await asyncio.sleep(0.005)
    raise TimeoutError(f"only {counter.value} of {parties} coroutines ran at once")


async def raise_later(text: str) -> None:
    await asyncio.sleep(0)
    raise ValueError(text)


async def await_forever(started) -> None:
    started.set()
    await asyncio.sleep(3600)


# ---------------------------------------------------------------- HybridPool


def test_tasks_run_on_threads_inside_processes():
    with HybridPool(2, 3) as pool:
        assert (pool.processes, pool.threads_per_process, pool.max_workers) == (2, 3, 6)
        barrier = shared.Barrier(6)
        places = [f.result(timeout=RESULT_TIMEOUT) for f in [pool.submit(meet, barrier) for _ in range(6)]]
    assert len(set(places)) == 6, "six tasks ran at once, each on its own thread"
    assert len({pid for pid, _ in places}) == 2 and os.getpid() not in {pid for pid, _ in places}


def test_defaults_and_native_thread_limit():
    from ferropool._util import usable_cpu_count

    with HybridPool() as pool:
        assert pool.processes == usable_cpu_count() and pool.threads_per_process == 4
        assert pool.submit(native_threads).result(timeout=RESULT_TIMEOUT) == str(
            max(1, usable_cpu_count() // (4 * usable_cpu_count()))
        )
        assert list(pool.map(abs, range(-3, 3))) == [3, 2, 1, 0, 1, 2]


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
def test_sizes_must_be_positive_integers(bad, exc):
    with pytest.raises(exc, match="processes"):
        HybridPool(bad, 2)
    with pytest.raises(exc, match="threads_per_process"):
        HybridPool(1, bad)


def test_a_dying_process_fails_its_running_tasks_and_the_pool_heals():
    with HybridPool(1, 2) as pool:
        barrier = shared.Barrier(2)
        doomed = pool.submit(die_after, barrier)
        beside = pool.submit(meet_then_block, barrier)  # running on the same process when it dies
        queued = [pool.submit(helpers.mul, i, 2) for i in range(4)]
        with pytest.raises(WorkerDiedError):
            doomed.result(timeout=RESULT_TIMEOUT)
        with pytest.raises(WorkerDiedError):
            beside.result(timeout=RESULT_TIMEOUT)
        assert [f.result(timeout=RESULT_TIMEOUT) for f in queued] == [0, 2, 4, 6]


def test_a_task_its_thread_had_not_begun_when_the_process_died_runs_again():
    # The task's thread is still unpickling its arguments when a task beside it ends the
    # process: it had not begun, so it runs again elsewhere instead of failing.
    with HybridPool(1, 2) as pool:
        loading, go, loads = shared.Event(), shared.Event(), shared.Value("q", 0)
        waiting = pool.submit(loaded, SlowToLoad(loading, go, loads))
        crash = pool.submit(exit_once_loading, loading)
        with pytest.raises(WorkerDiedError) as died:
            crash.result(timeout=RESULT_TIMEOUT)
        assert died.value.exitcode == 5
        assert waiting.result(timeout=RESULT_TIMEOUT) == 2, "unpickled once in each process"


def test_a_thread_task_past_its_timeout_stops_its_process_and_the_others_rerun():
    with HybridPool(1, 2, task_timeout=None) as pool:
        pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
        stuck = pool.options(task_timeout=0.5).submit(sleep_long)
        beside = pool.submit(sleep_then_pid, 0.3)
        with pytest.raises(TaskTimeoutError):
            stuck.result(timeout=RESULT_TIMEOUT)
        # It ran beside the stuck one (and may have been re-run after the process was stopped).
        assert beside.result(timeout=RESULT_TIMEOUT) > 0
        assert helpers.gone_within([pid], 10.0), "a thread cannot be stopped: its process must be"


# ---------------------------------------------------------------- coroutine tasks


@pytest.mark.parametrize("make", [lambda: ProcessPool(2), lambda: HybridPool(2, 2)], ids=["ProcessPool", "HybridPool"])
def test_coroutine_functions_run_concurrently_on_the_workers_loops(make):
    with make() as pool:
        counter = shared.Value("q", 0)
        parties = 40  # more than the pool has threads: only an event loop runs them at once
        futures = [pool.submit(gather_then_return, counter, parties, i) for i in range(parties)]
        assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == list(range(parties))
        assert list(pool.map(double_later, range(300))) == [2 * x for x in range(300)]


def test_a_coroutines_exception_arrives_with_its_traceback():
    with ProcessPool(1) as pool:
        with pytest.raises(ValueError, match="from a coroutine") as info:
            pool.submit(raise_later, "from a coroutine").result(timeout=RESULT_TIMEOUT)
        assert "raise_later" in str(info.value.__cause__)


def test_cancelling_a_coroutine_stops_it_and_keeps_its_worker(gate_factory):
    with ProcessPool(1) as pool:
        pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
        started = gate_factory()
        fut = pool.submit(await_forever, started)
        assert started.wait(RESULT_TIMEOUT)
        assert fut.cancel() and fut.cancelled()
        assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) == pid, "a coroutine stops without its worker"


def test_a_coroutine_past_its_timeout_is_cancelled_and_its_worker_kept(gate_factory):
    with ProcessPool(1) as pool:
        pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
        started = gate_factory()
        with pytest.raises(TaskTimeoutError):
            pool.options(task_timeout=0.5).submit(await_forever, started).result(timeout=RESULT_TIMEOUT)
        assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) == pid


def test_many_http_requests_run_concurrently_across_processes():
    aiohttp = pytest.importorskip("aiohttp")
    from aiohttp import web

    state = {"now": 0, "most": 0}
    ready = threading.Event()
    box: dict = {}

    async def handler(request):
        state["now"] += 1
        state["most"] = max(state["most"], state["now"])
        await asyncio.sleep(0.05)
        state["now"] -= 1
        return web.Response(text=request.query.get("x", ""))

    def serve():
        loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/", handler)
        runner = web.AppRunner(app)
        loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        loop.run_until_complete(site.start())
        box["port"] = site._server.sockets[0].getsockname()[1]
        box["loop"], box["runner"] = loop, runner
        ready.set()
        loop.run_forever()
        loop.run_until_complete(runner.cleanup())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert ready.wait(10)
    try:
        url = f"http://127.0.0.1:{box['port']}/"
        with ProcessPool(2) as pool:
            got = list(pool.map(helpers.fetch_text, [url] * 2000, [str(i) for i in range(2000)]))
        assert got == [str(i) for i in range(2000)]
        assert state["most"] >= 100, f"requests did not overlap (at most {state['most']} at once)"
    finally:
        box["loop"].call_soon_threadsafe(box["loop"].stop)
        server.join(10)
    del aiohttp


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_every_thread_of_every_process(gate_factory, how):
    pool = HybridPool(2, 2)
    try:
        gates = [gate_factory() for _ in range(4)]
        running = [pool.submit(helpers.started_then_sleep, g, 3600) for g in gates]
        queued = [pool.submit(helpers.mul, i, 1) for i in range(8)]
        assert all(g.wait(RESULT_TIMEOUT) for g in gates)
        handles = pool._processes
        assert len(handles) == 2, "_processes counts processes, not task threads"
        assert pool._max_workers == 4, "_max_workers counts tasks that run at once"
        getattr(pool, how)()
        for f in running:
            with pytest.raises(BrokenProcessPool):
                f.result(timeout=RESULT_TIMEOUT)
        assert all(f.cancelled() or isinstance(f.exception(timeout=RESULT_TIMEOUT), BrokenProcessPool) for f in queued)
        for h in handles.values():
            h.join(RESULT_TIMEOUT)
            assert not h.is_alive()
    finally:
        helpers.shutdown_bounded(pool)


@pytest.mark.parametrize("code", [7, -signal.SIGKILL], ids=["exit code", "SIGKILL of its own"])
def test_a_task_that_crashes_a_worker_being_stopped_is_blamed_not_run_again(gate_factory, tmp_path, code):
    # A timed-out task beside it cannot be stopped (a thread), so after the grace the worker gets
    # SIGTERM, which here only opens a gate; the crash then ends the worker before the parent's
    # own SIGKILL (a SIGKILL the parent has not sent yet is the task's).
    terminated = gate_factory()
    runs = tmp_path / "runs"
    runs.mkdir()
    pool = HybridPool(1, 2, initializer=helpers.open_gate_on_sigterm, initargs=(terminated,))
    try:
        crash = pool.submit(helpers.count_run_then_exit_at, terminated, str(runs), code)
        stuck = pool.options(task_timeout=0.3).submit(helpers.sleep_and_return, 60, None)
        with pytest.raises(TaskTimeoutError):
            stuck.result(timeout=RESULT_TIMEOUT)
        with pytest.raises(WorkerDiedError) as info:
            crash.result(timeout=RESULT_TIMEOUT)
        if code > 0:
            assert info.value.exitcode == code
        else:
            assert info.value.signal == -code
        assert len(list(runs.iterdir())) == 1, "the crashing task was run again"
    finally:
        helpers.shutdown_bounded(pool)


@pytest.mark.parametrize(
    "initializer",
    [None, helpers.never_announce_starts],
    ids=["starts seen", "starts on their way"],  # then the worker's answer must decide
)
def test_shutdown_with_cancel_futures_lets_running_threads_finish(gate_factory, initializer):
    pool = HybridPool(1, 2, initializer=initializer)
    try:
        started, release = [gate_factory(), gate_factory()], gate_factory()
        running = [pool.submit(helpers.signal_and_wait, started[i], release, i) for i in range(2)]
        assert all(g.wait(RESULT_TIMEOUT) for g in started)
        queued = [pool.submit(helpers.mul, i, 1) for i in range(20)]
        stopper = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True}, daemon=True)
        stopper.start()
        done, _ = cf.wait(queued, timeout=RESULT_TIMEOUT)
        assert len(done) == len(queued), "the queued tasks were not cancelled while the others ran"
        assert all(f.cancelled() for f in queued)
        assert stopper.is_alive(), "shutdown did not wait for the running tasks"
        assert not any(f.done() for f in running), "a running task was reported cancelled"
        release.set()
        stopper.join(RESULT_TIMEOUT)
        assert not stopper.is_alive()
        assert [f.result(timeout=0) for f in running] == [0, 1], "running tasks finish"
    finally:
        helpers.shutdown_bounded(pool)
