"""CPU-bound scaling, interleaved: ferropool's ProcessPool against the standard library's pools.

``bench_pools.py`` times each executor's CPU figure in one block, so on a shared machine one
executor can draw a busy minute and another a quiet one. Here every round runs each executor
once, in a rotating order, so that each sees the same background load; the report gives the
median over the rounds, the min-max spread, and, from the same rounds, the median of each
round's ratio to the standard library's ``fork`` pool (a ratio within a round cancels most of the
machine's drift).

Each run: a fresh pool of ``--workers`` (default: usable cores), warmed up with ``2 * workers``
spin tasks (so that every worker has started and imported the task), then ``--tasks`` tasks of a
pure-Python loop of about ``--task-ms`` each, submitted one by one and gathered: the time from the
first ``submit`` to the last result. Efficiency = (tasks x one task's serial time) /
(workers x wall time); the serial time per task is measured in this process at start and again
at the end (the report says both).

CPU accounting, per run, from ``/proc/<pid>/task/<tid>/schedstat`` (nanoseconds on CPU) read just
before the first ``submit`` and just after the last result, for this process and every process it
started: each thread's CPU time during the run, summed by role:

- ``parent main``: the thread that submits and gathers;
- ``parent helpers``: this process's other threads (a result thread, a dispatcher, the standard
  library's management thread);
- ``worker main``: each worker's busiest thread, the one running the tasks;
- ``worker helpers``: the workers' other threads;
- ``other`` (forkserver and any other descendant).

``overhead`` = everything but ``worker main``, as a share of the tasks' own CPU time
(``worker main``): what the pool spends besides the tasks. Peak RSS: ``VmHWM`` of this
process plus the pool's processes after each run.

Run::

    python benchmarks/bench_cpu_interleaved.py                    # 7 rounds, ~40 s on 2 cores
    python benchmarks/bench_cpu_interleaved.py --rounds 11 --json bench-results/cpu.json
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import _harness as h
from ferropool.compare.tasks import calibrate_spin, spin


def _threads(pid: int) -> dict:
    """Returns ``{tid: (name, cpu_ns)}`` for every thread of ``pid`` (empty if it is gone)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                ns = int(f.read().split()[0])
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                name = f.read().strip()
        except (OSError, ValueError, IndexError):
            continue
        out[int(tid)] = (name, ns)
    return out


def _snapshot(pids: list) -> dict:
    return {pid: _threads(pid) for pid in pids}


def _cpu_by_role(before: dict, after: dict, me: int, workers: set) -> dict:
    """Each thread's CPU during the run, summed by role (seconds); see the module docstring."""
    roles = dict.fromkeys(("parent main", "parent helpers", "worker main", "worker helpers", "other"), 0.0)
    main_tid = me  # the main thread's tid is the pid
    for pid, threads in after.items():
        deltas = []
        for tid, (_name, ns) in threads.items():
            was = before.get(pid, {}).get(tid, (None, 0))[1]
            deltas.append((tid, (ns - was) / 1e9))
        if pid == me:
            for tid, s in deltas:
                roles["parent main" if tid == main_tid else "parent helpers"] += s
        elif pid in workers:
            deltas.sort(key=lambda d: d[1], reverse=True)
            for i, (_tid, s) in enumerate(deltas):
                roles["worker main" if i == 0 else "worker helpers"] += s
        else:
            roles["other"] += sum(s for _, s in deltas)
    return roles


class _Executor:
    def __init__(self, name: str, make) -> None:
        self.name, self.make = name, make


def executors(selected: set | None) -> list:
    out = []
    try:
        from ferropool import ProcessPool

        out.append(_Executor("ferropool ProcessPool", lambda w: ProcessPool(w)))
    except Exception as exc:  # an unbuilt tree: say so, run the others
        print(f"note: ferropool ProcessPool unavailable: {exc}", file=sys.stderr)
    for method in ("fork", "forkserver", "spawn"):
        ctx = multiprocessing.get_context(method)
        out.append(
            _Executor(
                f"stdlib ProcessPoolExecutor({method})", lambda w, ctx=ctx: ProcessPoolExecutor(w, mp_context=ctx)
            )
        )
    try:
        import loky

        out.append(_Executor("loky ProcessPoolExecutor", lambda w: loky.ProcessPoolExecutor(max_workers=w)))
    except ImportError:
        pass
    if selected:
        out = [e for e in out if any(s in e.name.lower() for s in selected)]
    return out


def one_run(ex: _Executor, workers: int, n_tasks: int, spin_n: int, expected: int) -> dict:
    me = os.getpid()
    before_pool = set(h._descendants(me))
    pool = ex.make(workers)
    try:
        for f in [pool.submit(spin, spin_n // 10) for _ in range(2 * workers)]:
            f.result()
        procs = [p for p in h._descendants(me) if p not in before_pool]
        worker_pids = set(procs)
        # A forkserver (started before the pool) is not the pool's worker: count it as "other".
        others = [p for p in h._descendants(me) if p in before_pool]
        pids = [me, *procs, *others]
        h.reset_peak_rss()
        before = _snapshot(pids)
        t0 = time.perf_counter()
        futures = [pool.submit(spin, spin_n) for _ in range(n_tasks)]
        results = [f.result() for f in futures]
        wall = time.perf_counter() - t0
        after = _snapshot(pids)
        if results != [expected] * n_tasks:
            raise AssertionError(f"{ex.name}: wrong results")
        rss = h.TreeRss()
        rss._exclude = set(before_pool)
        rss.sample()
        cpu = _cpu_by_role(before, after, me, worker_pids)
    finally:
        pool.shutdown(wait=True)
    return {"wall": wall, "cpu": cpu, "rss_kib": rss.peak()["tree_kib"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--tasks", type=int, default=40)
    p.add_argument("--task-ms", type=float, default=25.0)
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--executors", default="ferropool,fork,forkserver", help="substrings selecting executors")
    p.add_argument("--json", metavar="PATH")
    a = p.parse_args(argv)
    machine = h.machine_info()
    workers = a.workers or machine["usable_cores"] or 1
    multiprocessing.get_context("forkserver")  # its server starts on first use, before timing
    from multiprocessing import forkserver

    forkserver.ensure_running()
    spin_n = calibrate_spin(a.task_ms / 1e3)
    expected = spin(spin_n)

    def serial_task_s() -> float:
        runs = []
        for _ in range(5):
            t = time.perf_counter()
            spin(spin_n)
            runs.append(time.perf_counter() - t)
        return statistics.median(runs)

    serial_start = serial_task_s()
    exs = executors({s.strip().lower() for s in a.executors.split(",")} if a.executors else None)
    runs: dict = {e.name: [] for e in exs}
    for r in range(a.rounds):
        order = exs[r % len(exs) :] + exs[: r % len(exs)]
        for ex in order:
            runs[ex.name].append(one_run(ex, workers, a.tasks, spin_n, expected))
        print(
            f"round {r + 1}/{a.rounds}: " + ", ".join(f"{e.name} {runs[e.name][-1]['wall']:.3f} s" for e in order),
            file=sys.stderr,
            flush=True,
        )
    serial_end = serial_task_s()
    task_s = statistics.median([serial_start, serial_end])
    ref = "stdlib ProcessPoolExecutor(fork)"
    rows, data = [], {}
    for ex in exs:
        rr = runs[ex.name]
        walls = [x["wall"] for x in rr]
        st = h.Stats.of(walls)
        eff = a.tasks * task_s / (workers * st.median)
        ratio = (
            statistics.median(x["wall"] / y["wall"] for x, y in zip(rr, runs[ref], strict=True))
            if ref in runs
            else None
        )
        cpu = {k: statistics.median(x["cpu"][k] for x in rr) for k in rr[0]["cpu"]}
        overhead = sum(v for k, v in cpu.items() if k != "worker main") / cpu["worker main"]
        rss = max(x["rss_kib"] or 0 for x in rr)
        data[ex.name] = {"wall": st.to_json(), "efficiency": eff, "ratio_to_fork": ratio, "cpu_s": cpu, "rss_kib": rss}
        rows.append(
            [
                ex.name,
                h.fmt_seconds(st.median),
                f"{h.fmt_seconds(st.min)} - {h.fmt_seconds(st.max)}",
                "-" if ratio is None else f"{ratio:.3f}",
                f"{eff:.2f}",
                *(f"{cpu[k] * 1e3:.1f}" for k in ("parent main", "parent helpers", "worker main", "worker helpers")),
                f"{overhead * 100:.2f}%",
                h.fmt_kib(rss),
            ]
        )
    load = os.getloadavg()
    print(
        f"{a.tasks} tasks of spin({spin_n:,}) (serial {task_s * 1e3:.1f} ms a task: {serial_start * 1e3:.1f} at "
        f"start, {serial_end * 1e3:.1f} at end), {workers} workers, {a.rounds} interleaved rounds, medians; "
        f"load average {load[0]:.1f} at end. CPU columns: milliseconds on CPU during the run, by role."
    )
    print()
    print(
        h.markdown_table(
            [
                "executor",
                "wall",
                "min - max",
                "time / fork (per round)",
                "efficiency",
                "parent main ms",
                "parent helpers ms",
                "worker main ms",
                "worker helpers ms",
                "overhead",
                "peak RSS",
            ],
            rows,
        )
    )
    if a.json:
        h.write_json(a.json, {"machine": machine, "config": vars(a), "task_s": task_s, "results": data})
    return 0


if __name__ == "__main__":
    sys.exit(main())
