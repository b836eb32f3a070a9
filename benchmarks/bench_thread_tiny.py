"""Throughput of tiny tasks: ferropool.ThreadPool vs concurrent.futures.ThreadPoolExecutor.

Each run submits N calls of ``f(x) = x + 1`` one by one, then waits for all results. Both
executors get the same ``max_workers`` and are created and warmed up before timing, so the
numbers measure the per-task path (submit, queue, wake-up, run, result), not thread start-up.
Prints the median of R runs for each and their ratio, all measured in this one process.

    python benchmarks/bench_thread_tiny.py [--tasks 20000] [--runs 7] [--workers N] [--no-gc]

About half of each side's time is CPython's cyclic GC walking the live ``Future`` objects (each
holds a ``Condition`` with its deque and bound methods, and two lists); ``--no-gc`` turns the
collector off during the runs to show the cost of the executors' own paths.
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

from ferropool import ThreadPool


def f(x):
    return x + 1


def one_run(pool, n: int) -> float:
    start = time.perf_counter()
    futures = [pool.submit(f, i) for i in range(n)]
    results = [fut.result() for fut in futures]
    elapsed = time.perf_counter() - start
    assert results[-1] == n
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=7)
    default_workers = min(32, (os.cpu_count() or 1) + 4)
    parser.add_argument("--workers", type=int, default=default_workers)
    parser.add_argument("--no-gc", action="store_true", help="disable the cyclic GC during the runs")
    a = parser.parse_args()
    if a.no_gc:
        gc.disable()

    pools = {
        "ThreadPoolExecutor": ThreadPoolExecutor(a.workers),
        "ferropool.ThreadPool": ThreadPool(a.workers),
    }
    times: dict[str, list[float]] = {name: [] for name in pools}
    for pool in pools.values():
        one_run(pool, a.tasks)  # warm-up: start threads
    # Interleave the runs so that drift on the machine hits both sides alike.
    for _ in range(a.runs):
        for name, pool in pools.items():
            times[name].append(one_run(pool, a.tasks))
    for pool in pools.values():
        pool.shutdown()

    gc_state = "GC off" if a.no_gc else "GC on"
    print(f"{a.tasks} tasks f(x)=x+1, max_workers={a.workers}, median of {a.runs} runs, {gc_state}")
    med = {name: statistics.median(ts) for name, ts in times.items()}
    for name, m in med.items():
        print(
            f"  {name:22s} {m * 1e3:8.1f} ms  {m / a.tasks * 1e6:6.2f} us/task  (min {min(times[name]) * 1e3:.1f} ms)"
        )
    ratio = med["ThreadPoolExecutor"] / med["ferropool.ThreadPool"]
    print(f"  throughput ratio ThreadPool / ThreadPoolExecutor: {ratio:.2f}x")


if __name__ == "__main__":
    main()
