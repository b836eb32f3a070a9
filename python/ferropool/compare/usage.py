"""CPU time and peak memory of ``ferropool compare``'s process and of each pool's workers.

``resource.getrusage(RUSAGE_CHILDREN)`` counts only children that have been
reaped, and pool workers live until the pool shuts down, so the workers' figures
come from ``/proc/<pid>/stat`` (CPU time) and ``/proc/<pid>/status`` (``VmHWM``,
the peak resident set) instead.  A pool's workers are found by difference: the
descendants of this process after the pool started, less those before it.
Where ``/proc`` is missing (not Linux), worker figures are ``None`` and only
this process's own usage is reported.
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Iterable

__all__ = ["HAVE_PROC", "busy_cores", "cpu_s", "descendants", "peak_rss_bytes", "self_cpu_s", "self_peak_rss_bytes"]

HAVE_PROC = os.path.isdir("/proc/self/task")
_TICK_S = 1.0 / os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 0.01


def descendants(root: int | None = None) -> set[int]:
    """Return the pids of every live descendant of ``root`` (default: this process); empty without /proc."""
    if not HAVE_PROC:
        return set()
    found: set[int] = set()
    todo = [os.getpid() if root is None else root]
    while todo:
        pid = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:  # exited meanwhile
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    children = [int(c) for c in f.read().split()]
            except OSError:
                continue
            for child in children:
                if child not in found:
                    found.add(child)
                    todo.append(child)
    return found


def self_cpu_s() -> float:
    """Return the user + system CPU seconds of this process so far (every thread)."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def cpu_s(pids: Iterable[int]) -> float | None:
    """Return the user + system CPU seconds of ``pids`` so far (exited ones count 0); None without /proc."""
    if not HAVE_PROC:
        return None
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()  # comm, in parentheses, may hold spaces
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14 and 15 of stat)
    return total * _TICK_S


def peak_rss_bytes(pids: Iterable[int]) -> int | None:
    """Return the sum of the peak resident sets (VmHWM) of ``pids``; None without /proc."""
    if not HAVE_PROC:
        return None
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        total += int(line.split()[1]) * 1024
                        break
        except OSError:
            continue
    return total


def self_peak_rss_bytes() -> int:
    """Return this process's peak resident set since it started (``ru_maxrss``)."""
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


def _machine_ticks() -> tuple[int, int]:
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle, iowait
    return sum(fields[:8]) - idle, sum(fields[:8])  # busy, total (without guest time, counted in user)


def busy_cores(sample_s: float = 0.25) -> float | None:
    """Return how many cores other programs kept busy over the next ``sample_s`` seconds (blocks).

    Call it while this process is idle: its own CPU time is subtracted, but nothing else is.
    None without /proc.  Unlike the load average, which trails by a minute, this sees now.
    """
    if not HAVE_PROC:
        return None
    busy0, total0 = _machine_ticks()
    mine0, t0 = self_cpu_s(), time.perf_counter()
    time.sleep(sample_s)  # the sample itself: nothing to wait for
    busy1, total1 = _machine_ticks()
    mine, wall = self_cpu_s() - mine0, time.perf_counter() - t0
    if total1 <= total0:
        return None
    cores_seen = (total1 - total0) * _TICK_S / wall
    return max(0.0, (busy1 - busy0) / (total1 - total0) * cores_seen - mine / wall)
