"""Tests of ferropool.shared (python/ferropool/shared.py and src/shared*.rs): each object
hammered from several processes and threads with its invariant checked, threading-compatible
timeouts and errors, the robust Lock, pickling into every kind of pool, and no leaks."""

from __future__ import annotations

import concurrent.futures as cf
import gc
import multiprocessing
import os
import pickle
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

import helpers
from ferropool import ThreadPool, WorkerDiedError, shared

# Bound for every wait that should finish; a lost wake-up fails the test instead of hanging it.
BOUND = 20


# ----------------------------------------------------------------- task functions (workers)


def locked_increments(lock, counter, n):
    """A non-atomic read-modify-write that only the lock keeps exact."""
    for _ in range(n):
        with lock:
            counter.value = counter.value + 1
    return n


def add_and_cas(counter, n):
    for i in range(n):
        if i % 2:
            counter.add(1)
        else:
            while True:
                old = counter.value
                if counter.compare_and_swap(old, old + 1):
                    break
    return n


def produce(q, producer, n, length=0):
    """Puts ``(producer, i)`` for i < n; with ``length``, ``(producer, i, array)`` whose array of
    ``length`` floats all hold ``producer * 1000 + i``."""
    for i in range(n):
        if length:
            import numpy as np

            q.put((producer, i, np.full(length, float(producer * 1000 + i))), timeout=BOUND)
        else:
            q.put((producer, i), timeout=BOUND)
    return n


def consume(q):
    """Takes items until None; returns their ``(producer, i)``, checking any array in place (it
    is mapped, not copied)."""
    got = []
    while True:
        item = q.get(timeout=BOUND)
        if item is None:
            return got
        if len(item) == 3:
            producer, i, array = item
            assert array.flags.writeable and (array == float(producer * 1000 + i)).all(), (producer, i)
        got.append(item[:2])


def bounded_section(sem, inside, worst, n):
    for _ in range(n):
        with sem:
            now = inside.add(1)
            while True:
                seen = worst.value
                if now <= seen or worst.compare_and_swap(seen, now):
                    break
            inside.add(-1)
    return n


def barrier_rounds(barrier, rounds):
    return [(r, barrier.wait(timeout=BOUND)) for r in range(rounds)]


def wait_then_set(go, done):
    if not go.wait(BOUND):
        return False
    done.set()
    return True


def acquire_and_die(lock):
    lock.acquire()
    os._exit(3)


def fill_rows(array, row, value):
    array[row, :] = value
    return float(array[row].sum())


def identity(obj):
    return obj


def worker_pid(_):
    return os.getpid()


# ----------------------------------------------------------------- helpers


#: A live pool's own file per worker (where the worker keeps the answers it holds back), not
#: memory of any shared object: it goes with the pool.
POOL_FILE = "/memfd:ferropool-held-answers"


def memfd_mappings(pid="self"):
    """The lines of /proc/<pid>/maps that map a ferropool shared segment."""
    with open(f"/proc/{pid}/maps") as f:
        return [line for line in f if "/memfd:ferropool" in line and POOL_FILE not in line]


def memfd_descriptors(pid="self"):
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:ferropool") and not target.startswith(POOL_FILE):
            found.append(target)
    return found


def files_in_dev_shm(pid="self"):
    """Mappings and descriptors of ``pid`` that name a file under /dev/shm: a shared object
    that used one would leave it behind when killed. (Listing /dev/shm itself would see other
    programs' files come and go; our segments are memory files, which have no path at all.)"""
    with open(f"/proc/{pid}/maps") as f:
        found = [line for line in f if " /dev/shm/" in line]
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/dev/shm/"):
            found.append(target)
    return found


def run_script(tmp_path, source, **kwargs):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent(source))
    return subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, text=True, **kwargs)


# ----------------------------------------------------------------- hammering from processes and threads


def test_lock_keeps_a_plain_counter_exact_across_processes_and_threads(make_pool):
    lock, counter = shared.Lock(), shared.Value("q", 0, lock=False)
    n = 2_000
    with ThreadPool(2) as threads:
        pool = make_pool(3)
        futures = [pool.submit(locked_increments, lock, counter, n) for _ in range(3)]
        futures += [threads.submit(locked_increments, lock, counter, n) for _ in range(2)]
        assert sum(f.result(BOUND) for f in futures) == 5 * n
    assert counter.value == 5 * n
    assert not lock.locked()


def test_value_add_and_compare_and_swap_are_exact(make_pool):
    counter = shared.Value("i", 0)
    n = 5_000
    pool = make_pool(3)
    futures = [pool.submit(add_and_cas, counter, n) for _ in range(3)]
    mine = [threading.Thread(target=add_and_cas, args=(counter, n)) for _ in range(2)]
    for t in mine:
        t.start()
    for t in mine:
        t.join(BOUND)
    assert sum(f.result(BOUND) for f in futures) == 3 * n
    assert counter.value == 5 * n


def test_queue_delivers_every_item_exactly_once(make_pool):
    q = shared.Queue(maxsize=50)
    producers, per = 3, 3_000
    pool = make_pool(4)
    consumers = [pool.submit(consume, q) for _ in range(2)]
    made = [pool.submit(produce, q, p, per) for p in range(2)]
    with ThreadPool(2) as threads:
        made.append(threads.submit(produce, q, 2, per))
        mine = threads.submit(consume, q)
        assert sum(f.result(BOUND) for f in made) == producers * per
        for _ in range(3):
            q.put(None, timeout=BOUND)
        got = [item for f in [*consumers, mine] for item in f.result(BOUND)]
    assert len(got) == len(set(got)) == producers * per
    assert set(got) == {(p, i) for p in range(producers) for i in range(per)}
    assert q.empty() and q.qsize() == 0


def test_queue_carries_large_arrays_out_of_its_ring_between_processes(make_pool):
    np = pytest.importorskip("numpy")
    # A 64 KiB ring could not hold one 800 KB array: the arrays must go through the spill file.
    q = shared.Queue(maxsize=4, capacity_bytes=64 << 10)
    pool = make_pool(4)  # one worker per task: consumers block until the producers' None
    consumers = [pool.submit(consume, q) for _ in range(2)]
    producers = [pool.submit(produce, q, p, 30, 100_000) for p in range(2)]
    mine = produce(q, 2, 30, 100_000)
    assert sum(f.result(BOUND) for f in producers) + mine == 90
    for _ in consumers:
        q.put(None, timeout=BOUND)
    got = [x for f in consumers for x in f.result(BOUND)]
    assert sorted(got) == sorted({(p, i) for p in range(3) for i in range(30)}), "items lost or duplicated"
    a = np.arange(300_000, dtype=np.int32).reshape(300, 1000)
    q.put({"a": a, "tag": "small"})
    back = q.get(timeout=BOUND)
    assert back["tag"] == "small" and back["a"].shape == (300, 1000) and (back["a"] == a).all()
    back["a"][0, 0] = -1  # an ordinary writable array
    assert a[0, 0] == 0


def spill_bytes(q) -> int:
    return os.fstat(q._spill_fd).st_blocks * 512


def test_a_large_item_s_memory_is_freed_when_its_consumer_drops_it():
    np = pytest.importorskip("numpy")
    q = shared.Queue(maxsize=2)
    empty = spill_bytes(q)
    q.put(np.ones(1 << 20))  # 8 MiB
    assert spill_bytes(q) >= empty + (8 << 20)
    got = q.get(timeout=BOUND)
    assert got.sum() == 1 << 20 and spill_bytes(q) >= empty + (8 << 20)  # mapped, not copied
    del got
    assert spill_bytes(q) == empty


def test_a_large_item_that_cannot_be_queued_leaves_no_memory_behind():
    np = pytest.importorskip("numpy")
    q = shared.Queue(maxsize=1)
    q.put("occupies the only slot")
    empty = spill_bytes(q)
    with pytest.raises(queue.Full):
        q.put(np.ones(1 << 20), timeout=0.01)
    assert spill_bytes(q) == empty
    assert q.get_nowait() == "occupies the only slot"


def test_large_bytes_stay_in_the_pickle_and_still_travel():
    q = shared.Queue(maxsize=2)
    q.put(b"x" * 200_000)
    assert q.get(timeout=BOUND) == b"x" * 200_000
    q.put(bytearray(b"y" * 200_000))  # out of band
    back = q.get(timeout=BOUND)
    assert type(back) is bytearray and back == b"y" * 200_000


def take_one(q):
    return q.get(timeout=BOUND)


def test_empty_items_round_trip_in_the_ring_and_beside_spilled_buffers(make_pool):
    q = shared.Queue()
    # Empty buffers stay in the pickle (only buffers of 64 KiB or more spill), beside a spilled one.
    spilled = bytearray(b"z" * 100_000)
    items = [b"", bytearray(), "", (), (b"", spilled, bytearray(), b""), b""]
    for item in items:
        q.put(item)
    assert [q.get(timeout=BOUND) for _ in items] == items
    # The same taken by another process.
    pool = make_pool(1)
    for item in items:
        q.put(item)
        assert pool.submit(take_one, q).result(BOUND) == item


def test_queue_keeps_each_producers_order():
    q = shared.Queue()
    for i in range(1000):
        q.put(i)
    assert [q.get_nowait() for _ in range(1000)] == list(range(1000))


def test_semaphore_bound_is_never_exceeded(make_pool):
    sem = shared.BoundedSemaphore(2)
    inside, worst = shared.Value("i", 0), shared.Value("i", 0)
    pool = make_pool(3)
    futures = [pool.submit(bounded_section, sem, inside, worst, 2_000) for _ in range(3)]
    bounded_section(sem, inside, worst, 2_000)
    for f in futures:
        f.result(BOUND)
    assert 1 <= worst.value <= 2
    assert inside.value == 0
    assert sem.get_value() == 2


def test_barrier_rounds_across_processes_and_a_thread(make_pool):
    rounds = 50
    barrier = shared.Barrier(4)
    pool = make_pool(3)
    futures = [pool.submit(barrier_rounds, barrier, rounds) for _ in range(3)]
    mine = barrier_rounds(barrier, rounds)
    by_round = {}
    for r, index in mine + [x for f in futures for x in f.result(BOUND)]:
        by_round.setdefault(r, []).append(index)
    assert all(sorted(indices) == [0, 1, 2, 3] for indices in by_round.values())
    assert len(by_round) == rounds and not barrier.broken and barrier.n_waiting == 0


def test_event_set_in_one_process_wakes_others(make_pool):
    go, done = shared.Event(), shared.Event()
    pool = make_pool(2)
    futures = [pool.submit(wait_then_set, go, done) for _ in range(2)]
    assert not done.wait(0.01)
    go.set()
    assert done.wait(BOUND)
    assert all(f.result(BOUND) for f in futures)


def test_array_is_written_in_place_by_workers(make_pool):
    np = pytest.importorskip("numpy")
    a = shared.Array((4, 1000), np.float64)
    assert a.sum() == 0
    pool = make_pool(2)
    sums = list(pool.map(fill_rows, [a] * 4, range(4), [1.0, 2.0, 3.0, 4.0], timeout=BOUND))
    assert sums == [1000.0, 2000.0, 3000.0, 4000.0]
    assert a.sum() == 10_000.0
    # A view crosses as a view; a computed array crosses as a copy.
    view = pool.submit(identity, a[1:3, ::2]).result(BOUND)
    assert view.shape == (2, 500) and (view == np.array([[2.0], [3.0]])).all()
    copy = pool.submit(identity, a + 1).result(BOUND)
    assert type(copy) is np.ndarray and copy[0, 0] == 2.0


def test_array_without_numpy_names_it(tmp_path):
    proc = run_script(
        tmp_path,
        """
        import sys
        sys.modules["numpy"] = None
        from ferropool import shared
        try:
            shared.Array(3)
        except ImportError as e:
            print(e)
    """,
        stdout=subprocess.PIPE,
    )
    out, _ = proc.communicate(timeout=BOUND)
    assert "numpy" in out and "pip install 'ferropool[numpy]'" in out


# ----------------------------------------------------------------- threading-compatible behaviour


def test_lock_timeouts_and_errors_match_threading():
    for lock in (shared.Lock(), threading.Lock()):
        assert lock.acquire()
        assert lock.acquire(False) is False
        start = time.monotonic()
        assert lock.acquire(timeout=0.05) is False
        assert time.monotonic() - start >= 0.05
        with pytest.raises(ValueError, match="non-blocking"):
            lock.acquire(False, 1)
        # threading's own words, which Python 3.13 changed.
        message = "must be a non-negative number" if sys.version_info >= (3, 13) else "must be positive"
        with pytest.raises(ValueError, match=message):
            lock.acquire(timeout=-2)
        lock.release()
        with pytest.raises(RuntimeError, match="release unlocked lock"):
            lock.release()
        with lock:
            assert lock.locked()
        assert not lock.locked()


def test_lock_released_by_another_thread_wakes_a_waiter():
    lock = shared.Lock()
    lock.acquire()
    got = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=BOUND)))
    t.start()
    lock.release()
    t.join(BOUND)
    assert got == [True] and lock.locked()


def test_rlock_recursion_and_ownership():
    r = shared.RLock()
    with r:
        with r:
            assert r._is_owned()
        other = []
        t = threading.Thread(target=lambda: other.append((r.acquire(timeout=0.01), r._is_owned())))
        t.start()
        t.join(BOUND)
        assert other == [(False, False)]

        def release_from_another_thread():
            with pytest.raises(RuntimeError):
                r.release()
            other.append("raised")

        t = threading.Thread(target=release_from_another_thread)
        t.start()
        t.join(BOUND)
        assert other == [(False, False), "raised"]
    assert not r._is_owned()
    with pytest.raises(RuntimeError, match="un-acquired"):
        r.release()


def test_event_semaphore_timeouts():
    e = shared.Event()
    assert e.wait(0) is False and e.wait(0.02) is False and e.wait(-1) is False
    e.set()
    assert e.wait() is True and e.is_set()
    e.clear()
    assert not e.is_set()
    s = shared.Semaphore(0)
    assert s.acquire(timeout=0.02) is False and s.acquire(False) is False
    with pytest.raises(ValueError, match="non-blocking"):
        s.acquire(False, 1)
    s.release(3)
    assert s.get_value() == 3 and all(s.acquire() for _ in range(3))
    with pytest.raises(ValueError):
        shared.Semaphore(-1)
    b = shared.BoundedSemaphore(1)
    with pytest.raises(ValueError, match="too many"):
        b.release()


def test_barrier_timeout_abort_reset_and_action():
    b = shared.Barrier(2, timeout=0.05)
    with pytest.raises(threading.BrokenBarrierError):
        b.wait()
    assert b.broken and b.n_waiting == 0
    with pytest.raises(threading.BrokenBarrierError):
        b.wait()
    b.reset()
    assert not b.broken
    ran = []
    b = shared.Barrier(2, action=lambda: ran.append(1))
    t = threading.Thread(target=b.wait, args=(BOUND,))
    t.start()
    assert b.wait(BOUND) in (0, 1)
    t.join(BOUND)
    assert ran == [1]

    def failing():
        raise KeyError("action")

    b = shared.Barrier(1, action=failing)
    with pytest.raises(KeyError):
        b.wait()
    assert b.broken


def test_queue_full_empty_and_errors_match_queue():
    q = shared.Queue(maxsize=2, capacity_bytes=4096)
    assert q.maxsize == 2 and q.empty() and not q.full()
    q.put(1)
    q.put_nowait(2)
    assert q.full() and q.qsize() == 2
    start = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(3, timeout=0.05)
    assert time.monotonic() - start >= 0.05
    with pytest.raises(queue.Full):
        q.put(3, block=False)
    with pytest.raises(ValueError, match="non-negative"):
        q.put(3, timeout=-1)
    assert q.get() == 1 and q.get_nowait() == 2
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(ValueError, match="capacity_bytes"):
        q.put(b"x" * 5000)
    with pytest.raises((pickle.PicklingError, AttributeError)):
        q.put(lambda: 1)
    q.put("after errors")
    assert q.get() == "after errors"


def test_value_types_ranges_and_add_semantics():
    assert shared.Value().typecode == "q"
    v = shared.Value("b", 127)
    assert v.add(1) == -128, "add returns the new value and wraps like C"
    with pytest.raises(OverflowError):
        v.value = 128
    f = shared.Value(float, 1.5)
    assert f.add(1) == 2.5 and f.compare_and_swap(2.5, 0.25) and f.value == 0.25
    import ctypes

    assert shared.Value(ctypes.c_uint32, 7).typecode == "I"
    with pytest.raises(ValueError, match="typecode"):
        shared.Value("z")
    locked = shared.Value("i", 0)
    with locked.get_lock():
        locked.value += 1
    assert locked.value == 1
    with pytest.raises(AttributeError):
        shared.Value("i", lock=False).get_lock()


# ----------------------------------------------------------------- robust lock


def test_lock_of_a_dead_holder_is_taken_over_with_a_warning(make_pool):
    lock = shared.Lock()
    pool = make_pool(1)
    with pytest.raises(WorkerDiedError):
        pool.submit(acquire_and_die, lock).result(BOUND)
    assert lock.locked()
    with pytest.warns(shared.OwnerDiedWarning, match="died holding it"):
        assert lock.acquire(timeout=BOUND) is True
    assert lock.owner_died
    lock.release()
    assert lock.acquire(timeout=BOUND) and not lock.owner_died
    lock.release()


def test_rlock_of_a_dead_holder_is_taken_over_without_blocking(make_pool):
    lock = shared.RLock()
    pool = make_pool(1)
    with pytest.raises(WorkerDiedError):
        pool.submit(acquire_and_die, lock).result(BOUND)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", shared.OwnerDiedWarning)
        assert lock.acquire(blocking=False) is True
    assert lock.owner_died and lock._is_owned()
    lock.release()


# ----------------------------------------------------------------- crossing processes


def test_objects_cross_into_stdlib_process_pools():
    lock, counter, q = shared.Lock(), shared.Value("q", 0), shared.Queue()
    for method in ("spawn", "fork"):
        ctx = multiprocessing.get_context(method)
        with cf.ProcessPoolExecutor(2, mp_context=ctx) as ex:
            futures = [ex.submit(locked_increments, lock, counter, 100) for _ in range(2)]
            futures.append(ex.submit(produce, q, 0, 10))
            assert [f.result(BOUND) for f in futures] == [100, 100, 10]
        proc = ctx.Process(target=add_and_cas, args=(counter, 100))
        proc.start()
        proc.join(BOUND)
        assert proc.exitcode == 0
    assert counter.value == 2 * (200 + 100)
    assert [q.get_nowait() for _ in range(20)] == [(0, i) for i in range(10)] * 2


def test_unpickling_in_the_same_process_returns_the_same_object():
    for obj in (
        shared.Lock(),
        shared.RLock(),
        shared.Event(),
        shared.Semaphore(2),
        shared.Barrier(2),
        shared.Queue(3),
        shared.Value("d", 1.0),
    ):
        assert pickle.loads(pickle.dumps(obj)) is obj


def test_unpickling_after_the_sender_exited_fails_clearly():
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            "import pickle, sys; from ferropool import shared; sys.stdout.buffer.write(pickle.dumps(shared.Lock()))",
        ],
        capture_output=True,
        timeout=BOUND,
        check=True,
    ).stdout
    with pytest.raises(shared.SegmentUnavailableError, match="sender must be alive"):
        pickle.loads(out)


# ----------------------------------------------------------------- no leaks, Ctrl-C


def test_dropped_objects_leave_no_mapping_descriptor_or_file(make_pool):
    np = pytest.importorskip("numpy")
    gc.collect()
    assert memfd_mappings() == [] and memfd_descriptors() == []
    before = files_in_dev_shm()
    objs = [
        shared.Lock(),
        shared.RLock(),
        shared.Event(),
        shared.Semaphore(),
        shared.Barrier(2),
        shared.Queue(),
        shared.Value("i"),
        shared.Array(10, np.int32),
    ]
    pool = make_pool(2)
    assert pool.submit(identity, len(objs)).result(BOUND) == len(objs)
    list(pool.map(identity, objs, timeout=BOUND))  # results come back: unpickled as the same objects
    assert len(memfd_mappings()) >= len(objs)
    assert files_in_dev_shm() == before
    for pid in set(pool.map(worker_pid, range(8), timeout=BOUND)):
        assert files_in_dev_shm(pid) == []
    view = objs[-1][2:5]
    del objs
    gc.collect()
    assert memfd_mappings() != [], "a live view keeps its array's memory"
    del view
    gc.collect()
    assert memfd_mappings() == [] and memfd_descriptors() == []


def test_killed_parent_and_crashed_worker_leave_nothing(tmp_path):
    proc = run_script(
        tmp_path,
        """
        import os, sys
        from ferropool import ProcessPool, shared

        def hold(lock, q, ready, never):
            lock.acquire()
            q.put(os.getpid())
            ready.set()
            never.wait(1000)  # holds the objects until killed with the parent

        lock, q, ready, never = shared.Lock(), shared.Queue(), shared.Event(), shared.Event()
        pool = ProcessPool(2)
        pool.submit(hold, lock, q, ready, never)
        assert ready.wait(20)
        print(q.get(timeout=20), flush=True)
        sys.stdin.read()
    """,
        stdout=subprocess.PIPE,
        stdin=subprocess.PIPE,
    )
    try:
        worker = int(proc.stdout.readline())
        assert memfd_mappings(worker), "the worker maps the shared objects"
        assert files_in_dev_shm(worker) == []
    finally:
        proc.kill()
        proc.wait(BOUND)
    # The worker holding the lock exits with its parent, and with it its mappings: a memory
    # file has no name to leave behind.
    assert helpers.gone_within([worker], BOUND), "the worker holding the lock outlived its parent"


def test_ctrl_c_interrupts_a_blocked_acquire_and_get(tmp_path):
    proc = run_script(
        tmp_path,
        """
        import signal, sys
        signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever ours is (a background job's ignores it)
        from ferropool import shared
        lock, q = shared.Lock(), shared.Queue()
        lock.acquire()
        for call in (lambda: lock.acquire(), lambda: q.get()):
            try:
                print("blocking", flush=True)
                call()
            except KeyboardInterrupt:
                print("interrupted", flush=True)
    """,
        stdout=subprocess.PIPE,
    )
    try:
        for _ in range(2):
            assert proc.stdout.readline().strip() == "blocking"
            proc.send_signal(signal.SIGINT)
            assert proc.stdout.readline().strip() == "interrupted"
        assert proc.wait(BOUND) == 0
    finally:
        proc.kill()
        proc.wait(BOUND)


# ----------------------------------------------------------------- memory overwritten by another process
# Any process that maps a shared object can write any bytes into it, or truncate its memory file.
# That may make an object unusable, but must never make another process crash or hang: each
# scenario runs in a child process, which must exit cleanly and print what it checked.

# Byte offsets in a Queue's memory file (segment header, then `queue.rs`'s State, then the ring).
QUEUE_STATE = 64
QUEUE_CAPACITY = QUEUE_STATE + 128
QUEUE_RING = QUEUE_STATE + 192


def run_to_end(tmp_path, source) -> str:
    """Run ``source`` in a child process; return its stdout once it exited with 0."""
    proc = run_script(tmp_path, source, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=BOUND * 2)
    finally:
        proc.kill()
        proc.wait(BOUND)
    assert proc.returncode == 0, f"the child exited with {proc.returncode}: {out}\n{err}"
    return out


def test_a_queue_capacity_overwritten_by_one_process_makes_no_other_write_outside(tmp_path):
    out = run_to_end(
        tmp_path,
        f"""
        import os, struct
        from ferropool import ProcessPool, _core, shared

        held = []

        def put(q, item):
            held.append(q)  # keeps the worker's handle open, opened before the overwrite
            try:
                q.put(item, timeout=5)
                return "queued"
            except (ValueError, RuntimeError) as e:
                return f"refused: {{type(e).__name__}}"

        q = shared.Queue(capacity_bytes=4096)
        with ProcessPool(1) as pool:
            assert pool.submit(put, q, 0).result(20) == "queued"  # the worker has it open
            assert q.get(timeout=20) == 0
            os.pwrite(q._fd, struct.pack("<Q", 1 << 40), {QUEUE_CAPACITY})
            print("worker:", pool.submit(put, q, b"x" * 100_000).result(20))
        print("here:", put(q, b"x" * 100_000))
        try:
            _core.SharedQueue.__new__(shared.Queue, _attach=(os.dup(q._fd), q._id), _spill=os.dup(q._spill_fd))
            print("opened")
        except OSError as e:
            print("open refused")
        q.put(1, timeout=5)
        print("still works:", q.get(timeout=5))
    """,
    )
    assert out.splitlines() == [
        "worker: refused: ValueError",
        "here: refused: ValueError",
        "open refused",
        "still works: 1",
    ]


def test_overwritten_item_counters_never_block_a_producer(tmp_path):
    out = run_to_end(
        tmp_path,
        f"""
        import os, queue
        from ferropool import ProcessPool, shared

        def fill(q, n):
            for i in range(n):
                q.put(i, timeout=5)
            return "filled"

        q = shared.Queue(2)
        # Every word of the state that is neither an index, a lock nor the configuration: the
        # item counters, whatever their layout.
        for start, end in (({QUEUE_STATE} + 24, {QUEUE_STATE} + 64), ({QUEUE_STATE} + 88, {QUEUE_STATE} + 128),
                           ({QUEUE_CAPACITY} + 12, {QUEUE_RING})):
            os.pwrite(q._fd, b"\\xff" * (end - start), start)
        with ProcessPool(1) as pool:
            for _ in range(3):
                try:
                    print(pool.submit(fill, q, 2).result(20))
                except queue.Full:
                    print("full")
                print(q.get(timeout=5), q.get(timeout=5))
        try:
            q.put(3, block=False)
            q.put(4, block=False)
            q.put(5, block=False)
        except queue.Full:
            print("bounded")
    """,
    )
    assert out.splitlines() == ["filled", "0 1"] * 3 + ["bounded"]


def test_a_corrupted_spilled_item_is_refused_not_mapped_past_its_file(tmp_path):
    out = run_to_end(
        tmp_path,
        f"""
        import os, pickle, struct
        from ferropool import ProcessPool, shared

        def take(q):
            try:
                return f"got {{len(bytes(q.get(timeout=5)))}} bytes"
            except RuntimeError as e:
                return "refused" if "corrupt" in str(e) else repr(e)

        q = shared.Queue()
        q.put(pickle.PickleBuffer(b"x" * 100_000))  # out of band: to the spill file
        # The ring record: [u32 len]["S"][u32 count][u64 offset][u64 len]...: claim 1 GiB.
        os.pwrite(q._fd, struct.pack("<Q", 1 << 30), {QUEUE_RING} + 4 + 1 + 4 + 8)
        q.put(pickle.PickleBuffer(b"y" * 100_000))
        with ProcessPool(1) as pool:
            print(pool.submit(take, q).result(20))
            print(pool.submit(take, q).result(20))
    """,
    )
    assert out.splitlines() == ["refused", "got 100000 bytes"]


# Byte offsets in a Barrier's memory file: the header, then `barrier.rs`'s State.
BARRIER_COUNT = 64 + 8
BARRIER_PARTIES = 64 + 12


def test_a_barrier_whose_state_is_overwritten_neither_hangs_nor_crashes(tmp_path):
    out = run_to_end(
        tmp_path,
        f"""
        import os, struct, threading
        from ferropool import _core, shared

        b = shared.Barrier(1)
        os.pwrite(b._fd, struct.pack("<I", 0), {BARRIER_PARTIES})
        print(b.parties, b.wait(timeout=5), b.n_waiting)  # this handle keeps its parties
        try:
            _core.SharedBarrier.__new__(shared.Barrier, 1, _attach=(os.dup(b._fd), b._id))
            print("opened")
        except OSError as e:
            print("open refused:", "parties" in str(e))
        b = shared.Barrier(2)
        os.pwrite(b._fd, struct.pack("<I", 0xFFFFFFFF), {BARRIER_COUNT})
        print(b.n_waiting)
        try:
            b.wait(timeout=5)
            print("passed")
        except threading.BrokenBarrierError:
            print("broken")
        b.reset()
        other = threading.Thread(target=b.wait, args=(5,))
        other.start()
        print(b.wait(timeout=5) in (0, 1))
        other.join(5)
    """,
    )
    assert out.splitlines() == ["1 0 0", "open refused: True", "1", "broken", "True"]


def test_a_segment_smaller_than_its_object_is_refused_when_opened(tmp_path):
    # Another process hands over a memory file whose header names the right kind and id but
    # whose size does not cover the object's state.
    out = run_to_end(
        tmp_path,
        """
        import fcntl, os, struct
        from ferropool import _core, shared

        MAGIC, ID = 0x46505348, 12345
        SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL

        def forged(kind, payload):
            fd = os.memfd_create("forged", os.MFD_ALLOW_SEALING | os.MFD_CLOEXEC)
            os.ftruncate(fd, 64 + payload)
            os.pwrite(fd, struct.pack("<IIQQ", MAGIC, kind, ID, payload), 0)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, SEALS)
            return (fd, ID)

        q = shared.Queue()
        opens = {
            "Lock": (1, lambda a: _core.SharedLock(_attach=a)),
            "RLock": (2, lambda a: _core.SharedRLock(_attach=a)),
            "Event": (3, lambda a: _core.SharedEvent(_attach=a)),
            "Semaphore": (4, lambda a: _core.SharedSemaphore(_attach=a)),
            "Barrier": (5, lambda a: _core.SharedBarrier(1, _attach=a)),
            "Queue": (6, lambda a: _core.SharedQueue(_attach=a, _spill=os.dup(q._spill_fd))),
            "Value": (7, lambda a: _core.SharedValue("q", _attach=a)),
        }
        for name, (kind, open_) in opens.items():
            for payload in (0, 2):
                try:
                    open_(forged(kind, payload))
                    print(name, "opened")
                except OSError as e:
                    print(name, "refused" if "bytes of state" in str(e) else e)
    """,
    )
    names = ["Lock", "RLock", "Event", "Semaphore", "Barrier", "Queue", "Value"]
    assert out.splitlines() == [f"{name} refused" for name in names for _ in range(2)]


def test_no_holder_can_shrink_a_shared_objects_memory(tmp_path):
    out = run_to_end(
        tmp_path,
        """
        import os
        import numpy as np
        from ferropool import shared

        v, q, lock = shared.Value("q", 5), shared.Queue(), shared.Lock()
        a = shared.Array(1000)
        q.put(np.zeros(10_000))  # out of band: to the spill file
        for name, fd in (("value", v._fd), ("queue", q._fd), ("spill", q._spill_fd),
                         ("lock", lock._fd), ("array", a._memory.segment._fd)):
            try:
                os.ftruncate(fd, 0)
                print(name, "truncated")
            except PermissionError:
                print(name, "sealed")
        v.add(1)
        a[:] = 2.0
        q.put(np.ones(10_000))
        with lock:
            print(v.value, a.sum(), q.get(timeout=5).sum(), q.get(timeout=5).sum())
    """,
    )
    assert out.splitlines() == [
        "value sealed",
        "queue sealed",
        "spill sealed",
        "lock sealed",
        "array sealed",
        "6 2000.0 0.0 10000.0",
    ]


def test_threads_unpickling_one_object_at_once_get_the_same_object(monkeypatch):
    # Unpickling looks the segment up in this process and maps it only if absent. Two threads
    # that both miss must not both map it: the second waits for the first and gets its object.
    # The reopen below waits (bounded) for the other thread to reach it too, which happens only
    # if the lookup and the registration are not one step.
    value = shared.Value(int, 7)
    blob = pickle.dumps(value)
    monkeypatch.setattr(shared, "_live", __import__("weakref").WeakValueDictionary())
    both_inside = threading.Barrier(2)
    reopen = shared._reopen_segment

    def reopen_when_both_inside(pid, fd):
        try:
            both_inside.wait(timeout=1.0)
        except threading.BrokenBarrierError:
            pass  # the other thread is not inside: the lookup and the mapping are one step
        return reopen(pid, fd)

    monkeypatch.setattr(shared, "_reopen_segment", reopen_when_both_inside)
    with cf.ThreadPoolExecutor(2) as ex:
        a, b = ex.map(lambda _: pickle.loads(blob), range(2))
    assert a is b and a.value == 7
