"""Built-in workloads for ``ferropool compare`` and the benchmark suite.

Every workload is a module-level function so that process pools can send it
to workers by reference (pickle stores ``ferropool._workloads.<name>``; the
worker imports this module).  Nothing here depends on ferropool's pools, so the
module also works while the Rust core is missing.

- :func:`add_one`: a tiny task; measures per-task overhead of a pool.
- :func:`spin`: a pure-Python loop that holds the GIL; measures CPU scaling.
  :func:`calibrate_spin` finds the loop count for a wanted duration.
- :func:`sleep_task`: blocks in ``time.sleep`` with the GIL released; stands in
  for blocking I/O.
"""

from __future__ import annotations

import time

__all__ = ["add_one", "spin", "calibrate_spin", "sleep_task"]


def add_one(x: int) -> int:
    """Return ``x + 1``; the smallest useful task, so a pool's overhead dominates."""
    return x + 1


def spin(n: int) -> int:
    """Run a pure-Python loop of ``n`` iterations and return a checksum.

    Holds the GIL for the whole call, so threads cannot run it in parallel.
    The checksum keeps the loop from being trivially dead code and lets callers
    check that a task really ran.
    """
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def calibrate_spin(target_s: float, *, min_n: int = 1_000) -> int:
    """Return the loop count for which :func:`spin` takes about ``target_s`` seconds.

    Blocks for roughly ``4 * target_s`` plus a few milliseconds in this process.
    The result reflects the machine's speed and load at the time of the call, so
    calibrate once and reuse the count for every strategy being compared.
    """
    if target_s <= 0:
        raise ValueError(f"target_s must be > 0, got {target_s!r}")
    n = min_n
    # Double until one call takes long enough to time reliably (>= 20 ms or the target).
    while True:
        t0 = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - t0
        if elapsed >= min(0.02, target_s):
            break
        n *= 2
    # Take the fastest of a few timed calls: it is the least disturbed by other load.
    per_iter = elapsed / n
    for _ in range(2):
        t0 = time.perf_counter()
        spin(n)
        per_iter = min(per_iter, (time.perf_counter() - t0) / n)
    return max(min_n, int(target_s / per_iter))


def sleep_task(seconds: float) -> float:
    """Block for ``seconds`` in ``time.sleep`` (GIL released) and return ``seconds``."""
    time.sleep(seconds)
    return seconds
