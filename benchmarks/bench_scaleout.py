"""Scale-out benchmarks: ferropool's DaskPool, RayPool and joblib backend beside the engines' own
APIs, every ratio measured within this one run (medians of ``--repeats``).

1. Dask, on one ``LocalCluster`` (2 worker processes x 1 thread) shared by both sides:
   (a) per-task overhead, ``add_one`` x N: ``client.gather(client.map(...))`` against
       ``DaskPool`` submit-then-gather and ``DaskPool.map`` (chunked by ferropool);
   (b) CPU scaling, 40 pure-Python tasks of ~25 ms: ``client.map`` against ``DaskPool.map``,
       as efficiency per worker (serial time, measured just before, / (workers x wall time)).
2. Ray, on one ``ray.init(num_cpus=2)``: the same, native ``ray.get([f.remote(x)...])``
   against ``RayPool``.
3. joblib: ``Parallel(n_jobs=2)`` on backend ``"ferropool"`` against joblib's default
   ``"loky"``: many tiny tasks, and tasks that each take one large numpy array (the two kinds
   of case in joblib's own benchmarks, ``bench_auto_batching.py``).

Run::

    python benchmarks/bench_scaleout.py            # about two minutes on 2 cores
    python benchmarks/bench_scaleout.py --quick    # smoke run
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _harness import measure
from ferropool.compare.tasks import add_one, calibrate_spin, spin

CPU_TASKS = 40
CPU_TASK_S = 0.025


def row(name: str, stats, per: int | None = None) -> float:
    extra = f"  ({stats.median / per * 1e6:8.1f} us/task)" if per else ""
    print(
        f"  {name:<48} {stats.median * 1e3:9.1f} ms  [{stats.min * 1e3:.1f}-{stats.max * 1e3:.1f}]{extra}", flush=True
    )
    return stats.median


def cpu_serial(spin_n: int, repeats: int) -> float:
    return measure(lambda: [spin(spin_n) for _ in range(CPU_TASKS)], repeats=repeats).median


def bench_dask(n: int, spin_n: int, repeats: int) -> dict:
    import distributed

    import ferropool

    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    pool = ferropool.DaskPool(client)
    workers = pool.max_workers
    expect = list(range(1, n + 1))
    print(f"Dask LocalCluster, {workers} worker processes; add_one x {n}; {CPU_TASKS} x {CPU_TASK_S * 1e3:.0f} ms")

    def native_tiny():
        return client.gather(client.map(add_one, range(n), pure=False))

    def pool_submit():
        return [f.result() for f in [pool.submit(add_one, x) for x in range(n)]]

    def check(r):
        assert r == expect

    out = {}
    out["native"] = row(
        "client.map + gather", measure(native_tiny, repeats=repeats, warmup=native_tiny, check=check), n
    )
    out["submit"] = row(
        "DaskPool submit, then gather", measure(pool_submit, repeats=repeats, warmup=pool_submit, check=check), n
    )
    out["map"] = row(
        "DaskPool.map", measure(lambda: list(pool.map(add_one, range(n))), repeats=repeats, check=check), n
    )
    serial = cpu_serial(spin_n, repeats)  # here, so that it sees the same machine load
    cpu_native = row(
        "CPU: client.map + gather",
        measure(lambda: client.gather(client.map(spin, [spin_n] * CPU_TASKS, pure=False)), repeats=repeats),
    )
    cpu_pool = row("CPU: DaskPool.map", measure(lambda: list(pool.map(spin, [spin_n] * CPU_TASKS)), repeats=repeats))
    out["eff_native"] = serial / (workers * cpu_native)
    out["eff_pool"] = serial / (workers * cpu_pool)
    pool.shutdown()
    client.close()
    cluster.close()
    return out


def bench_ray(n: int, spin_n: int, repeats: int) -> dict:
    import ray

    import ferropool

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    pool = ferropool.RayPool()
    workers = pool.max_workers
    remote_add_one = ray.remote(num_cpus=1)(add_one)
    remote_spin = ray.remote(num_cpus=1)(spin)
    expect = list(range(1, n + 1))
    print(f"Ray, ray.init(num_cpus={workers}); add_one x {n}; {CPU_TASKS} x {CPU_TASK_S * 1e3:.0f} ms")

    def native_tiny():
        return ray.get([remote_add_one.remote(x) for x in range(n)])

    def pool_submit():
        return [f.result() for f in [pool.submit(add_one, x) for x in range(n)]]

    def check(r):
        assert r == expect

    out = {}
    out["native"] = row(
        "ray.get([f.remote(x) ...])", measure(native_tiny, repeats=repeats, warmup=native_tiny, check=check), n
    )
    out["submit"] = row(
        "RayPool submit, then gather", measure(pool_submit, repeats=repeats, warmup=pool_submit, check=check), n
    )
    out["map"] = row("RayPool.map", measure(lambda: list(pool.map(add_one, range(n))), repeats=repeats, check=check), n)
    serial = cpu_serial(spin_n, repeats)  # here, so that it sees the same machine load
    cpu_native = row(
        "CPU: ray.get([spin.remote() ...])",
        measure(lambda: ray.get([remote_spin.remote(spin_n) for _ in range(CPU_TASKS)]), repeats=repeats),
    )
    cpu_pool = row("CPU: RayPool.map", measure(lambda: list(pool.map(spin, [spin_n] * CPU_TASKS)), repeats=repeats))
    out["eff_native"] = serial / (workers * cpu_native)
    out["eff_pool"] = serial / (workers * cpu_pool)
    pool.shutdown()
    ray.shutdown()
    return out


def array_sum(a):
    return float(a.sum())


def bench_joblib(n: int, repeats: int) -> dict:
    import numpy as np
    from joblib import Parallel, delayed, parallel_config

    import ferropool.joblib

    big = np.random.default_rng(0).random(1_000_000)  # 8 MB
    arrays = 40
    print(f"joblib Parallel(n_jobs=2): add_one x {n}; sum of one 8 MB array x {arrays}")
    out = {}
    for backend in ("loky", "ferropool"):
        with parallel_config(backend=backend, n_jobs=2):
            tiny = lambda: Parallel()(delayed(add_one)(x) for x in range(n))  # noqa: E731
            large = lambda: Parallel()(delayed(array_sum)(big) for _ in range(arrays))  # noqa: E731
            out[backend, "tiny"] = row(f"{backend}: tiny tasks", measure(tiny, repeats=repeats, warmup=tiny), n)
            out[backend, "large"] = row(
                f"{backend}: large-array tasks", measure(large, repeats=repeats, warmup=large), arrays
            )
    ferropool.joblib._shutdown_pools()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="fewer tasks and repeats (a smoke run)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only", default="dask,ray,joblib", help="comma-separated: dask, ray, joblib")
    args = parser.parse_args()
    repeats = 1 if args.quick else args.repeats
    n = 200 if args.quick else 2000
    only = set(args.only.split(","))
    spin_n = calibrate_spin(CPU_TASK_S)
    summary = []
    if "dask" in only:
        d = bench_dask(n, spin_n, repeats)
        summary += [
            (
                "DaskPool submit-then-gather vs client.map + gather (time ratio, <1 is faster)",
                d["submit"] / d["native"],
            ),
            ("DaskPool.map vs client.map + gather", d["map"] / d["native"]),
            ("CPU efficiency per worker: DaskPool.map / client.map", f"{d['eff_pool']:.2f} / {d['eff_native']:.2f}"),
        ]
    if "ray" in only:
        r = bench_ray(n, spin_n, repeats)
        summary += [
            ("RayPool submit-then-gather vs native ray tasks (time ratio)", r["submit"] / r["native"]),
            ("RayPool.map vs native ray tasks", r["map"] / r["native"]),
            ("CPU efficiency per worker: RayPool.map / native", f"{r['eff_pool']:.2f} / {r['eff_native']:.2f}"),
        ]
    if "joblib" in only:
        j = bench_joblib(n * 5, repeats)
        summary += [
            ("joblib tiny tasks: ferropool vs loky (time ratio)", j["ferropool", "tiny"] / j["loky", "tiny"]),
            ("joblib large-array tasks: ferropool vs loky (time ratio)", j["ferropool", "large"] / j["loky", "large"]),
        ]
    print("\nratios, same run:")
    for name, value in summary:
        print(f"  {name:<80} {value if isinstance(value, str) else f'{value:.2f}'}")


if __name__ == "__main__":
    main()
