"""Start-up and tiny tasks, interleaved: two builds of ferropool and their peers in one run.

Each round starts one fresh interpreter per contestant, in a rotating order, so that every
contestant sees the same background load; the report gives the median over the rounds and the
min-max spread. A contestant is a ferropool build (``--before`` and ``--after`` source trees,
``PYTHONPATH=<tree>/python``) or a peer: the standard library's ``ProcessPoolExecutor`` with
``fork`` or ``forkserver`` (a ``ThreadPoolExecutor`` and ``multiprocessing.Pool.map`` beside it),
and pebble's ``ProcessPool`` when installed. Each interpreter measures, with 2 workers:

1. ``start``: from its script's first line to the first result of a new pool: imports, pool
   construction, worker start-up and one ``add_one`` task (bench_pools.py's cold start; a bare
   interpreter's own start-up is before the first line and not counted);
2. ``submit``: 20,000 ``add_one`` submitted one by one, then gathered (best of 3, per task);
3. ``map``: ``list(map(add_one, range(20000)))`` with the pool's default chunking (ferropool's
   ``map``, else ``multiprocessing.Pool.map``; best of 3, per task);
4. ``thread``: as ``submit`` on a thread pool of 2 (``ferropool.ThreadPool``, else
   ``ThreadPoolExecutor``);
5. ``rss``: peak RSS of the interpreter plus its live pool processes (``VmHWM``).

Then a second table: each ferropool build's figure over each peer's, as the median of the
per-round ratios.

Run::

    python benchmarks/ab_fast_paths.py --before /path/to/old/tree --after . --rounds 7
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys

import _harness as h

CHILD = r"""
import time
t0 = time.perf_counter()
import json, os, sys
kind = sys.argv[1]
from ferropool.compare.tasks import add_one
N = 20_000

def tree_hwm_kib():
    def hwm(pid):
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1])
        except OSError:
            return 0
        return 0
    kids, stack = [], [os.getpid()]
    children = {}
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat", "rb") as f:
                    s = f.read()
                children.setdefault(int(s[s.rindex(b")") + 2:].split()[1]), []).append(int(e))
            except (OSError, ValueError, IndexError):
                pass
    while stack:
        for c in children.get(stack.pop(), ()):
            kids.append(c)
            stack.append(c)
    return hwm("self") + sum(hwm(k) for k in kids)

def best(fn):
    runs = []
    for _ in range(3):
        t = time.perf_counter()
        fn()
        runs.append(time.perf_counter() - t)
    return min(runs) / N * 1e6

def submit_gather(pool):
    def run():
        fs = [pool.submit(add_one, i) for i in range(N)]
        assert [f.result() for f in fs][-1] == N
    return run

def main():
    if kind == "ferropool":
        from ferropool import ProcessPool, ThreadPool
        pool = ProcessPool(2)
        mapper, threads = pool, ThreadPool(2)
    elif kind == "pebble":
        import pebble
        pool = pebble.ProcessPool(max_workers=2)
        pool.submit = lambda fn, x: pool.schedule(fn, args=(x,))
        mapper, threads = None, None
    else:
        import concurrent.futures as cf, multiprocessing as mp
        ctx = mp.get_context(kind)
        pool = cf.ProcessPoolExecutor(2, mp_context=ctx)
        mapper, threads = ctx.Pool(2), cf.ThreadPoolExecutor(2)
    assert pool.submit(add_one, 1).result() == 2
    out = {"start": time.perf_counter() - t0}
    for f in [pool.submit(add_one, i) for i in range(2000)]:
        f.result()
    out["submit"] = best(submit_gather(pool))
    if mapper is not None:
        list(mapper.map(add_one, range(1000)))
        out["map"] = best(lambda: list(mapper.map(add_one, range(N))))
    if threads is not None:
        for f in [threads.submit(add_one, i) for i in range(2000)]:
            f.result()
        out["thread"] = best(submit_gather(threads))
    out["rss_mib"] = tree_hwm_kib() / 1024
    print(json.dumps(out))
    if kind == "pebble":
        pool.close(); pool.join()
    else:
        pool.shutdown()
        if mapper is not pool:
            mapper.close()
    if threads is not None:
        threads.shutdown()

if __name__ == "__main__":
    main()
"""


def run_child(kind: str, tree: str | None) -> dict:
    return h.run_json_child(CHILD, [kind], tree)


def main(argv: list | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--before", help="source tree of the older ferropool build (its python/ holds _core)")
    p.add_argument("--after", default=".", help="source tree of the newer build (default: here)")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--peers", default="fork,forkserver,pebble", help="comma-separated: fork, forkserver, pebble")
    a = p.parse_args(argv)
    contestants = []
    if a.before:
        contestants.append(("ferropool before", "ferropool", a.before))
    contestants.append(("ferropool after" if a.before else "ferropool", "ferropool", a.after))
    for peer in filter(None, a.peers.split(",")):
        if peer == "pebble":
            try:
                import pebble  # noqa: F401
            except ImportError:
                print("note: pebble not installed; skipped", file=sys.stderr)
                continue
        name = "pebble ProcessPool" if peer == "pebble" else f"stdlib {peer}"
        contestants.append((name, peer, a.after))
    # Byte-compile both trees first: with PYTHONDONTWRITEBYTECODE (or a read-only tree) every
    # interpreter would otherwise compile the package again, and that would be the figure.
    for tree in {t for _, _, t in contestants}:
        subprocess.run([sys.executable, "-m", "compileall", "-q", os.path.join(tree, "python")], check=True)
    runs: dict = {name: [] for name, _, _ in contestants}
    for r in range(a.rounds):
        k = r % len(contestants)
        for name, kind, tree in contestants[k:] + contestants[:k]:
            runs[name].append(run_child(kind, tree))
        print(f"round {r + 1}/{a.rounds} done", file=sys.stderr, flush=True)
    metrics = (
        ("start", "import + first result", 1e3, "ms"),
        ("submit", "ProcessPool submit-gather", 1, "us/task"),
        ("map", "map, default chunking", 1, "us/task"),
        ("thread", "thread pool submit-gather", 1, "us/task"),
        ("rss_mib", "peak RSS (tree)", 1, "MiB"),
    )
    print(f"median of {a.rounds} interleaved rounds (min - max); 2 workers; 20,000 tasks of add_one")
    print()
    print("| figure | " + " | ".join(name for name, _, _ in contestants) + " |")
    print("|---|" + "---:|" * len(contestants))
    for key, label, scale, unit in metrics:
        cells = []
        for name, _, _ in contestants:
            vals = [x[key] * scale for x in runs[name] if key in x]
            if not vals:
                cells.append("-")
                continue
            digits = 3 if unit == "us/task" and statistics.median(vals) < 1 else 1
            cells.append(f"{statistics.median(vals):.{digits}f} ({min(vals):.{digits}f} - {max(vals):.{digits}f})")
        print(f"| {label}, {unit} | " + " | ".join(cells) + " |")
    print_ratios(contestants, runs, metrics, a.rounds)
    return 0


def print_ratios(contestants: list, runs: dict, metrics: tuple, rounds: int) -> None:
    """Each ferropool build's figure over each peer's, as the median of the per-round ratios:
    contestants of one round ran within seconds of each other, so their ratio cancels most of
    the load that moves both."""
    ours = [name for name, kind, _ in contestants if kind == "ferropool"]
    peers = [name for name, kind, _ in contestants if kind != "ferropool"]
    pairs = [(o, p) for o in ours for p in peers]
    if not pairs:
        return
    print()
    print(
        f"ferropool / peer, median of the {rounds} per-round ratios (min - max); below 1: ferropool is faster or smaller"
    )
    print()
    print("| figure | " + " | ".join(f"{o} / {p}" for o, p in pairs) + " |")
    print("|---|" + "---:|" * len(pairs))
    for key, label, *_ in metrics:
        cells = []
        for o, p in pairs:
            ratios = [
                x[key] / y[key] for x, y in zip(runs[o], runs[p], strict=True) if key in x and key in y and y[key]
            ]
            cells.append(f"{statistics.median(ratios):.2f} ({min(ratios):.2f} - {max(ratios):.2f})" if ratios else "-")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
