"""The probe of ``Pool(strategy="auto")``: what to measure next about a function, and when to decide.

``Probe`` is a state machine with no threads and no clock of its own. The pool runs the calls
and measures them (``measure.py``, ``sampler.py``), hands the figures in (``add_solo``, ``end_solo``,
``add_sizes``, ``add_pair``) and asks ``next_action`` what to do with the calls queued
meanwhile::

    no solo figures ───────────────► RunSolo: calls one after another on one thread
      │ (solo calls measured)
      ├─ short calls (< PAIR_MIN_S) ──► RunSolo until SOLO_CALLS, then Decide
      ├─ long calls, 2+ queued ───────► RunPair: two threads start together on `per` calls each
      │     │                          (with a Decision already, for long calls that held
      │     │                          the GIL alone and would go to processes)
      │     │ (its CPU time over its span: the 2-thread speedup)
      │     └─ threads waited for CPUs ► RunPair once more, then decide with the cores they got
      └─ PROBE_CALLS measured ────────► Decide(decide(figures))

Its states, the samples each takes and the thresholds are described in ``docs/auto.md``.
Being pure, it is tested by feeding it made-up samples.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass, replace

from .decide import (
    BUSY_MACHINE,
    EARLY_MIN_S,
    PAIR_MAX_CALLS,
    PAIR_MIN_S,
    PAIR_TARGET_S,
    PROBE_CALLS,
    SOLO_BUDGET_S,
    SOLO_CALLS,
    WAITING,
    Decision,
    Figures,
    decide,
)

__all__ = ["Decide", "PairRun", "Probe", "RunPair", "RunSolo", "Sizes", "without_cpu_waits"]


@dataclass(frozen=True)
class RunSolo:
    """Run the queued calls one after another on one thread, measuring each (wall and CPU time),
    until ``Probe.solo_over`` says the step has run enough."""


@dataclass(frozen=True)
class RunPair:
    """Start two threads together, each running ``per`` of the queued calls in turn, and hand
    their ``PairRun`` figures to ``Probe.add_pair``. With a ``decision``, also run the calls
    queued after them, and every later one, as it says: the pair's calls still run, but the
    chosen pool starts now, beside them."""

    per: int
    decision: Decision | None = None


@dataclass(frozen=True)
class Decide:
    """Run this and every later call as ``decision`` says."""

    decision: Decision


#: What ``Probe.next_action`` returns; None: nothing to do until more calls are queued.
Action = RunSolo | RunPair | Decide | None


@dataclass(frozen=True)
class Sizes:
    """What one call's arguments and result cost to send to a process."""

    arg_bytes: int | None  # pickled (in band + out of band)
    result_bytes: int | None
    pickle_s: float | None  # pickling both once
    picklable: bool

    @classmethod
    def unpicklable(cls) -> Sizes:
        return cls(None, None, None, False)


@dataclass(frozen=True)
class PairRun:
    """What one thread of a pair step measured."""

    start: float  # seconds on a clock shared by both threads
    end: float
    cpu_s: float  # this thread's CPU time over the span
    calls: int  # calls it ran (cancelled ones included)
    queued_s: float | None = None  # runnable but not running (waiting for a CPU); None: unknown
    walls: tuple[float, ...] = ()  # each call's wall time less its own waits for a CPU


def without_cpu_waits(
    samples: list[tuple[float, float]], queued_s: float | None
) -> tuple[list[tuple[float, float]], float]:
    """Returns the (wall, CPU) ``samples`` of calls one thread ran one after another, less the
    ``queued_s`` seconds it spent runnable but waiting for a CPU meanwhile, shared evenly among
    them and never below their CPU time, and the seconds taken out.

    Other programs' load is not the function's waiting: a CPU-bound call on a machine whose cores
    are all busy would otherwise look like one that sleeps (CPU/wall 0.5) and go to threads."""
    if queued_s is None or queued_s <= 0 or not samples:
        return samples, 0.0
    each = queued_s / len(samples)
    out = [(max(cpu, wall - each), cpu) for wall, cpu in samples]
    return out, sum(w for w, _ in samples) - sum(w for w, _ in out)


class Probe:
    """The measurements of one function and the policy that turns them into the next action.

    ``cores`` is what the process may use; ``probe_calls`` the calls measured at least before
    deciding; ``max_workers``, ``io_workers`` and ``hybrid`` are passed to ``decide``;
    ``gil_enabled`` False (a free-threaded build without the GIL) makes threads parallel for
    CPU-bound calls. Not thread-safe: the pool calls it under its lock."""

    def __init__(
        self,
        *,
        cores: int,
        probe_calls: int = PROBE_CALLS,
        max_workers: int | None = None,
        io_workers: int | None = None,
        hybrid: bool = False,
        switch_interval: float = 0.005,
        gil_enabled: bool = True,
    ) -> None:
        self.cores = cores
        self.probe_calls = probe_calls
        self.max_workers = max_workers
        self.io_workers = io_workers
        self.hybrid = hybrid
        self.switch_interval = switch_interval  # sys.getswitchinterval()
        self.gil_enabled = gil_enabled  # False: a free-threaded build without the GIL (no GIL to hold)
        self.solo: list[tuple[float, float]] = []  # (wall, CPU) seconds per call run alone
        self.solo_queued = 0.0  # seconds the solo calls sat queued for a CPU, taken out of their wall
        self.gil_late: float | None = None  # GilSampler's median delay during the solo calls
        self.sizes: Sizes | None = None
        self.via_map = False  # the calls come from map (batched) rather than submit
        self.pair_calls = 0
        self.pair_speedup: float | None = None
        self.free_cores: float | None = None  # set when other programs held cores during the pair
        self.pair_done = False
        self.rechecked = False  # the pair ran again: other programs held the cores the first time
        self.decided_early = False  # decided as the pair started: its figures are not needed

    # ------------------------------------------------------------------ samples

    def add_solo(self, wall_s: float, cpu_s: float) -> None:
        """Records one call run alone, as measured."""
        self.solo.append((wall_s, cpu_s))

    def end_solo(
        self, count: int, queued_s: float | None, gil_late: float | None = None, *, taken_s: float = 0.0
    ) -> None:
        """Ends a solo step whose last ``count`` calls were recorded by ``add_solo``: takes the
        ``queued_s`` seconds its thread waited for a CPU (None: unknown or already taken out)
        out of their wall time, and records ``gil_late``, the GIL sampler's reading during the
        step (None: no verdict). ``taken_s``: the waits the caller already took out of each
        call's own wall time (``run_measured`` does, exactly, where a step's total can only be
        shared evenly and also counts waits between the calls)."""
        if count <= 0:
            return
        self.gil_late = gil_late
        corrected, taken = without_cpu_waits(self.solo[-count:], queued_s)
        self.solo[-count:] = corrected
        self.solo_queued += taken + taken_s

    def add_sizes(self, sizes: Sizes) -> None:
        """Records the pickled sizes of one call (the first measured: later ones are ignored)."""
        if self.sizes is None:
            self.sizes = sizes

    def add_pair(self, runs: Sequence[PairRun | None]) -> None:
        """Records a pair step: the 2-thread speedup from its threads' spans, and whether other
        programs held cores meanwhile (then the pair runs once more, if calls are queued, before
        its figures are believed; the second time they stand, with the cores the pair got)."""
        self.pair_done = True
        if self.decided_early or not self.solo:
            return
        counted = [r for r in runs if r is not None and r.calls > 0]
        if len(counted) < 2 or len(counted) < len(runs):
            return
        runs = counted
        solo_wall, solo_cpu = self._medians()
        span = max(r.end for r in runs) - min(r.start for r in runs)
        ran = sum(r.calls for r in runs)
        cpu = sum(r.cpu_s for r in runs)
        ratio = solo_cpu / solo_wall if solo_wall > 0 else 1.0
        # Alone, the calls would have taken their CPU time over the CPU/wall ratio measured alone
        # (CPU time does not count waiting for the GIL, so this holds for code that holds it);
        # for waiting code, the solo wall time per call.
        alone = cpu / ratio if ratio >= WAITING else ran * solo_wall
        speedup = alone / span if span > 0 else None
        walls = [w for r in runs for w in r.walls]
        pair_wall = statistics.median(walls) if len(walls) == ran else 0.0
        if ratio < WAITING and pair_wall > 0:
            # Waiting code: the pair's span also holds every wake-up's wait for a CPU, which on
            # a loaded machine made sleeps look like calls that hold the GIL. Each call's own
            # wall less its waits for a CPU says it directly: as long as alone when the two run
            # side by side, twice as long when each waits out the other's hold on the GIL.
            speedup = 2 * solo_wall / pair_wall
        # Runnable but not running for much of the pair, and short of the cores by half a core or
        # more: other programs held cores, and parallel work gets only the cores the pair got.
        # Waits alone are not enough: two threads that start on one core wait there a few ms
        # until one is moved, and still use nearly two cores over a short pair.
        got = cpu / span if span > 0 else 0.0
        waits = [r.queued_s for r in runs]
        busy = (
            span > 0
            and all(q is not None for q in waits)
            and sum(q or 0.0 for q in waits) / span > BUSY_MACHINE
            and got < self.cores - 0.5
        )
        self.pair_calls = ran
        self.pair_speedup = speedup
        self.free_cores = got if busy else None
        if busy and not self.rechecked:
            # Often a moment's load (a few ms): measure once more rather than decide every later
            # call from it.
            self.rechecked = True
            self.pair_done = False

    # ------------------------------------------------------------------- policy

    @property
    def measured(self) -> int:
        """Calls measured so far (alone and in pairs)."""
        return len(self.solo) + self.pair_calls

    def solo_over(self, ran: int, elapsed_s: float) -> bool:
        """Whether a solo step that has run ``ran`` calls in ``elapsed_s`` seconds stops: solo
        calls use one core while the chosen pool would use them all."""
        return ran >= SOLO_CALLS or (ran > 0 and elapsed_s >= SOLO_BUDGET_S)

    def map_solo_over(self, samples: list[tuple[float, float]], elapsed_s: float) -> bool:
        """``solo_over`` for the first solo step of a ``map``, run in the calling thread with its
        ``samples`` so far; it also stops once the calls are long enough for a pair to tell apart."""
        if self.solo_over(len(samples), elapsed_s):
            return True
        return len(samples) >= self.probe_calls and statistics.median(w for w, _ in samples) >= PAIR_MIN_S

    def pair_size(self, wall_s: float, pending: int | None = None) -> int:
        """Calls per thread of a pair step for calls of ``wall_s``: about PAIR_TARGET_S each, at
        most PAIR_MAX_CALLS, and at most half the ``pending`` calls."""
        per = min(PAIR_MAX_CALLS, round(PAIR_TARGET_S / max(wall_s, 1e-9)))
        if pending is not None:
            per = min(per, pending // 2)
        return max(1, per)

    def wants_pair(self, wall_s: float) -> bool:
        """Whether calls of ``wall_s`` (measured alone) get a pair step before the decision."""
        return not self.pair_done and wall_s >= PAIR_MIN_S

    def next_action(self, pending: int) -> Action:
        """Returns what to do next with ``pending`` calls queued: measure alone, measure a pair,
        decide, or (None) wait for calls."""
        solo = RunSolo() if pending else None
        if not self.solo or (self.pair_done and self.measured < self.probe_calls):
            return solo
        wall, _ = self._medians()
        if self.wants_pair(wall):
            if pending >= 2:
                per = self.pair_size(wall, pending)
                return RunPair(per, self._decide_at_pair_start(wall, 2 * per))
            if self.measured < self.probe_calls:  # called one at a time so far: measure alone
                return solo
        elif self.measured < self.probe_calls or (wall < PAIR_MIN_S and len(self.solo) < SOLO_CALLS):
            return solo
        return Decide(self.decide())

    def figures(self) -> Figures:
        """The figures measured so far (at least one solo call)."""
        wall, cpu = self._medians()
        sizes = self.sizes or Sizes(None, None, None, True)
        return Figures(
            calls=self.measured,
            wall_s=wall,
            cpu_s=cpu,
            pair_speedup=self.pair_speedup,
            free_cores=self.free_cores,
            arg_bytes=sizes.arg_bytes,
            result_bytes=sizes.result_bytes,
            pickle_s=sizes.pickle_s,
            picklable=sizes.picklable,
            via_map=self.via_map,
            cores=self.cores,
            gil_enabled=self.gil_enabled,
        )

    def decide(self) -> Decision:
        """Returns ``decide``'s decision on the figures measured so far."""
        return decide(self.figures(), max_workers=self.max_workers, io_workers=self.io_workers, hybrid=self.hybrid)

    def held_gil_alone(self) -> bool:
        """Whether the solo calls held the GIL throughout: the sampler got it back only when the
        interpreter forced a switch, and other programs' load was too small to have delayed the
        sampler instead. Never with the GIL off: there is none to hold."""
        if not self.gil_enabled or self.gil_late is None or not self.solo:
            return False
        solo_wall = sum(w for w, _ in self.solo)
        return self.gil_late >= 0.5 * self.switch_interval and self.solo_queued <= BUSY_MACHINE * solo_wall

    def _decide_at_pair_start(self, wall: float, calls: int) -> Decision | None:
        """Returns the decision to take as a pair of ``calls`` starts, or None to wait for the
        pair: only long, CPU-bound, picklable calls that held the GIL alone, and only if that
        makes them a process or hybrid pool's (the pair would show a speedup of 1)."""
        if self.cores < 2 or wall < EARLY_MIN_S or self.sizes is None or not self.sizes.picklable:
            return None
        _, cpu = self._medians()
        if cpu < WAITING * wall or not self.held_gil_alone() or len(self.solo) + calls < self.probe_calls:
            return None
        figures = replace(self.figures(), calls=len(self.solo) + calls, pair_speedup=1.0)
        decision = decide(figures, max_workers=self.max_workers, io_workers=self.io_workers, hybrid=self.hybrid)
        if decision.strategy not in ("processes", "hybrid"):
            return None
        self.pair_done, self.pair_calls, self.pair_speedup = True, calls, 1.0
        self.decided_early = True
        return decision

    def _medians(self) -> tuple[float, float]:
        return statistics.median(w for w, _ in self.solo), statistics.median(c for _, c in self.solo)
