"""Async database work against a real MariaDB server (``tests/mariadb_server.py``, started once per
session by the ``mariadb_server`` fixture in ``conftest.py``): an async initializer opens each worker's ``aiomysql``
pool on the worker's event loop, ``async def`` tasks use it, and closing the pool closes the
connections; a cancelled or timed-out query leaves no connection behind on the server and the
worker's pool usable; a worker that dies drops its connections.

Each test connects as a database user of its own, so ``SHOW PROCESSLIST`` rows of that user are
the connections this test opened. The server offers no event for a connection's end, so the
checks of what it sees poll it (``MariaDB.wait_connections``) under a timeout.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from ferropool import BrokenPoolError, HybridPool, ProcessPool, TaskTimeoutError, ThreadPool

RESULT_TIMEOUT = 30
#: How long the server may take to notice a connection's end. A query in ``SLEEP()`` checks its
#: client every 5 s (MariaDB's ``interruptible_wait``); an idle connection sees it at once.
SERVER_SEES_IT = 20
LONG_QUERY = "SELECT SLEEP(60)"

# ------------------------------------------------------------------ what the workers run

#: The worker's aiomysql pool and the loop it was opened on, set by an initializer below.
db = None
init_loop = None


async def open_db(connect: dict, minsize: int = 1):
    """An async generator initializer: opens the worker's pool before its first task, closes it
    (on the same loop) when the worker shuts down."""
    global db, init_loop
    import aiomysql

    db = await aiomysql.create_pool(minsize=minsize, maxsize=8, **connect)
    init_loop = asyncio.get_running_loop()
    try:
        yield
    finally:
        db.close()
        await db.wait_closed()


async def open_db_no_cleanup(connect: dict, minsize: int = 1) -> None:
    """A plain ``async def`` initializer: nothing closes the pool but the worker's exit."""
    global db, init_loop
    import aiomysql

    db = await aiomysql.create_pool(minsize=minsize, maxsize=8, **connect)
    init_loop = asyncio.get_running_loop()


async def query(sql: str, *args):
    async with db.acquire() as conn, conn.cursor() as cur:
        await cur.execute(sql, args or None)
        return await cur.fetchall()


async def whoami() -> tuple[int, int, bool]:
    """Returns the worker's pid, the server's id of the connection used, and whether this runs
    on the loop the initializer ran on."""
    ((connection_id,),) = await query("SELECT CONNECTION_ID()")
    return os.getpid(), connection_id, asyncio.get_running_loop() is init_loop


async def whoami_for(_: int) -> tuple[int, int, bool]:
    return await whoami()


def sync_initializer_returning_nothing() -> None:
    pass


# ------------------------------------------------------------------ fixtures

_users = itertools.count()


@pytest.fixture
def connect(mariadb_server):
    """Connection arguments for a database user of this test's own (dropped at teardown)."""
    user = f"t{os.getpid()}_{next(_users)}"
    mariadb_server.query(f"CREATE USER '{user}'@'localhost' IDENTIFIED BY 'pw'")
    mariadb_server.query(f"GRANT ALL ON {mariadb_server.database}.* TO '{user}'@'localhost'")
    yield {"unix_socket": mariadb_server.socket, "user": user, "password": "pw", "db": mariadb_server.database}
    mariadb_server.query(f"DROP USER '{user}'@'localhost'")


def connections(server, connect):
    return server.connections(user=connect["user"])


POOLS = [
    pytest.param(lambda **kw: ProcessPool(2, **kw), id="ProcessPool"),
    pytest.param(lambda **kw: HybridPool(2, 3, **kw), id="HybridPool"),
]


# ------------------------------------------------------------------ the async initializer


@pytest.mark.parametrize("make", POOLS)
def test_async_initializer_opens_a_pool_per_worker_and_shutdown_closes_it(mariadb_server, connect, make):
    pool = make(initializer=open_db, initargs=(connect, 2))
    try:
        seen = list(pool.map(whoami_for, range(40), timeout=RESULT_TIMEOUT))
        pids = {pid for pid, _, _ in seen}
        assert all(on_init_loop for _, _, on_init_loop in seen), "a task ran off the initializer's loop"
        # minsize=2: each worker that ran a task holds at least its two connections, open now.
        open_now = connections(mariadb_server, connect)
        assert len(open_now) >= 2 * len(pids), open_now
        assert {cid for _, cid, _ in seen} <= {row[0] for row in open_now}
    finally:
        pool.shutdown(wait=True)
    # The cleanup after ``yield`` ran before the workers exited: every connection said goodbye.
    mariadb_server.wait_connections(lambda rows: not rows, timeout=SERVER_SEES_IT, user=connect["user"])


@pytest.mark.parametrize("make", POOLS)
def test_a_coroutine_from_a_plain_callable_runs_on_the_initializers_loop(mariadb_server, connect, make):
    # A partial is not flagged async: the worker awaits the coroutine it returns, on that loop.
    with make(initializer=open_db, initargs=(connect,)) as pool:
        _, _, on_init_loop = pool.submit(functools.partial(whoami)).result(timeout=RESULT_TIMEOUT)
    assert on_init_loop


@pytest.mark.parametrize("make", POOLS)
def test_a_plain_async_def_initializer_works_and_the_exit_drops_its_connections(mariadb_server, connect, make):
    with make(initializer=open_db_no_cleanup, initargs=(connect,)) as pool:
        _, cid, on_init_loop = pool.submit(whoami).result(timeout=RESULT_TIMEOUT)
        assert on_init_loop
        assert cid in {row[0] for row in connections(mariadb_server, connect)}
    mariadb_server.wait_connections(lambda rows: not rows, timeout=SERVER_SEES_IT, user=connect["user"])


def test_closing_the_pool_leaves_no_unclosed_connection_warning(mariadb_server, connect, tmp_path):
    # In a child interpreter with ResourceWarnings shown (workers take its -W flags): aiomysql
    # warns "Unclosed connection" from a connection collected open, in the parent or a worker.
    tests = os.path.dirname(os.path.abspath(__file__))
    script = tmp_path / "run.py"
    script.write_text(
        textwrap.dedent(f"""
            import sys
            sys.path.insert(0, {tests!r})
            from ferropool import HybridPool, ProcessPool
            import test_mariadb as t

            for cls in (ProcessPool, HybridPool):
                with cls(2, initializer=t.open_db, initargs=({connect!r}, 2)) as pool:
                    rows = list(pool.map(t.query, ["SELECT 1"] * 20))
                assert rows == [((1,),)] * 20, rows
            print("done")
        """)
    )
    proc = subprocess.run(
        [sys.executable, "-X", "dev", "-W", "always::ResourceWarning", str(script)],
        capture_output=True,
        text=True,
        timeout=RESULT_TIMEOUT * 2,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "done"
    assert "nclosed" not in proc.stderr and "ResourceWarning" not in proc.stderr, proc.stderr
    mariadb_server.wait_connections(lambda rows: not rows, timeout=SERVER_SEES_IT, user=connect["user"])


def test_a_failing_async_initializer_breaks_the_pool_with_its_error(mariadb_server, connect):
    import pymysql

    wrong = {**connect, "password": "not the password"}
    with ProcessPool(1, initializer=open_db, initargs=(wrong,)) as pool:
        future = pool.submit(whoami)
        with pytest.raises(BrokenPoolError) as info:
            future.result(timeout=RESULT_TIMEOUT)
    cause = info.value.__cause__
    assert isinstance(cause, pymysql.err.OperationalError), repr(cause)
    assert cause.args[0] == 1045  # access denied


def test_a_sync_initializer_is_unchanged_with_coroutine_tasks(mariadb_server, connect):
    # Without an async initializer, a HybridPool worker keeps one loop per task thread.
    with HybridPool(1, 3, initializer=sync_initializer_returning_nothing) as pool:
        assert pool.submit(query_without_initializer, connect).result(timeout=RESULT_TIMEOUT) == ((1,),)


async def query_without_initializer(connect: dict):
    import aiomysql

    conn = await aiomysql.connect(**connect)
    try:
        async with conn.cursor() as cur:
            await cur.execute("SELECT 1")
            return await cur.fetchall()
    finally:
        conn.close()


@pytest.mark.parametrize("initializer", [open_db, open_db_no_cleanup], ids=["async-generator", "async-def"])
def test_thread_pool_refuses_an_async_initializer(initializer):
    with pytest.raises(TypeError, match="ThreadPool does not take an async initializer"):
        ThreadPool(2, initializer=initializer, initargs=({},))


async def note_shutdown(path: str, raise_at_exit: bool = False):
    """An async generator initializer that appends "<pid> <same loop>" to ``path`` at shutdown."""
    loop = asyncio.get_running_loop()
    yield
    with open(path, "a") as f:
        f.write(f"{os.getpid()} {asyncio.get_running_loop() is loop}\n")
    if raise_at_exit:
        raise ValueError("cleanup failed on purpose")


async def never_yields():
    if False:
        yield


async def loop_pid() -> int:
    await asyncio.sleep(0)
    return os.getpid()


def test_the_cleanup_runs_on_the_same_loop_at_every_worker_exit(tmp_path):
    # max_tasks_per_child=2: six tasks on one slot are three workers, each shut down in turn.
    path = str(tmp_path / "exits")
    with ProcessPool(1, initializer=note_shutdown, initargs=(path,), max_tasks_per_child=2) as pool:
        pids = [pool.submit(loop_pid).result(timeout=RESULT_TIMEOUT) for _ in range(6)]
    assert len(set(pids)) == 3
    with open(path) as f:
        lines = sorted(f.read().split("\n")[:-1])
    assert lines == sorted(f"{pid} True" for pid in set(pids))


def test_a_failing_cleanup_is_reported_and_the_pool_still_closes(tmp_path, capfd):
    path = str(tmp_path / "exits")
    with ProcessPool(1, initializer=note_shutdown, initargs=(path, True)) as pool:
        pid = pool.submit(loop_pid).result(timeout=RESULT_TIMEOUT)
    assert open(path).read() == f"{pid} True\n"
    err = capfd.readouterr().err
    assert "the async initializer's cleanup raised" in err and "cleanup failed on purpose" in err, err


def test_an_async_generator_initializer_must_yield():
    with ProcessPool(1, initializer=never_yields) as pool:
        with pytest.raises(BrokenPoolError) as info:
            pool.submit(loop_pid).result(timeout=RESULT_TIMEOUT)
    assert "must yield once" in str(info.value.__cause__)


# ------------------------------------------------------------------ faults


def _wait_until_running(server, connect, sql: str) -> None:
    server.wait_connections(lambda rows: any(r[7] == sql for r in rows), timeout=RESULT_TIMEOUT, user=connect["user"])


def _no_query_left(server, connect, sql: str) -> list:
    return server.wait_connections(
        lambda rows: not any(r[7] == sql for r in rows), timeout=SERVER_SEES_IT, user=connect["user"]
    )


@pytest.mark.parametrize("make", POOLS)
def test_a_cancelled_query_leaves_no_connection_behind_and_the_worker_usable(mariadb_server, connect, make):
    with make(initializer=open_db, initargs=(connect,)) as pool:
        pid_before, _, _ = pool.submit(whoami).result(timeout=RESULT_TIMEOUT)
        pool_size_before = len(connections(mariadb_server, connect))
        slow = pool.submit(query, LONG_QUERY)
        _wait_until_running(mariadb_server, connect, LONG_QUERY)
        assert slow.cancel(), "a running coroutine task can be cancelled"
        # aiomysql closes a connection whose read was cancelled; the server ends the query.
        left = _no_query_left(mariadb_server, connect, LONG_QUERY)
        assert len(left) <= pool_size_before, left
        # The worker and its pool carry on: the same processes answer, nothing was restarted.
        pids_after = {pool.submit(whoami).result(timeout=RESULT_TIMEOUT)[0] for _ in range(6)}
        assert pid_before in pids_after
        assert sum(w.restarts for w in pool.stats().workers) == 0


@pytest.mark.parametrize("make", POOLS)
def test_a_timed_out_query_leaves_no_connection_behind_and_the_worker_usable(mariadb_server, connect, make):
    with make(initializer=open_db, initargs=(connect,)) as pool:
        pid_before, _, _ = pool.submit(whoami).result(timeout=RESULT_TIMEOUT)
        slow = pool.options(task_timeout=0.5).submit(query, LONG_QUERY)
        with pytest.raises(TaskTimeoutError):
            slow.result(timeout=RESULT_TIMEOUT)
        _no_query_left(mariadb_server, connect, LONG_QUERY)
        results = [pool.submit(query, "SELECT %s", i) for i in range(10)]
        assert [f.result(timeout=RESULT_TIMEOUT) for f in results] == [((i,),) for i in range(10)]
        assert pid_before in {pool.submit(whoami).result(timeout=RESULT_TIMEOUT)[0] for _ in range(6)}
        assert sum(w.restarts for w in pool.stats().workers) == 0


@pytest.mark.parametrize("make", POOLS)
def test_a_worker_that_dies_drops_its_connections(mariadb_server, connect, make):
    with make(initializer=open_db, initargs=(connect, 3)) as pool:
        pid, cid, _ = pool.submit(whoami).result(timeout=RESULT_TIMEOUT)
        ids_before = {row[0] for row in connections(mariadb_server, connect)}
        assert cid in ids_before
        os.kill(pid, signal.SIGKILL)
        # The server sees the dead worker's connections go (the other worker's may stay).
        mariadb_server.wait_connections(
            lambda rows: cid not in {r[0] for r in rows}, timeout=SERVER_SEES_IT, user=connect["user"]
        )
        # Its replacement opens connections of its own and the pool answers again.
        answers = [pool.submit(whoami).result(timeout=RESULT_TIMEOUT) for _ in range(8)]
        assert all(p != pid for p, _, _ in answers)
    mariadb_server.wait_connections(lambda rows: not rows, timeout=SERVER_SEES_IT, user=connect["user"])


# ------------------------------------------------------------------ ferropool compare --mysql and bench_db


def _cli(*args: str, timeout: float = RESULT_TIMEOUT * 3) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferropool", *args], capture_output=True, text=True, timeout=timeout)


def test_compare_adds_the_database_workloads_to_its_table(mariadb_server):
    dsn = mariadb_server.dsn
    proc = _cli(
        "compare", "--quick", "--json", "--quiet", "--workload", "tiny", "--workers", "1,4",
        "--strategy", "ferropool.ThreadPool,ferropool.HybridPool,asyncio", "--mysql", dsn,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    import json

    workloads = json.loads(proc.stdout)["workloads"]
    assert set(workloads) == {"tiny", "mysql", "async_mysql"}
    for name in ("mysql", "async_mysql"):
        wl = workloads[name]
        assert wl["available"] and "SELECT SLEEP(0.005)" in wl["description"], wl
        for strategy in ("serial", "ferropool.ThreadPool", "ferropool.HybridPool", "asyncio"):
            assert wl["strategies"][strategy]["available"], (name, strategy, wl["strategies"][strategy])
    # Every connection compare opened is gone once it has exited.
    mariadb_server.wait_connections(lambda rows: not rows, timeout=SERVER_SEES_IT)


@pytest.mark.parametrize(
    "dsn, says",
    [
        ("postgres://localhost/x", "a MySQL DSN looks like mysql://"),
        ("mysql://root@localhost:port/x", "is not a number"),
        ("mysql://root@localhost/x?sslmode=1", "unknown DSN parameter 'sslmode'"),
        ("mysql://root:secret@localhost/x?unix_socket=/nonexistent/mysqld.sock", "cannot query mysql://root:***@"),
    ],
)
def test_compare_names_a_bad_dsn_and_never_starts_a_server(dsn, says):
    pytest.importorskip("pymysql")
    pytest.importorskip("aiomysql")
    proc = _cli("compare", "--quick", "--workload", "tiny", "--mysql", dsn)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ferropool compare: --mysql"), proc.stderr
    assert says in lines[0] and "secret" not in lines[0]
    assert proc.stdout == ""


def test_bench_db_runs_every_strategy(mariadb_server, tmp_path):
    bench = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "bench_db.py")
    out = tmp_path / "db.json"
    proc = subprocess.run(
        [sys.executable, bench, "--quick", "--repeats", "1", "--mysql", mariadb_server.dsn, "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=RESULT_TIMEOUT * 3,
    )
    assert proc.returncode == 0, proc.stderr
    import json

    figures = json.loads(out.read_text())["workloads"]
    assert set(figures) == {"short", "sleep"}
    for workload in figures.values():
        strategies = workload["strategies"]
        assert {"serial pymysql", "ferropool.ThreadPool + pymysql", "asyncio + aiomysql"} <= set(strategies)
        assert any(s.startswith("ferropool.ProcessPool") for s in strategies)
        assert any(s.startswith("ferropool.HybridPool") for s in strategies)
        assert all(s["qps"] > 0 for s in strategies.values())
    mariadb_server.wait_connections(lambda rows: not rows, timeout=SERVER_SEES_IT)
