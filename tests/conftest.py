"""Fixtures for every test file: executor kinds, bounded executors, gates, and a teardown check
that no child process outlives its test. The conformance suite (``conformance/``) runs each of
its tests on every executor kind; other files use the same kinds for their own behaviours.

``FERROPOOL_CONFORMANCE_TARGET`` picks the classes under test:

* unset or ``ferropool``: ``ferropool.ProcessPool`` and ``ferropool.ThreadPool``;
* ``stdlib``: ``concurrent.futures.ProcessPoolExecutor`` (forkserver) and
  ``ThreadPoolExecutor``, the reference every test must pass against.

Markers (registered below):

* ``kinds("process")`` / ``kinds("thread")``: parametrize only over those kinds.
* ``ferropool_only(reason, kinds=(...))``: the stdlib cannot do this (for the
  given kinds, default all); such cases are skipped, with the reason, when the
  target is ``stdlib``.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import select
import signal
import sys
import time
from dataclasses import dataclass

import pytest

# Task functions must pickle by reference as ``helpers.<name>``; pytest's
# rootdir conftest handling usually inserts this folder already.
_TESTS_DIR = os.path.dirname(os.path.abspath(__file__))
if _TESTS_DIR not in sys.path:
    sys.path.insert(0, _TESTS_DIR)

import helpers  # noqa: E402

TARGET = os.environ.get("FERROPOOL_CONFORMANCE_TARGET", "ferropool") or "ferropool"
if TARGET not in ("ferropool", "stdlib"):
    raise pytest.UsageError(f"FERROPOOL_CONFORMANCE_TARGET={TARGET!r}: expected 'ferropool' or 'stdlib'")

#: How long the teardown waits for child processes to exit.
CHILD_EXIT_TIMEOUT = 10.0


@dataclass(frozen=True)
class ExecutorKind:
    """One executor class under test, and how to build it."""

    name: str  # "process" or "thread"
    target: str  # "ferropool" or "stdlib"
    id: str
    cls: type | None
    import_error: str | None = None

    @property
    def is_process(self) -> bool:
        return self.name == "process"

    @property
    def is_stdlib(self) -> bool:
        return self.target == "stdlib"

    @property
    def stops_running_tasks(self) -> bool:
        """``cancel()`` stops a running task (ferropool's ``ProcessPool``); elsewhere a running
        task cannot be cancelled and runs to its end. ``shutdown(cancel_futures=True)`` never
        stops running tasks, as in the standard library."""
        return self.is_process and not self.is_stdlib

    def create(self, **kwargs):
        """Build an executor; the caller owns its shutdown."""
        if self.is_stdlib and self.is_process:
            kwargs.setdefault("mp_context", multiprocessing.get_context("forkserver"))
        return self.cls(**kwargs)


def _executor_kinds() -> list[ExecutorKind]:
    if TARGET == "stdlib":
        import concurrent.futures as cf

        return [
            ExecutorKind("process", "stdlib", "ProcessPoolExecutor-forkserver", cf.ProcessPoolExecutor),
            ExecutorKind("thread", "stdlib", "ThreadPoolExecutor", cf.ThreadPoolExecutor),
        ]
    kinds = []
    for name, attr in (("process", "ProcessPool"), ("thread", "ThreadPool")):
        try:
            import ferropool

            cls, error = getattr(ferropool, attr), None
        except Exception as exc:  # reported by every test that needs it
            cls, error = None, f"{type(exc).__name__}: {exc}"
        kinds.append(ExecutorKind(name, "ferropool", attr, cls, error))
    return kinds


EXECUTOR_KINDS = _executor_kinds()


def pytest_configure(config):
    config.addinivalue_line("markers", "kinds(*names): run only for these executor kinds ('process', 'thread')")
    config.addinivalue_line(
        "markers",
        "ferropool_only(reason, kinds=('process', 'thread')): the stdlib cannot do this; "
        "skipped with the reason when FERROPOOL_CONFORMANCE_TARGET=stdlib",
    )


def pytest_generate_tests(metafunc):
    if "executor_kind" not in metafunc.fixturenames:
        return
    marker = metafunc.definition.get_closest_marker("kinds")
    names = marker.args if marker else ("process", "thread")
    params = [kind for kind in EXECUTOR_KINDS if kind.name in names]
    metafunc.parametrize("executor_kind", params, ids=[kind.id for kind in params], indirect=True)


@pytest.fixture
def executor_kind(request) -> ExecutorKind:
    """The executor class under test (parametrized by ``pytest_generate_tests``)."""
    kind: ExecutorKind = request.param
    marker = request.node.get_closest_marker("ferropool_only")
    if marker is not None and kind.is_stdlib:
        reason = marker.kwargs.get("reason") or (marker.args[0] if marker.args else "")
        if kind.name in marker.kwargs.get("kinds", ("process", "thread")):
            pytest.skip(f"ferropool only: {reason}")
    if kind.cls is None:
        pytest.fail(f"cannot import ferropool.{kind.id}: {kind.import_error}", pytrace=False)
    return kind


@pytest.fixture
def make_executor(executor_kind):
    """Return ``make(**kwargs)`` that builds an executor of the kind under test.

    ``max_workers`` defaults to 2. Every executor made is shut down at teardown
    (``cancel_futures=True``), in a helper thread bounded by
    ``helpers.SHUTDOWN_TIMEOUT``; a shutdown that does not return fails the test.
    """
    made = []

    def make(**kwargs):
        kwargs.setdefault("max_workers", 2)
        executor = executor_kind.create(**kwargs)
        made.append(executor)
        return executor

    yield make
    failures = []
    for executor in made:
        try:
            helpers.shutdown_bounded(executor, wait=True, cancel_futures=True)
        except BaseException as exc:
            failures.append(f"{type(exc).__name__}: {exc}")
    if failures:
        pytest.fail("teardown shutdown failed: " + "; ".join(failures), pytrace=False)


@pytest.fixture
def gate_factory(tmp_path):
    """Return ``make()`` that creates a :class:`helpers.Gate`; every gate is opened and
    removed at teardown. Request it *after* the fixture that owns the executor, so that gates
    open (releasing any task blocked on one) before the executor shuts down."""
    counter = itertools.count()
    gates = []

    def make():
        gate = helpers.Gate(str(tmp_path / f"gate-{next(counter)}"))
        gates.append(gate)
        return gate

    yield make
    for gate in gates:
        gate.close()


@pytest.fixture
def make_gate(make_executor, gate_factory):
    """``gate_factory`` for the conformance suite: it depends on ``make_executor`` so that gates
    are opened and removed at teardown *before* executors shut down, and a task blocked on a
    forgotten gate cannot stall the shutdown."""
    return gate_factory


@pytest.fixture
def make_pool():
    """Return ``make(workers, **options)`` that builds a ``ferropool.ProcessPool``; every pool
    made is shut down at teardown, bounded by ``helpers.SHUTDOWN_TIMEOUT``."""
    from ferropool import ProcessPool

    made = []

    def make(workers: int = 2, **options):
        pool = ProcessPool(workers, **options)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        helpers.shutdown_bounded(pool)


@pytest.fixture
def pool(make_pool):
    """A two-worker ``ferropool.ProcessPool``, shut down at teardown."""
    return make_pool(2)


# ------------------------------------------------------------ leaked children

# Long-lived helpers of the stdlib, started once per session; their own
# children (forkserver -> pool workers) are still checked.
_STDLIB_DAEMONS = ("multiprocessing.forkserver", "multiprocessing.resource_tracker")


@dataclass(frozen=True)
class _Proc:
    pid: int
    ppid: int
    state: str
    cmdline: str


def _process_table() -> dict[int, _Proc]:
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read().decode(errors="replace")
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # exited meanwhile
            continue
        # "pid (comm) state ppid ...": comm may hold spaces and parentheses.
        fields = stat[stat.rfind(")") + 2 :].split()
        table[int(entry)] = _Proc(int(entry), int(fields[1]), fields[0], cmdline)
    return table


def _descendants(root: int) -> list[_Proc]:
    table = _process_table()
    children: dict[int, list[_Proc]] = {}
    for proc in table.values():
        children.setdefault(proc.ppid, []).append(proc)
    found, todo = [], [root]
    while todo:
        for proc in children.get(todo.pop(), []):
            found.append(proc)
            todo.append(proc.pid)
    return found


def _leaked(baseline: set[int]) -> list[_Proc]:
    me = os.getpid()
    leaked = []
    for proc in _descendants(me):
        if proc.pid in baseline or any(d in proc.cmdline for d in _STDLIB_DAEMONS):
            continue
        # A zombie whose parent is another process is that parent's to reap;
        # a zombie child of ours is a process the pool never waited for.
        if proc.state == "Z" and proc.ppid != me:
            continue
        leaked.append(proc)
    return leaked


def _wait_for_exit(procs: list[_Proc], timeout: float) -> None:
    """Block until one of ``procs`` exits or ``timeout`` passes (pidfd poll)."""
    poller, fds = select.poll(), []
    try:
        for proc in procs:
            if proc.state == "Z":
                continue
            try:
                fd = os.pidfd_open(proc.pid)
            except OSError:
                return  # already gone
            fds.append(fd)
            poller.register(fd, select.POLLIN)
        if fds:
            poller.poll(int(timeout * 1000))
        else:
            time.sleep(min(timeout, 0.02))  # only zombies left: give the reaper a moment
    finally:
        for fd in fds:
            os.close(fd)


@pytest.fixture(autouse=True)
def no_leaked_children():
    """Fail a test after which a child process it started is still alive (or unreaped)."""
    baseline = {proc.pid for proc in _descendants(os.getpid())}
    yield
    deadline = time.monotonic() + CHILD_EXIT_TIMEOUT
    while True:
        leaked = _leaked(baseline)
        remaining = deadline - time.monotonic()
        if not leaked or remaining <= 0:
            break
        _wait_for_exit(leaked, min(remaining, 0.5))
    if leaked:
        for proc in leaked:
            if proc.state != "Z":
                try:
                    os.kill(proc.pid, signal.SIGKILL)  # so later tests start clean
                except ProcessLookupError:
                    pass
        listing = ", ".join(f"pid {p.pid} ({p.state}) {p.cmdline!r}" for p in leaked)
        pytest.fail(
            f"child processes still present {CHILD_EXIT_TIMEOUT} s after the test: {listing}",
            pytrace=False,
        )


# ------------------------------------------------------------ a MariaDB server


@pytest.fixture(scope="session")
def mariadb_server():
    """A throwaway MariaDB server for the session (``tests/mariadb_server.py``); skips the tests that
    use it where the server or the client libraries are not installed, unless
    ``FERROPOOL_REQUIRE_MARIADB=1`` (set by ``.ci/run``) makes that a failure."""
    import mariadb_server as helper  # not "mariadb": that is MariaDB's own client package

    missing = [name for name in ("aiomysql", "pymysql") if not _importable(name)]
    if helper.server_binary() is None:
        missing.append("mariadbd (Debian: apt-get install mariadb-server)")
    if missing:
        message = f"needs a MariaDB server and its clients; missing: {', '.join(missing)}"
        if helper.required():
            pytest.fail(f"FERROPOOL_REQUIRE_MARIADB is set, but this {message}", pytrace=False)
        pytest.skip(message)
    server = helper.MariaDB.start()
    yield server
    server.stop()


def _importable(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None
