"""Pickling cost per call on ferropool's submit path, against plain pickle and cloudpickle.

Shows that the fast path (importable functions) costs what plain ``pickle.dumps`` costs, and
that functions pickled by value (from ``__main__``, lambdas) are cloudpickled once, not per call.

    python benchmarks/bench_serialize.py [--repeats 7] [--calls 20000]
"""

from __future__ import annotations

import argparse
import pickle
import statistics
import time

import cloudpickle

from ferropool._serialize import dumps_call
from ferropool.compare.tasks import add_one


def main_add_one(x):  # lives in __main__ when run as a script: must go by value
    return x + 1


def per_call_us(fn, calls: int, repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(calls):
            fn(i)
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--calls", type=int, default=20_000)
    a = ap.parse_args()
    lam = lambda x: x + 1  # noqa: E731
    rows = [
        ("pickle.dumps((importable fn, args, {}))", lambda i: pickle.dumps((add_one, (i,), {}), 5)),
        ("ferropool dumps_call(importable fn)", lambda i: dumps_call(add_one, (i,), {})),
        ("ferropool dumps_call(__main__ fn)", lambda i: dumps_call(main_add_one, (i,), {})),
        ("ferropool dumps_call(lambda)", lambda i: dumps_call(lam, (i,), {})),
        ("cloudpickle.dumps((__main__ fn, args, {}))", lambda i: cloudpickle.dumps((main_add_one, (i,), {}), 5)),
    ]
    base = None
    print(f"| call pickled | µs per call (median of {a.repeats}) | vs plain pickle |")
    print("|---|---:|---:|")
    for name, fn in rows:
        us = per_call_us(fn, a.calls, a.repeats)
        base = base or us
        print(f"| {name} | {us:.2f} | {us / base:.2f}x |")


if __name__ == "__main__":
    main()
