"""Database I/O: which way of running many small queries is fastest, against a real MariaDB.

Two workloads, each ``N`` queries: short ones (``SELECT 1``: the client's and the round trip's
cost) and ones that wait ~5 ms in the server (``SELECT SLEEP(0.005)``: what overlapping waits
gains). Strategies, each with ``--concurrency`` queries in flight at most (default 16):

* ``serial pymysql``: one blocking connection, one query after the other;
* ``ThreadPoolExecutor + pymysql`` and ``ferropool.ThreadPool + pymysql``: one connection per
  thread, opened by the initializer, ``pool.map(query, ...)``;
* ``asyncio + aiomysql``: one event loop, an ``aiomysql`` pool, ``asyncio.gather``;
* ``ferropool.ProcessPool`` and ``ferropool.HybridPool`` with ``async def`` tasks: an async
  initializer opens each worker's ``aiomysql`` pool (concurrency / processes connections) on the
  worker's loop, ``pool.map(query_async, ...)``.

Each figure is the median of ``--repeats`` timed batches after an untimed warm-up that opens every
connection; queries per second are ``N / median``; peak RSS is this process plus the pool's
workers (``_harness.TreeRss``; the server is not counted).

Run::

    python benchmarks/bench_db.py                    # starts a throwaway server (tests/mariadb_server.py)
    python benchmarks/bench_db.py --mysql mysql://user:pw@127.0.0.1:3306/db
    python benchmarks/bench_db.py --quick            # smoke run, seconds
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import _db_tasks as t
import _harness as h
import ferropool
from ferropool.compare.tasks import mysql_connect_args

WORKLOADS = {"short": "SELECT 1", "sleep": "SELECT SLEEP(0.005)"}
EXPECT = {"SELECT 1": (1,), "SELECT SLEEP(0.005)": (0,)}


class AsyncioRunner:
    """One event loop in this thread with an aiomysql pool of ``size`` connections."""

    def __init__(self, connect: dict, size: int) -> None:
        import aiomysql

        self.loop = asyncio.new_event_loop()
        self.pool = self.loop.run_until_complete(
            aiomysql.create_pool(minsize=size, maxsize=size, autocommit=True, **connect)
        )

    def map(self, sqls: list[str]) -> list:
        async def one(sql: str) -> tuple:
            async with self.pool.acquire() as conn, conn.cursor() as cur:
                await cur.execute(sql)
                return await cur.fetchone()

        async def gather() -> list:
            return await asyncio.gather(*(one(s) for s in sqls))

        return self.loop.run_until_complete(gather())

    def close(self) -> None:
        self.pool.close()
        self.loop.run_until_complete(self.pool.wait_closed())
        self.loop.close()


def strategies(connect: dict, concurrency: int, processes: int) -> dict[str, Callable[[], tuple]]:
    """Name -> factory returning ``(run(sqls) -> rows, close())``."""
    per_process = max(1, concurrency // processes)

    def serial():
        t.open_thread_connection(connect)
        return (lambda sqls: [t.query(s) for s in sqls]), t._local.conn.close

    def executor(pool):
        return (lambda sqls: list(pool.map(t.query_async if _is_async(pool) else t.query, sqls))), pool.shutdown

    def stdlib_threads():
        return executor(ThreadPoolExecutor(concurrency, initializer=t.open_thread_connection, initargs=(connect,)))

    def ferropool_threads():
        return executor(ferropool.ThreadPool(concurrency, initializer=t.open_thread_connection, initargs=(connect,)))

    def asyncio_aiomysql():
        runner = AsyncioRunner(connect, concurrency)
        return runner.map, runner.close

    def process_pool():
        return executor(ferropool.ProcessPool(processes, initializer=t.open_pool, initargs=(connect, per_process)))

    def hybrid_pool():
        pool = ferropool.HybridPool(processes, 4, initializer=t.open_pool, initargs=(connect, per_process))
        return executor(pool)

    return {
        "serial pymysql": serial,
        "ThreadPoolExecutor + pymysql": stdlib_threads,
        "ferropool.ThreadPool + pymysql": ferropool_threads,
        "asyncio + aiomysql": asyncio_aiomysql,
        f"ferropool.ProcessPool({processes}) + aiomysql": process_pool,
        f"ferropool.HybridPool({processes}x4) + aiomysql": hybrid_pool,
    }


def _is_async(pool) -> bool:
    return isinstance(pool, ferropool.ProcessPool)  # HybridPool is one


@contextlib.contextmanager
def server(dsn: str | None) -> Iterator[dict]:
    """Connection arguments for ``dsn``, or for a throwaway server started here."""
    if dsn:
        yield mysql_connect_args(dsn)
        return
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
    import mariadb_server

    with mariadb_server.running() as running:
        yield running.connect_kwargs()


def measure_one(make: Callable[[], tuple], sql: str, n: int, repeats: int, concurrency: int) -> tuple[h.Stats, dict]:
    """Builds one strategy, times ``n`` queries ``sql`` on it ``repeats`` times (after a warm-up
    that opens its connections), closes it; returns the timings and the peak RSS."""
    h.reset_peak_rss()
    rss = h.TreeRss()
    run, close = make()
    sqls, expect = [sql] * n, EXPECT[sql]

    def check(out: list) -> None:
        if len(out) != n or any(tuple(r) != expect for r in out):
            raise AssertionError(f"wrong rows for {sql}: {out[:3]}...")

    try:
        stats = h.measure(
            lambda: run(sqls),
            repeats=repeats,
            warmup=lambda: run([sql] * (2 * concurrency)),
            sample=rss.sample,
            check=check,
        )
    finally:
        close()
    return stats, rss.peak()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mysql", metavar="DSN", help="an existing server (default: start a throwaway one)")
    parser.add_argument("--quick", action="store_true", help="a smoke run of a few seconds")
    parser.add_argument("--repeats", type=int, default=None, help="timed batches per figure (default 5; 2 quick)")
    parser.add_argument("--concurrency", type=int, default=16, help="queries in flight at most (default 16)")
    parser.add_argument("--json", metavar="FILE", help="also write the figures as JSON")
    args = parser.parse_args()
    repeats = args.repeats or (2 if args.quick else 5)
    sizes = {"short": 200 if args.quick else 2000, "sleep": 40 if args.quick else 400}
    processes = max(1, min(h.machine_info()["usable_cores"] or 1, args.concurrency))
    results: dict = {"machine": h.machine_info(), "concurrency": args.concurrency, "workloads": {}}
    with server(args.mysql) as connect:
        for workload, sql in WORKLOADS.items():
            n = sizes[workload]
            rows, figures = [], {}
            for name, make in strategies(connect, args.concurrency, processes).items():
                stats, peak = measure_one(make, sql, n, repeats, args.concurrency)
                figures[name] = {"stats": stats.to_json(), "qps": n / stats.median, "peak_rss": peak}
                rows.append(
                    [name, h.fmt_seconds(stats.median), f"{h.fmt_seconds(stats.min)} - {h.fmt_seconds(stats.max)}",
                     f"{n / stats.median:,.0f}", h.fmt_kib(peak["tree_kib"])]
                )  # fmt: skip
            serial_qps = figures["serial pymysql"]["qps"]
            for row, fig in zip(rows, figures.values(), strict=True):
                row.insert(4, f"{fig['qps'] / serial_qps:.2f}x")
            results["workloads"][workload] = {"sql": sql, "queries": n, "strategies": figures}
            print(f"\n{workload}: {n} x {sql}, at most {args.concurrency} in flight, medians of {repeats}")
            print(h.markdown_table(["strategy", "median", "min - max", "queries/s", "vs serial", "peak RSS"], rows))
    if args.json:
        h.write_json(args.json, results)


if __name__ == "__main__":
    main()
