"""``map`` over a generator of ten million items: time, throughput and peak memory.

Shows that ``ProcessPool.map`` never materialises its input: the parent's peak RSS stays near
its idle size while every item flows through the workers. Runs each case in a fresh
interpreter so each peak is its own.

    python benchmarks/bench_map_memory.py [--items 10000000]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CASE = r"""
import json, resource, sys, time
from ferropool import ProcessPool
from ferropool._workloads import add_one
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--items", type=int, default=10_000_000)
    a = ap.parse_args()
    out = subprocess.run([sys.executable, "-c", CASE, str(a.items)], capture_output=True, text=True, check=True)
    r = json.loads(out.stdout)
    print(f"map(add_one, generator of {r['items']:,}) on ProcessPool: {r['seconds']:.2f} s, "
          f"{r['items'] / r['seconds'] / 1e6:.2f} M items/s; parent RSS {r['parent_idle_rss_mib']:.0f} MiB idle, "
          f"{r['parent_peak_rss_mib']:.0f} MiB peak; largest worker {r['worker_peak_rss_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
