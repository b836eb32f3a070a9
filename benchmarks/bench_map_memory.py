"""Memory under a flood of work: ``map`` over ten million items, and 200,000 ``submit`` calls
from a producer faster than the workers, with and without ``max_pending``.

Shows that ``ProcessPool.map`` never materialises its input (the parent's peak RSS stays near
its idle size) and that ``max_pending`` bounds the memory of a producer that submits without
waiting. Runs each case in a fresh interpreter so each peak is its own.

    python benchmarks/bench_map_memory.py [--items 10000000] [--submits 200000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASE = r"""
import json, resource, sys, time
from ferropool import ProcessPool
from ferropool.compare.tasks import add_one
def hwm_kib():  # VmHWM, not ru_maxrss, which carries over the RSS of whoever forked us
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
n = int(sys.argv[1])
idle = hwm_kib()
with ProcessPool() as pool:
    start = time.perf_counter()
    total = sum(pool.map(add_one, (i for i in range(n))))
    elapsed = time.perf_counter() - start
assert total == n * (n + 1) // 2
print(json.dumps({"items": n, "seconds": elapsed, "parent_idle_rss_mib": idle / 1024,
                  "parent_peak_rss_mib": hwm_kib() / 1024,
                  "worker_peak_rss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))
"""


FLOOD = r"""
import json, sys, time
from ferropool import ProcessPool
from ferropool.compare.tasks import spin
def hwm_kib():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
n, max_pending = int(sys.argv[1]), (int(sys.argv[2]) or None)
done = 0
def count(_):
    global done
    done += 1
with ProcessPool(max_pending=max_pending) as pool:
    start = time.perf_counter()
    for i in range(n):  # a producer that keeps no futures: only the pool holds pending work
        pool.submit(spin, 2000).add_done_callback(count)  # ~0.1 ms each: the producer is faster
submitted = time.perf_counter() - start
assert done == n
print(json.dumps({"seconds": submitted, "parent_peak_rss_mib": hwm_kib() / 1024}))
"""


def flood(submits: int, max_pending: int) -> dict:
    out = subprocess.run(
        [sys.executable, "-c", FLOOD, str(submits), str(max_pending)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000_000)
    ap.add_argument("--submits", type=int, default=200_000)
    a = ap.parse_args()
    out = subprocess.run([sys.executable, "-c", CASE, str(a.items)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    print(
        f"map(add_one, generator of {r['items']:,}) on ProcessPool: {r['seconds']:.2f} s, "
        f"{r['items'] / r['seconds'] / 1e6:.2f} M items/s; parent RSS {r['parent_idle_rss_mib']:.0f} MiB idle, "
        f"{r['parent_peak_rss_mib']:.0f} MiB peak; largest worker {r['worker_peak_rss_mib']:.0f} MiB"
    )
    for max_pending in (0, 1000):
        f = flood(a.submits, max_pending)
        print(
            f"{a.submits:,} x submit(spin, 2000) (~0.1 ms tasks) without keeping futures, max_pending={max_pending or None}: "
            f"{f['seconds']:.1f} s to submit, parent peak RSS {f['parent_peak_rss_mib']:.0f} MiB"
        )


if __name__ == "__main__":
    main()
