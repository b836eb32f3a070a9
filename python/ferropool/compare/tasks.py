"""Task functions for ``ferropool compare`` and the benchmark suite.

Every task is a module-level function so that process pools can send it to
workers by reference (pickle stores ``ferropool.compare.tasks.<name>``; the worker
imports this module).  Nothing here depends on ferropool's pools, so the module
also works while the Rust core is missing, and optional libraries (numpy,
aiohttp, and also asyncio and urllib) are imported inside the tasks that need
them, so that a worker pays for them only if it runs such a task.

- :func:`add_one`: a tiny task; measures per-task overhead of a pool.
- :func:`spin`: a pure-Python loop that holds the GIL; measures CPU scaling.
  :func:`calibrate_spin` finds the loop count for a wanted duration.
- :func:`hash_task`: SHA-256 of a buffer, native code that releases the GIL.
- :func:`sleep_task`: blocks in ``time.sleep`` with the GIL released; stands in
  for blocking I/O.
- :func:`http_get`: a blocking HTTP request (``urllib``); :func:`http_get_async`
  the same request with an ``aiohttp`` client, a coroutine.
- :func:`mysql_query`: a query with a blocking ``pymysql`` client on this thread's connection;
  :func:`mysql_query_async` the same with ``aiomysql``, a coroutine.  Both take a
  ``(dsn, sql)`` pair; :func:`mysql_connect_args` reads the DSN.
- :func:`array_task`: numpy work over a large array passed as argument,
  so a process pool pays for copying it to the worker.
- :func:`run_async`: runs a coroutine function to completion in a new event
  loop; how thread and process pools run ``async def`` tasks.
"""

from __future__ import annotations

import hashlib
import threading
import time

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: workers import this module, and typing is slow
if TYPE_CHECKING:
    import asyncio
    from collections.abc import Awaitable, Callable
    from typing import Any

    import aiohttp

__all__ = [
    "add_one",
    "array_task",
    "calibrate_spin",
    "close_loop_sessions",
    "hash_task",
    "http_get",
    "http_get_async",
    "mysql_connect_args",
    "mysql_query",
    "mysql_query_async",
    "run_async",
    "sleep_task",
    "spin",
]


def add_one(x: int) -> int:
    """Return ``x + 1``; the smallest useful task, so a pool's overhead dominates."""
    return x + 1


def spin(n: int) -> int:
    """Run a pure-Python loop of ``n`` iterations and return a checksum.

    Holds the GIL for the whole call, so threads cannot run it in parallel.
    The checksum keeps the loop from being trivially dead code and lets callers
    check that a task really ran.
    """
    acc = 0
    for i in range(n):
        acc = (acc + i * i) % 1_000_003
    return acc


def calibrate_spin(target_s: float, *, min_n: int = 1_000) -> int:
    """Return the loop count for which :func:`spin` takes about ``target_s`` seconds.

    Blocks for roughly ``4 * target_s`` plus a few milliseconds in this process.
    The result reflects the machine's speed and load at the time of the call, so
    calibrate once and reuse the count for every strategy being compared.
    """
    if target_s <= 0:
        raise ValueError(f"target_s must be > 0, got {target_s!r}")
    n = min_n
    # Double until one call takes long enough to time reliably (>= 20 ms or the target).
    while True:
        t0 = time.perf_counter()
        spin(n)
        elapsed = time.perf_counter() - t0
        if elapsed >= min(0.02, target_s):
            break
        n *= 2
    # Take the fastest of a few timed calls: it is the least disturbed by other load.
    per_iter = elapsed / n
    for _ in range(2):
        t0 = time.perf_counter()
        spin(n)
        per_iter = min(per_iter, (time.perf_counter() - t0) / n)
    return max(min_n, int(target_s / per_iter))


def sleep_task(seconds: float) -> float:
    """Block for ``seconds`` in ``time.sleep`` (GIL released) and return ``seconds``."""
    time.sleep(seconds)
    return seconds


_HASH_BLOCK = bytes(range(256)) * 4096  # 1 MiB, built once per process


def hash_task(mib: int) -> str:
    """Return the SHA-256 hex digest of ``mib`` MiB of a fixed pattern.

    hashlib releases the GIL while it hashes buffers over 2 KiB, so threads run
    this in parallel.  The buffer is built in the worker: only an int travels.
    """
    h = hashlib.sha256()
    for _ in range(mib):
        h.update(_HASH_BLOCK)
    return h.hexdigest()


def http_get(url: str) -> int:
    """Fetch ``url`` with blocking ``urllib`` and return the body's length; raise on HTTP errors."""
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as response:
        return len(response.read())


# One aiohttp session per event loop, closed by close_loop_sessions(): a session per request
# would charge connection set-up to every call, which is not how asyncio clients are written.
_sessions: dict[asyncio.AbstractEventLoop, aiohttp.ClientSession] = {}


async def http_get_async(url: str) -> int:
    """Fetch ``url`` with an ``aiohttp`` client and return the body's length; raise on HTTP errors.

    Reuses one ``ClientSession`` per running event loop; call
    :func:`close_loop_sessions` before the loop ends.
    """
    import asyncio

    import aiohttp

    loop = asyncio.get_running_loop()
    session = _sessions.get(loop)
    if session is None:
        session = _sessions[loop] = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    async with session.get(url) as response:
        response.raise_for_status()
        return len(await response.read())


async def close_loop_sessions() -> None:
    """Close the aiohttp session that :func:`http_get_async` and the aiomysql pool that
    :func:`mysql_query_async` opened on the running loop, if any."""
    import asyncio

    loop = asyncio.get_running_loop()
    session = _sessions.pop(loop, None)
    if session is not None:
        await session.close()
    opening = _mysql_pools.pop(loop, None)
    if opening is not None:
        pool = await opening
        pool.close()
        await pool.wait_closed()


DSN_FORM = "mysql://USER[:PASSWORD]@HOST[:PORT][/DATABASE][?unix_socket=PATH]"


def mysql_connect_args(dsn: str) -> dict[str, Any]:
    """Return the keyword arguments ``aiomysql.connect`` takes for ``dsn`` (``pymysql.connect``
    the same, with ``database`` for ``db``)
    (``DSN_FORM``; user and password percent-encoded, as in a URL). Raises ``ValueError``
    naming what is wrong."""
    from urllib.parse import parse_qs, unquote, urlsplit

    parts = urlsplit(dsn)
    if parts.scheme not in ("mysql", "mariadb"):
        raise ValueError(f"a MySQL DSN looks like {DSN_FORM}, got {dsn!r}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port of {dsn!r} is not a number") from None
    args: dict[str, Any] = {
        "host": parts.hostname or "localhost",
        "port": port or 3306,
        "user": unquote(parts.username or "root"),
        "password": unquote(parts.password or ""),
    }
    database = parts.path.strip("/")
    if database:
        args["db"] = unquote(database)
    for key, values in parse_qs(parts.query, keep_blank_values=True).items():
        if key != "unix_socket":
            raise ValueError(f"unknown DSN parameter {key!r} in {dsn!r} (known: unix_socket)")
        args["unix_socket"] = values[-1]
    return args


_mysql_args: dict[str, dict[str, Any]] = {}
_thread_local = threading.local()  # this thread's pymysql connections, by DSN


def _mysql_args_of(dsn: str) -> dict[str, Any]:
    args = _mysql_args.get(dsn)
    if args is None:
        args = _mysql_args[dsn] = mysql_connect_args(dsn)
    return args


def mysql_query(job: tuple[str, str]) -> tuple[Any, ...]:
    """Run ``sql`` of ``job = (dsn, sql)`` with blocking ``pymysql`` and return the first row.

    Uses one connection per thread (and DSN), opened on first use and kept for the thread's
    life, as a blocking client in a thread pool is written.
    """
    dsn, sql = job
    conns = _thread_local.__dict__.setdefault("mysql", {})
    conn = conns.get(dsn)
    if conn is None:
        import pymysql

        args = dict(_mysql_args_of(dsn))
        if "db" in args:  # pymysql's name for it; aiomysql knows only "db"
            args["database"] = args.pop("db")
        conn = conns[dsn] = pymysql.connect(autocommit=True, **args)
    with conn.cursor() as cur:
        cur.execute(sql)
        row: tuple[Any, ...] = cur.fetchone()
        return row


# One aiomysql pool per event loop (its opening, so that concurrent first calls share it),
# closed by close_loop_sessions().
_mysql_pools: dict[asyncio.AbstractEventLoop, asyncio.Future[Any]] = {}
MYSQL_POOL_SIZE = 64


async def mysql_query_async(job: tuple[str, str]) -> tuple[Any, ...]:
    """Run ``sql`` of ``job = (dsn, sql)`` with ``aiomysql`` and return the first row.

    Uses one connection pool (up to ``MYSQL_POOL_SIZE`` connections) per running event loop;
    call :func:`close_loop_sessions` before the loop ends.
    """
    import asyncio

    import aiomysql

    dsn, sql = job
    loop = asyncio.get_running_loop()
    opening = _mysql_pools.get(loop)
    if opening is None:
        pool_args = dict(minsize=1, maxsize=MYSQL_POOL_SIZE, autocommit=True, **_mysql_args_of(dsn))
        opening = _mysql_pools[loop] = asyncio.ensure_future(aiomysql.create_pool(**pool_args))
    pool = await asyncio.shield(opening)
    async with pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql)
        row: tuple[Any, ...] = await cur.fetchone()
        return row


def array_task(array: Any) -> float:
    """Return the sum of ``sin(array)``: numpy work (GIL released) over an argument that is large to copy."""
    import numpy as np

    return float(np.sin(array).sum())


def run_async(afn: Callable[[Any], Awaitable[Any]], arg: Any) -> Any:
    """Run ``afn(arg)`` to completion in a new event loop and return its result.

    How a thread or process pool runs a coroutine function: each call pays for
    starting and closing a loop, which is part of what ``compare`` measures.
    """
    import asyncio

    async def call() -> Any:
        try:
            return await afn(arg)
        finally:
            await close_loop_sessions()

    return asyncio.run(call())
