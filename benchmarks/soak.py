"""Soak: hundreds of thousands of tasks with crashes, timeouts, cancels and large results.

Each task's kind, and so its one right outcome, follows from its id and ``--seed``:

==============  =================================================  ==========================
kind            what the task does                                 its future must end with
==============  =================================================  ==========================
tiny            returns ``3 * id + 1``                             that result
tiny+timeout    the same, under ``options(task_timeout=30)``       that result
large           returns 1-16 MiB (numpy array or bytearray)        those bytes (shared memory)
raise           raises ValueError, KeyError or its own SoakError   that type, ``args == (id,)``
exit            ``os._exit(7)``                                    WorkerDiedError, exitcode 7
kill            SIGKILLs its own worker                            WorkerDiedError, signal 9
segv            dereferences NULL                                  WorkerDiedError, signal 11
timeout         sleeps 5 s under ``options(task_timeout=0.25)``    TaskTimeoutError
cancel-queued   sleeps 2 s; ``cancel()`` right after submit        CancelledError
cancel-running  sleeps 5 s; ``cancel()`` once it has begun         CancelledError
==============  =================================================  ==========================

The checker holds every such outcome to account. Each future gets a done callback that counts
its calls (exactly one per future); each task adds one to its own byte of a shared run counter
when it begins (``_soak_tasks.py``), so a task that ran twice, or a finished one blamed for a
crash, shows; a timed-out or cancelled task that reached the end of its sleep was not stopped
(checked after shutdown, which stops a worker still busy 2 s after it, so a task cancelled in
the last seconds of the run can escape this check).
Every mismatch is counted by category, the first few ids of each printed; the
exit status is 1 if there was any. At most ``--window`` futures are unfinished at once, and
every wait is bounded: no future finishing for ``--stall`` seconds ends the run as a failure.

After ``shutdown(wait=True)`` (itself bounded) the parent must be back where it started: no
child process, the same number of open descriptors, no memory file (descriptor or mapping),
no ``/dev/shm`` entry, no extra thread (``threading.enumerate`` and ``/proc/self/task``). The
parent's RSS is sampled every 1% of the tasks: start, middle, end, peak, and the growth per
100,000 tasks (least-squares slope over the samples after the first 10%; runs of 50,000 tasks
or more).

``--pool hybrid`` runs the same mix on a ``HybridPool`` (``HYBRID_THREADS`` threads per
process). There a dying process fails every task running beside the culprit, and a worker
stopped after its grace re-runs the tasks running beside the stopped one, so a WorkerDiedError
of an innocent task and a second run of a task are allowed, but only so many: ``threads - 1``
per crash that ran (collateral) and per timed-out or cancelled task that had begun (re-runs).
Beyond that bound the excess counts as a mismatch.

Run::

    python benchmarks/soak.py                     # 300,000 tasks, minutes on 2 cores
    python benchmarks/soak.py --quick             # 5,000 tasks, seconds
    python benchmarks/soak.py --pool hybrid --quick
    python benchmarks/soak.py --json bench-results/soak.json

Linux only (``/proc``). Not a test: nothing runs it in CI.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import faulthandler
import functools
import gc
import mmap
import os
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import _harness as h
import _soak_tasks as tasks

try:
    import ferropool
    from ferropool import TaskTimeoutError, WorkerDiedError
except Exception as exc:
    sys.exit(f"soak: cannot import ferropool ({type(exc).__name__}: {exc}); build and install it first: make install")

try:
    import numpy as np
except ImportError:
    np = None

MIB = 1 << 20
TIMEOUT_S = 0.25  # the limit of "timeout" tasks, which sleep LONG_SLEEP_S
LONG_SLEEP_S = 5.0  # a task stopped in time never gets to its end
QUEUED_SLEEP_S = 2.0  # "cancel-queued" tasks
LOOSE_TIMEOUT_S = 30.0  # "tiny+timeout" and, as a backstop, "cancel-running"
START_WAIT_S = 60.0  # a cancel-running task not begun by then is cancelled anyway

# Fraction of the tasks of each kind (the rest are "tiny"); every kind also gets at least
# MIN_EACH tasks, so a quick run sees each one.
MIX = {
    "exit": 0.01,
    "kill": 0.001,
    "segv": 0.001,
    "raise": 0.01,
    "tiny+timeout": 0.01,
    "large": 0.001,
    "timeout": 0.0003,
    "cancel-queued": 0.002,
    "cancel-running": 0.0003,
}
MIN_EACH = 3
GROWTH_MIN_TASKS = 50_000  # fewer, and no RSS growth per 100k tasks is reported
CRASHES = {"exit": ("exitcode", tasks.EXIT_CODE), "kill": ("signal", 9), "segv": ("signal", 11)}
RAISES = (ValueError, KeyError, tasks.SoakError)
HYBRID_THREADS = 2
COLLATERAL = "collateral WorkerDiedError (HybridPool)"
RERUN = "re-run beside a stopped task (HybridPool)"


# ---------------------------------------------------------------- the plan: kind of each id


def _mix64(x: int) -> int:
    """splitmix64's finaliser: a fast, well-spread hash of an integer."""
    x = (x + 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return x ^ (x >> 31)


def plan(n: int, seed: int) -> list:
    """Return the kind of each task id ``0..n-1``: a pure function of ``n`` and ``seed``."""
    cuts, acc = [], 0.0
    for kind, frac in MIX.items():
        acc += frac
        cuts.append((acc, kind))
    kinds = []
    for tid in range(n):
        u = _mix64(seed * 0x100000001B3 + tid) / 2.0**64
        kinds.append(next((k for c, k in cuts if u < c), "tiny"))
    # Spread MIN_EACH of every kind evenly over the run, so a quick run sees each kind.
    for i, kind in enumerate(MIX):
        for j in range(MIN_EACH):
            kinds[(j * n // MIN_EACH + 7 * i + 11) % n] = kind
    return kinds


def large_spec(tid: int, seed: int) -> tuple:
    """Return (nbytes, as_numpy) of a "large" task: 1-16 MiB, numpy for half of them."""
    r = _mix64(seed ^ (tid << 20))
    return MIB + r % (15 * MIB + 1), np is not None and (r >> 40) & 1 == 1


# ---------------------------------------------------------------- process state


def _fd_targets() -> list:
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            out.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            pass  # the descriptor listdir itself used, closed meanwhile
    return out


def _memfd_mappings() -> int:
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if "/memfd:" in line)


def snapshot() -> dict:
    """Return what must be the same before the pool and after its shutdown."""
    fds = _fd_targets()
    return {
        "children": len(h._descendants(os.getpid())),
        "fds": len(fds),
        "memfd_fds": sum(1 for t in fds if t.startswith("/memfd:")),
        "memfd_mappings": _memfd_mappings(),
        "dev_shm": sorted(os.listdir("/dev/shm")) if os.path.isdir("/dev/shm") else [],
        "threads": len(threading.enumerate()),
        "os_threads": len(os.listdir("/proc/self/task")),
    }


def leaks(base: dict, now: dict) -> dict:
    """Return what ``now`` has beyond ``base`` (counts, and new /dev/shm names); {} if nothing."""
    out = {k: now[k] - base[k] for k in base if k != "dev_shm" and now[k] > base[k]}
    new_shm = sorted(set(now["dev_shm"]) - set(base["dev_shm"]))
    if new_shm:
        out["dev_shm"] = new_shm
    return out


def rss_kib() -> int:
    return h._status_kib("self", "VmRSS") or 0


# ---------------------------------------------------------------- the run


@dataclass
class Tally:
    """Outcomes seen, by kind; mismatches by category with the first ids of each."""

    kinds: Counter = field(default_factory=Counter)
    ok: Counter = field(default_factory=Counter)
    allowed: Counter = field(default_factory=Counter)  # HybridPool: collateral deaths, re-runs
    notes: Counter = field(default_factory=Counter)  # facts, not faults (queued vs running cancels)
    bad: Counter = field(default_factory=Counter)
    examples: dict = field(default_factory=dict)

    def mismatch(self, category: str, tid: int, detail: str) -> None:
        self.bad[category] += 1
        ex = self.examples.setdefault(category, [])
        if len(ex) < 5:
            ex.append(f"id {tid}: {detail}")


class Soak:
    """Submits the plan through a bounded window and checks each future as it finishes."""

    def __init__(self, pool, kinds: list, cfg: argparse.Namespace, runs_path: str, tally: Tally) -> None:
        self.pool, self.kinds, self.cfg, self.tally = pool, kinds, cfg, tally
        self.n = len(kinds)
        self.timeout_view = pool.options(task_timeout=TIMEOUT_S)
        self.loose_view = pool.options(task_timeout=LOOSE_TIMEOUT_S)
        self.calls = bytearray(self.n)  # done-callback calls per id
        self.checked = bytearray(self.n)
        self.cancel_ok: dict = {}  # id -> what cancel() returned
        self.inflight: dict = {}  # id -> future
        self.await_start: dict = {}  # cancel-running id -> (future, deadline)
        self.done: deque = deque()
        self.cond = threading.Condition()
        self.last_progress = self.last_report = time.monotonic()
        self.rss: list = []  # (tasks checked, KiB)
        self.n_checked = 0
        self.stalled: list = []
        self.hybrid = cfg.pool == "hybrid"
        with open(runs_path, "rb") as f:
            self.runs = mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ)

    def _callback(self, tid: int) -> Callable[[cf.Future], None]:
        def on_done(_fut: cf.Future) -> None:
            self.calls[tid] = min(255, self.calls[tid] + 1)
            with self.cond:
                self.done.append(tid)
                self.cond.notify()

        return on_done

    def submit(self, tid: int) -> None:
        kind, pool = self.kinds[tid], self.pool
        self.tally.kinds[kind] += 1
        if kind == "tiny":
            fut = pool.submit(tasks.tiny, tid)
        elif kind == "tiny+timeout":
            fut = self.loose_view.submit(tasks.tiny, tid)
        elif kind in CRASHES:
            fut = pool.submit(tasks.crash, tid, kind)
        elif kind == "raise":
            fut = pool.submit(tasks.fail, tid, ("value", "key", "soak")[tid % 3])
        elif kind == "large":
            fut = pool.submit(tasks.large, tid, *large_spec(tid, self.cfg.seed))
        elif kind == "timeout":
            fut = self.timeout_view.submit(tasks.sleep, tid, LONG_SLEEP_S)
        elif kind == "cancel-queued":
            fut = pool.submit(tasks.sleep, tid, QUEUED_SLEEP_S)
        else:  # cancel-running
            fut = self.loose_view.submit(tasks.sleep, tid, LONG_SLEEP_S)
        self.inflight[tid] = fut
        fut.add_done_callback(self._callback(tid))
        if kind == "cancel-queued":
            where = "at a worker" if fut.running() else "in the queue"
            self.cancel_ok[tid] = fut.cancel()
            self.tally.notes[f"cancel-queued: {where} when cancelled"] += 1
        elif kind == "cancel-running":
            self.await_start[tid] = (fut, time.monotonic() + START_WAIT_S)

    def _cancel_started(self) -> None:
        now = time.monotonic()
        for tid, (fut, deadline) in list(self.await_start.items()):
            if self.runs[tid] or now > deadline:
                del self.await_start[tid]
                self.tally.notes[
                    "cancel-running: cancelled while running" if self.runs[tid] else "cancel-running: not begun in time"
                ] += 1
                self.cancel_ok[tid] = fut.cancel()

    def drain(self, *, until: int) -> bool:
        """Checks finished futures until at most ``until`` are in flight; False on a stall."""
        while True:
            self._cancel_started()
            with self.cond:
                if not self.done and len(self.inflight) > until:
                    self.cond.wait(0.05)
                batch = list(self.done)
                self.done.clear()
            now = time.monotonic()
            if batch:
                self.last_progress = now
            for tid in batch:
                self.check(tid)
            if len(self.inflight) <= until:
                return True
            if now - self.last_report > 5.0 and now - self.last_progress > 2.0:
                self.last_report = now
                waiting = Counter(self.kinds[i] for i in self.inflight)
                _progress(f"waiting {now - self.last_progress:.0f} s for {dict(waiting)}")
            if now - self.last_progress > self.cfg.stall:
                self.stalled = sorted(self.inflight)
                return False

    def run(self) -> bool:
        """Submits every task; returns False if the run stalled."""
        sample_every = max(1, self.n // 100)
        started = time.monotonic()
        self.rss.append((0, rss_kib()))
        for tid in range(self.n):
            if len(self.inflight) >= self.cfg.window and not self.drain(until=self.cfg.window - 1):
                return False
            self.submit(tid)
            if tid % 64 == 0:
                self.drain(until=self.n)  # check what has finished, without blocking
            if (tid + 1) % sample_every == 0:
                self.rss.append((self.n_checked, rss_kib()))
                if (tid + 1) % (sample_every * 10) == 0:
                    _progress(
                        f"{tid + 1:,} submitted, {self.n_checked:,} checked, {time.monotonic() - started:.1f} s, "
                        f"RSS {self.rss[-1][1] / 1024:.0f} MiB, {sum(self.tally.bad.values()):,} wrong so far"
                    )
        ok = self.drain(until=0)
        self.rss.append((self.n_checked, rss_kib()))
        return ok

    # ------------------------------------------------------------ the checker

    def check(self, tid: int) -> None:
        t = self.tally
        if self.checked[tid]:
            t.mismatch("done callback ran more than once", tid, self.kinds[tid])
            return
        self.checked[tid] = 1
        self.n_checked += 1
        fut = self.inflight.pop(tid)
        kind = self.kinds[tid]
        if self.calls[tid] != 1:
            t.mismatch("done callback ran more than once", tid, f"{kind}: {self.calls[tid]} calls")
        runs = self.runs[tid]
        if fut.cancelled():
            got, exc, value = "CancelledError", None, None
        else:
            exc = fut.exception(timeout=0)
            value = fut.result(timeout=0) if exc is None else None
            got = type(exc).__name__ if exc is not None else "result"
        verdict = self._judge(tid, kind, got, exc, value)
        del fut, value, exc  # a large result's mapping goes now
        if verdict is None:
            t.ok[kind] += 1
        elif verdict.startswith("allowed:"):
            t.allowed[verdict[len("allowed: ") :]] += 1
        else:
            t.mismatch(verdict, tid, f"{kind}, got {got}")
        self._check_runs(tid, kind, got, runs)

    def _judge(self, tid: int, kind: str, got: str, exc, value) -> str | None:
        """Return None when the outcome is the one expected, else a mismatch category."""
        innocent_death = isinstance(exc, WorkerDiedError) and kind not in CRASHES
        if innocent_death:
            if self.hybrid:
                return "allowed: " + COLLATERAL
            return "non-crashing task failed with WorkerDiedError"
        if kind in ("tiny", "tiny+timeout"):
            return None if got == "result" and value == 3 * tid + 1 else f"{kind}: wrong outcome"
        if kind == "large":
            nbytes, as_numpy = large_spec(tid, self.cfg.seed)
            return None if got == "result" and _is_fill(value, nbytes, tid % 251, as_numpy) else "large: wrong result"
        if kind == "raise":
            want = RAISES[tid % 3]
            return None if type(exc) is want and exc.args == (tid,) else "raise: wrong exception"
        if kind in CRASHES:
            if not isinstance(exc, WorkerDiedError):
                return f"{kind}: not WorkerDiedError"
            attr, want = CRASHES[kind]
            if getattr(exc, attr) != want:
                return "crash task's WorkerDiedError names another task's exit"
            return None
        if kind == "timeout":
            return None if isinstance(exc, TaskTimeoutError) else "timeout: not TaskTimeoutError"
        # cancel-queued, cancel-running
        if not self.cancel_ok.get(tid):
            return f"{kind}: cancel() returned False"
        return None if got == "CancelledError" else f"{kind}: cancel() returned True, future not cancelled"

    def _check_runs(self, tid: int, kind: str, got: str, runs: int) -> None:
        t = self.tally
        if kind.startswith("cancel"):
            if kind == "cancel-queued" and runs:
                t.notes["cancel-queued: had begun (then stopped)"] += 1
            if runs > 1:
                t.mismatch("task began more than once", tid, f"{kind}: {runs} runs")
            return
        if runs == 1:
            return
        if runs == 0:
            t.mismatch("task never began, yet its future ended", tid, f"{kind}, got {got}")
        elif kind in CRASHES:
            t.mismatch("crash task began more than once", tid, f"{kind}: {runs} runs, got {got}")
        elif self.hybrid:
            t.allowed[RERUN] += 1
        else:
            t.mismatch("task began more than once", tid, f"{kind}: {runs} runs, got {got}")

    def check_stopped(self) -> None:
        """After shutdown: a timed-out or cancelled sleep must not have reached its end."""
        for tid, kind in enumerate(self.kinds):
            if kind in ("timeout", "cancel-queued", "cancel-running") and self.runs[self.n + tid]:
                self.tally.mismatch(f"{kind}: task not stopped, ran to its end", tid, "sleep finished")

    def check_allowances(self) -> None:
        """HybridPool: collateral deaths and re-runs beyond what crashes and stops explain."""
        if not self.hybrid:
            return
        t, per = self.tally, HYBRID_THREADS - 1
        crash_runs = sum(self.runs[i] for i, k in enumerate(self.kinds) if k in CRASHES)
        stops = sum(
            1 for i, k in enumerate(self.kinds) if k in ("timeout", "cancel-queued", "cancel-running") and self.runs[i]
        )
        for what, bound, why in (
            (COLLATERAL, per * crash_runs, f"{crash_runs:,} crash runs"),
            (RERUN, per * stops, f"{stops:,} stopped tasks"),
        ):
            excess = t.allowed[what] - bound
            if excess > 0:
                category = f"{what.split(' (')[0]} beyond {HYBRID_THREADS - 1} per cause"
                t.bad[category] += excess
                t.examples[category] = [f"{t.allowed[what]:,} seen, at most {bound:,} explained by {why}"]

    def final_checks(self) -> None:
        """Every id submitted must have been checked exactly once, and nothing left in flight."""
        for tid in range(self.n):
            if not self.checked[tid]:
                self.tally.mismatch("future never finished", tid, self.kinds[tid])
            elif self.calls[tid] != 1:
                self.tally.mismatch("done callback ran more than once", tid, f"{self.calls[tid]} calls at the end")


def _is_fill(value, nbytes: int, byte: int, as_numpy: bool) -> bool:
    if as_numpy:
        return (
            np is not None
            and isinstance(value, np.ndarray)
            and value.dtype == np.uint8
            and value.size == nbytes
            and bool((value == byte).all())
        )
    return isinstance(value, bytearray) and len(value) == nbytes and value.count(byte) == nbytes


# ---------------------------------------------------------------- main


def make_pool(cfg: argparse.Namespace, runs_path: str):
    if cfg.pool == "hybrid":
        return ferropool.HybridPool(
            cfg.workers, HYBRID_THREADS, initializer=tasks.init, initargs=(runs_path, cfg.tasks)
        )
    return ferropool.ProcessPool(cfg.workers, initializer=tasks.init, initargs=(runs_path, cfg.tasks))


def _bounded(fn: Callable[[], object], seconds: float) -> tuple:
    """Run ``fn`` in a thread; return (finished, seconds taken)."""
    t0 = time.monotonic()
    th = threading.Thread(target=fn, name="soak-shutdown", daemon=True)
    th.start()
    th.join(seconds)
    return not th.is_alive(), time.monotonic() - t0


def settle(base: dict, seconds: float) -> tuple:
    """Wait (bounded) for the process to return to ``base``; return (leaks, seconds waited)."""
    t0 = time.monotonic()
    while True:
        gc.collect()
        found = leaks(base, snapshot())
        if not found or time.monotonic() - t0 > seconds:
            return found, time.monotonic() - t0
        time.sleep(0.05)


def soak(cfg: argparse.Namespace) -> dict:
    kinds = plan(cfg.tasks, cfg.seed)
    tally = Tally()
    with tempfile.TemporaryDirectory(prefix="ferropool-soak-") as tmp:
        runs_path = os.path.join(tmp, "runs")
        with open(runs_path, "wb") as f:
            f.truncate(2 * cfg.tasks)
        gc.collect()
        base = snapshot()
        rss_start = rss_kib()
        h.reset_peak_rss()
        t0 = time.perf_counter()
        pool = make_pool(cfg, runs_path)
        runner = Soak(pool, kinds, cfg, runs_path, tally)
        finished = runner.run()
        elapsed = time.perf_counter() - t0
        if finished:
            runner.final_checks()
        else:
            for tid in runner.stalled:
                tally.mismatch("future never finished", tid, kinds[tid])
            _progress(f"stalled: {len(runner.stalled)} futures unfinished after {cfg.stall:g} s without progress")
            faulthandler.dump_traceback()
        rss_end = rss_kib()
        stats = pool.stats(timeout=5.0).as_dict() if finished else None
        shut_ok, shut_s = _bounded(functools.partial(pool.shutdown, wait=True, cancel_futures=not finished), cfg.stall)
        if not shut_ok:
            tally.mismatch("shutdown(wait=True) did not return", -1, f"after {cfg.stall:g} s")
        runner.check_stopped()
        runner.check_allowances()
        del pool, runner.pool, runner.timeout_view, runner.loose_view
        runner.inflight.clear()
        runner.runs.close()
        left, settle_s = settle(base, cfg.settle)
        rss_after = rss_kib()
    peak = h._status_kib("self", "VmHWM")
    samples = runner.rss
    return {
        "finished": finished,
        "elapsed_s": elapsed,
        "tasks_per_s": runner.n_checked / elapsed if elapsed else None,
        "shutdown_s": shut_s,
        "settle_s": settle_s,
        "kinds": dict(tally.kinds),
        "ok": dict(tally.ok),
        "allowed": dict(tally.allowed),
        "notes": dict(sorted(tally.notes.items())),
        "mismatches": dict(tally.bad),
        "examples": tally.examples,
        "baseline": {k: v for k, v in base.items() if k != "dev_shm"},
        "leaks": left,
        "rss_kib": {
            "before_pool": rss_start,
            "middle": samples[len(samples) // 2][1],
            "end": rss_end,
            "after_shutdown": rss_after,
            "peak": peak,
            "growth_per_100k": _growth_per_100k(samples),
            "samples": samples,
        },
        "restarts": _restarts(stats),
    }


def _growth_per_100k(samples: list) -> float | None:
    """Least-squares slope of RSS (KiB) against tasks checked, after the first 10%, x 100,000."""
    if not samples or samples[-1][0] < GROWTH_MIN_TASKS:
        return None  # a few thousand tasks: the large results' peaks drown any trend
    last = samples[-1][0]
    pts = [(x, y) for x, y in samples if x >= last / 10]
    if len(pts) < 3:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    sxx = sum((x - mx) ** 2 for x, _ in pts)
    if sxx == 0:
        return None
    return sum((x - mx) * (y - my) for x, y in pts) / sxx * 100_000


def _restarts(stats: dict | None) -> int | None:
    """Return the worker replacements the pool counted (crashes, timeouts, cancels)."""
    if not stats:
        return None
    return sum(w.get("restarts", 0) for w in stats.get("workers", ()))


def _progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


def render_markdown(data: dict) -> str:
    cfg, r, m = data["config"], data["result"], data["machine"]
    load = lambda v: "?" if v is None else "/".join(f"{x:.1f}" for x in v)  # noqa: E731
    out = [
        f"Machine: {m['usable_cores']} usable cores ({m['cpu_model']}), Python {m['python']}, "
        f"1/5/15-min load average {load(m['loadavg_at_start'])} at start, {load(data['loadavg_at_end'])} at end; "
        f"{cfg['pool']} pool, {cfg['workers']} workers, {cfg['tasks']:,} tasks, window {cfg['window']}, "
        f"seed {cfg['seed']}.",
        "",
        f"Ran in {r['elapsed_s']:.1f} s ({r['tasks_per_s']:,.0f} tasks/s including every crash and restart); "
        f"shutdown {h.fmt_seconds(r['shutdown_s'])}; back to the baseline {h.fmt_seconds(r['settle_s'])} later.",
        "",
    ]
    rows = []
    for kind in ("tiny", "tiny+timeout", "large", "raise", *CRASHES, "timeout", "cancel-queued", "cancel-running"):
        rows.append([kind, f"{r['kinds'].get(kind, 0):,}", f"{r['ok'].get(kind, 0):,}"])
    out += [h.markdown_table(["kind", "tasks", "right outcome"], rows), ""]
    if r["mismatches"]:
        rows = [[cat, f"{n:,}", "; ".join(r["examples"].get(cat, [])[:2])] for cat, n in r["mismatches"].items()]
        out += ["Wrong outcomes:", "", h.markdown_table(["category", "count", "first ids"], rows), ""]
    else:
        out += ["Wrong outcomes: none.", ""]
    if r["allowed"]:
        out += ["Allowed: " + ", ".join(f"{k} {v:,}" for k, v in r["allowed"].items()) + ".", ""]
    if r["notes"]:
        out += ["Notes: " + ", ".join(f"{k} {v:,}" for k, v in r["notes"].items()) + ".", ""]
    rss = r["rss_kib"]
    left = r["leaks"]
    out += [
        "After shutdown: "
        + (
            "no child process, descriptor, memory file, /dev/shm entry or thread beyond the baseline "
            f"({r['baseline']['fds']} descriptors, {r['baseline']['threads']} Python threads, "
            f"{r['baseline']['os_threads']} OS threads)."
            if not left
            else "LEFT OVER: " + ", ".join(f"{k} {v:+}" if isinstance(v, int) else f"{k} {v}" for k, v in left.items())
        ),
        "",
        h.markdown_table(
            ["parent RSS", "before pool", "middle", "end", "after shutdown", "peak (VmHWM)", "growth / 100k tasks"],
            [
                [
                    "",
                    h.fmt_kib(rss["before_pool"]),
                    h.fmt_kib(rss["middle"]),
                    h.fmt_kib(rss["end"]),
                    h.fmt_kib(rss["after_shutdown"]),
                    h.fmt_kib(rss["peak"]),
                    "-" if rss["growth_per_100k"] is None else f"{rss['growth_per_100k'] / 1024:+.1f} MiB",
                ]
            ],
        ),
    ]
    return "\n".join(out)


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=None, help="number of tasks (default 300,000; 5,000 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run: 5,000 tasks, seconds")
    p.add_argument("--pool", choices=("process", "hybrid"), default="process", help="ProcessPool or HybridPool")
    p.add_argument("--workers", type=int, default=None, help="worker processes (default: usable cores, at least 2)")
    p.add_argument("--window", type=int, default=1000, help="most futures unfinished at once (default 1000)")
    p.add_argument("--seed", type=int, default=1, help="seed of the plan of kinds (default 1)")
    p.add_argument("--stall", type=float, default=120.0, help="seconds without a finished future that fail the run")
    p.add_argument("--settle", type=float, default=10.0, help="seconds after shutdown to return to the baseline")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    args = p.parse_args(argv)
    if args.tasks is None:
        args.tasks = 5_000 if args.quick else 300_000
    if args.workers is None:
        args.workers = max(2, len(os.sched_getaffinity(0)))
    if args.tasks < 100 or args.window < 1 or args.workers < 1:
        p.error("--tasks must be >= 100, --window and --workers >= 1")
    return args


def main(argv=None) -> int:
    cfg = parse_args(sys.argv[1:] if argv is None else argv)
    faulthandler.enable()
    machine = h.machine_info()
    _progress(f"soak: {cfg.tasks:,} tasks on a {cfg.pool} pool of {cfg.workers} workers")
    result = soak(cfg)
    data = {
        "config": {k: v for k, v in vars(cfg).items() if k != "json"},
        "machine": machine,
        "loadavg_at_end": list(os.getloadavg()),
        "result": result,
    }
    print(render_markdown(data))
    bad = result["mismatches"] or result["leaks"] or not result["finished"]
    if result["mismatches"]:
        print("\nFirst ids of each wrong outcome:", file=sys.stderr)
        for cat, ids in result["examples"].items():
            print(f"  {cat}:", file=sys.stderr)
            for line in ids:
                print(f"    {line}", file=sys.stderr)
    if cfg.json:
        h.write_json(cfg.json, data)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
