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

``--first-call MIB``: on their own, 4 arrays of MIB MiB sent and returned on a pool made anew for
every figure, first call (cold) and third (warm), for ferropool, stdlib, loky, mpire and pebble
(``pip install ".[bench]"``), libraries interleaved within each repeat, beside memcpy and
``np.full`` in a fresh process measured in the same repeats; "then read" adds summing every
result once. ``--alloc MIB``: what one result costs a worker, copied into a memory file against
created directly in one (what a numpy memory handler, NEP 49, would give). ``--pages MIB``: what
filling a fresh memory file costs, several ways, and mapping a received one populated or lazily.

Run::

    python benchmarks/bench_zero_copy.py              # figures 1-2
    python benchmarks/bench_zero_copy.py --pss --sweep
    python benchmarks/bench_zero_copy.py --first-call 64 --repeats 5
    python benchmarks/bench_zero_copy.py --alloc 64 --repeats 9
    python benchmarks/bench_zero_copy.py --pages 64 --repeats 9
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


# ---------------------------------------------------------------- the first call on a fresh pool

#: Calls timed on each fresh pool: the first is the cold figure, the last the warm one.
FIRST_CALL_CALLS = 3


class _Fresh:
    """A library's pool made anew for each figure: ``make()`` returns an object with ``send``,
    ``back`` and ``close`` (the ``Runner`` protocol)."""

    def __init__(self, name, make):
        self.name, self.make = name, make


def _ferropool():
    from ferropool import ProcessPool

    return Executor("ferropool ProcessPool", ProcessPool(WORKERS))


def _stdlib():
    ctx = multiprocessing.get_context("forkserver")
    return Executor("stdlib", ProcessPoolExecutor(WORKERS, mp_context=ctx))


def _loky():
    import loky

    return Executor("loky", loky.ProcessPoolExecutor(WORKERS))


class _Pebble(Runner):
    def __init__(self):
        import pebble

        self.pool = pebble.ProcessPool(max_workers=WORKERS)

    def send(self, arrays):
        return [f.result() for f in [self.pool.schedule(total, (a,)) for a in arrays]]

    def back(self, n, count):
        return [f.result() for f in [self.pool.schedule(full, (n, float(i))) for i in range(count)]]

    def close(self):
        self.pool.close()
        self.pool.join()


class _Mpire(Runner):
    def __init__(self):
        import mpire

        self.pool = mpire.WorkerPool(n_jobs=WORKERS)
        self.pool.__enter__()

    def send(self, arrays):
        return [r.get() for r in [self.pool.apply_async(total, (a,)) for a in arrays]]

    def back(self, n, count):
        return [r.get() for r in [self.pool.apply_async(full, (n, float(i))) for i in range(count)]]

    def close(self):
        self.pool.__exit__(None, None, None)


FRESH = [
    _Fresh("ferropool ProcessPool", _ferropool),
    _Fresh("stdlib ProcessPoolExecutor(forkserver)", _stdlib),
    _Fresh("loky ProcessPoolExecutor", _loky),
    _Fresh("mpire WorkerPool (fork)", _Mpire),
    _Fresh("pebble ProcessPool", _Pebble),
]

_NP_FULL_CHILD = """
import sys, time, numpy as np
n, count = int(sys.argv[1]), int(sys.argv[2])
t = time.perf_counter()
arrays = [np.full(n, float(i)) for i in range(count)]
print(time.perf_counter() - t)
"""


def _np_full_fresh(n: int, count: int) -> float:
    """Seconds a fresh process takes to create ``count`` arrays with ``np.full``: what a worker's
    first result costs before any transfer (its memory is new to the process)."""
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", _NP_FULL_CHILD, str(n), str(count)],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return float(out.stdout.strip())


def first_call_figures(repeats: int, mib: float, only: set | None = None) -> dict:
    """Send and return of ``N_ARRAYS`` arrays of ``mib`` MiB on pools made anew for every figure:
    the first call (cold) and the ``FIRST_CALL_CALLS``-th (warm), libraries interleaved within
    each repeat so that the machine's load falls on all alike; beside memcpy into touched memory
    and ``np.full`` in a fresh process, measured in the same repeats. Returns seconds per figure
    (lists, one per repeat) and the peak RSS of each library's process tree."""
    n = int(mib * MIB) // 8
    arrays = [np.full(n, float(i)) for i in range(N_ARRAYS)]
    expect_send = [float(i * n) for i in range(N_ARRAYS)]
    dst = [np.empty_like(a) for a in arrays]
    for d, a in zip(dst, arrays, strict=True):
        np.copyto(d, a)
    libs = [f for f in FRESH if only is None or f.name.split()[0] in only]
    times: dict = {"memcpy": [], "np.full (fresh process)": []}
    peaks: dict = {}
    for rep in range(repeats):
        t = time.perf_counter()
        for d, a in zip(dst, arrays, strict=True):
            np.copyto(d, a)
        times["memcpy"].append(time.perf_counter() - t)
        times["np.full (fresh process)"].append(_np_full_fresh(n, N_ARRAYS))
        order = libs if rep % 2 == 0 else libs[::-1]
        for lib in order:
            for kind in ("send", "return"):
                rss = h.TreeRss()
                h.reset_peak_rss()
                r = lib.make()
                try:
                    r.send([np.ones(4)] * WORKERS)  # workers started, no large buffer yet
                    got, read = [], []
                    for _ in range(FIRST_CALL_CALLS):
                        t = time.perf_counter()
                        res = r.send(arrays) if kind == "send" else r.back(n, N_ARRAYS)
                        got.append(time.perf_counter() - t)
                        if kind == "send":
                            _check(res == expect_send, lib.name)
                        else:
                            # Reading every byte once: a mapping faulted in as it is touched
                            # pays here what a copied result paid before it arrived.
                            t = time.perf_counter()
                            sums = [float(g.sum()) for g in res]
                            read.append(time.perf_counter() - t)
                            _check(sums == expect_send and all(g.shape == (n,) for g in res), lib.name)
                        rss.sample()
                        del res
                finally:
                    r.close()
                times.setdefault((lib.name, kind, "cold"), []).append(got[0])
                times.setdefault((lib.name, kind, "warm"), []).append(got[-1])
                if read:
                    times.setdefault((lib.name, "return+read", "cold"), []).append(got[0] + read[0])
                    times.setdefault((lib.name, "return+read", "warm"), []).append(got[-1] + read[-1])
                tree = rss.peak()["tree_kib"] or 0
                peaks[lib.name] = max(peaks.get(lib.name, 0), tree)
        print(f"repeat {rep + 1}/{repeats} done", file=sys.stderr, flush=True)
    return {"times": times, "peaks": peaks, "libs": [f.name for f in libs], "moved": N_ARRAYS * n * 8}


def print_first_call(fig: dict, repeats: int, mib: float) -> None:
    """Prints GB/s medians with their range, and ratios to memcpy and to stdlib paired by repeat
    (the median of each repeat's own ratio), which the machine's load moves far less."""
    moved, times = fig["moved"], fig["times"]

    def gbs(key):
        return moved / statistics.median(times[key]) / 1e9

    def spread(key):
        runs = times[key]
        return f"{moved / max(runs) / 1e9:.1f}-{moved / min(runs) / 1e9:.1f}"

    def paired(key, base):
        if base not in times:
            return float("nan")
        return statistics.median(b / t for t, b in zip(times[key], times[base], strict=True))

    std = "stdlib ProcessPoolExecutor(forkserver)"
    print(
        f"{N_ARRAYS} x {mib:g} MiB float64, {WORKERS} workers, fresh pools, median of {repeats} (min-max), GB/s; "
        f"memcpy {gbs('memcpy'):.1f} ({spread('memcpy')}), np.full in a fresh process "
        f"{gbs('np.full (fresh process)'):.1f} ({spread('np.full (fresh process)')}); ratios paired by repeat\n"
    )
    rows = []
    for name in fig["libs"]:
        cells = [name]
        figures = [(k, w) for k in ("send", "return") for w in ("cold", "warm")] + [("return+read", "cold")]
        for kind, when in figures:
            key = (name, kind, when)
            cells.append(
                f"{gbs(key):.2f} ({spread(key)}) {paired(key, 'memcpy'):.2f}x mc {paired(key, (std, kind, when)):.1f}x std"
            )
        cells.append(h.fmt_kib(fig["peaks"].get(name)))
        rows.append(cells)
    heads = ["", "send cold", "send warm", "return cold", "return warm", "return cold, then read", "peak RSS (tree)"]
    print(h.markdown_table(heads, rows))


# ---------------------------------------------------------------- where a result is allocated


def alloc_figures(repeats: int, mib: int) -> dict:
    """What a worker pays to produce one ``mib`` MiB result in a memory file, two ways: created by
    ``np.full`` in ordinary memory then copied into the file (what ferropool does), or created
    directly in a mapping of the file (what a numpy memory handler, NEP 49, would give). Each
    cold (a fresh file) and warm (a file whose pages exist and are mapped already). Seconds per
    way, one per repeat, ways interleaved."""
    import mmap

    n = mib * MIB // 8
    size = n * 8
    spare = os.memfd_create("ferropool-bench")
    os.ftruncate(spare, size)
    spare_map = mmap.mmap(spare, size, flags=mmap.MAP_SHARED)
    spare_arr = np.frombuffer(spare_map, dtype=np.float64)
    spare_arr.fill(0.0)  # every page allocated and mapped: a reused spare file

    def fresh_file():
        fd = os.memfd_create("ferropool-bench")
        os.ftruncate(fd, size)
        return fd

    def copy_cold():
        a = np.full(n, 1.0)
        fd = fresh_file()
        os.pwrite(fd, a.data, 0)  # as ``Backing::new``: the kernel allocates the file's pages
        os.close(fd)

    def in_file_cold():
        fd = fresh_file()
        m = mmap.mmap(fd, size, flags=mmap.MAP_SHARED)
        a = np.frombuffer(m, dtype=np.float64)
        a.fill(1.0)  # ``np.full`` on memory the handler took from a fresh file
        del a
        m.close()
        os.close(fd)

    def copy_warm():
        a = np.full(n, 1.0)
        np.copyto(spare_arr, a)

    def in_file_warm():
        spare_arr.fill(1.0)

    def np_full():
        np.full(n, 1.0)

    ways = {
        "np.full alone (ordinary memory)": np_full,
        "cold: np.full, then pwrite into a fresh memory file": copy_cold,
        "cold: np.full directly in a fresh memory file (NEP 49)": in_file_cold,
        "warm: np.full, then memcpy into a spare memory file": copy_warm,
        "warm: np.full directly in a spare memory file (NEP 49)": in_file_warm,
    }
    times: dict = {k: [] for k in ways}
    try:
        for rep in range(repeats):
            for name in ways if rep % 2 == 0 else list(ways)[::-1]:
                t = time.perf_counter()
                ways[name]()
                times[name].append(time.perf_counter() - t)
    finally:
        spare_arr = None  # the mapping can close once no array exports it
        spare_map.close()
        os.close(spare)
    return {"bytes": size, "times": times}


# ---------------------------------------------------------------- what a page of shared memory costs


def page_figures(repeats: int, mib: int) -> dict:
    """Seconds to put ``mib`` MiB into a fresh memory file in several ways, and to map a fresh
    file's bytes and read them, populated first or faulted in as read; ways interleaved."""
    import mmap
    import threading

    size = mib * MIB
    src = np.full(size // 8, 1.5)
    raw = memoryview(src).cast("B")
    madv_populate_write = getattr(mmap, "MADV_POPULATE_WRITE", 23)

    def fresh(fill=False):
        fd = os.memfd_create("ferropool-bench")
        os.ftruncate(fd, size)
        if fill:
            os.pwrite(fd, raw, 0)
        return fd

    def via_map(flags=mmap.MAP_SHARED, advice=None, fallocate=False):
        fd = fresh()
        if fallocate:
            os.posix_fallocate(fd, 0, size)
        m = mmap.mmap(fd, size, flags=flags)
        if advice is not None:
            m.madvise(advice)
        np.copyto(np.frombuffer(m, dtype=np.float64), src)
        m.close()
        os.close(fd)

    def pwrite(threads=1):
        fd = fresh()
        step = size // threads
        if threads == 1:
            os.pwrite(fd, raw, 0)
        else:
            ts = [
                threading.Thread(target=os.pwrite, args=(fd, raw[i * step : (i + 1) * step], i * step))
                for i in range(threads)
            ]
            for t in ts:
                t.start()
            for t in ts:
                t.join()
        os.close(fd)

    def split(separate_files=False):
        # Two threads at once: pwrite the first two thirds; populate the last third through a
        # shared mapping and copy it in (ferropool's fill of a fresh file when a CPU is idle).
        # With separate_files, each thread pwrites its half into a file of its own.
        fds = [fresh()] + ([fresh()] if separate_files else [])
        cut = size // 2 if separate_files else size // 3 * 2 // mmap.PAGESIZE * mmap.PAGESIZE

        def tail():
            if separate_files:
                os.pwrite(fds[1], raw[cut:], 0)
                return
            m = mmap.mmap(fds[0], size - cut, flags=mmap.MAP_SHARED, offset=cut)
            m.madvise(madv_populate_write)
            np.copyto(np.frombuffer(m, dtype=np.uint8), np.frombuffer(raw[cut:], dtype=np.uint8))
            m.close()

        helper = threading.Thread(target=tail)
        helper.start()
        os.pwrite(fds[0], raw[:cut], 0)
        helper.join()
        for fd in fds:
            os.close(fd)

    def map_and_read(flags):
        fd = fresh(fill=True)
        t = time.perf_counter()
        m = mmap.mmap(fd, size, flags=flags)
        np.frombuffer(m, dtype=np.float64).sum()
        spent = time.perf_counter() - t
        m.close()
        os.close(fd)
        return spent

    dst = np.empty_like(src)
    np.copyto(dst, src)
    ways = {
        "fill: pwrite": pwrite,
        "fill: pwrite, 2 threads": lambda: pwrite(2),
        "fill: pwrite 2/3, a helper MADV_POPULATE_WRITE + memcpy 1/3 (ferropool)": split,
        "fill: 2 threads, each pwrite into a file of its own": lambda: split(separate_files=True),
        "fill: fallocate, MAP_POPULATE, memcpy": lambda: via_map(mmap.MAP_SHARED | mmap.MAP_POPULATE, fallocate=True),
        "fill: MADV_POPULATE_WRITE, memcpy": lambda: via_map(advice=madv_populate_write),
        "fill: memcpy, a fault per page": via_map,
        "receive: MAP_POPULATE, then read": lambda: map_and_read(mmap.MAP_SHARED | mmap.MAP_POPULATE),
        "receive: map lazily, then read (ferropool)": lambda: map_and_read(mmap.MAP_SHARED),
        "memcpy into touched memory": lambda: np.copyto(dst, src),
    }
    times: dict = {k: [] for k in ways}
    for rep in range(repeats):
        for name in ways if rep % 2 == 0 else list(ways)[::-1]:
            t = time.perf_counter()
            spent = ways[name]()
            times[name].append(spent if isinstance(spent, float) else time.perf_counter() - t)
    return {"bytes": size, "times": times}


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
    p.add_argument(
        "--first-call",
        type=float,
        metavar="MIB",
        help="only: send and return arrays of MIB MiB on fresh pools, cold and warm, against the peers",
    )
    p.add_argument(
        "--alloc",
        type=int,
        metavar="MIB",
        help="only: a MIB MiB result copied into a memory file vs created in one (NEP 49), cold and warm",
    )
    p.add_argument(
        "--pages",
        type=int,
        metavar="MIB",
        help="only: MIB MiB into a fresh memory file in several ways, and mapped populated or lazily",
    )
    p.add_argument("--only", help="with --first-call: comma-separated first words of the libraries to run")
    p.add_argument("--json", metavar="PATH")
    args = p.parse_args(argv)
    report: dict = {"machine": h.machine_info(), "repeats": args.repeats}
    if args.alloc or args.pages:
        mib = args.alloc or args.pages
        fig = (alloc_figures if args.alloc else page_figures)(args.repeats, mib)
        print(f"{mib} MiB, median of {args.repeats} (min-max), GB/s:\n")
        rows = []
        for name, runs in fig["times"].items():
            rows.append(
                (
                    name,
                    f"{fig['bytes'] / statistics.median(runs) / 1e9:.2f}",
                    f"{fig['bytes'] / max(runs) / 1e9:.2f}-{fig['bytes'] / min(runs) / 1e9:.2f}",
                )
            )
        print(h.markdown_table(["", "GB/s", "min-max"], rows))
        if args.json:
            h.write_json(args.json, {**report, "alloc" if args.alloc else "pages": fig})
        return 0
    if args.first_call:
        only = set(args.only.split(",")) if args.only else None
        fig = first_call_figures(args.repeats, args.first_call, only)
        print_first_call(fig, args.repeats, args.first_call)
        if args.json:
            fig["times"] = {" / ".join(k) if isinstance(k, tuple) else k: v for k, v in fig["times"].items()}
            h.write_json(args.json, {**report, "first_call": fig})
        return 0
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
