"""A/B of the tiny-task benchmark between two builds of ferropool, interleaved in one run.

Supervision (crash handling, timeouts, cancellation) must cost the tiny-task benchmark little. Comparing figures from separate runs on a shared 2-core machine
mostly measures the noise, so this runs both builds in alternation: each round starts a fresh
interpreter per build (``PYTHONPATH=<tree>/python``), warms its pool up, and times
``bench_pools.py``'s tiny-task figures — 20,000 ``add_one`` submitted then gathered, and
``list(pool.map(add_one, range(20000)))`` — three times, keeping the best. The report gives
each build's median over the rounds and the ratio.

Run (``--before`` a checkout of the older commit with its extension built in place)::

    python benchmarks/ab_tiny_tasks.py --before /work/wt-before --after . --rounds 7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r"""
import json, sys, time
from ferropool import ProcessPool
from ferropool.compare.tasks import add_one
N = 20_000
with ProcessPool(2) as pool:
    for f in [pool.submit(add_one, i) for i in range(2000)]:
        f.result()
    out = {"submit_gather_ms": [], "map_ms": []}
    for _ in range(3):
        t = time.perf_counter()
        fs = [pool.submit(add_one, i) for i in range(N)]
        for f in fs:
            f.result()
        out["submit_gather_ms"].append((time.perf_counter() - t) * 1e3)
        t = time.perf_counter()
        assert list(pool.map(add_one, range(N)))[-1] == N
        out["map_ms"].append((time.perf_counter() - t) * 1e3)
print(json.dumps({k: min(v) for k, v in out.items()}))
"""


def run_once(tree: str) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.join(os.path.abspath(tree), "python"))
    out = subprocess.run(
        [sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", required=True, help="source tree of the older build (its python/ holds the built _core)")
    p.add_argument("--after", default=".", help="source tree of the newer build (default: here)")
    p.add_argument("--rounds", type=int, default=7)
    args = p.parse_args(argv)
    runs: dict = {"before": [], "after": []}
    for r in range(args.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for name in order:
            runs[name].append(run_once(getattr(args, name)))
        print(
            f"round {r + 1}/{args.rounds}: " + ", ".join(f"{n} {runs[n][-1]}" for n in order),
            file=sys.stderr,
            flush=True,
        )
    print(f"median of {args.rounds} rounds (each the best of 3), 20,000 tiny tasks, 2 workers:")
    for metric in ("submit_gather_ms", "map_ms"):
        before = statistics.median(x[metric] for x in runs["before"])
        after = statistics.median(x[metric] for x in runs["after"])
        print(f"  {metric:<17} before {before:7.1f}  after {after:7.1f}  after/before {after / before:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
