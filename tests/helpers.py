"""Task functions and synchronisation tools shared by the conformance suite.

Everything a process pool has to run lives here, at module level, so that it
pickles by reference (``helpers.mul``) and a worker process can import it;
``tests/conftest.py`` puts this folder on ``sys.path``.

:class:`Gate` is a one-shot event that works across threads *and* processes,
whatever started the process (stdlib forkserver or a ferropool worker): it is
a named FIFO, so only its path travels to the worker.
"""

from __future__ import annotations

import hashlib
import os
import select
import subprocess
import sys
import threading
import time

#: The longest a task blocks on a gate. A test that forgets to open a gate
#: still ends, and shutdown at teardown still returns.
TASK_WAIT_TIMEOUT = 10.0

#: The longest a test waits for a shutdown before it fails.
SHUTDOWN_TIMEOUT = 30.0


class Gate:
    """One-shot event shared by threads and processes, backed by a named FIFO.

    ``set()`` writes one byte that nobody reads; ``wait()`` polls the FIFO
    for readability, so every waiter, now or later, sees the gate open. The
    creating process keeps a read-write descriptor open (``_keeper``): it
    keeps the byte in the pipe and lets ``set()`` open the write end without
    blocking. Pickling sends only the path.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        os.mkfifo(path)
        self._keeper: int | None = os.open(path, os.O_RDWR | os.O_NONBLOCK)

    def __getstate__(self) -> dict:
        return {"path": self.path}

    def __setstate__(self, state: dict) -> None:
        self.path = state["path"]
        self._keeper = None

    def __repr__(self) -> str:
        return f"Gate({self.path!r})"

    def set(self) -> None:
        """Open the gate; never blocks. Works from any process while the creator lives."""
        fd = os.open(self.path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, b"1")
        except BlockingIOError:  # pipe full: it has been opened many times already
            pass
        finally:
            os.close(fd)

    def wait(self, timeout: float = TASK_WAIT_TIMEOUT) -> bool:
        """Block until the gate is open or ``timeout`` seconds pass; return whether it opened."""
        fd = os.open(self.path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            return bool(poller.poll(int(timeout * 1000)))
        finally:
            os.close(fd)

    def is_set(self) -> bool:
        return self.wait(0)

    def close(self) -> None:
        """Open the gate (releasing any waiter), then remove the FIFO. Creator only."""
        if self._keeper is None:
            return
        try:
            self.set()
        finally:
            os.close(self._keeper)
            self._keeper = None
            os.unlink(self.path)


def shutdown_bounded(executor, timeout: float = SHUTDOWN_TIMEOUT, **kwargs) -> None:
    """Call ``executor.shutdown(**kwargs)`` in a helper thread; raise AssertionError
    if it has not returned after ``timeout`` seconds, and re-raise its error if it failed."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            executor.shutdown(**kwargs)
        except BaseException as exc:  # carried to the caller below
            errors.append(exc)

    thread = threading.Thread(target=run, name="shutdown-bounded", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{type(executor).__name__}.shutdown({kwargs}) did not return within {timeout} s")
    if errors:
        raise errors[0]


# ---------------------------------------------------------------- task functions


def mul(x, y):
    return x * y


def capture(*args, **kwargs):
    return args, kwargs


def echo(value):
    return value


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_pattern(n: int) -> bytes:
    """Return ``n`` bytes of a fixed, non-constant pattern."""
    block = bytes(range(256))
    return (block * (n // len(block) + 1))[:n]


def sleep_and_return(seconds: float, value):
    time.sleep(seconds)  # the work itself: keeps a worker busy
    return value


def nap_and_note(item):
    """Sleeps 10 ms (a ``map`` item that runs longer than a chunk should), then appends the
    item to the file named by ``FERROPOOL_TEST_NOTES``, one line a call, and returns it."""
    time.sleep(0.01)
    with open(os.environ["FERROPOOL_TEST_NOTES"], "a") as f:
        f.write(f"{item}\n")
    return item


def wait_for(gate: Gate, value=None):
    """Block until ``gate`` opens, then return ``value``."""
    if not gate.wait():
        raise TimeoutError(f"{gate!r} was never opened")
    return value


def signal_and_wait(started: Gate, release: Gate, value=None):
    """Open ``started`` (the task is now running), then block until ``release`` opens."""
    started.set()
    return wait_for(release, value)


def wait_then_raise(gate: Gate):
    wait_for(gate)
    raise ValueError("raised after the gate opened")


BLOCK = "block"


def block_on(value, gate: Gate):
    """Return ``value`` at once, or wait for ``gate`` first if ``value == BLOCK``."""
    if value == BLOCK:
        wait_for(gate)
    return value


def current_thread_name() -> str:
    return threading.current_thread().name


def where() -> tuple[int, int]:
    """Return (pid, thread id) of the worker that runs the task."""
    return os.getpid(), threading.get_ident()


class TaskError(Exception):
    """A user exception with several arguments; must survive pickling."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(code, text)


def raise_value_error(text):
    raise ValueError(text)


def raise_value_error_if_five(x):
    if x == 5:
        raise ValueError(str(x))
    return x


def raise_key_error(key):
    raise KeyError(key)


def raise_task_error(code, text):
    raise TaskError(code, text)


class MyObject:
    def my_method(self):
        return "my_method"


def make_dummy_object(_):
    return MyObject()


# ------------------------------------------------------------------ initializers

# (pid, thread id) -> tag given to record_init in that worker
_INIT_TAGS: dict[tuple[int, int], str] = {}


def record_init(tag: str) -> None:
    _INIT_TAGS[where()] = tag


def get_init_tag() -> str:
    return _INIT_TAGS.get(where(), "uninitialized")


INIT_ERROR_TEXT = "error in initializer 5f1c"


def never_announce_starts() -> None:
    """Initializer: the worker's task threads never tell the parent a task began, as if every
    ``Start`` frame were still on its way."""
    from ferropool import _concurrent_worker

    _concurrent_worker.Runner.announce_start = lambda self, task_id: None  # type: ignore[method-assign]


def open_gate_on_sigterm(gate: Gate) -> None:
    """Initializer: SIGTERM no longer ends the worker; instead it opens ``gate`` (a thread
    waits for it with ``sigwait``; every thread started later inherits the blocked signal)."""
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})

    def wait() -> None:
        signal.sigwait({signal.SIGTERM})
        gate.set()

    threading.Thread(target=wait, name="sigterm-gate", daemon=True).start()


def count_run_then_exit_at(gate: Gate, folder: str, code: int) -> None:
    """Leaves a file in ``folder`` for this run, then ends the process once ``gate`` opens:
    with exit code ``code``, or by signal ``-code`` where ``code`` is negative."""
    with open(os.path.join(folder, f"run-{os.getpid()}-{time.monotonic_ns()}"), "w"):
        pass
    gate.wait()
    if code < 0:
        os.kill(os.getpid(), -code)
    os._exit(code)


def init_fail() -> None:
    raise ValueError(INIT_ERROR_TEXT)


def sleep_and_print(seconds: float, text: str) -> None:
    import sys

    time.sleep(seconds)  # the work itself
    print(text)
    sys.stdout.flush()


def started_then_sleep(started: Gate, seconds: float) -> None:
    """Open ``started``, then sleep (a task that runs until it is stopped)."""
    started.set()
    time.sleep(seconds)


def ignore_sigterm_then_sleep(started: Gate | None, seconds: float) -> None:
    """Ignore SIGTERM, open ``started``, then sleep in C: only SIGKILL stops this task."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if started is not None:
        started.set()
    time.sleep(seconds)


def leave_a_stuck_thread() -> int:
    """Ignore SIGTERM and start a non-daemon thread sleeping in C, so that this worker process
    cannot exit by itself after its last task; return its pid."""
    import signal

    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    threading.Thread(target=time.sleep, args=(3600,), name="stuck", daemon=False).start()
    return os.getpid()


def die_holding(value) -> None:
    """Exit at once while holding ``value`` (a received buffer, say)."""
    os._exit(9)


def run_script(folder, source: str, *argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    """Runs ``source`` as ``__main__`` of a new interpreter (``folder/script.py``, with ``folder``
    as its working directory) under ``timeout``; returns what it did."""
    script = folder / "script.py"
    script.write_text(source)
    return subprocess.run(
        [sys.executable, str(script), *argv], capture_output=True, text=True, timeout=timeout, cwd=folder
    )


def dev_shm_files() -> set:
    """Files in /dev/shm, less POSIX semaphores (``sem.*``): other programs on the machine using
    multiprocessing or loky create and remove those at any time, and ferropool never does."""
    return {name for name in os.listdir("/dev/shm") if not name.startswith("sem.")}


async def fetch_text(url: str, x: str) -> str:
    """GETs ``url?x=<x>`` with aiohttp and returns the body (a coroutine task)."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.get(url, params={"x": x}) as response:
            return await response.text()


def gone_within(pids, seconds: float) -> bool:
    """Waits on each pid's pidfd (an exited process's pidfd is readable; a vanished one cannot
    be opened); returns whether all are gone within ``seconds``. No polling."""
    deadline = time.monotonic() + seconds
    for pid in pids:
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:
            continue
        try:
            poller = select.poll()
            poller.register(fd, select.POLLIN)
            if not poller.poll(max(0, int((deadline - time.monotonic()) * 1000))):
                return False
        finally:
            os.close(fd)
    return True


def flood_both_streams(lines: int, value):
    """Print ``lines`` lines to stdout and to stderr, then return ``value``."""
    import sys

    for i in range(lines):
        print("out", i, "x" * 100)
        print("err", i, "y" * 100, file=sys.stderr)
    return value
