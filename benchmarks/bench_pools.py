"""Engine benchmarks: ferropool's pools against the standard library and peers, in one run.

Figures (each: median of ``--repeats`` runs, min-max spread, peak RSS of the
process tree; every ratio is computed between figures of this same run):

1. tiny tasks, ``add_one`` x 20,000: (a) submit each, then gather all results;
   (b) ``list(ex.map(add_one, range(20000)))`` with the executor's default chunking;
2. CPU scaling: 40 pure-Python tasks of ~25 ms each (loop count calibrated once
   at start), submitted then gathered; speedup over serial and efficiency per worker;
3. startup: import time in a fresh interpreter, construct, first result, shutdown.

Executors: ferropool ``ProcessPool`` and ``ThreadPool``; stdlib
``ProcessPoolExecutor`` (fork and forkserver) and ``ThreadPoolExecutor``; loky,
mpire and pebble when importable.  Process pools get ``max_workers`` = usable
cores; thread pools get the same, so thread figures compare like with like.

Run::

    python benchmarks/bench_pools.py                 # full run, a few minutes on 2 cores
    python benchmarks/bench_pools.py --quick         # smoke run, seconds
    python benchmarks/bench_pools.py --json bench-results/pools.json

Peak RSS sums each process's own high-water mark; pages a forked worker shares
with its parent count in both, so fork-based pools look heavier than they are.
The forkserver process is started before any figure, so its own memory and
start-up are not charged to the forkserver executor (only its workers are).
"""

from __future__ import annotations

import argparse
import faulthandler
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass

import _harness as h

try:
    from ferropool.compare.tasks import add_one, calibrate_spin, spin
except Exception as exc:
    sys.exit(
        f"bench_pools: cannot import ferropool.compare.tasks ({type(exc).__name__}: {exc}); "
        "build and install ferropool first: .venv/bin/maturin develop --release"
    )

STDLIB_FORKSERVER = "stdlib ProcessPoolExecutor(forkserver)"
STDLIB_FORK = "stdlib ProcessPoolExecutor(fork)"
STDLIB_THREADS = "stdlib ThreadPoolExecutor"
FERRO_PROCESS = "ferropool ProcessPool"
FERRO_THREAD = "ferropool ThreadPool"
PEERS = ("loky ProcessPoolExecutor", "mpire WorkerPool", "pebble ProcessPool")


# ---------------------------------------------------------------- executors


class _FuturesAdapter:
    """Drive any ``concurrent.futures.Executor`` through one small interface."""

    def __init__(self, executor) -> None:
        self._ex = executor

    def submit(self, fn, arg):
        return self._ex.submit(fn, arg)

    def map(self, fn, iterable):
        return self._ex.map(fn, iterable)  # library defaults: no chunksize given

    def shutdown(self) -> None:
        self._ex.shutdown(wait=True)


class _PebbleAdapter:
    def __init__(self, workers: int) -> None:
        import pebble

        self._pool = pebble.ProcessPool(max_workers=workers)

    def submit(self, fn, arg):
        return self._pool.schedule(fn, args=(arg,))

    def map(self, fn, iterable):
        return self._pool.map(fn, iterable).result()

    def shutdown(self) -> None:
        self._pool.close()
        self._pool.join()


class _MpireResult:
    __slots__ = ("_r",)

    def __init__(self, r) -> None:
        self._r = r

    def result(self):
        return self._r.get()


class _MpireAdapter:
    def __init__(self, workers: int) -> None:
        from mpire import WorkerPool

        # keep_alive: reuse workers across calls, as every other pool here does.
        self._pool = WorkerPool(n_jobs=workers, keep_alive=True)

    def submit(self, fn, arg):
        return _MpireResult(self._pool.apply_async(fn, args=(arg,)))

    def map(self, fn, iterable):
        return self._pool.map(fn, iterable)

    def shutdown(self) -> None:
        self._pool.stop_and_join()


@dataclass
class Executor:
    """One executor under test: how to build it, or why it is unavailable."""

    name: str
    kind: str  # "process" or "thread"
    make: Callable[[int], object] | None
    note: str | None = None  # why it is unavailable


def _ferropool_class(attr: str):
    """Return ``ferropool.<attr>`` or a one-line reason why it cannot be used."""
    try:
        import ferropool

        return getattr(ferropool, attr), None
    except Exception as exc:
        return None, f"ferropool.{attr} unavailable ({type(exc).__name__}: {exc})"


def discover_executors(selected: set | None) -> list:
    """Return every executor, in table order; unavailable ones carry a note."""
    out = []
    pp, note = _ferropool_class("ProcessPool")
    out.append(Executor(FERRO_PROCESS, "process", (lambda w: _FuturesAdapter(pp(max_workers=w))) if pp else None, note))
    tp, note = _ferropool_class("ThreadPool")
    out.append(Executor(FERRO_THREAD, "thread", (lambda w: _FuturesAdapter(tp(max_workers=w))) if tp else None, note))
    for method, name in (("forkserver", STDLIB_FORKSERVER), ("fork", STDLIB_FORK)):
        ctx = multiprocessing.get_context(method)
        out.append(
            Executor(name, "process", (lambda w, ctx=ctx: _FuturesAdapter(ProcessPoolExecutor(w, mp_context=ctx))))
        )
    out.append(Executor(STDLIB_THREADS, "thread", lambda w: _FuturesAdapter(ThreadPoolExecutor(w))))
    peers = (
        ("loky", PEERS[0], lambda w: _FuturesAdapter(__import__("loky").ProcessPoolExecutor(max_workers=w))),
        ("mpire", PEERS[1], _MpireAdapter),
        ("pebble", PEERS[2], _PebbleAdapter),
    )
    for module, name, make in peers:
        try:
            __import__(module)
            out.append(Executor(name, "process", make))
        except ImportError as exc:
            out.append(Executor(name, "process", None, f"{module} not installed ({exc}); pip install {module}"))
    if selected:
        out = [e for e in out if any(s in e.name.lower() for s in selected)]
    return out


# ---------------------------------------------------------------- figures


def _expect_tiny(n: int) -> Callable[[object], None]:
    want = n * (n + 1) // 2

    def check(results) -> None:
        results = list(results)
        if len(results) != n or sum(results) != want or results[-1] != n:
            raise AssertionError(f"wrong results: len={len(results)} sum={sum(results)} (want {n}, {want})")

    return check


def _run_figure(ex: Executor, workers: int, repeats: int, body, warmup, check) -> dict:
    """Build ``ex``, warm it up, time ``body`` ``repeats`` times, shut it down."""
    rss = h.TreeRss()
    h.reset_peak_rss()
    adapter = ex.make(workers)
    try:
        stats = h.measure(
            lambda: body(adapter), repeats=repeats, warmup=lambda: warmup(adapter), sample=rss.sample, check=check
        )
    finally:
        adapter.shutdown()
    return {"stats": stats, "rss": rss.peak()}


def _tiny_warmup(workers: int):
    def warm(adapter) -> None:
        for f in [adapter.submit(add_one, i) for i in range(4 * workers)]:
            f.result()

    return warm


def bench_tiny(executors, cfg) -> tuple:
    """Return the submit-gather and map figures for ``add_one`` x ``cfg.n_tiny``."""
    n, submit_res, map_res = cfg.n_tiny, {}, {}

    def submit_gather(adapter):
        futures = [adapter.submit(add_one, i) for i in range(n)]
        return [f.result() for f in futures]

    def map_default(adapter):
        return list(adapter.map(add_one, range(n)))

    def map_warmup(adapter):
        list(adapter.map(add_one, range(4 * cfg.workers)))

    for label, body, warm, out in (
        ("submit-gather", submit_gather, _tiny_warmup(cfg.workers), submit_res),
        ("map", map_default, map_warmup, map_res),
    ):
        for ex in executors:
            if ex.make is None:
                continue
            _progress(f"tiny {label}: {ex.name}")
            out[ex.name] = _guarded(
                lambda ex=ex, body=body, warm=warm: _run_figure(
                    ex, cfg.workers, cfg.repeats, body, warm, _expect_tiny(n)
                )
            )
    return submit_res, map_res


def bench_cpu(executors, cfg) -> dict:
    """Return CPU-scaling figures: serial plus every executor, ``cfg.n_cpu`` spin tasks."""
    n_tasks, spin_n = cfg.n_cpu, cfg.spin_n
    expected = spin(spin_n)

    def check(results) -> None:
        if list(results) != [expected] * n_tasks:
            raise AssertionError("wrong results from spin tasks")

    def parallel(adapter):
        futures = [adapter.submit(spin, spin_n) for _ in range(n_tasks)]
        return [f.result() for f in futures]

    _progress("cpu: serial")
    rss = h.TreeRss()
    h.reset_peak_rss()
    res = {
        "serial": {
            "stats": h.measure(
                lambda: [spin(spin_n) for _ in range(n_tasks)], repeats=cfg.repeats, sample=rss.sample, check=check
            ),
            "rss": rss.peak(),
        }
    }
    for ex in executors:
        if ex.make is None:
            continue
        _progress(f"cpu: {ex.name}")
        res[ex.name] = _guarded(
            lambda ex=ex: _run_figure(ex, cfg.workers, cfg.repeats, parallel, _tiny_warmup(cfg.workers), check)
        )
    serial = res["serial"]["stats"].median
    for name, r in res.items():
        if "stats" in r:
            r["speedup"] = serial / r["stats"].median
            r["efficiency"] = r["speedup"] / (1 if name == "serial" else cfg.workers)
    return res


_COLD_START = r"""
import time, sys
t0 = time.perf_counter()
kind, workers = sys.argv[1], int(sys.argv[2])
from ferropool.compare.tasks import add_one
def main():
    if kind == "ferropool":
        from ferropool import ProcessPool
        pool = ProcessPool(workers)
    else:
        import concurrent.futures as cf, multiprocessing as mp
        pool = cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver"))
    assert pool.submit(add_one, 1).result() == 2
    print(time.perf_counter() - t0)
    pool.shutdown()
if __name__ == "__main__":
    main()
"""


def bench_cold_start(cfg) -> dict:
    """Return import + construct + first result in a fresh interpreter, ferropool ProcessPool
    against stdlib forkserver (which then also pays for starting its server), alternating."""
    times: dict = {FERRO_PROCESS: [], STDLIB_FORKSERVER: []}
    for _ in range(cfg.repeats):
        for kind, name in (("ferropool", FERRO_PROCESS), ("stdlib", STDLIB_FORKSERVER)):
            _progress(f"cold start: {name}")
            out = subprocess.run(
                [sys.executable, "-c", _COLD_START, kind, str(cfg.workers)],
                capture_output=True,
                text=True,
                timeout=120,
                check=True,
            )
            times[name].append(float(out.stdout.split()[0]))
    return {name: {"stats": h.Stats.of(v)} for name, v in times.items()}


def bench_startup(executors, cfg) -> dict:
    """Return construct / first-result / shutdown times, a fresh pool per repeat."""
    res = {}
    for ex in executors:
        if ex.make is None:
            continue
        _progress(f"startup: {ex.name}")

        def one_executor(ex=ex) -> dict:
            construct, first, total, shutdown = [], [], [], []
            rss = h.TreeRss()
            h.reset_peak_rss()
            for _ in range(cfg.repeats):
                t0 = time.perf_counter()
                adapter = ex.make(cfg.workers)
                t1 = time.perf_counter()
                try:
                    if adapter.submit(add_one, 1).result() != 2:
                        raise AssertionError("add_one(1) != 2")
                    t2 = time.perf_counter()
                    rss.sample()
                finally:
                    t3 = time.perf_counter()
                    adapter.shutdown()
                    t4 = time.perf_counter()
                construct.append(t1 - t0)
                first.append(t2 - t1)
                total.append(t2 - t0)
                shutdown.append(t4 - t3)
            return {
                "construct": h.Stats.of(construct),
                "first_result": h.Stats.of(first),
                "time_to_first_result": h.Stats.of(total),
                "shutdown": h.Stats.of(shutdown),
                "rss": rss.peak(),
            }

        res[ex.name] = _guarded(one_executor)
    return res


def bench_import(cfg) -> dict:
    """Return the import time of each module, each measured in a fresh interpreter."""
    code = "import time; t = time.perf_counter(); import {m}; print(time.perf_counter() - t)"
    res = {}
    for module in ("ferropool", "concurrent.futures", "loky", "mpire", "pebble"):
        _progress(f"import: {module}")
        runs = []
        for _ in range(cfg.repeats):
            proc = subprocess.run(
                [sys.executable, "-c", code.format(m=module)], capture_output=True, text=True, timeout=120
            )
            if proc.returncode != 0:
                last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                res[module] = {"error": f"import failed: {last}"}
                break
            runs.append(float(proc.stdout.strip()))
        else:
            res[module] = {"stats": h.Stats.of(runs)}
    return res


def _guarded(fn) -> dict:
    """Run one figure; an exception becomes an ``error`` entry instead of ending the run."""
    try:
        return fn()
    except Exception as exc:
        msg = f"{type(exc).__name__}: {exc}"
        print(f"  ! failed: {msg}", file=sys.stderr, flush=True)
        return {"error": msg}


def _progress(msg: str) -> None:
    print(f"  .. {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------- ratios


def _median(res: dict, name: str) -> float | None:
    r = res.get(name) or {}
    return r["stats"].median if "stats" in r else None


def compute_ratios(submit, mapped, cpu, startup, cold=None) -> list:
    """Return every headline ratio with its target; ``value`` is None when a side is missing."""

    def speed_ratio(res, fast, slow):  # throughput ratio = inverse time ratio
        a, b = _median(res, fast), _median(res, slow)
        return b / a if a and b else None

    peer_medians = [(_median(submit, p), p) for p in PEERS if _median(submit, p)]
    best_peer = min(peer_medians)[1] if peer_medians else None
    ferro_cpu = cpu.get(FERRO_PROCESS, {})
    fs_first = (startup.get(STDLIB_FORKSERVER) or {}).get("time_to_first_result")
    fp_first = (startup.get(FERRO_PROCESS) or {}).get("time_to_first_result")
    rows = [
        (
            "ProcessPool submit-gather throughput / stdlib forkserver",
            speed_ratio(submit, FERRO_PROCESS, STDLIB_FORKSERVER),
            10.0,
        ),
        ("ProcessPool submit-gather throughput / stdlib fork", speed_ratio(submit, FERRO_PROCESS, STDLIB_FORK), 10.0),
        (
            f"ProcessPool submit-gather throughput / best peer ({best_peer or 'none'})",
            speed_ratio(submit, FERRO_PROCESS, best_peer) if best_peer else None,
            2.0,
        ),
        (
            "ProcessPool map (defaults) throughput / stdlib forkserver map",
            speed_ratio(mapped, FERRO_PROCESS, STDLIB_FORKSERVER),
            50.0,
        ),
        (
            "ProcessPool map (defaults) throughput / stdlib fork map",
            speed_ratio(mapped, FERRO_PROCESS, STDLIB_FORK),
            50.0,
        ),
        (
            "ThreadPool submit-gather throughput / ThreadPoolExecutor",
            speed_ratio(submit, FERRO_THREAD, STDLIB_THREADS),
            2.0,
        ),
        ("ProcessPool CPU scaling efficiency per worker", ferro_cpu.get("efficiency"), 0.9),
        (
            "stdlib forkserver time-to-first-result / ProcessPool's (forkserver already running)",
            fs_first.median / fp_first.median if fs_first and fp_first else None,
            1.0,
        ),
        (
            "stdlib forkserver cold start / ProcessPool's (fresh interpreter: import, construct, first result)",
            speed_ratio(cold or {}, FERRO_PROCESS, STDLIB_FORKSERVER),
            1.0,
        ),
    ]
    return [{"ratio": r, "value": v, "target": t, "met": (v >= t) if v is not None else None} for r, v, t in rows]


# ---------------------------------------------------------------- output

RSS_HEADERS = ("peak RSS tree", "pool procs (n)")


def _rss_cells(r: dict) -> list:
    rss = r["rss"]
    return [h.fmt_kib(rss["tree_kib"]), f"{h.fmt_kib(rss['children_kib'])} ({rss['live_children']})"]


def _row_time(r: dict, extra) -> list:
    if "error" in r:
        return ["failed: " + r["error"][:60], "", *([""] * len(extra)), "", ""]
    s = r["stats"]
    return [h.fmt_seconds(s.median), f"{h.fmt_seconds(s.min)} - {h.fmt_seconds(s.max)}", *extra, *_rss_cells(r)]


def render_markdown(data: dict, raw: dict) -> str:
    cfg, out = data["config"], []
    m = data["machine"]
    load = lambda v: "?" if v is None else "/".join(f"{x:.1f}" for x in v)  # noqa: E731
    out.append(
        f"Machine: {m['usable_cores']} usable cores ({m['cpu_model']}), Python {m['python']}, "
        f"1/5/15-min load average {load(m['loadavg_at_start'])} at start, "
        f"{load(data['loadavg_at_end'])} at end (load above 0 from other work skews CPU scaling); "
        f"max_workers={cfg['workers']}, "
        f"median of {cfg['repeats']} runs. Peak RSS = VmHWM of this process + of the processes "
        f"the pool started (sampled after each run)."
    )
    submit, mapped, cpu, startup, imports = (raw[k] for k in ("submit", "map", "cpu", "startup", "import"))
    for title, res in (
        (f"Tiny tasks: submit {cfg['n_tiny']:,} x add_one, then gather", submit),
        (f"Tiny tasks: list(ex.map(add_one, range({cfg['n_tiny']:,}))) with default chunking", mapped),
    ):
        fs = _median(res, STDLIB_FORKSERVER)
        rows = []
        for name, r in res.items():
            if "stats" in r:
                tput = cfg["n_tiny"] / r["stats"].median
                extra = [f"{tput:,.0f}", f"{fs / r['stats'].median:.2f}x" if fs else "-"]
            else:
                extra = ["", ""]
            rows.append([name, *_row_time(r, extra)])
        out += [
            "",
            f"### {title}",
            "",
            h.markdown_table(
                ["executor", "median", "min - max", "tasks/s", "vs stdlib forkserver", *RSS_HEADERS], rows
            ),
        ]
    rows = []
    for name, r in cpu.items():
        extra = [f"{r['speedup']:.2f}x", f"{r['efficiency']:.2f}"] if "stats" in r else ["", ""]
        rows.append([name, *_row_time(r, extra)])
    out += [
        "",
        f"### CPU scaling: {cfg['n_cpu']} pure-Python tasks of ~{cfg['cpu_task_s'] * 1e3:.0f} ms "
        f"(spin({cfg['spin_n']:,}))",
        "",
        h.markdown_table(["executor", "median", "min - max", "speedup", "efficiency", *RSS_HEADERS], rows),
    ]
    rows = []
    for name, r in startup.items():
        if "error" in r:
            rows.append([name, "failed: " + r["error"][:60], "", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                *(
                    h.fmt_seconds(r[k].median)
                    for k in ("construct", "first_result", "time_to_first_result", "shutdown")
                ),
                *_rss_cells(r),
            ]
        )
    out += [
        "",
        "### Startup (fresh pool per run, medians)",
        "",
        h.markdown_table(
            ["executor", "construct", "first result", "construct + first result", "shutdown", *RSS_HEADERS], rows
        ),
    ]
    rows = [
        [
            mod,
            "failed: " + r["error"][:60] if "error" in r else h.fmt_seconds(r["stats"].median),
            "" if "error" in r else f"{h.fmt_seconds(r['stats'].min)} - {h.fmt_seconds(r['stats'].max)}",
        ]
        for mod, r in imports.items()
    ]
    out += ["", "### Import time (fresh interpreter)", "", h.markdown_table(["module", "median", "min - max"], rows)]
    rows = [
        [
            r["ratio"],
            "n/a" if r["value"] is None else f"{r['value']:.2f}",
            f">= {r['target']:g}",
            {True: "yes", False: "NO", None: "n/a"}[r["met"]],
        ]
        for r in data["ratios"]
    ]
    out += [
        "",
        "### Ratios against targets (same run)",
        "",
        h.markdown_table(["ratio", "value", "target", "met"], rows),
    ]
    return "\n".join(out)


def _jsonable(res: dict) -> dict:
    """Turn :class:`Stats` values into dicts, recursively."""
    out = {}
    for k, v in res.items():
        if isinstance(v, h.Stats):
            out[k] = v.to_json()
        elif isinstance(v, dict):
            out[k] = _jsonable(v)
        else:
            out[k] = v
    return out


# ---------------------------------------------------------------- main


def parse_args(argv) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=None, help="timed runs per figure (default 5; 3 with --quick)")
    p.add_argument("--quick", action="store_true", help="smoke run with tiny sizes: takes seconds")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON to PATH")
    p.add_argument("--workers", type=int, default=None, help="max_workers for every pool (default: usable cores)")
    p.add_argument(
        "--executors", default=None, help="comma-separated substrings selecting executors, e.g. 'ferropool,stdlib'"
    )
    args = p.parse_args(argv)
    if args.repeats is None:
        args.repeats = 3 if args.quick else 5
    if args.repeats < 1:
        p.error("--repeats must be >= 1")
    if args.workers is not None and args.workers < 1:
        p.error("--workers must be >= 1")
    return args


@dataclass
class Config:
    repeats: int
    workers: int
    n_tiny: int
    n_cpu: int
    cpu_task_s: float
    spin_n: int = 0


def main(argv=None) -> int:
    args = parse_args(argv)
    machine = h.machine_info()
    workers = args.workers or machine["usable_cores"] or 1
    cfg = Config(
        repeats=args.repeats,
        workers=workers,
        n_tiny=500 if args.quick else 20_000,
        n_cpu=4 if args.quick else 40,
        cpu_task_s=0.005 if args.quick else 0.025,
    )
    # A hung pool must not hang the run: dump every thread's stack and exit.
    faulthandler.dump_traceback_later(120 if args.quick else 1800, exit=True)
    t_start = time.perf_counter()
    cfg.spin_n = calibrate_spin(cfg.cpu_task_s)
    # Start the forkserver now, so no figure is charged for starting it.
    from multiprocessing import forkserver

    forkserver.ensure_running()

    selected = {s.strip().lower() for s in args.executors.split(",")} if args.executors else None
    executors = discover_executors(selected)
    for ex in executors:
        if ex.make is None:
            print(f"note: skipping {ex.name}: {ex.note}", file=sys.stderr)

    raw = {"import": bench_import(cfg)}
    raw["submit"], raw["map"] = bench_tiny(executors, cfg)
    raw["cpu"] = bench_cpu(executors, cfg)
    raw["startup"] = bench_startup(executors, cfg)
    raw["cold"] = bench_cold_start(cfg) if (not selected or "ferropool" in selected) else {}
    faulthandler.cancel_dump_traceback_later()

    data = {
        "schema": 1,
        "machine": machine,
        "config": {**vars(cfg), "quick": args.quick},
        "executors": {e.name: {"kind": e.kind, "available": e.make is not None, "note": e.note} for e in executors},
        "results": {
            "tiny_submit_gather": _jsonable(raw["submit"]),
            "tiny_map_default": _jsonable(raw["map"]),
            "cpu_scaling": _jsonable(raw["cpu"]),
            "startup": _jsonable(raw["startup"]),
            "import_time": _jsonable(raw["import"]),
            "cold_start": _jsonable(raw["cold"]),
        },
        "ratios": compute_ratios(raw["submit"], raw["map"], raw["cpu"], raw["startup"], raw["cold"]),
        "rusage": h.rusage_peaks(),
        "loadavg_at_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "total_s": time.perf_counter() - t_start,
    }
    print(render_markdown(data, raw))
    print(f"\nTotal time: {data['total_s']:.1f} s")
    if args.json:
        h.write_json(args.json, data)
        print(f"JSON written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
