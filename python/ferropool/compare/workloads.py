"""What ``ferropool compare`` times: the built-in workloads, and a user's ``module:function``.

A :class:`Workload` is a batch of calls, ``fn(item)`` (sync) or ``await afn(item)``
(``async def``), for each item; its ``kind`` says which worker counts to sweep
(``io`` adds twice the core count) and how to read the results.  Built-in
workloads that need a missing optional library (numpy, aiohttp) become a
:class:`Skipped` with the reason.

Database workloads (:data:`DATABASE`) run only against a server the user names with
``--mysql DSN`` (:func:`build_database_workloads`); ``compare`` never starts one.

User targets: ``compare mymodule:func --items N`` calls ``func(i)`` for each
``i`` in ``range(N)``; an ``async def`` function is awaited.  :func:`load_target`
imports it and :func:`check_target` runs it once serially (the serial warm-up);
any failure becomes a :class:`TargetError` whose message is one line.
"""

from __future__ import annotations

import asyncio
import importlib
import inspect
import os
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import tasks as w
from .server import BODY

if TYPE_CHECKING:
    from .server import DelayServer

__all__ = [
    "BUILTIN",
    "DATABASE",
    "Skipped",
    "TargetError",
    "Workload",
    "build_database_workloads",
    "build_workloads",
    "check_database",
    "check_target",
    "load_target",
]

# name -> (kind, one-line summary for --help)
BUILTIN = {
    "cpu": ("cpu", "pure-Python loops that hold the GIL"),
    "hash": ("cpu", "SHA-256 in hashlib: native code that releases the GIL"),
    "sleep": ("io", "blocking time.sleep (GIL released)"),
    "http": ("io", "blocking urllib requests to a local aiohttp server"),
    "async_http": ("io", "aiohttp client requests (async def) to the same server"),
    "tiny": ("cpu", "many tiny tasks: per-task overhead"),
    "array": ("cpu", "numpy over a large array argument: copying costs"),
}
HTTP_DELAY_MS = 20
# name -> summary; timed only with --mysql DSN, on the user's server
DATABASE = {
    "mysql": "queries that wait 5 ms in the server, blocking pymysql (a connection per thread)",
    "async_mysql": "the same queries with aiomysql (async def; a connection pool per event loop)",
}
DATABASE_QUERY_MS = 5
OPTIONAL = "pip install 'ferropool[compare]'"


class TargetError(Exception):
    """Raised when a user target cannot be imported, is not callable, or raises; the message is one line."""


@dataclass(frozen=True)
class Workload:
    """``fn(item)`` or ``await afn(item)`` for each item; ``expect``: the results (None: not checked)."""

    name: str
    description: str
    kind: str  # "cpu", "io", or "user" (unknown: swept like io)
    fn: Callable[[Any], Any] | None
    afn: Callable[[Any], Awaitable[Any]] | None
    items: tuple[Any, ...]
    expect: list[Any] | None
    warmup_items: tuple[Any, ...]


@dataclass(frozen=True)
class Skipped:
    """A built-in workload that cannot run here, and why."""

    name: str
    description: str
    reason: str


def build_workloads(
    names: Iterable[str], *, quick: bool, cores: int, server: DelayServer | None = None
) -> list[Workload | Skipped]:
    """Return a Workload or Skipped for each of ``names``, sized for ``cores``.

    Default sizes keep every workload's serial batch at about 0.2-0.3 s, so the
    whole default run stays within about two minutes on 2 cores; ``quick`` makes
    them tiny.  Calibrates the CPU loop here (blocks ~0.1 s).  ``server`` is the
    running :class:`~ferropool.compare.server.DelayServer`, or None if aiohttp
    is missing.
    """
    cpu_tasks = 4 if quick else max(8, 4 * cores)
    io_tasks = 8 if quick else max(12, 4 * cores)
    io_ms = 2 if quick else HTTP_DELAY_MS
    out: list[Workload | Skipped] = []
    for name in names:
        if name == "cpu":
            task_s = 0.005 if quick else 0.2 / cpu_tasks
            n = w.calibrate_spin(task_s)
            out.append(
                _same(
                    name,
                    f"{cpu_tasks} pure-Python loops of ~{task_s * 1e3:.0f} ms (hold the GIL)",
                    w.spin,
                    n,
                    cpu_tasks,
                    1_000,
                )
            )
        elif name == "hash":
            mib = 1 if quick else 32
            out.append(
                _same(
                    name,
                    f"{cpu_tasks} SHA-256 of {mib} MiB (hashlib: native, releases the GIL)",
                    w.hash_task,
                    mib,
                    cpu_tasks,
                    1,
                )
            )
        elif name == "sleep":
            out.append(
                _same(
                    name,
                    f"{io_tasks} blocking sleeps of {io_ms} ms (release the GIL)",
                    w.sleep_task,
                    io_ms / 1000,
                    io_tasks,
                    0.0,
                )
            )
        elif name in ("http", "async_http"):
            client = "urllib (blocking)" if name == "http" else "aiohttp client (async def)"
            description = f"{io_tasks} HTTP GETs answered after {io_ms} ms, {client}, local aiohttp server"
            if server is None:
                out.append(Skipped(name, description, f"needs aiohttp, not installed ({OPTIONAL})"))
            elif name == "http":
                out.append(_same(name, description, w.http_get, server.url(io_ms), io_tasks, server.url(0)))
            else:
                items = (server.url(io_ms),) * io_tasks
                out.append(
                    Workload(
                        name, description, "io", None, w.http_get_async, items, [len(BODY)] * io_tasks, (server.url(0),)
                    )
                )
        elif name == "tiny":
            n = 200 if quick else 2_000
            out.append(
                Workload(
                    name,
                    f"{n} x add_one(i): per-task overhead",
                    "cpu",
                    w.add_one,
                    None,
                    tuple(range(n)),
                    [i + 1 for i in range(n)],
                    tuple(range(8)),
                )
            )
        elif name == "array":
            out.append(_array_workload(name, cpu_tasks, 64 * 1024 if quick else 1024 * 1024))
        else:  # argparse validated the names; this guards direct callers
            raise ValueError(f"unknown workload {name!r}")
    return out


def build_database_workloads(dsn: str, *, quick: bool) -> list[Workload]:
    """Return the :data:`DATABASE` workloads against the server of ``dsn``: each a batch of
    ``SELECT SLEEP(0.005)`` (a serial batch of about 0.25 s; 8 queries with ``quick``)."""
    n = 8 if quick else 50
    sql = f"SELECT SLEEP({DATABASE_QUERY_MS / 1000})"
    items, warmup = ((dsn, sql),) * n, ((dsn, "SELECT 0"),)
    where = _dsn_without_password(dsn)
    return [
        Workload(
            "mysql", f"{n} x {sql}, pymysql (blocking), {where}", "io", w.mysql_query, None, items, [(0,)] * n, warmup
        ),
        Workload(
            "async_mysql",
            f"{n} x {sql}, aiomysql (async def), {where}",
            "io",
            None,
            w.mysql_query_async,
            items,
            [(0,)] * n,
            warmup,
        ),
    ]


def check_database(dsn: str) -> None:
    """Connect to ``dsn`` once with each client and run a query; raise TargetError saying why
    not (a malformed DSN, a client library missing, a server that refuses)."""
    try:
        w.mysql_connect_args(dsn)
    except ValueError as exc:
        raise TargetError(f"--mysql: {exc}") from None
    for module in ("pymysql", "aiomysql"):
        try:
            importlib.import_module(module)
        except ImportError:
            raise TargetError(f"--mysql needs {module}, not installed ({OPTIONAL})") from None
    job = (dsn, "SELECT 1")
    try:
        w.mysql_query(job)
        w.run_async(w.mysql_query_async, job)
    except Exception as exc:
        raise TargetError(f"--mysql: cannot query {_dsn_without_password(dsn)}: {_one_line(exc)}") from exc


def _dsn_without_password(dsn: str) -> str:
    from urllib.parse import urlsplit

    parts = urlsplit(dsn)
    if parts.password is None:
        return dsn
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", ":***@", 1)).geturl()


def _same(name: str, description: str, fn: Callable[[Any], Any], arg: Any, n: int, warmup_arg: Any) -> Workload:
    """A workload of ``n`` identical calls ``fn(arg)``; the expected result is computed here, once."""
    return Workload(name, description, BUILTIN[name][0], fn, None, (arg,) * n, [fn(arg)] * n, (warmup_arg,))


def _array_workload(name: str, n_tasks: int, length: int) -> Workload | Skipped:
    description = f"{n_tasks} x sin-sum of a {length * 8 / 2**20:g} MiB float64 array passed as argument"
    try:
        import numpy as np
    except ImportError:
        return Skipped(name, description, f"needs numpy, not installed ({OPTIONAL})")
    array = np.linspace(0.0, 1.0, length)
    small = np.ones(16)
    return Workload(
        name, description, "cpu", w.array_task, None, (array,) * n_tasks, [w.array_task(array)] * n_tasks, (small,)
    )


def load_target(spec: str, *, items: int) -> Workload:
    """Import ``module:function`` (attributes may be dotted) and return its workload of ``items`` calls.

    Puts the current directory first on ``sys.path``, as ``python -m`` does, so that
    ``mymodule.py`` beside the user is found (worker processes inherit it).
    Raises TargetError if the module or attribute is missing, importing raises, or the
    object is not callable.
    """
    module_name, sep, attr = spec.partition(":")
    if not (sep and module_name and attr):
        raise TargetError(f"expected MODULE:FUNCTION, got {spec!r}")
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as exc:
        raise TargetError(f"cannot import {spec!r}: {_one_line(exc, with_type=False)}") from exc
    except (Exception, SystemExit) as exc:  # the module's own code failed while importing
        raise TargetError(f"cannot import {spec!r}: {_one_line(exc)}") from exc
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as exc:
            raise TargetError(f"cannot import {spec!r}: {_one_line(exc, with_type=False)}") from exc
    if not callable(obj):
        raise TargetError(f"{spec!r} is not callable: it is a {type(obj).__name__}")
    is_async = inspect.iscoroutinefunction(obj)
    call = f"await {attr}(i)" if is_async else f"{attr}(i)"
    description = f"{call} for i in range({items}), from {module_name}"
    return Workload(
        spec, description, "user", None if is_async else obj, obj if is_async else None, tuple(range(items)), None, ()
    )


def check_target(wl: Workload) -> float:
    """Run every call of ``wl`` once, serially, in this thread; return the seconds it took.

    Raises TargetError naming the first call that raised.
    """
    t0 = time.perf_counter()
    item = None
    try:
        if wl.fn is not None:
            for item in wl.items:
                wl.fn(item)
        elif wl.afn is not None:
            afn = wl.afn

            async def in_turn() -> None:
                nonlocal item
                for item in wl.items:
                    await afn(item)

            asyncio.run(in_turn())
    except (Exception, SystemExit) as exc:
        func = wl.name.partition(":")[2]
        raise TargetError(f"{wl.name!r} raised {_one_line(exc)} (in the call {func}({item!r}))") from exc
    return time.perf_counter() - t0


def _one_line(exc: BaseException, *, with_type: bool = True, limit: int = 300) -> str:
    text = " ".join(str(exc).split())  # a multi-line message becomes one line
    text = f"{type(exc).__name__}: {text}" if with_type and text else (text or type(exc).__name__)
    return text if len(text) <= limit else text[: limit - 3] + "..."
