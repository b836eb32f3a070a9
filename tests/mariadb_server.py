"""A throwaway MariaDB server for tests and benchmarks: Debian's ``mariadbd`` on a data directory
of its own under a temporary directory, reachable only through a unix socket.

``MariaDB.start()`` creates the data directory (``mariadb-install-db``), starts the server and
waits for it to say it is ready (the ``READY=1`` it sends to ``NOTIFY_SOCKET``, as it does for
systemd); ``stop()`` shuts it down and removes the directory. ``root`` has no password and a
database ``ferropool`` exists. ``server_binary()`` says whether the server is installed at all;
``.ci/run`` installs it (``mariadb-server``) where it is missing, and sets
``FERROPOOL_REQUIRE_MARIADB=1`` so that the tests fail rather than skip without it.
"""

from __future__ import annotations

import contextlib
import os
import select
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

#: How long the server may take to create its data directory, and to start.
START_TIMEOUT = 120.0
#: How long it may take to shut down after SIGTERM before it is killed.
STOP_TIMEOUT = 30.0

_SERVER_OPTIONS = [
    "--no-defaults",  # never read /etc/mysql: the server is ours alone
    "--skip-networking",
    "--skip-name-resolve",
    "--skip-log-bin",
    "--innodb-buffer-pool-size=32M",
    "--innodb-log-file-size=8M",
    "--max-connections=1000",
]


def server_binary() -> str | None:
    """Returns the path of ``mariadbd`` (or ``mysqld``), or None if neither is installed."""
    for name in ("mariadbd", "mysqld"):
        for folder in ("", "/usr/sbin", "/usr/local/sbin", "/usr/local/mysql/bin"):
            path = shutil.which(name, path=folder or None)
            if path:
                return path
    return None


def required() -> bool:
    """Whether a missing server (or client library) must fail the tests instead of skipping them."""
    return os.environ.get("FERROPOOL_REQUIRE_MARIADB", "") not in ("", "0")


class MariaDB:
    """One running server. ``socket`` is its unix socket; ``connect_kwargs()`` what ``aiomysql``
    takes to reach it (``pymysql`` the same, with ``database`` for ``db``); ``dsn`` what
    ``ferropool compare --mysql`` and ``benchmarks/bench_db.py --mysql`` take."""

    database = "ferropool"
    user = "root"

    def __init__(self, directory: str, process: subprocess.Popen[bytes]) -> None:
        self.directory = directory
        self.socket = os.path.join(directory, "mysqld.sock")
        self.log = os.path.join(directory, "error.log")
        self.process = process

    @property
    def dsn(self) -> str:
        return f"mysql://{self.user}@localhost/{self.database}?unix_socket={quote(self.socket)}"

    def connect_kwargs(self) -> dict[str, Any]:
        return {"unix_socket": self.socket, "user": self.user, "password": "", "db": self.database}

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        """Runs ``sql`` on a connection of its own (pymysql) and returns its rows."""
        import pymysql

        conn = pymysql.connect(unix_socket=self.socket, user=self.user, password="")
        try:
            with conn.cursor() as cur:
                cur.execute(sql)
                return list(cur.fetchall())
        finally:
            conn.close()

    def connections(self, *, user: str | None = None) -> list[tuple[Any, ...]]:
        """Returns ``SHOW PROCESSLIST``'s client rows (id, user, host, db, command, time, state,
        info), without the one asking and without the server's own threads."""
        rows = self.query("SHOW FULL PROCESSLIST")
        return [
            r
            for r in rows
            if r[7] != "SHOW FULL PROCESSLIST" and r[1] != "system user" and (user is None or r[1] == user)
        ]

    def wait_connections(self, predicate, *, timeout: float, user: str | None = None) -> list[tuple[Any, ...]]:
        """Polls ``connections()`` until ``predicate(rows)`` holds; returns those rows, or raises
        ``TimeoutError`` with the last ones. The server offers no event for a connection's end,
        so this asks it every 50 ms."""
        deadline = time.monotonic() + timeout
        while True:
            rows = self.connections(user=user)
            if predicate(rows):
                return rows
            if time.monotonic() > deadline:
                raise TimeoutError(f"the server's connections after {timeout} s: {rows}")
            time.sleep(0.05)

    @classmethod
    def start(cls) -> MariaDB:
        """Creates a data directory under a new temporary directory and starts a server on it;
        returns once it accepts connections. Raises ``RuntimeError`` with the server's log if it
        does not start within ``START_TIMEOUT``, ``FileNotFoundError`` if it is not installed."""
        binary = server_binary()
        if binary is None:
            raise FileNotFoundError("mariadbd is not installed (Debian: apt-get install mariadb-server)")
        install = shutil.which("mariadb-install-db") or shutil.which("mysql_install_db")
        if install is None:
            raise FileNotFoundError("mariadb-install-db is not installed (Debian: apt-get install mariadb-server)")
        directory = tempfile.mkdtemp(prefix="ferropool-mariadb-")  # short: a socket path has 107 bytes
        data = os.path.join(directory, "data")
        as_root = ["--user=root"] if os.geteuid() == 0 else []
        try:
            subprocess.run(
                [install, "--no-defaults", f"--datadir={data}", "--auth-root-authentication-method=normal",
                 "--skip-test-db", *as_root, "--innodb-log-file-size=8M"],
                check=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=START_TIMEOUT,
            )  # fmt: skip
            process = cls._launch(binary, directory, data, as_root)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        server = cls(directory, process)
        try:
            server.query(f"CREATE DATABASE IF NOT EXISTS {cls.database}")
        except BaseException:
            server.stop()
            raise
        return server

    @staticmethod
    def _launch(binary: str, directory: str, data: str, as_root: list[str]) -> subprocess.Popen[bytes]:
        """Starts the server and waits for its ``READY=1`` on a notify socket of ours."""
        notify_path = os.path.join(directory, "notify.sock")
        log = os.path.join(directory, "error.log")
        with contextlib.closing(socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)) as notify:
            notify.bind(notify_path)
            process = subprocess.Popen(
                [binary, *_SERVER_OPTIONS, f"--datadir={data}", f"--socket={directory}/mysqld.sock",
                 f"--pid-file={directory}/mysqld.pid", f"--log-error={log}", *as_root],
                env={**os.environ, "NOTIFY_SOCKET": notify_path},
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            try:
                exited = os.pidfd_open(process.pid)
                try:
                    poller = select.poll()
                    poller.register(notify, select.POLLIN)
                    poller.register(exited, select.POLLIN)
                    deadline = time.monotonic() + START_TIMEOUT
                    while True:
                        remaining = deadline - time.monotonic()
                        events = dict(poller.poll(max(0, int(remaining * 1000))))
                        if not events:
                            raise TimeoutError(f"no READY=1 within {START_TIMEOUT} s")
                        if exited in events:
                            raise RuntimeError(f"it exited with status {process.wait()}")
                        # It also sends STATUS= lines while InnoDB starts; READY=1 is the one.
                        message = notify.recv(4096).decode(errors="replace")
                        if "READY=1" in message.split("\n"):
                            return process
                finally:
                    os.close(exited)
            except BaseException as exc:
                process.kill()
                process.wait(STOP_TIMEOUT)
                with open(log, errors="replace") as f:
                    tail = f.read()[-3000:]
                raise RuntimeError(f"mariadbd did not start ({exc!r}); its log ends:\n{tail}") from exc

    def stop(self) -> None:
        """Shuts the server down (SIGTERM, SIGKILL after ``STOP_TIMEOUT``) and removes its files."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        shutil.rmtree(self.directory, ignore_errors=True)


@contextlib.contextmanager
def running() -> Iterator[MariaDB]:
    """Runs a throwaway server for the ``with`` block."""
    server = MariaDB.start()
    try:
        yield server
    finally:
        server.stop()
