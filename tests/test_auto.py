"""``ferropool.Pool`` end to end: the executor contract (results and errors of probed and later
calls, map, shutdown, asyncio), forced strategies, ``explain()``, and the decisions that are
unambiguous whatever the machine's load. How the probe decides is tested with made-up samples in
``test_auto_probe.py``."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import hashlib
import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import ferropool
from ferropool import Pool
from ferropool._auto.sampler import GilSampler
from ferropool._util import usable_cpu_count
from ferropool.compare import tasks as w

ROOT = Path(__file__).resolve().parent.parent
CORES = usable_cpu_count()


# ----------------------------------------------------------------- tasks (importable by workers)


def add(x, y=0):
    return x + y


def where(_=None):
    return os.getpid(), threading.get_ident()


def fail_on_multiples_of_three(x):
    if x % 3 == 0:
        raise ValueError(f"bad {x}")
    return x * 10


BLOB = bytes(range(256)) * (8 * 4096)  # 8 MiB


async def async_double(x):
    await asyncio.sleep(0)
    return 2 * x


@pytest.fixture
def make():
    made = []

    def build(**kwargs):
        pool = Pool(**kwargs)
        made.append(pool)
        return pool

    yield build
    for pool in made:
        pool.shutdown(wait=True, cancel_futures=True)


def chosen(pool, fn) -> str:
    name = f"{fn.__module__}.{fn.__qualname__}"
    return pool.decisions[name].strategy


def run_and_decide(make, fn, items) -> str:
    """Maps ``fn`` over ``items`` on a fresh pool; returns the strategy decided."""
    pool = make()
    assert list(pool.map(fn, items)) == list(map(fn, items))
    decision = pool.decisions[f"{fn.__module__}.{fn.__qualname__}"]
    pool.shutdown()
    return decision.strategy


# ------------------------------------------------------------------------ unambiguous decisions


#: Where waiting calls go: threads, or a hybrid pool when the pair's threads started some
#: milliseconds apart (on a loaded machine), which makes the calls look as if they held the GIL
#: part of the time. The longer the calls, the larger a delay that takes.
WAITING_CHOICES = ("threads", "hybrid")


def test_sleep_goes_to_more_workers_than_cores(make):
    # Sleeping calls use next to no CPU, however busy the machine: waiting.
    assert run_and_decide(make, w.sleep_task, [0.05] * 6) in WAITING_CHOICES


def test_tiny_add_stays_serial(make):
    # No pool's per-task overhead is below a microsecond call's, however busy the machine.
    assert run_and_decide(make, add, range(200)) == "serial"


def test_tiny_submits_stay_serial_and_run_in_the_caller(make):
    pool = make()
    futures = [pool.submit(add, i, 1) for i in range(200)]
    assert [f.result(timeout=10) for f in futures] == list(range(1, 201))
    assert chosen(pool, add) == "serial"
    later = pool.submit(add, 5, 5)
    assert later.done() and later.result() == 10  # serial: ran before submit returned


def test_async_def_goes_to_the_event_loop(make):
    pool = make()
    futures = [pool.submit(async_double, i) for i in range(20)]
    assert isinstance(futures[0], cf.Future)
    assert [f.result(timeout=10) for f in futures] == [2 * i for i in range(20)]
    decision = pool.decisions[f"{__name__}.async_double"]
    assert decision.strategy == "asyncio" and "async def" in decision.rule


def test_coroutines_run_concurrently_on_the_loop(make):
    pool = make(max_workers=8)
    state = {"started": 0}
    everyone = asyncio.Event  # created on the pool's loop, below

    async def rendezvous(i, n=8):
        # Completes only if all n calls are in flight at once: no sleeps, no timing.
        if "event" not in state:
            state["event"] = everyone()
        state["started"] += 1
        if state["started"] == n:
            state["event"].set()
        await asyncio.wait_for(state["event"].wait(), timeout=10)
        return i

    futures = [pool.submit(rendezvous, i) for i in range(8)]
    assert [f.result(timeout=20) for f in futures] == list(range(8))


# ------------------------------------------------------------------------------ forced strategies


def test_unknown_strategy_is_a_value_error():
    with pytest.raises(ValueError, match=r"unknown strategy 'fastest'.*'auto'"):
        Pool(strategy="fastest")
    with pytest.raises(ValueError):
        Pool(0)
    with pytest.raises(ValueError):
        Pool(probe_calls=1)


def test_forced_serial_runs_in_the_calling_thread(make):
    pool = make(strategy="serial")
    assert pool.submit(where).result() == (os.getpid(), threading.get_ident())
    assert "forced by strategy='serial'" in pool.explain()


def test_forced_threads_run_in_this_process_on_another_thread(make):
    pool = make(strategy="threads", max_workers=2)
    pid, tid = pool.submit(where).result(timeout=10)
    assert pid == os.getpid() and tid != threading.get_ident()
    assert pool.decisions[f"{__name__}.where"].workers == 2


def test_forced_processes_run_elsewhere_and_shutdown_leaves_no_children(make):
    pool = make(strategy="processes", max_workers=2)
    assert pool.submit(where).result(timeout=30)[0] != os.getpid()
    assert list(pool.map(add, range(5), range(5))) == [0, 2, 4, 6, 8]
    pool.shutdown(wait=True)  # the conftest fixture fails the test if a worker is left


def test_forced_threads_take_coroutine_functions_too(make):
    pool = make(strategy="threads")
    assert pool.submit(async_double, 4).result(timeout=10) == 8
    assert list(pool.map(async_double, range(3))) == [0, 2, 4]


def test_forced_hybrid_runs_on_a_real_hybrid_pool(make):
    pool = make(strategy="hybrid")
    assert pool.submit(add, 1, 1).result(timeout=30) == 2
    assert list(pool.map(add, range(5), range(5))) == [0, 2, 4, 6, 8]
    assert "hybrid" in pool.explain()
    assert {d.strategy for d in pool.decisions.values()} == {"hybrid"}


def test_forced_hybrid_needs_hybrid_pool(make, monkeypatch):
    monkeypatch.delattr(ferropool, "HybridPool", raising=False)
    monkeypatch.delitem(ferropool._LAZY, "HybridPool")
    pool = make(strategy="hybrid")
    with pytest.raises(RuntimeError, match="HybridPool"):
        pool.submit(add, 1)


# ------------------------------------------------------------------------------------- explain


def test_explain_names_the_strategy_and_the_figures(make):
    pool = make()
    assert "no function has run yet" in pool.explain()
    list(pool.map(w.sleep_task, [0.005] * 30))  # more than the probe runs: the rest waits for the decision
    text = pool.explain()
    assert "ferropool.compare.tasks.sleep_task: " in text
    for figure in (
        "wall",
        "CPU/wall",
        "2 threads:",
        "pickled:",
        "B args",
        "overhead per call",
        "estimated time per call",
    ):
        assert figure in text, figure
    decision = pool.decisions["ferropool.compare.tasks.sleep_task"]
    assert decision.figures.calls >= 3 and decision.figures.cpu_ratio < 0.5


def test_explain_while_still_measuring(make):
    pool = make()
    assert pool.submit(add, 1, 2).result(timeout=10) == 3
    assert "still measuring (1 call so far)" in pool.explain()


# ------------------------------------------------------------------- results, errors, contract


@pytest.mark.parametrize("fn", [fail_on_multiples_of_three])
@pytest.mark.parametrize("kind", ["auto", "serial", "threads", "processes"])
def test_results_and_errors_reach_every_future(make, kind, fn):
    pool = make(strategy=kind, max_workers=2)
    futures = [pool.submit(fn, i) for i in range(30)]
    for i, f in enumerate(futures):
        if i % 3 == 0:
            with pytest.raises(ValueError, match=f"bad {i}"):
                f.result(timeout=30)
        else:
            assert f.result(timeout=30) == 10 * i


def test_probe_calls_run_once_each(make):
    pool = make()
    seen = []
    lock = threading.Lock()

    def record(i):
        with lock:
            seen.append(i)
        return i

    assert [f.result(timeout=10) for f in [pool.submit(record, i) for i in range(50)]] == list(range(50))
    assert sorted(seen) == list(range(50))


def test_map_keeps_order_and_raises_at_the_failing_item(make):
    pool = make()
    it = pool.map(fail_on_multiples_of_three, range(1, 100))
    assert [next(it), next(it)] == [10, 20]
    with pytest.raises(ValueError, match="bad 3"):
        next(it)


def test_map_is_lazy_on_an_endless_input(make):
    pool = make()
    read = itertools.count()
    results = pool.map(add, read)
    assert list(itertools.islice(results, 1000)) == list(range(1000))
    del results
    assert next(read) < 1_000_000  # only a bounded amount was read ahead


def test_map_with_several_iterables_and_timeout(make):
    pool = make()
    assert list(pool.map(add, range(10), range(10), timeout=30)) == [2 * i for i in range(10)]


def test_as_completed_and_wait(make):
    pool = make()
    futures = [pool.submit(w.sleep_task, 0.001 * (i % 3)) for i in range(12)]
    assert len(list(cf.as_completed(futures, timeout=30))) == 12
    done, not_done = cf.wait(futures, timeout=30)
    assert len(done) == 12 and not not_done


def test_submit_after_shutdown_raises(make):
    pool = make()
    pool.submit(add, 1).result(timeout=10)
    pool.shutdown()
    with pytest.raises(RuntimeError, match="after shutdown"):
        pool.submit(add, 1)
    with pytest.raises(RuntimeError):
        pool.map(add, range(3))


def test_shutdown_cancels_what_the_probe_queued_and_waits_for_what_runs(make):
    started, gate, cancelled = threading.Event(), threading.Event(), threading.Event()

    def blocked(i):
        started.set()
        gate.wait(20)
        return i

    pool = make()
    futures = [pool.submit(blocked, i) for i in range(6)]
    futures[-1].add_done_callback(lambda f: cancelled.set())
    assert started.wait(10)  # the first call runs on the probe; the others wait for it
    stopper = threading.Thread(target=pool.shutdown, kwargs={"cancel_futures": True})
    stopper.start()
    assert cancelled.wait(10)
    gate.set()
    stopper.join(20)
    assert not stopper.is_alive()
    assert futures[0].result() == 0
    assert all(f.cancelled() for f in futures[1:])


def test_async_run_and_map_async(make):
    pool = make()

    async def main():
        one = await pool.run(add, 2, 3)
        many = [r async for r in pool.map_async(add, range(20))]
        coro = await pool.run(async_double, 21)
        return one, many, coro

    assert asyncio.run(main()) == (5, list(range(20)), 42)


def test_processes_shut_down_after_auto_picks_them(make):
    if CORES < 2:
        pytest.skip("one core")
    pool = make(max_workers=2)
    n = w.calibrate_spin(0.005)
    assert len(list(pool.map(w.spin, [n] * 8))) == 8
    pool.shutdown(wait=True)  # whatever it chose, the leak check fixture sees no children left


def test_import_is_lazy():
    code = "import sys, ferropool; assert 'ferropool._auto' not in sys.modules; ferropool.Pool; assert 'ferropool._auto' in sys.modules"
    # The installed package, as everywhere in the suite (not the source tree, which has no _core).
    subprocess.run([sys.executable, "-c", code], check=True, timeout=30)


def test_benchmark_quick_runs():
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "bench_auto.py"), "--quick", "--workload", "tiny,sleep"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stderr
    assert "| workload | best fixed | auto chose | auto / best fixed |" in proc.stdout


def test_serial_map_yields_the_probed_values_then_maps_the_rest_in_one_iterator(make):
    # The probe ran the first calls here; what map returns then is one PrefixedMap holding
    # their values (a list, not a generator over their futures), the function and the rest of
    # the input: no chain step or future per item.
    import gc
    import inspect

    from ferropool._core import PrefixedMap

    pool = make()
    it = pool.map(add, range(1000))
    assert chosen(pool, add) == "serial"
    assert type(it) is PrefixedMap
    parts = gc.get_referents(it)
    assert add in parts and any(type(o) is list for o in parts)
    assert not any(inspect.isgenerator(o) or isinstance(o, cf.Future) for o in parts)
    assert list(it) == list(range(1000))
    # Several iterables: the values chained with the built-in map of the rest.
    assert list(pool.map(add, range(1000), range(1000))) == [2 * i for i in range(1000)]


def nap(seconds):
    time.sleep(seconds)
    return seconds


def test_calls_handed_to_a_backend_that_finishes_them_at_once_run_their_callbacks_freely(make):
    # Calls queued during the probe go to the chosen backend; one that finishes before its
    # callback is attached runs its future's callbacks in the deciding thread. Those must not
    # run inside the pool's lock: map's wake-up (which takes it) and a callback calling the pool
    # would deadlock. The probe measures the naps (waiting: threads, or hybrid); the instant
    # calls queued behind them are handed to that pool, which finishes them about as they are
    # submitted. (Naps long enough that no start-up delay of the pair's threads makes them look
    # like anything but waiting: then nothing would be handed off.)
    pool = make()
    seconds = [0.05] * 6 + [0.0] * 40
    futures = [pool.submit(nap, s) for s in seconds]
    asked = []
    for f in futures:
        f.add_done_callback(lambda _f: asked.append(len(pool.decisions)))  # takes the pool's lock
    assert [f.result(timeout=20) for f in futures] == seconds
    assert len(asked) == len(seconds)
    assert list(pool.map(nap, [0.0] * 3, timeout=20)) == [0.0] * 3
    assert chosen(pool, nap) in WAITING_CHOICES


def test_a_closed_pool_runs_what_the_probe_had_queued(make):
    started, gate = threading.Event(), threading.Event()

    def blocked(i):
        started.set()
        gate.wait(20)
        return i

    pool = make()
    futures = [pool.submit(blocked, i) for i in range(6)]
    assert started.wait(10)
    stopper = threading.Thread(target=pool.shutdown)  # no cancel_futures: everything runs
    stopper.start()
    gate.set()
    stopper.join(20)
    assert not stopper.is_alive()
    assert [f.result(timeout=0) for f in futures] == list(range(6))


def test_probe_calls_sets_how_many_calls_are_measured_at_least(make):
    pool = make(probe_calls=6)
    assert [f.result(timeout=20) for f in [pool.submit(nap, 0.002) for _ in range(20)]] == [0.002] * 20
    assert pool.decisions[f"{__name__}.nap"].figures.calls >= 6


def test_gil_sampler_tells_calls_that_hold_the_gil_from_those_that_release_it():
    # A long switch interval sets the two cases 50 ms apart: far more than other programs' load
    # can add or take away.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(0.05)
    try:
        n = 15 * w.calibrate_spin(0.02)  # ~0.3 s
        big = BLOB * 4  # 32 MiB, made before sampling: the copy holds the GIL
        sampler = GilSampler()
        w.spin(n)  # pure Python: holds the GIL until the interpreter forces a switch
        held = sampler.stop()
        sampler = GilSampler()
        time.sleep(0.2)
        asleep = sampler.stop()
        sampler = GilSampler()
        for _ in range(4):
            hashlib.sha256(big).digest()  # hashlib releases the GIL over large buffers
        hashing = sampler.stop()
    finally:
        sys.setswitchinterval(interval)
    assert held is not None and held >= 0.025, held
    assert asleep is not None and asleep < 0.025, asleep
    assert hashing is not None and hashing < 0.025, hashing
