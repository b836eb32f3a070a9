"""The fault suite: each injected failure fails only the task that caused it, says what
happened, and leaves the pool working (the fault matrix of ``docs/faults.md``, and the
hardening cases: stray descendants, reaped workers, Ctrl-C)."""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import ctypes
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures.process import BrokenProcessPool

import pytest

import helpers
from ferropool import ProcessPool, RemoteError, SerializationError, TaskTimeoutError, WorkerDiedError

RESULT_TIMEOUT = 30


@pytest.fixture
def one_worker(make_pool):
    # One worker: the tasks submitted after the crash are queued behind it on the same worker,
    # so they can only succeed if they are re-run on its replacement.
    return make_pool(1)


def exit_hard():
    print("about to call os._exit", file=__import__("sys").stderr, flush=True)
    os._exit(3)


def segfault():
    ctypes.string_at(0)


def sigkill_self():
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize(
    "crash, how, stderr_has",
    [
        (exit_hard, "exited with code 3", "about to call os._exit"),
        (segfault, "was killed by SIGSEGV (a crash, most likely in native code)", "in segfault"),
        (sigkill_self, "was killed by SIGKILL (possibly out of memory", ""),
    ],
)
def test_a_dying_worker_fails_only_its_task(one_worker, crash, how, stderr_has):
    doomed = one_worker.submit(crash)
    behind = [one_worker.submit(helpers.mul, i, 3) for i in range(20)]
    with pytest.raises(WorkerDiedError) as info:
        doomed.result(timeout=RESULT_TIMEOUT)
    err = info.value
    # A BrokenProcessPool, so that stdlib-style handlers catch it, though the pool is not broken.
    assert isinstance(err, BrokenProcessPool)
    assert type(err.__cause__) is cf.process._RemoteTraceback
    assert "terminated abruptly" in err.__cause__.tb
    assert how in str(err)
    assert err.function == f"{crash.__module__}.{crash.__qualname__}" and err.function in str(err)
    assert err.pid and f"pid {err.pid}" in str(err)
    assert stderr_has in err.stderr_tail
    if crash is segfault:
        assert "Fatal Python error: Segmentation fault" in err.stderr_tail, "faulthandler's dump is kept"
    assert [f.result(timeout=RESULT_TIMEOUT) for f in behind] == [3 * i for i in range(20)]
    assert one_worker.submit(os.getpid).result(timeout=RESULT_TIMEOUT) != err.pid, "the worker was replaced"


def test_a_crash_inside_map_names_the_mapped_function(one_worker):
    with pytest.raises(WorkerDiedError) as info:
        list(one_worker.map(crash_on, [1, 2, 3]))
    assert info.value.function.endswith("crash_on")


def crash_on(x):
    if x == 2:
        os._exit(5)
    return x


def test_unpicklable_result_fails_only_its_future(one_worker):
    with pytest.raises(SerializationError, match=r"^result: cannot pickle '_thread.lock' object$"):
        one_worker.submit(__import__("threading").Lock).result(timeout=RESULT_TIMEOUT)
    assert one_worker.submit(helpers.mul, 2, 2).result(timeout=RESULT_TIMEOUT) == 4


class Unrebuildable(Exception):
    def __init__(self, a, b):
        super().__init__(f"{a}+{b}")


def raise_unrebuildable():
    raise Unrebuildable(1, 2)


def test_exception_that_cannot_be_unpickled_fails_only_its_future(one_worker):
    with pytest.raises(RemoteError) as info:
        one_worker.submit(raise_unrebuildable).result(timeout=RESULT_TIMEOUT)
    assert info.value.type_name == f"{__name__}.Unrebuildable" and info.value.message == "1+2"
    assert "raise_unrebuildable" in str(info.value.__cause__)
    assert one_worker.submit(helpers.mul, 2, 2).result(timeout=RESULT_TIMEOUT) == 4


class OnlyInTheParent:
    """Pickles as a call that cannot be made in a worker: its module is not importable there."""

    def __reduce__(self):
        return (__import__, ("module_only_the_parent_has",))


def test_arguments_that_cannot_be_unpickled_in_the_worker_fail_only_their_future(one_worker):
    with pytest.raises(ImportError) as info:
        one_worker.submit(helpers.echo, OnlyInTheParent()).result(timeout=RESULT_TIMEOUT)
    assert "module_only_the_parent_has" in str(info.value)
    assert one_worker.submit(helpers.mul, 2, 2).result(timeout=RESULT_TIMEOUT) == 4


# ------------------------------------------------------------ stopping the parent

WORKER_PIDS = """
import os, signal, sys, time
# As a terminal starts a program, whatever this test's own SIGINT disposition: a job started in
# the background by a non-interactive shell ignores SIGINT, and so would this program.
signal.signal(signal.SIGINT, signal.default_int_handler)
from ferropool import ProcessPool
sys.path.insert(0, {tests!r})
import helpers
pool = ProcessPool(2)
pids = set()
for _ in range(100):  # until both workers have answered (bounded)
    pids.update(f.result(timeout=30) for f in [pool.submit(helpers.where) for _ in range(8)])
    if len(pids) == 2:
        break
print(" ".join(str(pid) for pid, _ in pids), flush=True)
"""


def _worker_pids(proc) -> list[int]:
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return sorted({int(p) for p in line.split()})


def test_workers_exit_within_a_second_of_their_parent_being_killed(tmp_path):
    import subprocess
    import sys

    shm_before = helpers.dev_shm_files()
    code = WORKER_PIDS.format(tests=os.path.dirname(__file__)) + "time.sleep(60)  # killed before this ends\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        pids = _worker_pids(proc)
        assert len(pids) == 2
        proc.kill()
        proc.wait(RESULT_TIMEOUT)
        assert helpers.gone_within(pids, 1.0), "a worker outlived its parent by more than a second"
    finally:
        proc.kill()
        proc.wait(RESULT_TIMEOUT)
    assert helpers.dev_shm_files() == shm_before, "nothing is left in /dev/shm"
    assert os.listdir(tmp_path) == [], "no files left behind"


def _exit_within(proc, timeout: float = RESULT_TIMEOUT) -> tuple[float, str]:
    """Waits for a program started with ``python -X faulthandler``; returns the seconds it took
    and its stderr. One that does not end is sent SIGABRT first, so that the failure shows
    where each of its threads waited."""
    start = time.monotonic()
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
        _, err = proc.communicate(timeout=RESULT_TIMEOUT)
        raise AssertionError(f"the program did not end within {timeout} s; its stacks:\n{err}") from None
    return time.monotonic() - start, err


def _stop_program(
    tmp_path, code: str, *, ctrl_c: bool, after_line: str | None = None
) -> tuple[list[int], float, str, int]:
    """Runs ``code`` (``WORKER_PIDS`` and what follows) as a program in a session of its own,
    reads its workers' pids, then its line ``after_line`` if given, then with ``ctrl_c`` sends
    SIGINT to its whole group, as a terminal's Ctrl-C does. Returns the workers' pids, the
    seconds the program took to end from then, its stderr and its exit status; kills it if it
    is still there."""
    proc = subprocess.Popen(
        [sys.executable, "-X", "faulthandler", "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
        start_new_session=True,
    )
    try:
        pids = _worker_pids(proc)
        if after_line is not None:
            assert proc.stdout.readline() == after_line + "\n", proc.stderr.read()
        if ctrl_c:
            os.killpg(proc.pid, signal.SIGINT)
        elapsed, err = _exit_within(proc)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(RESULT_TIMEOUT)
    return pids, elapsed, err, proc.returncode


def _one_keyboard_interrupt(err: str) -> bool:
    return err.count("Traceback") == 1 and err.rstrip().endswith("KeyboardInterrupt")


@pytest.mark.parametrize("where", ["map", "result"])
def test_ctrl_c_stops_the_program_at_once(tmp_path, where):
    wait = {
        "map": "list(pool.map(helpers.sleep_and_return, [30] * 8, range(8)))",
        "result": "pool.submit(helpers.sleep_and_return, 30, 0).result()",
    }[where]
    code = WORKER_PIDS.format(tests=os.path.dirname(__file__)) + f"with pool:\n    {wait}\n"
    # The workers sit in 30 s sleeps by now or very soon; Ctrl-C reaches the whole group.
    pids, elapsed, err, status = _stop_program(tmp_path, code, ctrl_c=True)
    assert elapsed < 2.0, f"the program took {elapsed:.1f} s to exit after Ctrl-C"
    assert status != 0
    assert _one_keyboard_interrupt(err), err
    assert helpers.gone_within(pids, 1.0), "a worker survived Ctrl-C"


# What a Ctrl-C handled at the worst moment of Condition.wait does: the wait has let go of the
# condition's lock and has not yet entered the try that takes it back. Once armed, conditions
# made from here on raise KeyboardInterrupt there, once, on the main thread.
CTRL_C_AFTER_RELEASE = """
import threading
_init = threading.Condition.__init__
_armed = [False]
def _init_losing_the_lock(self, *args, **kwargs):
    _init(self, *args, **kwargs)
    release_save = self._release_save
    def _release_save():
        state = release_save()
        if _armed[0] and threading.current_thread() is threading.main_thread():
            _armed[0] = False
            raise KeyboardInterrupt
        return state
    self._release_save = _release_save
threading.Condition.__init__ = _init_losing_the_lock
"""


@pytest.mark.parametrize("where", ["map", "result"])
def test_ctrl_c_as_a_future_starts_waiting_is_a_keyboard_interrupt(tmp_path, where):
    # In cf.Future.result such a Ctrl-C turned into "RuntimeError: cannot release un-acquired
    # lock", and the pool, not seeing a KeyboardInterrupt, waited 30 s for the running task.
    wait = {
        "map": "list(pool.map(time.sleep, [30] * 8))",
        "result": "pool.submit(helpers.sleep_and_return, 30, 0).result()",
    }[where]
    code = (
        WORKER_PIDS.format(tests=os.path.dirname(__file__))
        + CTRL_C_AFTER_RELEASE
        + f"_armed[0] = True\nwith pool:\n    {wait}\n"
    )
    pids, elapsed, err, _ = _stop_program(tmp_path, code, ctrl_c=False)
    assert elapsed < 2.0, f"the program took {elapsed:.1f} s to exit after Ctrl-C"
    assert _one_keyboard_interrupt(err), err
    assert helpers.gone_within(pids, 1.0), "a worker survived Ctrl-C"


def test_ctrl_c_that_became_another_error_still_stops_the_pool_at_once(tmp_path):
    # The same Ctrl-C inside the standard library's own cf.wait comes out of it as a
    # RuntimeError whose context is the KeyboardInterrupt; leaving the pool's with block on it
    # still stops the running task at once instead of waiting for it.
    code = (
        WORKER_PIDS.format(tests=os.path.dirname(__file__))
        + CTRL_C_AFTER_RELEASE
        + (
            "import concurrent.futures as cf\n"
            "_armed[0] = True\n"
            "with pool:\n"
            "    cf.wait([pool.submit(helpers.sleep_and_return, 30, 0)])\n"
        )
    )
    pids, elapsed, err, _ = _stop_program(tmp_path, code, ctrl_c=False)
    assert elapsed < 3.0, f"the program took {elapsed:.1f} s to stop its pool after Ctrl-C"
    assert "KeyboardInterrupt" in err, err
    assert helpers.gone_within(pids, 1.0), "a worker outlived the Ctrl-C"


# Prints "waiting" as the main thread calls the engine's join, the wait for the pool to end.
SAY_WHEN_JOINING = """
def say_when_joining(frame, event, arg):
    if event == "c_call" and arg.__name__ == "join" and type(arg.__self__).__name__ == "ProcessPoolEngine":
        sys.setprofile(None)
        print("waiting", flush=True)
sys.setprofile(say_when_joining)
"""


@pytest.mark.parametrize("where", ["end of with", "shutdown", "program exit", "program exit, two pools"])
def test_ctrl_c_while_waiting_for_running_tasks_stops_them_at_once(tmp_path, where):
    # Leaving a with block, shutdown(wait=True) and the program's end (for up to exit_timeout,
    # 5 s) wait for running tasks; the wait was not interruptible, so Ctrl-C did nothing until
    # the task ended.
    ending = {
        "end of with": "with pool:\n    pool.submit(time.sleep, 30)\n",
        "shutdown": "pool.submit(time.sleep, 30)\npool.shutdown(wait=True)\n",
        "program exit": "pool.submit(time.sleep, 30)\n",  # exit_timeout: 5 s
        # One Ctrl-C stops both, whichever the end waits for first.
        "program exit, two pools": (
            "pool.submit(time.sleep, 30)\n"
            "other = ProcessPool(1)\n"
            "other.submit(time.sleep, 0).result(timeout=30)\n"  # its worker is up
            "other.submit(time.sleep, 30)\n"
        ),
    }[where]
    code = WORKER_PIDS.format(tests=os.path.dirname(__file__)) + SAY_WHEN_JOINING + ending
    pids, elapsed, err, _ = _stop_program(tmp_path, code, ctrl_c=True, after_line="waiting")
    assert elapsed < 2.0, f"the program took {elapsed:.1f} s to exit after Ctrl-C"
    assert err.count("Traceback") <= 1 and "Exception ignored" not in err, err
    assert helpers.gone_within(pids, 1.0), "a worker survived Ctrl-C"


# Holds the first worker (``python ... -c <code> <fd>``) at interpreter start, before
# ferropool's code runs: writes its pid to the FIFO ``ready``, then waits for a line on the
# FIFO ``go``; the test writes it.
HOLD_WORKER_AT_START = """
import os, sys
if len(sys.argv) == 2 and sys.argv[0] == "-c" and sys.argv[1].isdigit():
    try:
        os.close(os.open({claimed!r}, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        held = True
    except FileExistsError:  # a later worker (one that replaced it) is not held
        held = False
    if held:
        with open({ready!r}, "w") as f:
            f.write(str(os.getpid()))
        with open({go!r}) as f:
            f.readline()
"""


def test_ctrl_c_reaching_a_worker_that_is_still_starting_changes_nothing(tmp_path):
    # Ctrl-C reaches every process of the group, a worker that has not yet run a line of
    # ferropool too: it must neither die nor print a traceback (the worker used to ignore
    # SIGINT only once its own code ran).
    import select

    site, ready, go = tmp_path / "site", tmp_path / "ready", tmp_path / "go"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        HOLD_WORKER_AT_START.format(claimed=str(tmp_path / "claimed"), ready=str(ready), go=str(go))
    )
    os.mkfifo(ready)
    os.mkfifo(go)
    # Open before the program starts, so that the worker's open for writing does not block.
    ready_fd = os.open(ready, os.O_RDONLY | os.O_NONBLOCK)
    code = "import os\nfrom ferropool import ProcessPool\nwith ProcessPool(1) as pool:\n    print(pool.submit(os.getpid).result(timeout=30))\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env=env
    )
    try:
        readable, _, _ = select.select([ready_fd], [], [], RESULT_TIMEOUT)
        assert readable, "the worker never started"
        worker = int(os.read(ready_fd, 64))  # it is held at its start now
        os.kill(worker, signal.SIGINT)  # pending, or handled, before it reads the line below
        with open(go, "w") as f:
            f.write("go\n")
        out, err = proc.communicate(timeout=RESULT_TIMEOUT)
    finally:
        os.close(ready_fd)
        if proc.poll() is None:
            proc.kill()
            proc.wait(RESULT_TIMEOUT)
    assert "KeyboardInterrupt" not in err and "Traceback" not in err, err
    assert proc.returncode == 0 and out.split() == [str(worker)], (out, err)  # the same worker ran it


def test_ctrl_c_stops_at_once_when_it_left_a_future_lock_held(tmp_path):
    # A KeyboardInterrupt raised inside Condition.__enter__, just after the lock was taken (the
    # signal is handled when the acquire call returns), leaves that future's lock held by the
    # main thread; handing out the cancellations must not wait for it.
    code = WORKER_PIDS.format(tests=os.path.dirname(__file__)) + (
        "with pool:\n"
        "    fut = pool.submit(helpers.sleep_and_return, 30, 0)\n"
        "    fut._condition.acquire()  # what the interrupted __enter__ leaves behind\n"
        "    raise KeyboardInterrupt\n"
    )
    pids, elapsed, err, _ = _stop_program(tmp_path, code, ctrl_c=False)
    assert elapsed < 3.0, f"the program took {elapsed:.1f} s to exit after Ctrl-C"
    assert _one_keyboard_interrupt(err), err
    assert helpers.gone_within(pids, 1.0), "a worker survived Ctrl-C"


LEFT_A_DESCENDANT = """
import os, sys, time
sys.path.insert(0, {tests!r})
import helpers
from ferropool import ProcessPool, WorkerDiedError

def fork_then_crash(pid_file):
    child = os.fork()
    if child == 0:  # a descendant that inherited every descriptor, whatever close-on-exec says
        time.sleep(60)
        os._exit(0)
    with open(pid_file, "w") as f:
        f.write(str(child))
    os._exit(3)

with ProcessPool(2) as pool:
    assert pool.submit(helpers.mul, 2, 3).result(timeout=30) == 6
    start = time.monotonic()
    doomed = pool.submit(fork_then_crash, {pid_file!r})
    others = [pool.submit(helpers.mul, i, 1) for i in range(20)]
    try:
        doomed.result(timeout=30)
    except WorkerDiedError as exc:
        assert "exited with code 3" in str(exc), exc
    assert [f.result(timeout=30) for f in others] == list(range(20))
    print(f"{{time.monotonic() - start:.2f}}", flush=True)
"""


def test_a_crash_that_left_a_descendant_fails_its_task_at_once(tmp_path):
    # The descendant holds the worker's socket open, so its end of stream never comes: the
    # dispatcher must take the pidfd's word that the worker is dead, read what is there and
    # move on (before, it spun at 100% CPU serving nobody until the descendant exited).
    pid_file = tmp_path / "descendant.pid"
    code = LEFT_A_DESCENDANT.format(tests=os.path.dirname(__file__), pid_file=str(pid_file))
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=RESULT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(RESULT_TIMEOUT)
        if pid_file.exists():
            try:
                os.kill(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert proc.returncode == 0, err
    assert float(out) < 10.0, f"the crash took {out.strip()} s to be reported (the descendant lives 60 s)"


def list_fds_from_a_shell(path):
    # os.system: a program started without close_fds, so it sees whatever is not close-on-exec.
    os.system(f"ls -l /proc/$$/fd > {path}")
    with open(path) as f:
        return f.read()


def test_programs_a_task_starts_do_not_inherit_the_worker_socket(make_pool, tmp_path):
    pool = make_pool(1)
    listing = pool.submit(list_fds_from_a_shell, str(tmp_path / "fds")).result(timeout=RESULT_TIMEOUT)
    assert "pipe:" in listing, listing  # stdout and stderr, relayed: inherited on purpose
    assert "socket:" not in listing, listing


SIGCHLD_IGNORED = """
import os, signal, sys
sys.path.insert(0, {tests!r})
import helpers
from ferropool import ProcessPool, WorkerDiedError

def exit_hard():
    os._exit(3)

signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # the kernel reaps children: no exit status
with ProcessPool(1) as pool:
    try:
        pool.submit(exit_hard).result(timeout=30)
    except WorkerDiedError as exc:
        print(exc, flush=True)
    assert [pool.submit(helpers.mul, i, 2).result(timeout=30) for i in range(3)] == [0, 2, 4]
"""


def test_a_worker_reaped_by_the_application_fails_its_task_clearly():
    # With SIGCHLD ignored the kernel reaps workers itself: the pool must still see the death
    # through the pidfd, say why no exit code is known, and signal nothing by pid.
    code = SIGCHLD_IGNORED.format(tests=os.path.dirname(__file__))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=RESULT_TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert "exited; its exit status was collected by someone else" in out.stdout, out.stdout
    assert "code None" not in out.stdout


# -------------------------------------------------------------------- a full disk
OUTPUT_TO_A_FULL_DISK = """
import json, sys
sys.path.insert(0, {tests!r})
import helpers
from ferropool import ProcessPool

with ProcessPool(2) as pool:
    mapped = list(pool.map(helpers.flood_both_streams, [2000] * 6, range(6)))
    one = pool.submit(helpers.flood_both_streams, 2000, "one").result(timeout=30)
with open({out!r}, "w") as f:  # the program's own output goes nowhere: its streams are full
    json.dump([mapped, one], f)
"""


def test_output_to_a_full_disk_loses_no_result(tmp_path):
    # /dev/full fails every write with ENOSPC: the program's stdout and stderr on a full disk.
    # The workers' floods of output go there through the parent; nothing may hang or fail.
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    out = tmp_path / "results.json"
    code = OUTPUT_TO_A_FULL_DISK.format(tests=os.path.dirname(__file__), out=str(out))
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-c", code], stdout=full, stderr=full, cwd=tmp_path, timeout=RESULT_TIMEOUT
        )
    assert proc.returncode == 0
    assert json.loads(out.read_text()) == [list(range(6)), "one"]


# RLIMIT_FSIZE makes growing a memory file fail (EFBIG) as a full disk or exhausted memory would
# (ENOSPC, ENOMEM), on the same paths; Python ignores SIGXFSZ, so the call returns the error.
SHARED_MEMORY_THAT_CANNOT_GROW = """
import errno, json, resource, sys
import numpy as np
sys.path.insert(0, {tests!r})
import helpers
import ferropool.shared
from ferropool import ProcessPool

LIMIT = (resource.RLIMIT_FSIZE, (1 << 20, resource.RLIM_INFINITY))
BIG = 1 << 20  # float64s: 8 MiB, in shared memory
seen = {{}}

def error(call):
    try:
        call()
    except OSError as e:
        return [e.errno == errno.EFBIG, str(e)]
    return "no error"

with ProcessPool(2) as pool:
    earlier = pool.submit(helpers.sleep_and_return, 0.2, "earlier")
    resource.setrlimit(*LIMIT)
    seen["submit"] = error(lambda: pool.submit(np.sum, np.ones(BIG)))
    seen["map"] = error(lambda: list(pool.map(np.sum, [np.ones(BIG)] * 3)))
    seen["queue"] = error(ferropool.shared.Queue)
    seen["earlier"] = earlier.result(timeout=30)
    seen["small"] = float(pool.submit(np.sum, np.ones(10)).result(timeout=30))
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
    seen["lifted"] = float(pool.submit(np.sum, np.ones(BIG)).result(timeout=30))

# In the workers: a large result cannot be handed over.
with ProcessPool(1, initializer=resource.setrlimit, initargs=LIMIT) as pool:
    seen["result"] = error(lambda: pool.submit(np.ones, BIG).result(timeout=30))
    seen["next"] = float(pool.submit(np.sum, np.ones(10)).result(timeout=30))
print(json.dumps(seen))
"""


def test_shared_memory_that_cannot_grow_fails_only_the_call_that_needed_it(tmp_path):
    pytest.importorskip("numpy")
    code = SHARED_MEMORY_THAT_CANNOT_GROW.format(tests=os.path.dirname(__file__))
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=RESULT_TIMEOUT
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    for call in ("submit", "map"):  # at the call that sent the array, saying what failed
        assert seen[call] == [True, seen[call][1]], seen
        assert "could not put a buffer of 8.0 MiB into shared memory" in seen[call][1], seen
    assert seen["queue"][0] is True and "shared memory of a Queue" in seen["queue"][1], seen
    assert seen["result"][0] is True and "into shared memory" in seen["result"][1], seen
    # Nothing else was lost, and the pools kept working.
    assert (seen["earlier"], seen["small"], seen["lifted"], seen["next"]) == ("earlier", 10.0, 1 << 20, 10.0)


# ------------------------------------------------------------------ backpressure


def test_max_pending_blocks_submit_until_a_task_finishes(gate_factory):
    pool = ProcessPool(1, max_pending=3)
    started, release = gate_factory(), gate_factory()
    try:
        first = pool.submit(helpers.signal_and_wait, started, release, "first")
        assert started.wait(RESULT_TIMEOUT)
        queued = [pool.submit(helpers.mul, i, 1) for i in range(2)]  # 3 unfinished now
        submitted = __import__("threading").Event()

        def one_more():
            queued.append(pool.submit(helpers.mul, 2, 1))
            submitted.set()

        t = __import__("threading").Thread(target=one_more)
        t.start()
        assert not submitted.wait(0.5), "submit returned while max_pending tasks were unfinished"
        release.set()
        assert submitted.wait(RESULT_TIMEOUT), "submit stayed blocked after a task finished"
        t.join(RESULT_TIMEOUT)
        assert first.result(timeout=RESULT_TIMEOUT) == "first"
        assert [f.result(timeout=RESULT_TIMEOUT) for f in queued] == [0, 1, 2]
    finally:
        release.set()
        helpers.shutdown_bounded(pool)


def test_a_fast_producer_with_max_pending_gets_every_result():
    with ProcessPool(2, max_pending=256) as pool:
        futures = [pool.submit(helpers.mul, i, 2) for i in range(20_000)]
        assert [f.result(timeout=RESULT_TIMEOUT) for f in futures] == [2 * i for i in range(20_000)]


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (-1, ValueError), (1.5, TypeError)])
def test_max_pending_must_be_a_positive_integer(bad, exc):
    with pytest.raises(exc):
        ProcessPool(1, max_pending=bad)


# --------------------------------------------------------------------- recycling

_hoard: list = []


def hoard(mib: int) -> int:
    """Keeps ``mib`` MiB alive in this worker (written, so resident), returns the pid."""
    _hoard.append(b"x" * (mib << 20))
    return os.getpid()


def test_a_worker_over_max_memory_per_child_is_replaced_between_tasks():
    with ProcessPool(1, max_memory_per_child=200 << 20) as pool:
        small = pool.submit(hoard, 1).result(timeout=RESULT_TIMEOUT)
        assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) == small, "under the limit: kept"
        big = pool.submit(hoard, 300).result(timeout=RESULT_TIMEOUT)
        assert big == small, "the task that crossed the limit still succeeds"
        assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) != big, "then its worker is replaced"


def read_all(a) -> int:
    """Reads every page of ``a`` (mapped from the caller's memory file), returns the pid."""
    a.sum()
    return os.getpid()


def test_memory_files_a_worker_maps_do_not_count_toward_max_memory_per_child():
    # A worker keeps its mapping of an argument it only read, for the next argument in the same
    # file; those pages are the pool's shared memory, not the task's: the worker stays.
    np = pytest.importorskip("numpy")
    with ProcessPool(1, max_memory_per_child=100 << 20) as pool:
        pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
        big = np.ones(150 << 20 >> 3)
        assert pool.submit(read_all, big).result(timeout=RESULT_TIMEOUT) == pid
        assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) == pid, "the worker was replaced"


@pytest.mark.parametrize("bad, exc", [(0, ValueError), ("1GB", TypeError)])
def test_max_memory_per_child_must_be_a_positive_integer(bad, exc):
    with pytest.raises(exc):
        ProcessPool(1, max_memory_per_child=bad)


# ------------------------------------------------------- per-task timeouts (item 7)


def test_a_task_past_the_pools_task_timeout_raises_timeout_error_and_its_worker_is_replaced(make_pool):
    pool = make_pool(1, task_timeout=0.5)
    pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    slow = pool.submit(time.sleep, 3600)
    behind = [pool.submit(helpers.mul, i, 2) for i in range(5)]
    with pytest.raises(TimeoutError) as info:
        slow.result(timeout=RESULT_TIMEOUT)
    err = info.value
    assert isinstance(err, TaskTimeoutError) and isinstance(err, cf.TimeoutError)
    assert (err.timeout, err.pid, err.function) == (0.5, pid, "time.sleep")
    assert (
        str(err)
        == f"time.sleep ran longer than its task_timeout of 0.5 s; its worker (pid {pid}) was stopped and replaced"
    )
    assert [f.result(timeout=RESULT_TIMEOUT) for f in behind] == [0, 2, 4, 6, 8], "tasks queued behind it ran elsewhere"
    assert helpers.gone_within([pid], 5.0)
    assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) != pid


def test_options_sets_a_timeout_per_call_and_submit_keeps_the_standard_signature(make_pool):
    pool = make_pool(2)
    slow = pool.options(task_timeout=0.5).submit(time.sleep, 3600)
    unlimited = pool.submit(helpers.sleep_and_return, 1.0, "no limit")
    with pytest.raises(TaskTimeoutError):
        slow.result(timeout=RESULT_TIMEOUT)
    assert unlimited.result(timeout=RESULT_TIMEOUT) == "no limit"
    # Every keyword of submit goes to the function, as in concurrent.futures.
    assert pool.submit(helpers.capture, 1, task_timeout=3).result(timeout=RESULT_TIMEOUT) == ((1,), {"task_timeout": 3})


def test_map_with_a_task_timeout_fails_at_the_item_that_overran(make_pool):
    pool = make_pool(2)
    results = pool.options(task_timeout=1.0).map(helpers.sleep_and_return, [0, 0, 3600, 0], range(4))
    assert next(results) == 0 and next(results) == 1
    with pytest.raises(TaskTimeoutError):
        next(results)


def test_a_timed_out_task_that_ignores_sigterm_is_killed_after_the_grace_period(make_pool, gate_factory):
    pool = make_pool(1)
    pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    started = gate_factory()
    fut = pool.options(task_timeout=1.0).submit(helpers.ignore_sigterm_then_sleep, started, 3600)
    assert started.wait(RESULT_TIMEOUT)
    with pytest.raises(TaskTimeoutError):
        fut.result(timeout=RESULT_TIMEOUT)
    assert helpers.gone_within([pid], 5.0), "SIGKILL did not follow the ignored SIGTERM"
    assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) != pid


@pytest.mark.parametrize(
    "bad, exc",
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        ("1", TypeError),
        (True, TypeError),
    ],
)
def test_task_timeout_must_be_a_positive_number_of_seconds(make_pool, bad, exc):
    with pytest.raises(exc, match="task_timeout"):
        ProcessPool(1, task_timeout=bad)
    with pytest.raises(exc, match="task_timeout"):
        make_pool(1).options(task_timeout=bad)


# ---------------------------------------------- cancelling running tasks (item 8)


def test_cancel_stops_a_running_task_and_replaces_its_worker(make_pool, gate_factory):
    pool = make_pool(1)
    pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    started = gate_factory()
    fut = pool.submit(helpers.started_then_sleep, started, 3600)
    behind = pool.submit(helpers.mul, 6, 7)
    assert started.wait(RESULT_TIMEOUT)
    assert fut.running()
    assert fut.cancel()
    assert fut.cancelled() and fut.done()
    with pytest.raises(cf.CancelledError):
        fut.result(timeout=0)
    assert helpers.gone_within([pid], 5.0), "the worker running the cancelled task was not stopped"
    assert behind.result(timeout=RESULT_TIMEOUT) == 42
    assert not behind.cancel(), "a finished task cannot be cancelled"


def test_cancelling_an_asyncio_task_that_awaits_a_future_stops_the_work(make_pool, gate_factory):
    pool = make_pool(1)
    pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    started = gate_factory()

    async def main():
        fut = pool.submit(helpers.started_then_sleep, started, 3600)
        waiter = asyncio.ensure_future(asyncio.wrap_future(fut))
        assert await asyncio.get_running_loop().run_in_executor(None, started.wait, RESULT_TIMEOUT)
        waiter.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiter
        return fut

    fut = asyncio.run(main())
    assert fut.cancelled()
    assert helpers.gone_within([pid], 5.0), "cancelling the asyncio task did not stop the worker"
    assert pool.submit(helpers.mul, 2, 3).result(timeout=RESULT_TIMEOUT) == 6


# ------------------------------------------------------ shutdown never hangs (item 11)


def test_shutdown_does_not_wait_for_a_worker_stuck_at_exit(make_pool):
    pool = make_pool(1)
    pid = pool.submit(helpers.leave_a_stuck_thread).result(timeout=RESULT_TIMEOUT)
    start = time.monotonic()
    helpers.shutdown_bounded(pool, wait=True)
    assert time.monotonic() - start < 10, "shutdown waited for the stuck worker"
    assert helpers.gone_within([pid], 1.0)


@pytest.mark.parametrize("how", ["terminate_workers", "kill_workers"])
def test_terminate_and_kill_workers_stop_running_tasks(make_pool, gate_factory, how):
    pool = make_pool(1)
    pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    started = gate_factory()
    # SIGTERM is ignored: terminate_workers still ends the task (SIGKILL a second later).
    running = pool.submit(helpers.ignore_sigterm_then_sleep, started, 3600)
    queued = [pool.submit(helpers.mul, i, 1) for i in range(10)]
    assert started.wait(RESULT_TIMEOUT)
    assert getattr(pool, how)() is None
    with pytest.raises(BrokenProcessPool):
        running.result(timeout=RESULT_TIMEOUT)
    for f in queued:  # cancelled, or failed with the pool if the worker held it
        assert f.cancelled() or isinstance(f.exception(timeout=RESULT_TIMEOUT), BrokenProcessPool)
    assert helpers.gone_within([pid], 5.0), f"the running task's worker survived {how}()"
    with pytest.raises(RuntimeError):
        pool.submit(helpers.mul, 1, 1)
    getattr(pool, how)()  # again, and after shutdown: never an error
    helpers.shutdown_bounded(pool, wait=True)
    getattr(pool, how)()


def test_terminating_processes_by_hand_heals_the_pool(make_pool, gate_factory):
    # The recipe for a hung ProcessPoolExecutor: signal every process in pool._processes.
    pool = make_pool(2)
    started = gate_factory()
    hung = pool.submit(helpers.started_then_sleep, started, 3600)
    assert started.wait(RESULT_TIMEOUT)
    handles = pool._processes
    assert len(handles) == 2 and all(h.pid == pid and h.is_alive() for pid, h in handles.items())
    for p in handles.values():
        p.terminate()
    for p in handles.values():
        p.join(RESULT_TIMEOUT)
        assert not p.is_alive()
    with pytest.raises(WorkerDiedError, match="SIGTERM"):
        hung.result(timeout=RESULT_TIMEOUT)
    assert pool.submit(helpers.mul, 6, 7).result(timeout=RESULT_TIMEOUT) == 42, "the pool healed"
    assert not set(pool._processes) & set(handles), "the workers were replaced"
    # Killing idle workers fails nothing; once the pool has seen them go, it runs tasks again.
    killed = pool._processes
    for p in killed.values():
        p.kill()
    deadline = time.monotonic() + RESULT_TIMEOUT
    while set(pool._processes) & set(killed):
        assert time.monotonic() < deadline, "the killed workers were never replaced"
        time.sleep(0.01)
    assert pool.submit(helpers.mul, 2, 3).result(timeout=RESULT_TIMEOUT) == 6


@pytest.mark.parametrize("dropped", [False, True], ids=["pool-alive", "pool-dropped"])
def test_interpreter_exit_does_not_hang_on_a_stuck_task(tmp_path, dropped):
    code = f"""
import os, sys
sys.path.insert(0, {os.path.dirname(__file__)!r})
import helpers
from ferropool import ProcessPool
def start():
    pool = ProcessPool(1, exit_timeout=1.0)
    print(pool.submit(os.getpid).result(timeout=30), flush=True)
    pool.submit(helpers.sleep_and_print, 0.2, "finished first")
    pool.submit(helpers.ignore_sigterm_then_sleep, None, 3600)
    return pool
pool = start()
if {dropped!r}:
    del pool  # a pool dropped without shutdown still gets exit_timeout to finish its work
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        pids = _worker_pids(proc)
        out, err = proc.communicate(timeout=RESULT_TIMEOUT)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(RESULT_TIMEOUT)
    assert proc.returncode == 0, err
    assert "finished first" in out, "work queued before exit still runs"
    assert "ferropool: stopping 1 task(s) of a ProcessPool still running 1 s after the program ended" in err
    assert helpers.gone_within(pids, 1.0)


def test_exit_timeout_counts_from_the_programs_end_for_every_pool(tmp_path):
    # Pools at the end are waited for one after the other; the second used to get its own
    # exit_timeout after the first's, so its tasks ran 2 x 2 s past the end instead of 2 s.
    code = f"""
import os, sys, time
sys.path.insert(0, {os.path.dirname(__file__)!r})
import helpers
from ferropool import ProcessPool
pools = [ProcessPool(1, exit_timeout=2.0) for _ in range(2)]
pids = [p.submit(os.getpid).result(timeout=30) for p in pools]
for p in pools:
    p.submit(helpers.ignore_sigterm_then_sleep, None, 3600)
print(" ".join(map(str, pids)), flush=True)
"""
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        pids = _worker_pids(proc)
        start = time.monotonic()
        _, err = proc.communicate(timeout=RESULT_TIMEOUT)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(RESULT_TIMEOUT)
    assert proc.returncode == 0, err
    assert err.count("still running 2 s after the program ended") == 2, err
    assert elapsed < 3.5, f"the program ended {elapsed:.1f} s after its last line, not about 2 s"
    assert helpers.gone_within(pids, 1.0)


def write_to_own_socket(length: int, kind: int) -> str:
    # What native code writing to the wrong descriptor does: 24 bytes that read as a header.
    import struct

    os.write(int(sys.argv[-1]), struct.pack("<QQBBHI", length, 0xDEADBEEF, kind, 0, 0, 0))
    return "returned"


STRAY_BYTES = """
import os, resource, sys
sys.path.insert(0, {tests!r})
import helpers, test_faults
from ferropool import ProcessPool, WorkerDiedError

with ProcessPool(2) as pool:
    stray = pool.submit(test_faults.write_to_own_socket, {length}, {kind})
    others = [pool.submit(helpers.mul, i, 2) for i in range(20)]
    try:
        print("returned", stray.result(timeout=30))
    except WorkerDiedError as exc:
        print("died", exc)
    assert [f.result(timeout=30) for f in others] == [2 * i for i in range(20)]
    assert pool.submit(helpers.mul, 3, 3).result(timeout=30) == 9
print("peak MiB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024)
"""


@pytest.mark.parametrize(
    "length, kind",
    [
        (1 << 40, 6),  # an Ok frame of 1 TiB: past any real frame
        (8 << 30, 6),  # an Ok frame of 8 GiB about a task the worker does not hold
        (16, 99),  # a kind no version of the protocol uses
    ],
)
def test_stray_bytes_on_the_socket_fail_only_that_task(length, kind):
    code = STRAY_BYTES.format(tests=os.path.dirname(__file__), length=length, kind=kind)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=RESULT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith("died ") and "stream to the parent was corrupt" in lines[0], lines
    assert "test_faults.write_to_own_socket" in lines[0]
    assert int(lines[-1].split()[-1]) < 1024, "the parent allocated what the stray header claimed"


DISPATCHER_FAILS = """
import resource, sys, time
sys.path.insert(0, {tests!r})
import helpers
from ferropool import BrokenPoolError, ProcessPool

pool = ProcessPool(4)
assert pool.submit(helpers.mul, 2, 2).result(timeout=30) == 4
running = [pool.submit(helpers.sleep_and_return, 30, i) for i in range(4)]
# poll(2) on more descriptors than RLIMIT_NOFILE allows fails with EINVAL: the dispatcher,
# which polls every worker's socket, pidfd and output pipes, cannot go on.
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (8, hard))
try:
    pool.submit(helpers.mul, 3, 3)  # wakes the dispatcher
except BrokenPoolError:
    pass
for f in running:
    try:
        f.result(timeout=20)
        print("finished")
    except BrokenPoolError as exc:
        print("broken", exc.__cause__)
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
try:
    pool.submit(helpers.mul, 1, 1)
except BrokenPoolError as exc:
    print("submit refused")
pool.shutdown()
"""


def test_a_failing_dispatcher_fails_every_waiter_and_breaks_the_pool():
    code = DISPATCHER_FAILS.format(tests=os.path.dirname(__file__))
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=RESULT_TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and lines[-1] == "submit refused", lines
    assert all(line.startswith("broken ") and "dispatcher thread failed" in line for line in lines[:4]), lines


def large_result_with_no_descriptor_left(threads: int) -> bytearray:
    # The result's memory file needs a descriptor below the limit: none is left.
    import resource

    resource.setrlimit(resource.RLIMIT_NOFILE, (3, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    return bytearray(1 << 20)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_result_that_cannot_get_shared_memory_fails_with_the_real_error(threads):
    # ProcessPool, and HybridPool's threaded workers (which answer from other threads).
    from ferropool import HybridPool

    pool = HybridPool(1, threads) if threads > 1 else ProcessPool(1)
    with pool:
        _check_the_real_error(pool, threads)


def _check_the_real_error(pool, threads):
    pid = pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT)
    with pytest.raises(OSError, match="Too many open files") as info:
        pool.submit(large_result_with_no_descriptor_left, threads).result(timeout=RESULT_TIMEOUT)
    assert not isinstance(info.value, WorkerDiedError)
    assert any("handing the task's result to the parent" in n for n in getattr(info.value, "__notes__", []))
    assert pool.submit(os.getpid).result(timeout=RESULT_TIMEOUT) == pid, "the worker was replaced"


def crash_every(i: int, every: int, log: str) -> int:
    # Every `every`-th task notes that it ran, then kills its worker; the others return i.
    if i % every == every - 1:
        with open(log, "a") as f:
            f.write(f"{i}\n")
        os._exit(3)
    return i


def test_finished_answers_survive_a_crash_and_the_crashing_task_is_blamed_once(tmp_path):
    # A worker holds finished answers back for up to 1 ms to batch them; a later task that
    # kills it must neither lose them (failing finished tasks as if they had crashed) nor be
    # re-run itself, which is what happens when the wrong task is blamed.
    code = f"""
import sys, collections
sys.path.insert(0, {os.path.dirname(__file__)!r})
import test_faults
from ferropool import ProcessPool, WorkerDiedError

n, every, log = 4000, 100, {str(tmp_path / "ran")!r}
with ProcessPool(2) as pool:
    futures = [pool.submit(test_faults.crash_every, i, every, log) for i in range(n)]
    wrong = died = 0
    for i, f in enumerate(futures):
        try:
            wrong += f.result(timeout=60) != i
        except WorkerDiedError:
            died += 1
            wrong += i % every != every - 1
runs = collections.Counter(open(log).read().split())
print(died, wrong, max(runs.values()), len(runs))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=50)
    assert proc.returncode == 0, proc.stderr
    died, wrong, most_runs, crashers = map(int, proc.stdout.split())
    assert (died, wrong) == (40, 0), "a task that finished was failed, or a crash was not reported"
    assert (most_runs, crashers) == (1, 40), "a task that killed its worker ran again"


def print_a_lot(i: int) -> int:
    for _ in range(200):
        print("x" * 1000)
    return i


UNREAD_STDOUT = """
import sys, time
sys.path.insert(0, {tests!r})
import helpers, test_faults
from ferropool import ProcessPool, TaskTimeoutError

with ProcessPool(2) as pool:
    start = time.monotonic()
    loud = [pool.submit(test_faults.print_a_lot, i) for i in range(40)]  # 8 MB of output
    slow = pool.options(task_timeout=0.5).submit(helpers.sleep_and_return, 30, 0)
    assert [f.result(timeout=30) for f in loud] == list(range(40))
    try:
        slow.result(timeout=30)
    except TaskTimeoutError:
        pass
    assert pool.submit(helpers.mul, 2, 3).result(timeout=30) == 6
    sys.stderr.write(f"done {{time.monotonic() - start:.2f}}\\n")
"""


def test_a_parent_stdout_nobody_reads_never_stalls_the_pool(tmp_path):
    # Worker output is relayed to the parent's stdout: a pipe whose reader is paused (`| less`,
    # a supervisor) must not hold up results, timeouts or shutdown.
    code = UNREAD_STDOUT.format(tests=os.path.dirname(__file__))
    err = tmp_path / "stderr"
    with open(err, "w") as stderr:
        proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=stderr)
        try:
            # Read nothing from stdout until the program has exited.
            assert proc.wait(timeout=RESULT_TIMEOUT) == 0, err.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(RESULT_TIMEOUT)
            proc.stdout.close()
    assert err.read_text().startswith("done "), err.read_text()
