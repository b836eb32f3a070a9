"""Large arrays on a fresh pool, interleaved: two builds of ferropool and the standard library.

Each round starts one fresh interpreter per contestant and case, in a rotating order, so that
every contestant sees the same background load; the report gives the median over the rounds,
the min-max spread, and each ferropool build's speed over the standard library's as the median
of the per-round ratios. A contestant is a ferropool build (``--before`` and ``--after`` source
trees, ``PYTHONPATH=<tree>/python``) or the standard library's ``ProcessPoolExecutor``
(``forkserver``). Each interpreter makes a pool of 2, starts its workers with a tiny task, then
makes the same call three times and reports the first (cold: every memory file and mapping is
new) and the third (warm), in GB/s of array data moved:

- ``send``: ``N`` float64 arrays of ``MiB`` MiB submitted one by one, each worker returning
  ``np.sum(a)``; also the time of the submits alone (``submit``: what the caller waits for before
  it can go on);
- ``return``: ``N`` tasks that each make and return such an array (``np.full``).

Cases are ``N x MiB``: one array alone is what a program that moves one large array pays; four
keep both workers busy while the caller still submits. Peak RSS of the interpreter and every
process it started (a forkserver and its workers too) is reported per contestant (``VmHWM``
summed, the largest over its cases).

Run::

    python benchmarks/ab_large_arrays.py --before /path/to/old/tree --after . --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import sys

import _harness as h

CHILD = r"""
import json, sys, time
import numpy as np
import _harness
kind, direction, count, mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])

n = int(mib * (1 << 20)) // 8
arrays = [np.full(n, float(i)) for i in range(count)] if direction == "send" else []
if kind == "ferropool":
    import ferropool
    pool = ferropool.ProcessPool(2)
else:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor
    pool = ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("forkserver"))
[f.result() for f in [pool.submit(np.sum, np.ones(4)) for _ in range(2)]]  # workers up
calls = []
for _ in range(3):
    t = time.perf_counter()
    if direction == "send":
        futures = [pool.submit(np.sum, a) for a in arrays]
    else:
        futures = [pool.submit(np.full, n, float(i)) for i in range(count)]
    submitted = time.perf_counter() - t
    got = [f.result() for f in futures]
    calls.append((time.perf_counter() - t, submitted))
    want = [float(i * n) for i in range(count)]
    assert [float(g if direction == "send" else g.sum()) for g in got] == want
    del got
rss = _harness.tree_peak_kib()
pool.shutdown()
print(json.dumps({"cold": calls[0], "warm": calls[2], "rss_kib": rss}))
"""

CASES = (("send", 1, 64), ("send", 1, 256), ("send", 4, 64), ("return", 1, 64), ("return", 1, 256), ("return", 4, 64))


def run_child(kind: str, tree: str, case: tuple) -> dict:
    direction, count, mib = case
    return h.run_json_child(CHILD, [kind, direction, str(count), str(mib)], tree)


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", help="source tree of the older ferropool build (its python/ holds _core)")
    p.add_argument("--after", default=".", help="source tree of the newer build (default: here)")
    p.add_argument("--rounds", type=int, default=5)
    a = p.parse_args(argv)
    contestants = [("ferropool after" if a.before else "ferropool", "ferropool", a.after)]
    if a.before:
        contestants.insert(0, ("ferropool before", "ferropool", a.before))
    contestants.append(("stdlib forkserver", "stdlib", a.after))
    gbs: dict = {}
    rss: dict = {}
    for r in range(a.rounds):
        for case in CASES:
            k = r % len(contestants)
            for name, kind, tree in contestants[k:] + contestants[:k]:
                out = run_child(kind, tree, case)
                moved = case[1] * case[2] / 1024
                for phase in ("cold", "warm"):
                    gbs.setdefault((case, phase, name), []).append(moved / out[phase][0])
                    if case[0] == "send":
                        gbs.setdefault((case, phase + " submit", name), []).append(moved / out[phase][1])
                rss[name] = max(rss.get(name, 0), out["rss_kib"])
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    names = [name for name, _, _ in contestants]
    print(f"GB/s, median of {a.rounds} interleaved rounds (min - max), fresh pool of 2 per figure")
    print()
    print("| case | " + " | ".join(names) + " | " + " | ".join(f"{n} / stdlib" for n in names[:-1]) + " |")
    print("|---|" + "---:|" * (2 * len(names) - 1))
    for case in CASES:
        phases = ("cold", "cold submit", "warm", "warm submit") if case[0] == "send" else ("cold", "warm")
        for phase in phases:
            cells = []
            for name in names:
                v = gbs[(case, phase, name)]
                cells.append(f"{statistics.median(v):.2f} ({min(v):.2f} - {max(v):.2f})")
            if phase.endswith("submit"):
                # The standard library's submit only queues the array: a feeder thread pickles it
                # later, so its submit time says nothing about moving the data.
                cells[-1] = "-"
                cells += ["-"] * (len(names) - 1)
            else:
                base = gbs[(case, phase, names[-1])]
                for name in names[:-1]:
                    ratios = [x / y for x, y in zip(gbs[(case, phase, name)], base, strict=True)]
                    cells.append(f"{statistics.median(ratios):.1f}x")
            print(f"| {case[0]} {case[1]} x {case[2]} MiB, {phase} | " + " | ".join(cells) + " |")
    print()
    print("peak RSS (interpreter and workers): " + ", ".join(f"{n} {rss[n] / 1024:.0f} MiB" for n in names))
    return 0


if __name__ == "__main__":
    sys.exit(main())
