"""multiprocessing's objects reach the workers as spawn passes them (``_spawning.py``): the
synchronised ones in ``initargs``, ``Manager`` proxies as task arguments.

Each scenario is a real script run in a child interpreter, under a timeout; objects come from the
``spawn`` context, whose semaphores workers open by name, and the ``fork`` one (the default on
Linux before Python 3.14), whose semaphores only the parent can reach and serves to the workers.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

import helpers

SCRIPT_TIMEOUT = 60

PRELUDE = """
import multiprocessing as mp
import os
import sys
from ferropool import HybridPool, ProcessPool
ctx = mp.get_context(sys.argv[2] if len(sys.argv) > 2 else "spawn")
make_pool = {"process": ProcessPool, "hybrid": HybridPool}[sys.argv[1]]

def keep(*objects):
    global KEPT
    KEPT = objects
"""


def run_main(tmp_path, body: str, *argv: str) -> subprocess.CompletedProcess:
    return helpers.run_script(tmp_path, PRELUDE + textwrap.dedent(body), *argv, timeout=SCRIPT_TIMEOUT)


CONTEXTS = ["spawn", "fork"]


def output(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("context", CONTEXTS)
@pytest.mark.parametrize("pool", ["process", "hybrid"])
def test_workers_log_into_a_queue_the_parent_reads(tmp_path, pool, context):
    done = run_main(
        tmp_path,
        """
        import logging, logging.handlers

        def init(queue):
            root = logging.getLogger()
            root.handlers[:] = [logging.handlers.QueueHandler(queue)]
            root.setLevel(logging.INFO)

        def work(i):
            logging.getLogger("work").info("task %d in %d", i, os.getpid())
            return i

        if __name__ == "__main__":
            queue = ctx.Queue()
            with make_pool(2, initializer=init, initargs=(queue,)) as p:
                assert list(p.map(work, range(4))) == [0, 1, 2, 3]
            messages = sorted(queue.get(timeout=10).getMessage().split(" in ")[0] for _ in range(4))
            print(messages)
        """,
        pool,
        context,
    )
    assert output(done) == "['task 0', 'task 1', 'task 2', 'task 3']"


@pytest.mark.parametrize("context", CONTEXTS)
def test_a_lock_is_shared_by_the_parent_and_the_workers(tmp_path, context):
    done = run_main(
        tmp_path,
        """
        def held(_):
            return KEPT[0].acquire(timeout=0.2)

        if __name__ == "__main__":
            lock = ctx.Lock()
            with ProcessPool(2, initializer=keep, initargs=(lock,)) as p:
                with lock:  # the parent holds it: no worker gets it
                    while_held = p.submit(held, 0).result()
                free = p.submit(held, 0).result()
            print(while_held, free)
        """,
        "process",
        context,
    )
    assert output(done) == "False True"


@pytest.mark.parametrize("context", CONTEXTS)
def test_an_event_and_a_semaphore_are_shared(tmp_path, context):
    done = run_main(
        tmp_path,
        """
        def wait_for_parent(_):
            event, semaphore = KEPT
            with semaphore:
                return event.wait(10)

        if __name__ == "__main__":
            event, semaphore = ctx.Event(), ctx.Semaphore(1)
            with ProcessPool(2, initializer=keep, initargs=(event, semaphore)) as p:
                futures = [p.submit(wait_for_parent, i) for i in range(2)]
                event.set()
                print([f.result(timeout=30) for f in futures], semaphore.get_value())
        """,
        "process",
        context,
    )
    assert output(done) == "[True, True] 1"


@pytest.mark.parametrize("context", CONTEXTS)
def test_value_and_array_written_by_workers_are_read_by_the_parent(tmp_path, context):
    done = run_main(
        tmp_path,
        """
        def write(i):
            value, array = KEPT
            with value.get_lock():
                value.value += 1
            array[i] = i * 10

        if __name__ == "__main__":
            value, array = ctx.Value("i", 0), ctx.Array("i", 5)
            with ProcessPool(2, initializer=keep, initargs=(value, array)) as p:
                list(p.map(write, range(5)))
            print(value.value, list(array))
        """,
        "process",
        context,
    )
    assert output(done) == "5 [0, 10, 20, 30, 40]"


def test_a_manager_dict_proxy_is_a_task_argument(tmp_path):
    done = run_main(
        tmp_path,
        """
        def fill(d, i):
            d[i] = i * i

        if __name__ == "__main__":
            with ctx.Manager() as manager:
                d = manager.dict()
                with ProcessPool(2) as p:
                    for f in [p.submit(fill, d, i) for i in range(4)]:
                        f.result(timeout=30)
                print(sorted(d.items()))
        """,
        "process",
    )
    assert output(done) == "[(0, 0), (1, 1), (2, 4), (3, 9)]"


@pytest.mark.parametrize("context", CONTEXTS)
def test_workers_replaced_later_still_get_the_queue(tmp_path, context):
    # Every worker the pool starts unpickles the same start data, replacements included.
    done = run_main(
        tmp_path,
        """
        def put(i):
            KEPT[0].put(os.getpid())

        if __name__ == "__main__":
            queue = ctx.Queue()
            with ProcessPool(1, initializer=keep, initargs=(queue,), max_tasks_per_child=1) as p:
                list(p.map(put, range(3)))
            print(len({queue.get(timeout=10) for _ in range(3)}))
        """,
        "process",
        context,
    )
    assert output(done) == "3"


def test_the_default_contexts_queue_works_as_with_the_standard_library(tmp_path):
    # The logging cookbook's pattern, unchanged: a plain multiprocessing.Queue() (the fork
    # context's on Linux before 3.14) given to every worker through initargs.
    done = helpers.run_script(
        tmp_path,
        textwrap.dedent(
            """
        import multiprocessing, os
        from concurrent.futures import ProcessPoolExecutor
        from ferropool import ProcessPool

        def init(queue):
            global QUEUE
            QUEUE = queue

        def work(i):
            QUEUE.put(i * i)
            return os.getpid()

        if __name__ == "__main__":
            results = []
            for make in (ProcessPoolExecutor, ProcessPool):
                queue = multiprocessing.Queue()
                with make(2, initializer=init, initargs=(queue,)) as pool:
                    list(pool.map(work, range(10)))
                results.append(sorted(queue.get(timeout=10) for _ in range(10)))
            print(results[0] == results[1], results[1])
        """
        ),
        timeout=SCRIPT_TIMEOUT,
    )
    assert output(done) == "True [0, 1, 4, 9, 16, 25, 36, 49, 64, 81]"


@pytest.mark.parametrize("context", CONTEXTS)
def test_an_rlock_and_a_condition_are_shared(tmp_path, context):
    done = run_main(
        tmp_path,
        """
        def wait_for_turn(_):
            rlock, condition, turn = KEPT
            with rlock:
                with rlock:  # recursive: the same worker thread owns it
                    mine = rlock._semlock._is_mine()
            with condition:
                woke = condition.wait_for(lambda: turn.value == 1, timeout=20)
            return mine, woke

        if __name__ == "__main__":
            rlock, condition, turn = ctx.RLock(), ctx.Condition(), ctx.Value("i", 0)
            with ProcessPool(2, initializer=keep, initargs=(rlock, condition, turn)) as p:
                futures = [p.submit(wait_for_turn, i) for i in range(2)]
                with condition:
                    turn.value = 1
                    condition.notify_all()
                print([f.result(timeout=30) for f in futures], rlock._semlock._is_mine())
        """,
        "process",
        context,
    )
    assert output(done) == "[(True, True), (True, True)] False"


def test_one_parent_thread_serves_each_worker_thread_whatever_the_objects(tmp_path):
    # A queue, a lock and an event are seven semaphores, used by two worker threads (the task's
    # and the queue's feeder): two threads in the parent, not seven.
    done = run_main(
        tmp_path,
        """
        import threading

        def use(_):
            queue, lock, event = KEPT
            with lock:
                queue.put(os.getpid())
            event.set()
            return os.getpid()

        if __name__ == "__main__":
            objects = ctx.Queue(), ctx.Lock(), ctx.Event()
            with ProcessPool(1, initializer=keep, initargs=objects) as p:
                pid = p.submit(use, 0).result(timeout=30)
                got = objects[0].get(timeout=10)  # the feeder holds the queue's write lock by then
                serving = [t for t in threading.enumerate() if t.name.startswith(f"ferropool-semlock-{pid}")]
                print(len(serving), got == pid, objects[2].is_set())
        """,
        "process",
        "fork",
    )
    assert output(done) == "2 True True"


def test_a_child_a_task_forks_uses_the_lock_on_its_own_connection(tmp_path):
    done = run_main(
        tmp_path,
        """
        def fork_and_use(_):
            lock, value = KEPT
            with lock:
                value.value += 1
            pid = os.fork()
            if pid == 0:
                for _ in range(50):
                    with lock:
                        value.value += 1
                os._exit(0)
            for _ in range(50):
                with lock:
                    value.value += 1
            return os.waitpid(pid, 0)[1]

        if __name__ == "__main__":
            lock, value = ctx.Lock(), ctx.Value("i", 0, lock=False)
            with ProcessPool(1, initializer=keep, initargs=(lock, value)) as p:
                status = p.submit(fork_and_use, 0).result(timeout=30)
            print(status, value.value)
        """,
        "process",
        "fork",
    )
    assert output(done) == "0 101"


def test_a_worker_killed_while_waiting_for_a_fork_context_lock_never_takes_it(tmp_path):
    # The parent waits on the lock for the worker; once the worker is gone it must not get it.
    done = run_main(
        tmp_path,
        """
        import threading
        from ferropool import _spawning

        waiting = threading.Event()  # the parent waits on the lock for the worker
        wait_for = _spawning._wait_for

        def wait_and_say(*args):
            waiting.set()
            return wait_for(*args)

        _spawning._wait_for = wait_and_say

        def serving():
            return [t for t in threading.enumerate() if t.name.startswith("ferropool-semlock")]

        def take(_):
            lock, asking = KEPT
            asking.set()
            lock.acquire()
            return os.getpid()

        if __name__ == "__main__":
            lock, asking = ctx.Lock(), ctx.Event()
            lock.acquire()
            p = ProcessPool(1, initializer=keep, initargs=(lock, asking))
            future = p.submit(take, 0)
            assert asking.wait(20)
            assert waiting.wait(20)
            p.kill_workers()
            for thread in serving():
                thread.join(20)  # gives up waiting for the worker that went
            stopped = not serving()
            lock.release()
            print(type(future.exception(timeout=20)).__name__, stopped, lock.acquire(timeout=5))
            p.shutdown()
        """,
        "process",
        "fork",
    )
    assert output(done) == "BrokenPoolError True True"


def test_a_failing_initializer_logs_to_the_handler_it_set_up(tmp_path):
    # As the standard library's workers do: CRITICAL on the concurrent.futures logger, which the
    # initializer pointed at a queue the parent reads, before the parent hears of the failure.
    # The pool breaks, and says so in _broken.
    done = run_main(
        tmp_path,
        """
        import logging, logging.handlers
        from concurrent.futures import BrokenExecutor

        def init_fail(queue):
            logger = logging.getLogger("concurrent.futures")
            logger.addHandler(logging.handlers.QueueHandler(queue))
            logger.propagate = False
            raise ValueError("error in initializer")

        if __name__ == "__main__":
            queue = ctx.Queue()
            pool = ProcessPool(1, initializer=init_fail, initargs=(queue,))
            assert pool._broken is False or "ValueError" in pool._broken
            try:
                pool.submit(abs, 1).result(timeout=30)
            except BrokenExecutor:
                pass
            # Already in the queue: the worker flushed it before reporting the failure.
            record = queue.get_nowait()
            message = record.getMessage()  # QueueHandler formats the traceback into it
            print(record.levelname, message.splitlines()[0], "ValueError: error in initializer" in message)
            print(pool._broken)
            pool.shutdown()
        """,
        "process",
    )
    assert output(done).splitlines() == [
        "CRITICAL Exception in initializer: True",
        "ValueError: error in initializer",
    ]


def test_a_manager_made_after_the_pool_shares_the_workers_authkey(tmp_path):
    # The workers got the parent's key when they started, before the manager existed.
    script = tmp_path / "late.py"
    script.write_text(
        textwrap.dedent(
            """
            import sys
            from ferropool import ProcessPool

            def fill(d, i):
                d[i] = -i

            if __name__ == "__main__":
                with ProcessPool(1) as pool:
                    pool.submit(abs, 1).result(timeout=30)  # the worker is up
                    import multiprocessing

                    with multiprocessing.get_context("spawn").Manager() as manager:
                        d = manager.dict()
                        pool.submit(fill, d, 3).result(timeout=30)
                        print(dict(d))
            """
        )
    )
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=SCRIPT_TIMEOUT, cwd=tmp_path
    )
    assert output(done) == "{3: -3}"
