"""Database tasks for ``bench_db.py``, in a module of their own so that workers import them (a
function from ``__main__`` travels by value with a copy of the globals it uses, so it would not
see the connection an initializer stored).

* blocking: ``open_thread_connection`` (a ``ThreadPool`` initializer: one ``pymysql`` connection
  per thread) and ``query``;
* async: ``open_pool`` (an async generator initializer: the worker's ``aiomysql`` pool, closed at
  shutdown) and ``query_async``.
"""

from __future__ import annotations

import threading
from typing import Any

_local = threading.local()
_pool: Any = None  # this process's aiomysql pool, opened by open_pool


def open_thread_connection(connect: dict) -> None:
    """Opens this thread's pymysql connection (kept for the thread's life)."""
    import pymysql

    args = dict(connect)
    if "db" in args:  # pymysql's name for it; aiomysql knows only "db"
        args["database"] = args.pop("db")
    _local.conn = pymysql.connect(autocommit=True, **args)


def query(sql: str) -> tuple:
    """Runs ``sql`` on this thread's connection; returns its first row."""
    with _local.conn.cursor() as cur:
        cur.execute(sql)
        return cur.fetchone()


async def open_pool(connect: dict, size: int):
    """Opens this worker's aiomysql pool of ``size`` connections on its loop; closes it at shutdown."""
    global _pool
    import aiomysql

    _pool = await aiomysql.create_pool(minsize=size, maxsize=size, autocommit=True, **connect)
    try:
        yield
    finally:
        _pool.close()
        await _pool.wait_closed()
        _pool = None


async def query_async(sql: str) -> tuple:
    """Runs ``sql`` on a connection of this worker's pool; returns its first row."""
    async with _pool.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql)
        return await cur.fetchone()
