"""Large arrays between processes: ferropool's shared-memory buffers against the standard library
and peers, in one run.

Figures (each the median of ``--repeats`` runs after ``WARMUP_ROUNDS`` untimed full rounds per
library, MB/s = bytes moved / wall time; ``--cold`` also times ferropool's first round on a fresh
pool, into fresh memory files):

1. send: 4 float64 arrays of 16 MiB each go to the workers, which return ``arr.sum()``;
2. return: the workers create 4 such arrays with ``np.full`` and return them;

for ferropool ``ProcessPool``, stdlib ``ProcessPoolExecutor`` (forkserver), joblib's loky
backend with its memmapping reducers (``Parallel(max_nbytes="1M")``: arguments above 1 MB go
through memory-mapped files; results are pickled), and Ray's object store when Ray is installed;
beside a single-process ``np.copyto`` of the same bytes into memory already touched (a plain
memcpy). Peak RSS of the process tree is reported with each figure.

``--pss``: a 1 GiB array sent to two workers that both hold it; the rise of the machine's memory
use (sum of PSS over this process and its workers) while they do. ``--sweep``: time per task for
buffers of 4 KiB to 4 MiB, in the pickle (``zero_copy_threshold=None``) and out of band, to
show where shared memory starts to pay.

Run::

    python benchmarks/bench_zero_copy.py              # figures 1-2
    python benchmarks/bench_zero_copy.py --pss --sweep
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

import _harness as h

MIB = 1 << 20
N_ARRAYS = 4
ARRAY_BYTES = 16 * MIB
WORKERS = 2
WARMUP_ROUNDS = 3


def total(a):
    return float(a.sum())


def full(n, value):
    return np.full(n, value)


def hold_and_sum(a, summed, release):
    s = float(a.sum())  # touches every page
    summed.wait()  # every worker has touched its copy: the parent measures memory now
    release.wait()  # ... and says when it is done
    return s


def echo(a):
    return a


# ---------------------------------------------------------------- runners


class Runner:
    name = ""

    def send(self, arrays):
        raise NotImplementedError

    def back(self, n, count):
        raise NotImplementedError

    def close(self):
        pass


class Executor(Runner):
    def __init__(self, name, ex):
        self.name, self.ex = name, ex

    def send(self, arrays):
        return [f.result() for f in [self.ex.submit(total, a) for a in arrays]]

    def back(self, n, count):
        return [f.result() for f in [self.ex.submit(full, n, float(i)) for i in range(count)]]

    def close(self):
        self.ex.shutdown()


class Joblib(Runner):
    name = "joblib loky (memmapping)"

    def __init__(self):
        import joblib

        self.joblib = joblib
        self.parallel = joblib.Parallel(n_jobs=WORKERS, backend="loky", max_nbytes="1M")

    def send(self, arrays):
        return self.parallel(self.joblib.delayed(total)(a) for a in arrays)

    def back(self, n, count):
        return self.parallel(self.joblib.delayed(full)(n, float(i)) for i in range(count))


class Ray(Runner):
    name = "Ray object store"

    def __init__(self):
        import ray

        ray.init(num_cpus=WORKERS, include_dashboard=False, log_to_driver=False)
        self.ray = ray
        self.total = ray.remote(total)
        self.full = ray.remote(full)

    def send(self, arrays):
        return self.ray.get([self.total.remote(self.ray.put(a)) for a in arrays])

    def back(self, n, count):
        return self.ray.get([self.full.remote(n, float(i)) for i in range(count)])

    def close(self):
        self.ray.shutdown()


def runners(skip: set) -> list:
    from ferropool import ProcessPool

    out = [Executor("ferropool ProcessPool", ProcessPool(WORKERS))]
    ctx = multiprocessing.get_context("forkserver")
    out.append(Executor("stdlib ProcessPoolExecutor(forkserver)", ProcessPoolExecutor(WORKERS, mp_context=ctx)))
    for cls in (Joblib, Ray):
        if cls.name in skip:
            continue
        try:
            out.append(cls())
        except Exception as exc:
            print(f"note: skipping {cls.name}: {type(exc).__name__}: {exc}", file=sys.stderr)
    return out


# ---------------------------------------------------------------- figures


def transfer_figures(repeats: int) -> list:
    n = ARRAY_BYTES // 8
    arrays = [np.full(n, float(i)) for i in range(N_ARRAYS)]
    moved = N_ARRAYS * ARRAY_BYTES
    expect_send = [float(i * n) for i in range(N_ARRAYS)]
    dst = [np.empty_like(a) for a in arrays]
    for d, a in zip(dst, arrays, strict=True):
        np.copyto(d, a)  # touch the destination once: what remains is the copy itself
    rows = []
    memcpy = h.measure(lambda: [np.copyto(d, a) for d, a in zip(dst, arrays, strict=True)], repeats=repeats)
    rows.append(("memcpy (np.copyto, one process)", moved / memcpy.median / 1e6, moved / memcpy.median / 1e6, None))
    rss = h.TreeRss()
    for r in runners(set()):
        try:
            # Warm-up, WARMUP_ROUNDS full rounds each: workers started, modules imported, and
            # ferropool's memory files allocated (its first rounds write into fresh shared memory
            # at about 2 GB/s; later rounds reuse the files, as a program that moves arrays
            # repeatedly does). As in the timed rounds (``measure`` keeps each result until the
            # next one is in), one round's results are held during the next.
            held = None
            for _ in range(WARMUP_ROUNDS):
                r.send(arrays)
                held = r.back(n, N_ARRAYS)
            del held
            h.reset_peak_rss()
            send = h.measure(
                lambda r=r: r.send(arrays),
                repeats=repeats,
                sample=rss.sample,
                check=lambda got, r=r: _check(got == expect_send, r.name),
            )
            back = h.measure(
                lambda r=r: r.back(n, N_ARRAYS),
                repeats=repeats,
                sample=rss.sample,
                check=lambda got, r=r: _check(
                    all(g[0] == float(i) and g.shape == (n,) for i, g in enumerate(got)), r.name
                ),
            )
            rows.append((r.name, moved / send.median / 1e6, moved / back.median / 1e6, rss.peak()))
            print(
                f"{r.name}: send {moved / send.median / 1e6:,.0f} MB/s, return {moved / back.median / 1e6:,.0f} MB/s",
                file=sys.stderr,
                flush=True,
            )
        finally:
            r.close()
    return rows


def cold_figures(repeats: int) -> tuple[float, float]:
    """MB/s of ferropool's first send and first return round, each on a new pool whose workers
    are started (a tiny task ran) but have moved no large buffer yet."""
    from ferropool import ProcessPool
    from ferropool._core import drop_spare_buffers

    n = ARRAY_BYTES // 8
    arrays = [np.full(n, float(i)) for i in range(N_ARRAYS)]
    sends, backs = [], []
    for _ in range(repeats):
        drop_spare_buffers()  # this process's memory files too
        with ProcessPool(WORKERS) as pool:
            list(pool.map(total, [np.ones(4)] * WORKERS))
            t = time.perf_counter()
            [f.result() for f in [pool.submit(total, a) for a in arrays]]
            sends.append(time.perf_counter() - t)
        with ProcessPool(WORKERS) as pool:
            list(pool.map(total, [np.ones(4)] * WORKERS))
            t = time.perf_counter()
            [f.result() for f in [pool.submit(full, n, float(i)) for i in range(N_ARRAYS)]]
            backs.append(time.perf_counter() - t)
    moved = N_ARRAYS * ARRAY_BYTES
    return moved / statistics.median(sends) / 1e6, moved / statistics.median(backs) / 1e6


def _check(ok: bool, name: str) -> None:
    if not ok:
        raise AssertionError(f"{name} returned wrong results")


def pss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            if line.startswith("Pss:"):
                return int(line.split()[1])
    return 0


def tree_pss_kib() -> int:
    pids = [os.getpid(), *h._descendants(os.getpid())]
    total_kib = 0
    for pid in pids:
        try:
            total_kib += pss_kib(pid)
        except OSError:
            pass
    return total_kib


def pss_figure() -> dict:
    """A 1 GiB array sent to two workers that both hold it: how much more memory is in use."""
    from ferropool import ProcessPool, shared

    big = np.ones(1 << 27)  # 1 GiB of float64, touched
    with ProcessPool(WORKERS) as pool:
        pool.submit(total, np.ones(10)).result()
        before = tree_pss_kib()
        summed, release = shared.Barrier(WORKERS + 1), shared.Event()
        futures = [pool.submit(hold_and_sum, big, summed, release) for _ in range(WORKERS)]
        try:
            summed.wait(timeout=120)  # both workers hold the array and have touched every page
            during = tree_pss_kib()
        finally:
            release.set()
        assert [f.result() for f in futures] == [float(big.size)] * WORKERS
    return {
        "array_gib": 1.0,
        "pss_before_gib": before / (1 << 20),
        "pss_during_gib": during / (1 << 20),
        "rise_gib": (during - before) / (1 << 20),
    }


def sweep(repeats: int) -> list:
    """Per-task time for arrays of several sizes, in the pickle and out of band."""
    from ferropool import ProcessPool

    rows = []
    pools = {
        "in the pickle": ProcessPool(WORKERS, zero_copy_threshold=None),
        "shared memory": ProcessPool(WORKERS, zero_copy_threshold=0),
    }
    try:
        for size in (4 << 10, 16 << 10, 64 << 10, 256 << 10, 1 << 20, 4 << 20):
            a = np.ones(size // 8)
            count = max(8, min(200, (64 << 20) // size))
            cells = []
            for pool in pools.values():
                pool.submit(echo, a).result()
                st = h.measure(
                    lambda pool=pool, a=a, count=count: [
                        f.result() for f in [pool.submit(echo, a) for _ in range(count)]
                    ],
                    repeats=repeats,
                )
                cells.append(st.median / count * 1e6)
            rows.append((f"{size >> 10} KiB", *cells, cells[0] / cells[1]))
    finally:
        for pool in pools.values():
            pool.shutdown()
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--pss", action="store_true", help="also measure the 1 GiB, two-worker memory figure")
    p.add_argument("--sweep", action="store_true", help="also sweep buffer sizes to place the threshold")
    p.add_argument("--cold", action="store_true", help="also time ferropool's first round on fresh pools")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    report: dict = {"machine": h.machine_info(), "repeats": args.repeats}
    if args.cold:
        send, back = cold_figures(args.repeats)
        report["cold"] = {"send_mb_s": send, "return_mb_s": back}
        print(
            f"ferropool, first round on a fresh pool (fresh memory files), median of {args.repeats}: "
            f"send {send:,.0f} MB/s, return {back:,.0f} MB/s\n"
        )
    rows = transfer_figures(args.repeats)
    base = {r[0]: r for r in rows}
    stdlib = base.get("stdlib ProcessPoolExecutor(forkserver)")
    memcpy = rows[0]
    table = []
    for name, send, back, peak in rows:
        table.append(
            (
                name,
                f"{send:,.0f}",
                f"{back:,.0f}",
                f"{send / stdlib[1]:.1f}x / {back / stdlib[2]:.1f}x" if stdlib else "-",
                f"{send / memcpy[1]:.2f}x / {back / memcpy[2]:.2f}x",
                h.fmt_kib(peak["tree_kib"]) if peak else "-",
            )
        )
    print(f"4 x 16 MiB float64 arrays, {WORKERS} workers, median of {args.repeats}:\n")
    print(
        h.markdown_table(
            ["", "send MB/s", "return MB/s", "vs stdlib (send / return)", "vs memcpy", "peak RSS (tree)"], table
        )
    )
    report["transfer"] = [dict(zip(("name", "send_mb_s", "return_mb_s", "peak_rss_kib"), r, strict=True)) for r in rows]
    if args.pss:
        fig = pss_figure()
        report["pss"] = fig
        print(f"\n1 GiB array held by {WORKERS} workers: machine memory (sum of PSS) rose by {fig['rise_gib']:.2f} GiB")
    if args.sweep:
        srows = sweep(args.repeats)
        report["sweep"] = srows
        print("\nper task (us), echo of one array:\n")
        print(
            h.markdown_table(
                ["size", "in the pickle", "shared memory", "speedup"],
                [(r[0], f"{r[1]:.0f}", f"{r[2]:.0f}", f"{r[3]:.2f}x") for r in srows],
            )
        )
    if args.json:
        h.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
