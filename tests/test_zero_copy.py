"""Large arguments and results travel through shared memory (``_serialize.py`` out-of-band
buffers, ``src/buffer.rs``, ``crates/ferropool-engine/src/buffer.rs``): what arrives, who owns
it, and that nothing is left behind."""

from __future__ import annotations

import mmap
import os
import subprocess
import sys

import pytest

import helpers
from ferropool import _core

np = pytest.importorskip("numpy")

RESULT_TIMEOUT = 30
MIB = 1 << 20


def buffer_maps() -> list[str]:
    """This process's mappings of out-of-band buffers' memory files (received buffers, their
    header pages, and the spare files it keeps to send from)."""
    with open("/proc/self/maps") as f:
        return [line for line in f if "ferropool-buffer" in line]


def received_maps() -> list[str]:
    """The mappings of received buffers' bytes (they start after the file's header page)."""
    return [line for line in buffer_maps() if int(line.split()[2], 16) == mmap.PAGESIZE]


def nothing_left() -> bool:
    """No mapping or descriptor of a memory file once this process's spares are closed."""
    _core.drop_spare_buffers()
    return buffer_maps() == [] and buffer_fds() == []


def buffer_fds() -> list[str]:
    """This process's open descriptors of out-of-band buffers."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "ferropool-buffer" in target:
            out.append(target)
    return out


# ---------------------------------------------------------------- task functions


def total(a):
    return float(a.sum())


def full(n, value):
    return np.full(n, value)


def add_inplace(a, x):
    a += x  # writes to what the worker received
    return a


def buffer_inode(a) -> int:
    """The inode of the memory file ``a`` is mapped from in this process (0: none)."""
    address = a.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            span, _, _, _, inode, *_ = line.split()
            lo, hi = (int(x, 16) for x in span.split("-"))
            if lo <= address < hi and "ferropool-buffer" in line:
                return int(inode)
    return 0


def sum_after(gate: helpers.Gate, a, started: helpers.Gate | None = None):
    if started is not None:
        started.set()  # ``a`` is mapped here from now on
    if not gate.wait():
        raise TimeoutError("the gate never opened")
    return float(a.sum())


def hold_on_one_worker(pool, gate_factory, a):
    """Submits a task that maps ``a`` and holds it until the returned gate opens; returns
    ``(future, gate)`` once the task runs."""
    gate, started = gate_factory(), gate_factory()
    fut = pool.submit(sum_after, gate, a, started)
    assert started.wait(), "the holding task never started"
    return fut, gate


# ---------------------------------------------------------------- what arrives


def test_arrays_cross_both_ways_as_ordinary_writable_arrays(pool):
    a = np.arange(4 * MIB // 8, dtype=np.float64)
    assert pool.submit(total, a).result(timeout=RESULT_TIMEOUT) == float(a.sum())
    b = pool.submit(full, 2 * MIB // 8, 1.5).result(timeout=RESULT_TIMEOUT)
    assert type(b) is np.ndarray and b.dtype == np.float64 and b.shape == (2 * MIB // 8,)
    assert b.flags.writeable and b.flags.c_contiguous
    b[0] = 9.0
    assert b[0] == 9.0 and b[1] == 1.5
    assert buffer_maps(), "the result should be mapped from shared memory, not copied"


def fill_threads() -> list[str]:
    """This process's threads that fill fresh memory files beside the writing thread."""
    names = []
    for tid in os.listdir("/proc/self/task"):
        try:
            with open(f"/proc/self/task/{tid}/comm") as f:
                names.append(f.read().strip())
        except OSError:
            continue
    return [n for n in names if n.startswith("ferropool-fill")]


def checksum_and_echo_reversed(a):
    return int(a.sum()), a[::-1].copy()


def test_arrays_filled_by_two_threads_arrive_exact_both_ways(make_pool):
    # 24 MiB and up go into a fresh memory file from both ends at once (a helper thread takes
    # pieces from the end while the caller writes from the start): every byte must be in place,
    # in the arguments and in a worker's result, and no helper thread may outlive the call.
    pool = make_pool(1)
    n = 24 * MIB // 8 + 5  # not a whole number of pages
    a = np.arange(n, dtype=np.int64)
    checksum, back = pool.submit(checksum_and_echo_reversed, a).result(timeout=RESULT_TIMEOUT)
    assert checksum == n * (n - 1) // 2
    assert np.array_equal(back, a[::-1])
    assert fill_threads() == [], "a fill helper outlived the submit"


def sum_where_and_maybe_write(a, write):
    """The argument's sum and address in the worker; then, if asked, writes every element."""
    s = float(a.sum())
    if write:
        a[:] = -1.0
    return s, a.__array_interface__["data"][0]


def test_a_worker_reuses_an_argument_mapping_only_if_the_task_wrote_none_of_it(make_pool):
    # Same-sized arguments on a pool of one land in the same memory file, one after another. A
    # worker keeps its private mapping of one whose pages the task only read, and maps the next
    # argument through it; one the task wrote holds private copies and must never come back.
    pool = make_pool(1)
    n = 2 * MIB // 8
    plan = [False, False, True, False, True, True, False, False]  # whether the task writes
    seen = []
    for i, write in enumerate(plan):
        a = np.full(n, float(i))
        s, where = pool.submit(sum_where_and_maybe_write, a, write).result(timeout=RESULT_TIMEOUT)
        assert s == float(i * n), f"call {i} read stale bytes"
        assert (a == float(i)).all(), "the caller's array changed"
        seen.append(where)
    assert seen[1] == seen[0] and seen[7] == seen[6], "a read-only argument's mapping was not reused"
    # The last argument was only read: its mapping is still there, kept (private: "p").
    kept = pool.submit(received_maps).result(timeout=RESULT_TIMEOUT)
    assert len(kept) == 1 and kept[0].split()[1].endswith("p"), kept


def test_a_worker_writing_its_argument_leaves_the_callers_array_alone(pool):
    a = np.zeros(MIB // 8)
    out = pool.submit(add_inplace, a, 1.0).result(timeout=RESULT_TIMEOUT)
    assert out.sum() == a.size and a.sum() == 0.0


def test_the_array_is_copied_at_submit_so_later_changes_do_not_reach_the_task(pool, gate_factory):
    a = np.ones(MIB // 8)
    gate = gate_factory()
    fut = pool.submit(sum_after, gate, a)
    a[:] = 5.0  # after submit returned, before the task reads its argument
    gate.set()
    assert fut.result(timeout=RESULT_TIMEOUT) == float(MIB // 8)


def test_one_array_sent_to_two_workers_is_written_once_unless_it_changed(make_pool, gate_factory):
    pool = make_pool(2)
    a = np.ones(MIB)
    holder, gate = hold_on_one_worker(pool, gate_factory, a)  # keeps the first memory file in use
    try:
        first = pool.submit(buffer_inode, a).result(timeout=RESULT_TIMEOUT)
        second = pool.submit(buffer_inode, a).result(timeout=RESULT_TIMEOUT)
        assert first and first == second, "the same unchanged array was written twice"
        a[7] = 2.0
        changed = pool.submit(buffer_inode, a).result(timeout=RESULT_TIMEOUT)
        assert changed and changed != first, "a changed array must not reuse the old bytes"
    finally:
        gate.set()
    assert holder.result(timeout=RESULT_TIMEOUT) == float(MIB)


@pytest.mark.parametrize("value", [b"b" * 300_000, bytearray(b"a" * 300_000), memoryview(bytearray(range(256)) * 1000)])
def test_bytes_like_objects_arrive_as_themselves(pool, value):
    out = pool.submit(helpers.echo, value).result(timeout=RESULT_TIMEOUT)
    assert type(out) is type(value)
    assert bytes(out) == bytes(value)


def test_a_multidimensional_memoryview_keeps_its_format_and_shape(pool):
    view = memoryview(np.arange(120_000, dtype=np.int32).reshape(300, 400))
    out = pool.submit(helpers.echo, view).result(timeout=RESULT_TIMEOUT)
    assert (out.format, out.shape) == ("i", (300, 400)) and out.tobytes() == view.tobytes()
    assert not out.readonly


def test_large_buffers_inside_containers_and_map_results_travel_too(pool):
    arrays = [np.full(MIB // 8, float(i)) for i in range(4)]
    assert list(pool.map(total, arrays)) == [float(i * (MIB // 8)) for i in range(4)]
    out = pool.submit(helpers.echo, {"a": arrays[1], "b": [b"x" * 200_000]}).result(timeout=RESULT_TIMEOUT)
    assert out["a"][0] == 1.0 and out["b"][0] == b"x" * 200_000


def test_small_buffers_stay_in_the_pickle(make_pool):
    pool = make_pool(1, zero_copy_threshold=1 * MIB)
    out = pool.submit(helpers.echo, np.ones(1000)).result(timeout=RESULT_TIMEOUT)
    assert out.sum() == 1000.0 and not buffer_maps()


def test_zero_copy_can_be_turned_off(make_pool):
    pool = make_pool(1, zero_copy_threshold=None)
    out = pool.submit(helpers.echo, np.ones(MIB)).result(timeout=RESULT_TIMEOUT)
    assert out.sum() == MIB and not buffer_maps()


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.5, TypeError), ("64k", TypeError)])
def test_zero_copy_threshold_must_be_a_byte_count(bad, exc):
    from ferropool import ProcessPool

    with pytest.raises(exc, match="zero_copy_threshold"):
        ProcessPool(1, zero_copy_threshold=bad)


# ---------------------------------------------------------------- nothing left behind


def test_memory_is_unmapped_when_the_last_reference_goes(pool):
    results = [pool.submit(full, MIB // 8, float(i)).result(timeout=RESULT_TIMEOUT) for i in range(3)]
    views = [r[10:20] for r in results]  # a view keeps its base's mapping alive
    del results
    assert len(received_maps()) == 3
    del views
    assert nothing_left()


def test_a_worker_that_dies_holding_buffers_leaves_nothing(pool):
    from ferropool import WorkerDiedError

    shm_before = helpers.dev_shm_files()
    with pytest.raises(WorkerDiedError):
        pool.submit(helpers.die_holding, np.ones(MIB)).result(timeout=RESULT_TIMEOUT)
    assert pool.submit(total, np.ones(MIB)).result(timeout=RESULT_TIMEOUT) == float(MIB)
    assert nothing_left()
    assert helpers.dev_shm_files() == shm_before


# ---------------------------------------------------------------- memory files are reused


def test_a_result_file_is_reused_once_the_caller_drops_the_result(make_pool):
    pool = make_pool(1)
    first = pool.submit(full, MIB // 8, 1.0).result(timeout=RESULT_TIMEOUT)
    inode = buffer_inode(first)
    del first
    second = pool.submit(full, MIB // 8, 2.0).result(timeout=RESULT_TIMEOUT)
    assert buffer_inode(second) == inode, "the worker wrote its next result into a new memory file"
    assert (second == 2.0).all()


def arange_from(n, start):
    return np.arange(start, start + n, dtype=np.int64)


def test_a_large_result_arrives_whole_each_time_its_file_is_reused(make_pool):
    # The caller maps a result's file without prefaulting: pages come in as they are touched,
    # and a kept mapping is reused for the file's next result. Every byte must be the new one,
    # whether the caller read, wrote or never touched that page of the previous result.
    pool = make_pool(1)
    shm_before = helpers.dev_shm_files()
    n = 8 * MIB // 8 + 123  # not a whole number of pages
    inodes = set()
    for round_ in range(4):
        got = pool.submit(arange_from, n, round_ * n).result(timeout=RESULT_TIMEOUT)
        assert got.shape == (n,) and got.dtype == np.int64
        assert np.array_equal(got[: n // 3], np.arange(round_ * n, round_ * n + n // 3)), round_
        if round_ % 2 == 0:
            assert np.array_equal(got, np.arange(round_ * n, (round_ + 1) * n)), round_
            got[n // 2 :] = -1  # the caller writes into the shared mapping it now owns
        inodes.add(buffer_inode(got))
        del got
    assert len(inodes) == 1, "the result's memory file was not reused"
    assert nothing_left()
    assert helpers.dev_shm_files() == shm_before


def test_a_result_the_caller_holds_is_never_overwritten(pool):
    held = [pool.submit(full, MIB // 8, float(i)).result(timeout=RESULT_TIMEOUT) for i in range(6)]
    inodes = {buffer_inode(a) for a in held}
    assert len(inodes) == 6, "two held results share one memory file"
    for i, a in enumerate(held):
        assert (a == float(i)).all(), f"result {i} changed after later results arrived"


def test_an_argument_a_worker_holds_is_never_overwritten(make_pool, gate_factory):
    pool = make_pool(2)
    holder, gate = hold_on_one_worker(pool, gate_factory, np.full(MIB, 3.0))  # maps the first file
    try:
        for i in range(4):  # same size: each would fit the first file if it were free
            assert pool.submit(total, np.full(MIB, float(i))).result(timeout=RESULT_TIMEOUT) == float(i * MIB)
    finally:
        gate.set()
    assert holder.result(timeout=RESULT_TIMEOUT) == 3.0 * MIB


def test_an_argument_file_is_reused_for_the_next_task(make_pool):
    pool = make_pool(1)
    first = pool.submit(buffer_inode, np.ones(MIB)).result(timeout=RESULT_TIMEOUT)
    second = pool.submit(buffer_inode, np.zeros(MIB)).result(timeout=RESULT_TIMEOUT)
    assert first and first == second, "the next argument was written into a new memory file"


def test_without_numpy_bytes_and_memoryviews_still_travel_out_of_band(tmp_path):
    code = f"""
import sys
sys.modules["numpy"] = None  # numpy cannot be imported, here or in the workers' pickles
sys.path.insert(0, {os.path.dirname(__file__)!r})
import helpers
from ferropool import ProcessPool
with ProcessPool(1) as pool:
    out = pool.submit(helpers.echo, memoryview(bytearray(b"q" * 500_000))).result(timeout=30)
    maps = [line for line in open("/proc/self/maps") if "ferropool-buffer" in line]
    print(type(out).__name__, len(out), bool(maps))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["memoryview", "500000", "True"]


# ---------------------------------------------------------------- in a child process each


def run_code(tmp_path, code: str) -> list[str]:
    """Run ``code`` (with the tests on its path) in a child process; return its output lines
    once it exited with 0 (a crash or a hang fails the test, not the test run)."""
    code = f"import sys\nsys.path.insert(0, {os.path.dirname(__file__)!r})\n" + code
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90, cwd=tmp_path)
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stdout}\n{proc.stderr}"
    return proc.stdout.splitlines()


def test_no_worker_can_shrink_a_memory_file_the_caller_maps(tmp_path):
    out = run_code(
        tmp_path,
        """
import os
import numpy as np
from ferropool import ProcessPool

def total(a):
    return float(a.sum())

def truncate_buffers_of(pid):
    seen = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if "ferropool-buffer" not in os.readlink(path):
                continue
            f = os.open(path, os.O_RDWR)
        except OSError:
            continue
        try:
            os.ftruncate(f, 0)
            seen.append("truncated")
        except PermissionError:
            seen.append("sealed")
        finally:
            os.close(f)
    return sorted(set(seen))

with ProcessPool(1) as pool:
    print(pool.submit(total, np.ones(1 << 20)).result(30))  # leaves a spare file here
    print(*pool.submit(truncate_buffers_of, os.getpid()).result(30))
    print(pool.submit(total, np.full(1 << 20, 2.0)).result(30))  # written into the spare
""",
    )
    assert out == ["1048576.0", "sealed", "2097152.0"]


def test_an_idle_pool_gives_its_spare_memory_back(tmp_path):
    out = run_code(
        tmp_path,
        """
import os, time
import numpy as np
import helpers
from test_zero_copy import buffer_fds, buffer_maps
from ferropool import ProcessPool

with ProcessPool(1) as pool:
    back = pool.submit(helpers.echo, np.ones(1 << 20)).result(30)
    del back  # the argument's file is a spare now, the result's mapping kept
    print(bool(buffer_fds()), bool(buffer_maps()))
    # Trimmed on an idle tick, a time-based event: poll for it, bounded.
    deadline = time.monotonic() + 20
    while (buffer_fds() or buffer_maps()) and time.monotonic() < deadline:
        time.sleep(0.1)
    print(buffer_fds(), buffer_maps())
""",
    )
    assert out == ["True True", "[] []"]


def worker_buffer_fds_and_maps() -> tuple[list[str], list[str]]:
    return buffer_fds(), buffer_maps()


def test_an_idle_worker_gives_its_spare_memory_back(tmp_path):
    out = run_code(
        tmp_path,
        """
import time
import numpy as np
import helpers
from test_zero_copy import worker_buffer_fds_and_maps
from ferropool import ProcessPool

with ProcessPool(1) as pool:
    back = pool.submit(helpers.echo, np.ones(1 << 20)).result(30)
    del back  # the worker's result file comes back to it as a spare
    fds, maps = pool.submit(worker_buffer_fds_and_maps).result(30)
    print(bool(fds or maps))
    # Trimmed on the worker's idle tick (every second it waits), a time-based event: poll for
    # it, bounded, leaving the worker idle longer than a tick between polls.
    deadline = time.monotonic() + 20
    while (fds or maps) and time.monotonic() < deadline:
        time.sleep(1.5)
        fds, maps = pool.submit(worker_buffer_fds_and_maps).result(30)
    print(fds, maps)
""",
    )
    assert out == ["True", "[] []"]


def test_a_child_forked_after_using_a_pool_uses_its_own_memory_files(tmp_path):
    out = run_code(
        tmp_path,
        """
import multiprocessing, os
import numpy as np
from ferropool import ProcessPool

def inodes_and_sum(a):
    with open("/proc/self/maps") as f:
        inodes = {int(line.split()[4]) for line in f if "ferropool-buffer" in line}
    return inodes, float(a.sum())

def buffer_inodes():
    out = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "ferropool-buffer" in os.readlink(f"/proc/self/fd/{fd}"):
                out.add(os.stat(f"/proc/self/fd/{fd}").st_ino)
        except OSError:
            pass
    return out

def child(parents):
    with ProcessPool(1) as pool:
        inodes, total = pool.submit(inodes_and_sum, np.full(1 << 20, 2.0)).result(30)
    print("child", total, "shares", sorted(inodes & parents), flush=True)

with ProcessPool(1) as pool:
    print("parent", pool.submit(inodes_and_sum, np.ones(1 << 20)).result(30)[1])
    spares = buffer_inodes()
    assert spares, "no spare memory file to inherit"
    proc = multiprocessing.get_context("fork").Process(target=child, args=(spares,))
    proc.start()
    proc.join(60)
    print("exit", proc.exitcode, flush=True)
    print("parent", pool.submit(inodes_and_sum, np.full(1 << 20, 3.0)).result(30)[1])
""",
    )
    assert out == ["parent 1048576.0", "child 2097152.0 shares []", "exit 0", "parent 3145728.0"]
