"""What a progress bar costs tiny tasks: ``map(..., progress=...)`` and ``ferropool.progress``.

Two measurements, each in one process, with the variants interleaved run by run so that drift
on a shared machine hits every variant alike; prints medians and each variant's ratio to the
run without a bar (target: <= 1.05), both as a ratio of medians and as the median of the ratios
within a round, which is the steadier of the two on a busy machine.

* ``map``: ``pool.map(add_one, range(N))`` consumed in full, N = 200,000 by default; the bar
  drawn by tqdm into an ``io.StringIO`` (not a terminal) and into a pseudo-terminal, and the
  text bar used without tqdm into a pseudo-terminal.
* ``as_completed``: M = 20,000 tasks submitted, then gathered with
  ``for f in as_completed(fs)``; against ``progress(as_completed(fs), total=M)`` and
  ``progress(fs)``. Submitting is timed too: it is most of the work.

    python benchmarks/bench_progress.py [--items 200000] [--tasks 20000] [--runs 7] [--pool process|thread]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
import io
import os
import statistics
import sys
import threading
import time

import ferropool
from ferropool.compare.tasks import add_one


@contextlib.contextmanager
def pseudo_terminal():
    """Yields a text stream on a pty's slave end (``isatty()`` is true); a thread drains the
    master end, as a terminal would."""
    master, slave = os.openpty()
    stream = os.fdopen(slave, "w", buffering=1)

    def drain():
        with contextlib.suppress(OSError):
            while os.read(master, 65536):
                pass

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        yield stream
    finally:
        stream.close()
        reader.join(5)
        os.close(master)


@contextlib.contextmanager
def without_tqdm():
    """Makes ``import tqdm`` fail for the duration, as if the extra were not installed."""
    saved = {name: sys.modules.get(name) for name in ("tqdm", "tqdm.auto", "tqdm.std")}
    sys.modules.update(dict.fromkeys(saved))
    try:
        yield
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def report(title: str, times: dict[str, list[float]], unit_count: int) -> None:
    """Prints each variant's median and two ratios to "no bar": of the medians, and the median of
    the ratios within a round (runs side by side, so a slow spell on the machine hits both)."""
    base = times["no bar"]
    print(f"\n{title}")
    for name, runs in times.items():
        med = statistics.median(runs)
        paired = statistics.median(r / b for r, b in zip(runs, base, strict=True))
        print(
            f"  {name:<44} median {med * 1e3:7.1f} ms ({med / unit_count * 1e6:5.2f} us each)"
            f"  min {min(runs) * 1e3:6.1f}  max {max(runs) * 1e3:6.1f}"
            f"  ratio of medians {med / statistics.median(base):.3f}, paired {paired:.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--tasks", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--pool", choices=("process", "thread"), default="process")
    a = parser.parse_args()
    pool = ferropool.ProcessPool() if a.pool == "process" else ferropool.ThreadPool()
    n, m = a.items, a.tasks
    expected = n * (n + 1) // 2

    with pool, pseudo_terminal() as tty:

        def run_map(progress) -> None:
            assert sum(pool.map(add_one, range(n), progress=progress)) == expected

        def run_text_bar() -> None:
            with without_tqdm():
                run_map({"file": tty})

        map_variants = {
            "no bar": lambda: run_map(None),
            "tqdm -> io.StringIO": lambda: run_map({"file": io.StringIO()}),
            "tqdm -> pseudo-terminal": lambda: run_map({"file": tty}),
            "text bar (no tqdm) -> pseudo-terminal": run_text_bar,
        }

        def gather(wrap) -> None:
            futures = [pool.submit(add_one, i) for i in range(m)]
            assert sum(f.result() for f in wrap(futures)) == m * (m + 1) // 2

        completed_variants = {
            "no bar": lambda: gather(cf.as_completed),
            "progress(as_completed(fs), total=M) -> pty": lambda: gather(
                lambda fs: ferropool.progress(cf.as_completed(fs), total=len(fs), file=tty)
            ),
            "progress(fs) -> pty": lambda: gather(lambda fs: ferropool.progress(fs, file=tty)),
        }

        print(
            f"{type(pool).__name__}, {pool._max_workers} workers, {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}, {a.runs} interleaved runs"
        )
        for variants, title, count in (
            (map_variants, f"map(add_one, range({n}))", n),
            (completed_variants, f"as_completed over {m} submitted futures", m),
        ):
            for run in variants.values():  # warm-up: workers started, code paths imported
                run()
            times: dict[str, list[float]] = {name: [] for name in variants}
            for i in range(a.runs):
                names = list(variants)
                names = names[i % len(names) :] + names[: i % len(names)]  # rotate who goes first
                for name in names:
                    times[name].append(timed(variants[name]))
            report(title, times, count)


if __name__ == "__main__":
    main()
