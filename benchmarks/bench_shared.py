"""ferropool.shared against multiprocessing's counterparts, measured in one run.

Figures (medians of ``--repeats`` runs, ratio = multiprocessing time / ferropool time):

* ``queue``: one producer process puts ``--items`` small items (ints), the parent gets them;
  ``ferropool.shared.Queue`` vs ``multiprocessing.Queue``. Timed from the go signal to the
  last item received.
* ``lock``: uncontended ``acquire()`` + ``release()`` pairs in one thread;
  ``ferropool.shared.Lock`` vs ``multiprocessing.Lock`` (``threading.Lock`` for reference).
* ``value``: ``--procs`` processes each add 1 ``--increments`` times to one shared counter at
  once; ``shared.Value.add`` vs ``multiprocessing.Value`` under its ``get_lock()``. Each run
  checks the final count is exact.

Processes are started with the ``fork`` context for both sides, so both pay the same start-up,
which is outside the timed region. Peak RSS is ``ru_maxrss`` of this process and of the largest
child, for the whole run.

    python benchmarks/bench_shared.py [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import Stats, machine_info, markdown_table, rusage_peaks, write_json
from ferropool import shared

FORK = multiprocessing.get_context("fork")


# ----------------------------------------------------------------- queue


def _producer(q, go, n):
    go.wait()
    for i in range(n):
        q.put(i)


def queue_run(make_queue, make_event, n: int) -> float:
    q, go = make_queue(), make_event()
    proc = FORK.Process(target=_producer, args=(q, go, n))
    proc.start()
    try:
        t0 = time.perf_counter()
        go.set()
        total = 0
        for _ in range(n):
            total += q.get(timeout=60)
        elapsed = time.perf_counter() - t0
    finally:
        proc.join(60)
    assert total == n * (n - 1) // 2, "items lost or duplicated"
    return elapsed


# ----------------------------------------------------------------- lock


def lock_run(lock, n: int) -> float:
    acquire, release = lock.acquire, lock.release
    t0 = time.perf_counter()
    for _ in range(n):
        acquire()
        release()
    return time.perf_counter() - t0


# ----------------------------------------------------------------- value


def _add_shared(v, go, n):
    go.wait()
    add = v.add
    for _ in range(n):
        add(1)


def _add_mp(v, go, n):
    go.wait()
    lock = v.get_lock()
    for _ in range(n):
        with lock:
            v.value += 1


def value_run(kind: str, procs: int, n: int) -> float:
    if kind == "ferropool":
        v, go, target = shared.Value("q", 0, lock=False), shared.Event(), _add_shared
    else:
        v, go, target = FORK.Value("q", 0), FORK.Event(), _add_mp
    workers = [FORK.Process(target=target, args=(v, go, n)) for _ in range(procs)]
    for w in workers:
        w.start()
    t0 = time.perf_counter()
    go.set()
    for w in workers:
        w.join(120)
    elapsed = time.perf_counter() - t0
    assert v.value == procs * n, f"{kind}: counter {v.value} != {procs * n}"
    return elapsed


# ----------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--pairs", type=int, default=1_000_000)
    parser.add_argument("--procs", type=int, default=2)
    parser.add_argument("--increments", type=int, default=100_000)
    parser.add_argument("--json")
    args = parser.parse_args()

    def median(fn) -> Stats:
        fn()  # warm-up
        return Stats.of([fn() for _ in range(args.repeats)])

    results = {}
    results["queue"] = {
        "ferropool": median(lambda: queue_run(shared.Queue, shared.Event, args.items)),
        "multiprocessing": median(lambda: queue_run(FORK.Queue, FORK.Event, args.items)),
    }
    results["lock"] = {
        "ferropool": median(lambda: lock_run(shared.Lock(), args.pairs)),
        "multiprocessing": median(lambda: lock_run(FORK.Lock(), args.pairs)),
        "threading": median(lambda: lock_run(threading.Lock(), args.pairs)),
    }
    results["value"] = {
        "ferropool": median(lambda: value_run("ferropool", args.procs, args.increments)),
        "multiprocessing": median(lambda: value_run("multiprocessing", args.procs, args.increments)),
    }
    peaks = rusage_peaks()

    units = {
        "queue": (args.items, "items/s"),
        "lock": (args.pairs, "ns/pair"),
        "value": (args.procs * args.increments, "adds/s"),
    }
    rows = []
    for figure, by_kind in results.items():
        count, unit = units[figure]
        base = by_kind["multiprocessing"].median
        for kind, stats in by_kind.items():
            rate = (
                f"{stats.median / count * 1e9:.0f} ns/pair"
                if unit == "ns/pair"
                else f"{count / stats.median:,.0f} {unit}"
            )
            rows.append(
                [
                    figure,
                    kind,
                    f"{stats.median * 1e3:.1f} ms",
                    rate,
                    f"{base / stats.median:.1f}x",
                    f"{stats.spread:.0%}",
                ]
            )
    print(markdown_table(["figure", "implementation", "median", "rate", "vs multiprocessing", "spread"], rows))
    print(
        f"\npeak RSS: this process {peaks['self_maxrss_kib'] / 1024:.0f} MiB, largest child {peaks['children_maxrss_kib'] / 1024:.0f} MiB"
    )
    info = machine_info()
    print(
        f"{info['usable_cores']} cores, {info['cpu_model']}, Python {info['python']}, load {info['loadavg_at_start']}"
    )
    if args.json:
        write_json(
            args.json,
            {
                "machine": info,
                "args": vars(args),
                "results": {f: {k: s.to_json() for k, s in by.items()} for f, by in results.items()},
                "peak_rss": peaks,
            },
        )


if __name__ == "__main__":
    main()
