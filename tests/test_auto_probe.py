"""The policy of ``Pool(strategy="auto")``, driven with made-up samples: the decision model
(``decide``) and the probe's state machine (``Probe``). Nothing here runs a thread or reads a
clock, so every outcome is exact."""

from __future__ import annotations

import concurrent.futures
import time

import pytest

from ferropool._auto.decide import (
    EARLY_MIN_S,
    PAIR_MAX_CALLS,
    PAIR_MIN_S,
    PROBE_CALLS,
    SOLO_BUDGET_S,
    SOLO_CALLS,
    Figures,
    decide,
)
from ferropool._auto.probe import Decide, PairRun, Probe, RunPair, RunSolo, Sizes, without_cpu_waits

SWITCH = 0.005  # the interpreter's switch interval the probes below are told about
SMALL = Sizes(30, 20, 5e-6, True)


# ------------------------------------------------------------------------ the decision model


def figures(**kw) -> Figures:
    base = dict(
        calls=4,
        wall_s=0.01,
        cpu_s=0.01,
        pair_speedup=1.0,
        arg_bytes=30,
        result_bytes=20,
        pickle_s=5e-6,
        picklable=True,
        via_map=False,
        cores=4,
    )
    base.update(kw)
    return Figures(**base)


def test_decide_gil_bound_cpu_goes_to_processes():
    d = decide(figures())
    assert (d.strategy, d.workers) == ("processes", 4)
    assert "GIL" in d.rule and d.estimates["processes"] < d.estimates["threads"]


def test_decide_gil_releasing_cpu_goes_to_threads():
    d = decide(figures(pair_speedup=1.95))
    assert (d.strategy, d.workers) == ("threads", 4)


def test_decide_waiting_goes_to_more_threads_than_cores():
    d = decide(figures(cpu_s=0.0001, pair_speedup=2.0))
    assert d.strategy == "threads" and d.workers == 16 and "waiting" in d.rule


def test_decide_tiny_stays_serial_for_submit_and_map():
    for via_map in (False, True):
        d = decide(figures(wall_s=2e-7, cpu_s=2e-7, pair_speedup=None, via_map=via_map))
        assert d.strategy == "serial" and "tiny" in d.rule


def test_decide_large_arguments_stay_on_threads_when_the_gil_is_released():
    d = decide(figures(arg_bytes=64 << 20, pair_speedup=1.9))
    assert d.strategy == "threads" and "large data" in d.rule


def test_decide_unpicklable_gil_bound_stays_serial():
    d = decide(figures(picklable=False, arg_bytes=None, result_bytes=None, pickle_s=None))
    assert d.strategy == "serial" and "processes" not in d.estimates


def test_decide_offers_hybrid_for_mixed_work_when_present():
    # Half waiting, half holding the GIL: processes cap at cores, hybrid adds threads to each.
    d = decide(figures(wall_s=0.02, cpu_s=0.012, pair_speedup=1.2), hybrid=True)
    assert "hybrid" in d.estimates and d.strategy == "hybrid"
    assert d.workers[0] == 4


def test_max_workers_caps_every_pool():
    assert decide(figures(cpu_s=0.0001, pair_speedup=2.0), max_workers=3, io_workers=3).workers == 3


def test_decide_returns_whole_worker_counts_on_a_loaded_machine():
    d = decide(figures(free_cores=1.3))
    assert isinstance(d.workers, int)
    d = decide(figures(free_cores=1.0, pair_speedup=1.0))
    assert d.strategy == "serial"  # one free core: processes cannot beat a loop


# ------------------------------------------------------------------------------- the probe


def probe(cores: int = 4, **kw) -> Probe:
    return Probe(cores=cores, switch_interval=SWITCH, **kw)


def solo(p: Probe, wall: float, cpu: float | None = None, n: int = 1, queued_s: float | None = 0.0, gil_late=None):
    """Feeds ``n`` calls of ``wall`` (and ``cpu``, default ``wall``) seconds as one solo step."""
    for _ in range(n):
        p.add_solo(wall, wall if cpu is None else cpu)
    p.end_solo(n, queued_s, gil_late)


def pair(per: int, span: float, cores_used: float, waited: float | None = 0.0) -> list[PairRun]:
    """Two threads of ``per`` calls each that ran together for ``span`` seconds and used
    ``cores_used`` cores between them, each runnable but not running ``waited`` of the span."""
    return [PairRun(0.0, span, cores_used * span / 2, per, None if waited is None else waited * span)] * 2


def test_a_new_function_is_measured_alone_first():
    p = probe()
    assert p.next_action(0) is None  # nothing queued: nothing to do
    assert p.next_action(1) == RunSolo()


def test_tiny_calls_are_measured_alone_until_solo_calls_then_decided_serial():
    p = probe()
    solo(p, 1e-6, n=SOLO_CALLS - 1)
    assert p.next_action(5) == RunSolo()  # too short for a pair: more solo calls first
    solo(p, 1e-6)
    action = p.next_action(5)
    assert isinstance(action, Decide) and action.decision.strategy == "serial"
    assert action.decision.figures.calls == SOLO_CALLS and action.decision.figures.pair_speedup is None


def test_long_calls_get_a_pair_step_sized_to_their_length():
    p = probe()
    solo(p, 10 * PAIR_MIN_S)
    # About PAIR_TARGET_S per thread, at most PAIR_MAX_CALLS, at most half of what is queued.
    assert p.next_action(100) == RunPair(per=min(PAIR_MAX_CALLS, round(0.002 / (10 * PAIR_MIN_S))))
    assert p.next_action(6) == RunPair(per=3)
    slow = probe()
    solo(slow, 0.05)
    assert slow.next_action(9) == RunPair(per=1)


def test_calls_submitted_one_at_a_time_are_measured_alone_until_probe_calls():
    p = probe()
    solo(p, 0.01)
    assert p.next_action(1) == RunSolo()  # one queued: no pair possible
    solo(p, 0.01, n=PROBE_CALLS - 1)
    action = p.next_action(1)
    assert isinstance(action, Decide)  # enough calls measured: decide without a pair
    assert action.decision.figures.pair_speedup is None


def test_a_pair_that_used_one_core_goes_to_processes():
    p = probe()
    p.add_sizes(SMALL)
    solo(p, 0.01)
    assert p.next_action(10) == RunPair(per=1)
    p.add_pair(pair(per=1, span=0.02, cores_used=1.0))
    action = p.next_action(8)
    assert isinstance(action, Decide)
    assert action.decision.strategy == "processes"
    assert action.decision.figures.pair_speedup == pytest.approx(1.0)
    assert action.decision.figures.calls == 3


def test_a_pair_that_used_two_cores_goes_to_threads():
    p = probe()
    p.add_sizes(SMALL)
    solo(p, 0.01)
    p.add_pair(pair(per=1, span=0.01, cores_used=2.0))
    action = p.next_action(8)
    assert isinstance(action, Decide) and action.decision.strategy == "threads"
    assert action.decision.figures.pair_speedup == pytest.approx(2.0)


def test_waiting_calls_count_the_pair_by_their_solo_wall_time():
    p = probe()
    solo(p, 0.01, cpu=1e-5)
    p.add_pair(pair(per=1, span=0.01, cores_used=0.002))
    action = p.next_action(8)
    assert isinstance(action, Decide) and action.decision.strategy == "threads"
    assert action.decision.figures.pair_speedup == pytest.approx(2.0)  # two 10 ms calls in 10 ms


def test_waiting_calls_whose_pair_waited_for_cpus_are_judged_by_each_calls_own_wall():
    # 10 ms sleeps on a loaded machine: each wake-up waited for a CPU, so the pair's span grew
    # to 14 ms a call and looked like calls holding the GIL in turns (speedup 1.43, hybrid). Each
    # call's wall less its own waits is 10 ms, as alone: they run side by side.
    p = probe(cores=2)
    solo(p, 0.01, cpu=1e-5)
    loaded = [PairRun(0.0, 0.028, 2e-5, 2, 0.008, (0.0101, 0.0099))] * 2
    p.add_pair(loaded)
    p.add_pair(loaded)  # other programs' load: measured once more, then believed
    assert p.pair_done and p.pair_speedup == pytest.approx(2.0)
    action = p.next_action(8)
    assert isinstance(action, Decide) and action.decision.strategy == "threads"
    # Calls that hold the GIL while they wait take twice as long beside each other, CPU waits
    # or not: they are still told apart.
    p = probe(cores=2)
    solo(p, 0.01, cpu=1e-5)
    p.add_pair([PairRun(0.0, 0.044, 2e-5, 2, 0.004, (0.02, 0.02))] * 2)
    assert p.pair_speedup == pytest.approx(1.0)
    # Without each call's wall (an older caller) the span decides, as before.
    p = probe(cores=2)
    solo(p, 0.01, cpu=1e-5)
    p.add_pair([PairRun(0.0, 0.028, 2e-5, 2, 0.0)] * 2)
    assert p.pair_speedup == pytest.approx(4 * 0.01 / 0.028)


def test_a_pair_that_waited_for_cpus_is_measured_again():
    p = probe(cores=2)
    solo(p, 0.01)
    p.add_pair(pair(per=1, span=0.02, cores_used=1.0, waited=0.9))
    assert p.rechecked and not p.pair_done
    assert p.next_action(8) == RunPair(per=1)
    p.add_pair(pair(per=1, span=0.01, cores_used=2.0))  # the second pair saw free cores
    action = p.next_action(6)
    assert isinstance(action, Decide) and action.decision.figures.free_cores is None


def test_a_pair_that_waited_twice_decides_with_the_cores_it_got():
    p = probe(cores=2)
    solo(p, 0.01)
    p.add_pair(pair(per=1, span=0.02, cores_used=1.0, waited=0.9))
    p.add_pair(pair(per=1, span=0.02, cores_used=1.0, waited=0.9))
    assert p.pair_done
    action = p.next_action(6)
    assert isinstance(action, Decide) and action.decision.figures.free_cores == pytest.approx(1.0)


def test_a_pair_that_waited_but_got_nearly_every_core_is_not_a_busy_machine():
    # Two threads that start on one core wait there a few ms until one is moved: their waits
    # pass BUSY_MACHINE of a short pair, yet they used ~2 cores. That is not other programs' load.
    p = probe(cores=2)
    solo(p, 0.01)
    p.add_pair(pair(per=1, span=0.01, cores_used=1.9, waited=0.3))
    assert p.pair_done and not p.rechecked and p.free_cores is None


def test_a_pair_whose_waits_are_unknown_is_believed():
    p = probe(cores=2)
    solo(p, 0.01)
    p.add_pair(pair(per=1, span=0.02, cores_used=1.0, waited=None))
    assert p.pair_done and not p.rechecked


def test_a_pair_with_a_thread_that_ran_nothing_gives_no_speedup():
    p = probe()
    solo(p, 0.01)
    p.add_pair([PairRun(0.0, 0.01, 0.01, 1), PairRun(0.0, 0.01, 0.0, 0)])
    assert p.pair_done and p.pair_speedup is None and p.pair_calls == 0


def test_solo_steps_stop_at_solo_calls_or_the_budget():
    p = probe()
    assert not p.solo_over(0, 1.0)  # always at least one call
    assert p.solo_over(1, SOLO_BUDGET_S)
    assert not p.solo_over(SOLO_CALLS - 1, 0.0)
    assert p.solo_over(SOLO_CALLS, 0.0)
    # map's first step also stops once the calls are long enough for a pair to tell apart.
    assert not p.map_solo_over([(1e-6, 1e-6)] * PROBE_CALLS, 0.0)
    assert p.map_solo_over([(PAIR_MIN_S, PAIR_MIN_S)] * PROBE_CALLS, 0.0)
    assert not p.map_solo_over([(PAIR_MIN_S, PAIR_MIN_S)] * (PROBE_CALLS - 1), 0.0)


def test_solo_calls_do_not_count_time_queued_for_a_cpu_as_their_own():
    # A CPU-bound call measured while other programs hold the cores: its wall time less the
    # time it sat runnable but not running is its CPU time again, not "half waiting".
    samples = [(0.020, 0.010), (0.022, 0.011)]
    corrected, queued = without_cpu_waits(samples, 0.020)
    assert corrected == [(pytest.approx(0.010), 0.010), (pytest.approx(0.012), 0.011)]
    assert queued == pytest.approx(0.020)
    # Never below the CPU time; unreadable waits change nothing.
    assert without_cpu_waits([(0.020, 0.019)], 0.1)[0] == [(0.019, 0.019)]
    assert without_cpu_waits(samples, None) == (samples, 0.0)
    p = probe()
    p.add_solo(0.5, 0.5)  # an earlier step's call: left alone
    solo(p, 0.020, cpu=0.010, n=2, queued_s=0.020)
    assert p.solo == [(0.5, 0.5), (pytest.approx(0.010), 0.010), (pytest.approx(0.010), 0.010)]
    assert p.solo_queued == pytest.approx(0.020)
    assert p.figures().cpu_ratio == pytest.approx(1.0)


def test_a_measured_call_does_not_count_its_own_waits_for_a_cpu(monkeypatch):
    # run_measured reads the thread's CPU-wait counter around the call itself: waits between
    # calls (a lock, a hand-off) are not taken out of any call's wall, unlike a step's total.
    from ferropool._auto import measure

    readings = iter([5.000, 5.003])
    monkeypatch.setattr(measure, "runqueue_wait_s", lambda: next(readings))
    call = measure.Call(concurrent.futures.Future(), time.sleep, (0.01,), {})
    (wall, cpu), sizes, queued = measure.run_measured(call)
    assert queued == pytest.approx(0.003) and sizes is None
    assert 0.007 - 1e-4 <= wall and cpu <= wall
    assert call.future.result(timeout=0) is None
    # Never below the CPU time, whatever the counter says; an unreadable counter takes nothing.
    readings = iter([0.0, 1.0])
    call = measure.Call(concurrent.futures.Future(), time.sleep, (0.001,), {})
    (wall, cpu), _, queued = measure.run_measured(call)
    assert wall == pytest.approx(cpu) and queued > 0
    monkeypatch.setattr(measure, "runqueue_wait_s", lambda: None)
    call = measure.Call(concurrent.futures.Future(), time.sleep, (0.001,), {})
    (wall, _), _, queued = measure.run_measured(call)
    assert queued == 0.0 and wall >= 0.001


def test_solo_waits_already_taken_out_are_counted_not_taken_again():
    p = probe()
    p.add_solo(0.010, 1e-5)
    p.end_solo(1, None, taken_s=0.004)
    assert p.solo == [(0.010, 1e-5)] and p.solo_queued == pytest.approx(0.004)


def test_the_first_sizes_measured_stand():
    p = probe()
    p.add_sizes(SMALL)
    p.add_sizes(Sizes.unpicklable())
    assert p.sizes == SMALL


# --------------------------------------------------------- deciding as the pair starts


def held_alone(cores: int = 4, wall: float = 4 * EARLY_MIN_S, cpu: float | None = None, **kw) -> Probe:
    """A probe whose solo calls held the GIL (the sampler was a switch interval late)."""
    p = probe(cores)
    p.add_sizes(kw.pop("sizes", SMALL))
    solo(p, wall, cpu, gil_late=kw.pop("gil_late", SWITCH), queued_s=kw.pop("queued_s", 0.0))
    return p


def test_long_calls_that_held_the_gil_alone_are_decided_as_the_pair_starts():
    p = held_alone()
    action = p.next_action(10)
    assert isinstance(action, RunPair) and action.per == 1
    assert action.decision is not None and action.decision.strategy == "processes"
    assert action.decision.figures.calls == 3 and action.decision.figures.pair_speedup == 1.0
    # The pair's calls still run; their figures change nothing.
    p.add_pair(pair(per=1, span=0.01, cores_used=2.0))
    assert p.pair_speedup == 1.0 and p.pair_done


@pytest.mark.parametrize(
    "why, probe_kw",
    [
        ("one core: no process pool is a candidate", dict(cores=1)),
        ("too short to gain from deciding early", dict(wall=EARLY_MIN_S / 2)),
        ("cannot be pickled", dict(sizes=Sizes.unpicklable())),
        ("waits: threads, whatever the pair says", dict(cpu=EARLY_MIN_S / 100)),
        ("the sampler got the GIL at once: released", dict(gil_late=SWITCH / 10)),
        ("the sampler gave no verdict", dict(gil_late=None)),
        ("other programs held the cores: the sampler was late for them", dict(wall=0.03, cpu=0.02, queued_s=0.01)),
    ],
)
def test_only_long_cpu_bound_picklable_calls_that_held_the_gil_are_decided_early(why, probe_kw):
    p = held_alone(**probe_kw)
    action = p.next_action(10)
    assert isinstance(action, RunPair) and action.decision is None, why


def test_no_early_decision_before_probe_calls_are_measured():
    p = Probe(cores=4, switch_interval=SWITCH, probe_calls=5)
    p.add_sizes(SMALL)
    solo(p, 4 * EARLY_MIN_S, gil_late=SWITCH)
    assert p.next_action(2) == RunPair(per=1)  # 1 solo + 2 in the pair: fewer than 5


# ------------------------------------------------- free-threaded builds (the GIL off)


def test_decide_without_the_gil_runs_cpu_bound_calls_on_threads():
    # The same figures that send GIL-bound calls to processes: without a GIL nothing serialises
    # the threads, so they are parallel and need no pickling.
    with_gil = decide(figures())
    without = decide(figures(gil_enabled=False))
    assert with_gil.strategy == "processes"
    assert (without.strategy, without.workers) == ("threads", 4)
    assert "GIL is disabled" in without.rule
    assert without.estimates["threads"] < with_gil.estimates["threads"]


def test_decide_without_the_gil_does_not_take_unmeasured_cpu_time_as_held():
    # No pair measured: with a GIL the CPU time counts as held; without one it does not.
    assert decide(figures(pair_speedup=None)).strategy == "processes"
    assert decide(figures(pair_speedup=None, gil_enabled=False)).strategy == "threads"


def test_decide_without_the_gil_still_keeps_tiny_calls_serial():
    d = decide(figures(wall_s=1e-6, cpu_s=1e-6, gil_enabled=False))
    assert d.strategy == "serial" and "tiny" in d.rule


def test_a_probe_without_the_gil_goes_to_threads_where_one_with_it_goes_to_processes():
    outcomes = {}
    for gil in (True, False):
        p = probe(gil_enabled=gil)
        p.add_sizes(SMALL)
        solo(p, 0.01)
        assert p.next_action(10) == RunPair(per=1)
        p.add_pair(pair(per=1, span=0.02, cores_used=1.0))  # the pair showed no speedup
        action = p.next_action(8)
        assert isinstance(action, Decide)
        assert action.decision.figures.gil_enabled is gil
        outcomes[gil] = action.decision.strategy
    assert outcomes == {True: "processes", False: "threads"}


def test_a_probe_without_the_gil_never_decides_early_for_processes():
    # A late sampler means nothing without a GIL (and the pool runs none): the pair runs first.
    p = probe(gil_enabled=False)
    p.add_sizes(SMALL)
    solo(p, 4 * EARLY_MIN_S, gil_late=SWITCH)
    assert not p.held_gil_alone()
    action = p.next_action(10)
    assert isinstance(action, RunPair) and action.decision is None


def test_gil_enabled_reads_sys_is_gil_enabled_where_it_exists(monkeypatch):
    import sys

    from ferropool import _interpreter

    monkeypatch.delattr(sys, "_is_gil_enabled", raising=False)
    assert _interpreter.gil_enabled() is True  # before 3.13: always a GIL
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert _interpreter.gil_enabled() is False
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert _interpreter.gil_enabled() is True


def test_describe_build_names_the_interpreter_and_the_gil():
    import platform

    from ferropool._interpreter import describe_build

    version = f"{platform.python_implementation()} {platform.python_version()}"
    assert describe_build(gil=True, free_threaded=False) == f"{version}, GIL enabled"
    assert describe_build(gil=False, free_threaded=True) == f"{version} free-threaded, GIL disabled"


def test_explain_says_when_the_gil_was_off():
    from ferropool._auto.explain import describe

    lines = {}
    for gil in (True, False):
        p = probe(gil_enabled=gil)
        p.add_sizes(SMALL)
        solo(p, 0.01, n=PROBE_CALLS)
        lines[gil] = "\n".join(describe("f", p.decide(), p))
    assert "GIL disabled: threads run in parallel" in lines[False]
    assert "GIL disabled" not in lines[True]
