"""Cases of the fault matrix (``docs/faults.md``), run one at a time in a child process by ``fault_matrix.py``.

The parent starts ``python -c CASE_CODE BENCH_DIR LIB CASE OUT SETTLE`` in a new session; this
module's :func:`main` opens LIB's pool, injects the fault of CASE, and writes what it observed
to OUT as one JSON object (whether the failing task's future raised, with which type and
message; whether the other tasks and a task submitted afterwards succeeded; how shutdown went).
It never judges: ``fault_matrix.py`` turns the observation into the word in the table.

Every wait here is bounded by SETTLE seconds, so a library that hangs is reported as
``unsettled`` rather than by the parent's watchdog. A child that had to abandon a pool (a
future or a shutdown that never finished) kills the rest of its session itself before it
exits, so those processes are not also counted as left over.

The task functions live here too so that every library's workers can import them: the child
puts this folder first on ``sys.path``, which forkserver, spawn (loky) and ferropool workers
receive from the parent, and fork workers inherit.
"""

from __future__ import annotations

import concurrent.futures as cf
import ctypes
import inspect
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

INIT_MESSAGE = "initializer failed on purpose"
WORKERS = 2


# ---------------------------------------------------------------- task functions (run in workers)


def square(x: int) -> int:
    return x * x


def slow_square(x: int, delay: float) -> int:
    time.sleep(delay)
    return x * x


def getpid_after(delay: float) -> int:
    time.sleep(delay)
    return os.getpid()


def exit_now() -> None:
    os._exit(1)


def segfault() -> None:
    ctypes.string_at(0)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def fork_then_exit() -> None:
    """Leaves a descendant holding every descriptor the worker had, then kills the worker. The
    descendant starts its own session (so the harness does not count it as left over) and
    exits after 8 s."""
    if os.fork() == 0:
        os.setsid()
        time.sleep(8)
        os._exit(0)
    os._exit(1)


def return_lock() -> threading.Lock:
    return threading.Lock()


class TwoArgError(Exception):
    """Pickles as ``TwoArgError(message)``, which cannot be called: ``__init__`` needs two."""

    def __init__(self, a: str, b: str) -> None:
        super().__init__(f"{a} and {b}")


def raise_two_arg() -> None:
    raise TwoArgError("first", "second")


def _import_parent_only(owner_pid: int) -> ParentOnly:
    if os.getpid() != owner_pid:
        raise ImportError("No module named 'parent_only_module'", name="parent_only_module")
    return ParentOnly(owner_pid)


class ParentOnly:
    """Unpickles only in the process that made it, as if its module existed only there."""

    def __init__(self, owner_pid: int) -> None:
        self.owner_pid = owner_pid

    def __reduce__(self):
        return (_import_parent_only, (self.owner_pid,))


def describe_arg(obj: Any) -> str:
    return type(obj).__name__


def heartbeat(path: str, seconds: float) -> str:
    """Writes its pid to ``path.pid``, then rewrites ``path`` every 50 ms for ``seconds``."""
    _write(path + ".pid", str(os.getpid()))
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _write(path, str(time.monotonic_ns()))
        time.sleep(0.05)
    return "finished"


def stuck_in_sleep(path: str, seconds: float) -> str:
    """Ignores SIGTERM, writes its pid to ``path.pid``, then blocks in one C call."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _write(path + ".pid", str(os.getpid()))
    time.sleep(seconds)
    return "finished"


def leave_stuck_thread(path: str, seconds: float) -> str:
    """Ignores SIGTERM, writes its pid, starts a non-daemon thread blocked in one C call for
    ``seconds`` and returns: the worker cannot exit by itself until that thread ends."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _write(path + ".pid", str(os.getpid()))
    threading.Thread(target=time.sleep, args=(seconds,), daemon=False).start()
    return "returned"


def failing_initializer() -> None:
    raise ValueError(INIT_MESSAGE)


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


# ---------------------------------------------------------------- /proc helpers


def proc_stat(pid: int) -> tuple | None:
    """Returns (state, ppid, pgrp, session) of ``pid``, or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(")") + 2 :].split()
    return fields[0], int(fields[1]), int(fields[2]), int(fields[3])


def all_stats() -> dict:
    out = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = proc_stat(int(name))
            if st is not None:
                out[int(name)] = st
    return out


def alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    st = proc_stat(pid)
    return st is not None and st[0] not in ("Z", "X")


def descendants(root: int) -> list:
    """Live descendants of ``root`` (not ``root`` itself)."""
    stats = all_stats()
    children: dict = {}
    for pid, st in stats.items():
        children.setdefault(st[1], []).append(pid)
    out, todo = [], [root]
    while todo:
        for c in children.get(todo.pop(), []):
            if stats[c][0] not in ("Z", "X"):
                out.append(c)
            todo.append(c)
    return out


def session_members(sid: int, exclude: tuple = ()) -> list:
    """Live processes whose session id is ``sid``."""
    return sorted(p for p, st in all_stats().items() if st[3] == sid and st[0] not in ("Z", "X") and p not in exclude)


def kill_all(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


# ---------------------------------------------------------------- library adapters


class NotApplicable(Exception):
    """The library has no public API for this case."""


class Pool:
    """A library's pool plus the options the adapter applies per call."""

    def __init__(self, raw: Any, task_timeout: float | None = None, initializer: Callable | None = None):
        self.raw = raw
        self.task_timeout = task_timeout
        self.initializer = initializer


class FutureAdapter:
    """Libraries whose ``submit`` returns a ``concurrent.futures.Future``."""

    name = ""
    has_task_timeout = False
    has_cancel = True

    def make(self, workers: int, initializer: Callable | None, task_timeout: float | None) -> Any:
        raise NotImplementedError

    def open(
        self, workers: int = WORKERS, initializer: Callable | None = None, task_timeout: float | None = None
    ) -> Pool:
        if task_timeout is not None and not self.has_task_timeout:
            raise NotApplicable(f"{self.name} has no per-task timeout")
        return Pool(self.make(workers, initializer, task_timeout), task_timeout, initializer)

    def submit(self, pool: Pool, fn: Callable, *args: Any) -> Any:
        return pool.raw.submit(fn, *args)

    def wait(self, handle: Any, timeout: float) -> bool:
        return handle in cf.wait([handle], timeout=max(timeout, 0))[0]

    def get(self, handle: Any) -> Any:
        return handle.result(0)

    def cancel(self, handle: Any) -> bool:
        return handle.cancel()

    def shutdown(self, pool: Pool) -> None:
        pool.raw.shutdown(wait=True)

    def stop(self, pool: Pool) -> None:
        """The library's way to shut down now, stopping running tasks if it can."""
        pool.raw.shutdown(wait=True, cancel_futures=True)


class Ferropool(FutureAdapter):
    name = "ferropool"

    def __init__(self) -> None:
        import ferropool

        self.cls = ferropool.ProcessPool
        # A pool-wide task_timeout is used where the pool takes one.
        self.has_task_timeout = "task_timeout" in inspect.signature(self.cls).parameters

    def make(self, workers, initializer, task_timeout):
        kw = {"task_timeout": task_timeout} if task_timeout is not None else {}
        return self.cls(workers, initializer=initializer, **kw)

    def stop(self, pool: Pool) -> None:
        # Python 3.14's way: shutdown(cancel_futures=True) lets running tasks finish.
        pool.raw.kill_workers()
        pool.raw.shutdown(wait=True)


class Stdlib(FutureAdapter):
    name = "stdlib"

    def make(self, workers, initializer, task_timeout):
        import multiprocessing

        return cf.ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("forkserver"), initializer=initializer
        )


class Loky(FutureAdapter):
    name = "loky"

    def make(self, workers, initializer, task_timeout):
        import loky

        return loky.ProcessPoolExecutor(workers, initializer=initializer)

    def stop(self, pool):
        pool.raw.shutdown(wait=True, kill_workers=True)


class Pebble(FutureAdapter):
    name = "pebble"
    has_task_timeout = True

    def make(self, workers, initializer, task_timeout):
        import pebble

        return pebble.ProcessPool(max_workers=workers, initializer=initializer)

    def submit(self, pool, fn, *args):
        return pool.raw.schedule(fn, args=args, timeout=pool.task_timeout)

    def shutdown(self, pool):
        pool.raw.close()
        pool.raw.join()

    def stop(self, pool):
        pool.raw.stop()
        pool.raw.join()


class MpPool(FutureAdapter):
    """``multiprocessing.Pool`` with the platform's default start method; no cancel, no timeout."""

    name = "mp.Pool"
    has_cancel = False

    def make(self, workers, initializer, task_timeout):
        import multiprocessing

        return multiprocessing.Pool(workers, initializer=initializer)

    def submit(self, pool, fn, *args):
        return pool.raw.apply_async(fn, args)

    def wait(self, handle, timeout):
        handle.wait(max(timeout, 0))
        return handle.ready()

    def get(self, handle):
        return handle.get(0)

    def cancel(self, handle):
        raise NotApplicable("multiprocessing.Pool's AsyncResult has no cancel")

    def shutdown(self, pool):
        pool.raw.close()
        pool.raw.join()

    def stop(self, pool):
        pool.raw.terminate()
        pool.raw.join()


class Mpire(MpPool):
    """mpire ``WorkerPool`` (default start method fork); ``apply_async`` takes ``task_timeout``."""

    name = "mpire"
    has_task_timeout = True

    def make(self, workers, initializer, task_timeout):
        import mpire

        return mpire.WorkerPool(n_jobs=workers)

    def submit(self, pool, fn, *args):
        return pool.raw.apply_async(fn, args, worker_init=pool.initializer, task_timeout=pool.task_timeout)

    def cancel(self, handle):
        raise NotApplicable("mpire's AsyncResult has no cancel")

    def shutdown(self, pool):
        pool.raw.stop_and_join()

    def stop(self, pool):
        pool.raw.terminate()


ADAPTERS = {"ferropool": Ferropool, "stdlib": Stdlib, "mp.Pool": MpPool, "loky": Loky, "pebble": Pebble, "mpire": Mpire}


# ---------------------------------------------------------------- observing


def bounded(fn: Callable[[], Any], timeout: float) -> dict:
    """Runs ``fn`` on a daemon thread; says whether it returned within ``timeout`` seconds."""
    box: dict = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t0 = time.monotonic()
    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(timeout)
    done = not t.is_alive()
    out = {"returned": done, "seconds": round(time.monotonic() - t0, 3)}
    if done and "error" in box:
        out["error"] = exception_info(box["error"])
    return out


def exception_info(exc: BaseException) -> dict:
    chain, seen, e = [], set(), exc
    while e is not None and id(e) not in seen and len(chain) < 5:
        seen.add(id(e))
        chain.append(f"{type(e).__module__}.{type(e).__qualname__}: {str(e)[:500]}")
        e = e.__cause__ or e.__context__
    mro = [f"{c.__module__}.{c.__qualname__}" for c in type(exc).__mro__]
    return {"type": type(exc).__qualname__, "mro": mro, "message": str(exc)[:500], "chain": chain}


def outcome(ad: FutureAdapter, handle: Any, deadline: float) -> dict:
    """What became of one task by ``deadline``: returned, raised or unsettled."""
    if not ad.wait(handle, deadline - time.monotonic()):
        return {"state": "unsettled"}
    try:
        value = ad.get(handle)
    except BaseException as exc:
        return {"state": "raised", **exception_info(exc)}
    return {"state": "returned", "value": repr(value)[:200]}


def submit_and_wait(ad: FutureAdapter, pool: Pool, settle: float, fn: Callable, *args: Any) -> dict:
    try:
        handle = ad.submit(pool, fn, *args)
    except BaseException as exc:
        return {"state": "submit raised", **exception_info(exc)}
    return outcome(ad, handle, time.monotonic() + settle)


def close(ad: FutureAdapter, pool: Pool, rep: dict, timeout: float) -> None:
    rep["shutdown"] = bounded(lambda: ad.shutdown(pool), timeout)
    if not rep["shutdown"]["returned"]:
        rep["abandoned"] = True


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def wait_for_file(path: str, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if read(path):
            return True
        time.sleep(0.02)
    return False


def still_beating(path: str, delay: float = 0.3, window: float = 0.5) -> bool:
    """True if the heartbeat task writing ``path`` is still running ``delay`` s from now."""
    time.sleep(delay)
    before = read(path)
    time.sleep(window)
    return read(path) != before


# ---------------------------------------------------------------- cases


def case_bad_task(bad: Callable, *args: Any) -> Callable:
    """Cases 1-6: one bad task, four good ones behind it, then one more after all settled."""

    def run(ad: FutureAdapter, settle: float) -> dict:
        pool = ad.open()
        rep: dict = {}
        try:
            handles = [ad.submit(pool, bad, *args)] + [ad.submit(pool, slow_square, i, 0.05) for i in range(4)]
        except BaseException as exc:
            rep["bad"] = {"state": "submit raised", **exception_info(exc)}
            handles = None
        if handles is not None:
            deadline = time.monotonic() + settle
            rep["bad"] = outcome(ad, handles[0], deadline)
            rep["others"] = [outcome(ad, h, deadline) for h in handles[1:]]
        rep["after"] = submit_and_wait(ad, pool, settle, square, 7)
        close(ad, pool, rep, settle)
        return rep

    return run


def case_sigchld_ignored(ad: FutureAdapter, settle: float) -> dict:
    """Case 16: the program ignores SIGCHLD (the kernel reaps its children), then a task kills
    its worker."""
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    return case_bad_task(exit_now)(ad, settle)


def case_crash_after_finished(ad: FutureAdapter, settle: float) -> dict:
    """Case 17: 200 tiny tasks, then one that kills its worker: the tasks submitted before it
    count as the others, so each must keep its result."""
    pool = ad.open()
    rep: dict = {}
    goods = [ad.submit(pool, square, i) for i in range(200)]
    bad = ad.submit(pool, exit_now)
    deadline = time.monotonic() + settle
    rep["bad"] = outcome(ad, bad, deadline)
    rep["others"] = [outcome(ad, h, deadline) for h in goods]
    rep["after"] = submit_and_wait(ad, pool, settle, square, 7)
    close(ad, pool, rep, settle)
    return rep


def case_control(ad: FutureAdapter, settle: float) -> dict:
    """Case 0: a plain task, to show the library and the task module work at all."""
    pool = ad.open()
    rep = {"task": submit_and_wait(ad, pool, settle, square, 7)}
    close(ad, pool, rep, settle)
    return rep


def case_timeout(ad: FutureAdapter, settle: float) -> dict:
    """Case 7: a 1 s per-task timeout on a task that would run 20 s."""
    pool = ad.open(task_timeout=1.0)
    rep: dict = {"task_timeout": 1.0}
    with tempfile.TemporaryDirectory() as tmp:
        beat = os.path.join(tmp, "beat")
        t0 = time.monotonic()
        handle = ad.submit(pool, heartbeat, beat, 20.0)
        rep["task"] = outcome(ad, handle, t0 + 1.0 + settle)
        rep["settled_after_s"] = round(time.monotonic() - t0, 3)
        rep["started"] = bool(read(beat + ".pid"))
        rep["runs_on"] = still_beating(beat)
    rep["after"] = submit_and_wait(ad, pool, settle, square, 7)
    close(ad, pool, rep, settle)
    return rep


def case_cancel(ad: FutureAdapter, settle: float) -> dict:
    """Case 8: ``cancel()`` on a task that is running (it would run 4 s)."""
    if not ad.has_cancel:
        raise NotApplicable(f"{ad.name} has no cancel")
    pool = ad.open()
    rep: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        beat = os.path.join(tmp, "beat")
        handle = ad.submit(pool, heartbeat, beat, 4.0)
        rep["started"] = wait_for_file(beat + ".pid", settle)
        rep["cancel_returned"] = bool(ad.cancel(handle))
        rep["runs_on"] = still_beating(beat)
    rep["after"] = submit_and_wait(ad, pool, settle, square, 7)
    close(ad, pool, rep, settle)
    return rep


GRANDCHILD_CODE = (
    "import sys; sys.path.insert(0, sys.argv[1]); import _fault_cases; _fault_cases.grandchild(sys.argv[2])"
)


def grandchild(lib: str) -> None:
    """Case 9's program: opens a pool, prints its workers' pids, then waits to be killed."""
    ad = ADAPTERS[lib]()
    pool = ad.open()
    handles = [ad.submit(pool, getpid_after, 0.3) for _ in range(2 * WORKERS)]
    pids = set()
    for h in handles:
        ad.wait(h, 30)
        pids.add(ad.get(h))
    print(json.dumps({"workers": sorted(pids)}), flush=True)
    time.sleep(120)


def case_parent_killed(ad: FutureAdapter, settle: float) -> dict:
    """Case 9: SIGKILL a program that holds a pool; are its workers gone 1 s later?"""
    here = os.path.dirname(os.path.abspath(__file__))
    gc = subprocess.Popen([sys.executable, "-c", GRANDCHILD_CODE, here, ad.name], stdout=subprocess.PIPE)
    rep: dict = {}
    try:
        line = _readline(gc.stdout, 2 * settle)
        if not line:
            rep["error"] = "the program holding the pool printed no worker pids"
            return rep
        workers = json.loads(line)["workers"]
        others = [p for p in descendants(gc.pid) if p not in workers]
        rep["workers"], rep["helpers"] = workers, others
    finally:
        gc.kill()
        gc.wait()
    t0 = time.monotonic()
    while time.monotonic() - t0 < 1.0 and any(alive(p) for p in workers + others):
        time.sleep(0.02)
    rep["workers_alive_after_1s"] = [p for p in workers if alive(p)]
    rep["helpers_alive_after_1s"] = [p for p in others if alive(p)]
    while time.monotonic() - t0 < 3.0 and any(alive(p) for p in workers + others):
        time.sleep(0.05)
    rep["alive_after_3s"] = [p for p in workers + others if alive(p)]
    kill_all(rep["alive_after_3s"])
    return rep


def _readline(stream, timeout: float) -> bytes | None:
    box: list = []
    t = threading.Thread(target=lambda: box.append(stream.readline()), daemon=True)
    t.start()
    t.join(timeout)
    return box[0] if box else None


def case_stuck_at_exit(ad: FutureAdapter, settle: float) -> dict:
    """Case 11a: ``shutdown(wait=True)`` after a task returned but left its worker unable to
    exit (a non-daemon thread stuck in C, SIGTERM ignored)."""
    pool = ad.open()
    rep: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stuck")
        rep["task"] = submit_and_wait(ad, pool, settle, leave_stuck_thread, path, 60.0)
        pid = int(read(path + ".pid") or 0)
    rep["started"] = bool(pid)
    close(ad, pool, rep, 8.0)
    rep["stuck_worker_alive"] = bool(pid) and alive(pid)
    if rep["stuck_worker_alive"]:
        rep["abandoned"] = True
    return rep


def case_stop_stuck_task(ad: FutureAdapter, settle: float) -> dict:
    """Case 11b: stop the pool now (ferropool ``kill_workers()``, stdlib ``shutdown(cancel_futures=True)``, loky
    ``kill_workers=True``, pebble ``stop()``, ``terminate()`` elsewhere) while a task sleeps 60 s
    in C, ignoring SIGTERM."""
    pool = ad.open()
    rep: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stuck")
        ad.submit(pool, stuck_in_sleep, path, 60.0)
        rep["started"] = wait_for_file(path + ".pid", settle)
        pid = int(read(path + ".pid") or 0)
    rep["shutdown"] = bounded(lambda: ad.stop(pool), 8.0)
    rep["stuck_worker_alive"] = bool(pid) and alive(pid)
    if not rep["shutdown"]["returned"] or rep["stuck_worker_alive"]:
        rep["abandoned"] = True
    return rep


EXIT_CODE = "import sys; sys.path.insert(0, sys.argv[1]); import _fault_cases; _fault_cases.exit_with_stuck_task(sys.argv[2], sys.argv[3])"


def exit_with_stuck_task(lib: str, path: str) -> None:
    """Case 11c's program: opens a pool, starts a task stuck in C (ignoring SIGTERM), then ends
    without shutting the pool down."""
    ad = ADAPTERS[lib]()
    pool = ad.open()
    ad.submit(pool, stuck_in_sleep, path, 60.0)
    wait_for_file(path + ".pid", 30)
    print("started", flush=True)


def case_exit_with_stuck_task(ad: FutureAdapter, settle: float) -> dict:
    """Case 11c: a program ends while its pool runs a task stuck in C, ignoring SIGTERM. Does
    the program exit (within 12 s), and is the stuck worker gone?"""
    here = os.path.dirname(os.path.abspath(__file__))
    rep: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "stuck")
        prog = subprocess.Popen(
            [sys.executable, "-c", EXIT_CODE, here, ad.name, path], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
        )
        rep["started"] = _readline(prog.stdout, 2 * settle) == b"started\n"
        t0 = time.monotonic()
        try:
            prog.wait(12.0)
            rep["exited_after_s"] = round(time.monotonic() - t0, 2)
        except subprocess.TimeoutExpired:
            rep["exited_after_s"] = None
        pid = int(read(path + ".pid") or 0)
        others = descendants(prog.pid)
        prog.kill()
        prog.wait()
    rep["stuck_worker_alive"] = bool(pid) and alive(pid)
    kill_all(([pid] if rep["stuck_worker_alive"] else []) + others)
    return rep


def case_initializer(ad: FutureAdapter, settle: float) -> dict:
    """Case 14: the initializer raises; how does a task fare, how many workers get started?"""
    seen: set = set()
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            seen.update(descendants(os.getpid()))
            time.sleep(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    pool = ad.open(initializer=failing_initializer)
    rep: dict = {"initializer_message": INIT_MESSAGE}
    try:
        rep["task"] = submit_and_wait(ad, pool, settle, square, 7)
    finally:
        stop.set()
        sampler.join()
    rep["processes_started"] = len(seen)
    close(ad, pool, rep, settle)
    return rep


CASES: dict = {
    "0": case_control,
    "1": case_bad_task(exit_now),
    "2": case_bad_task(segfault),
    "3": case_bad_task(kill_self),
    "4": case_bad_task(return_lock),
    "5": case_bad_task(raise_two_arg),
    "6": None,  # needs the owner's pid: made in main
    "7": case_timeout,
    "8": case_cancel,
    "9": case_parent_killed,
    "11a": case_stuck_at_exit,
    "11b": case_stop_stuck_task,
    "11c": case_exit_with_stuck_task,
    "14": case_initializer,
    "15": case_bad_task(fork_then_exit),
    "16": case_sigchld_ignored,
    "17": case_crash_after_finished,
}


def main(argv: list) -> None:
    """``LIB CASE OUT SETTLE``: runs one case and writes its observation to OUT."""
    lib, case, out, settle = argv[0], argv[1], argv[2], float(argv[3])
    t0 = time.monotonic()
    try:
        ad = ADAPTERS[lib]()
        run = CASES[case] if case != "6" else case_bad_task(describe_arg, ParentOnly(os.getpid()))
        rep = {"applicable": True, **run(ad, settle)}
    except NotApplicable as exc:
        rep = {"applicable": False, "reason": str(exc)}
    except BaseException as exc:
        rep = {"applicable": True, "case_error": exception_info(exc), "traceback": traceback.format_exc()[-2000:]}
    rep["child_seconds"] = round(time.monotonic() - t0, 3)
    with open(out + ".tmp", "w") as f:
        json.dump(rep, f)
    os.replace(out + ".tmp", out)
    if rep.get("abandoned"):
        # A pool we could not shut down: end its processes so the parent does not count them
        # as left over (what happened is in the report), and skip exit hooks that would wait.
        sys.stdout.flush()
        sys.stderr.flush()
        kill_all(session_members(os.getsid(0), exclude=(os.getpid(),)))
        os._exit(0)
