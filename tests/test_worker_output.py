"""Workers' output in the parent: log records reach the parent's ``logging`` handlers with the
worker's identity (``python/ferropool/_logs.py``), and stdout lines of different workers never
mix (``crates/ferropool-engine/src/relay.rs``).

A task's records are handled before its future completes, so every check runs right after
``result()``; nothing waits or sleeps."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading

import pytest

WAIT = 30
LOGGER = "ferropool.tests.worker_output"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def collected():
    """A handler on ``LOGGER`` in this process, which lets DEBUG through; the root logger is
    at WARNING while the test makes its pool."""
    logger, root = logging.getLogger(LOGGER), logging.getLogger()
    handler, saved = Collect(), (logger.level, root.level)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    root.setLevel(logging.WARNING)
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(saved[0])
    root.setLevel(saved[1])


def log_and_return_pid(level: int, message: str, *args) -> int:
    logging.getLogger(LOGGER).log(level, message, *args)
    return os.getpid()


def log_exception() -> int:
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger(LOGGER).exception("it failed with %s", "style")
    return os.getpid()


def log_from_a_thread() -> int:
    t = threading.Thread(target=logging.getLogger(LOGGER).error, args=("from a thread",), name="side")
    t.start()
    t.join()
    return os.getpid()


def log_many(n: int) -> int:
    log = logging.getLogger(LOGGER).warning
    for i in range(n):
        log("record %d", i)
    return n


def test_a_record_reaches_the_parents_handler_with_the_workers_identity(make_pool, collected):
    pool = make_pool(2)
    pid = pool.submit(log_and_return_pid, logging.WARNING, "hello %s %d", "there", 7).result(timeout=WAIT)
    (record,) = collected.records
    assert (record.name, record.levelno, record.levelname) == (LOGGER, logging.WARNING, "WARNING")
    assert record.getMessage() == "hello there 7"
    assert record.worker_pid == record.process == pid != os.getpid()
    assert record.processName == f"ferropool-worker-{pid}"
    assert record.worker in (0, 1)
    assert record.funcName == "log_and_return_pid"
    assert pool.stats().log_records == 1


def test_an_exception_logged_in_a_worker_carries_its_traceback(make_pool, collected):
    pool = make_pool(1)
    pool.submit(log_exception).result(timeout=WAIT)
    (record,) = collected.records
    assert record.getMessage() == "it failed with style"
    assert record.levelno == logging.ERROR
    assert "Traceback (most recent call last)" in record.exc_text
    assert "ValueError: boom" in record.exc_text
    assert "ValueError: boom" in logging.Formatter().format(record)


def test_records_from_other_threads_of_a_worker_arrive(make_pool, collected):
    pool = make_pool(1)
    pool.submit(log_from_a_thread).result(timeout=WAIT)
    (record,) = collected.records
    assert (record.getMessage(), record.threadName) == ("from a thread", "side")


def test_debug_records_are_not_shipped_when_the_parent_root_is_at_warning(make_pool, collected):
    pool = make_pool(1)  # made while the root logger is at WARNING
    pool.submit(log_and_return_pid, logging.DEBUG, "not shipped").result(timeout=WAIT)
    pool.submit(log_and_return_pid, logging.INFO, "not shipped either").result(timeout=WAIT)
    pool.submit(log_and_return_pid, logging.WARNING, "shipped").result(timeout=WAIT)
    # Our logger lets DEBUG through here, so a DEBUG record that arrived would show up.
    assert [r.getMessage() for r in collected.records] == ["shipped"]
    assert pool.stats().log_records == 1


def test_debug_records_are_shipped_when_the_parent_root_is_at_debug(make_pool, collected):
    logging.getLogger().setLevel(logging.DEBUG)
    pool = make_pool(1)
    pool.submit(log_and_return_pid, logging.DEBUG, "wanted").result(timeout=WAIT)
    assert [r.getMessage() for r in collected.records] == ["wanted"]


def test_a_flood_of_records_is_handled_or_counted_as_dropped(make_pool, collected):
    pool = make_pool(1)
    n = 30_000
    assert pool.submit(log_many, n).result(timeout=WAIT) == n
    stats = pool.stats()
    assert stats.log_records + stats.dropped_log_records == n
    assert len(collected.records) == stats.log_records


PRINT_LINES = r"""
import sys
from ferropool import ProcessPool

def chatter(tag, lines, width):
    for i in range(lines):
        line = f"{tag}{i:04d}:" + tag * width + "\n"
        # Written in pieces, never flushed by hand: lines leave the worker cut anywhere.
        for start in range(0, len(line), 433):
            sys.stdout.write(line[start:start + 433])
    return tag

if __name__ == "__main__":
    with ProcessPool(2) as pool:
        futures = [pool.submit(chatter, tag, 200, 3000) for tag in "ab"]
        assert sorted(f.result(timeout=60) for f in futures) == ["a", "b"]
"""


def test_stdout_lines_of_two_workers_are_never_mixed(tmp_path):
    script = tmp_path / "chatter.py"
    script.write_text(PRINT_LINES)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert len(lines) == 400
    seen = set()
    for line in lines:
        tag, number, body = line[0], line[1:5], line[6:]
        assert line[5] == ":" and body == tag * 3000, f"a mixed or cut line: {line[:60]!r}..."
        seen.add((tag, int(number)))
    assert seen == {(tag, i) for tag in "ab" for i in range(200)}


HELD_UP = r"""
import os, select, sys
from ferropool import ProcessPool

def chatter(tag, lines):
    os.set_blocking(1, False)
    told = False
    for i in range(lines):
        line = (f"{tag}{i:04d}:" + tag * 3000 + "\n").encode()
        while True:
            try:
                os.write(1, line)  # under PIPE_BUF: all of it or nothing
                break
            except BlockingIOError:
                # The pipe is full. No room for 0.2 s (the relay reads in microseconds): the
                # parent has stopped reading it, which lasts until its reader has taken nothing
                # for 1 s. Said once, on stderr (which is read); then wait on for room.
                if not select.select([], [1], [], 0.2)[1] and not told:
                    sys.stderr.write(f"held {tag}\n")
                    sys.stderr.flush()
                    told = True
    os.set_blocking(1, True)
    return tag

if __name__ == "__main__":
    with ProcessPool(2) as pool:
        futures = [pool.submit(chatter, tag, 800) for tag in "ab"]
        assert sorted(f.result(timeout=60) for f in futures) == ["a", "b"]
"""


def test_a_reader_that_pauses_holds_the_printing_workers_up_and_loses_nothing(tmp_path):
    # 2 x 2.4 MB of lines, none read until both workers say their pipe had no room for a while:
    # the relay kept what it could and then stopped reading them. Then every line arrives, in
    # order. (A relay that dropped output instead would keep reading: the workers would finish
    # without saying it, and stderr would end.)
    script = tmp_path / "held_up.py"
    script.write_text(HELD_UP)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, **pipes)
    try:
        told = sorted(proc.stderr.readline() for _ in range(2))
        assert told == [b"held a\n", b"held b\n"], told
        lines = proc.stdout.read().splitlines()
        assert proc.wait(timeout=WAIT) == 0, proc.stderr.read().decode()
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()
    for tag in b"ab":
        mine = [line for line in lines if line[0] == tag]
        assert mine == [b"%c%04d:%s" % (tag, i, bytes([tag]) * 3000) for i in range(800)]
    assert len(lines) == 1600, "no notice, nothing else"


UNREAD_UNTIL_DONE = r"""
import sys
from ferropool import ProcessPool
from chatter import chatter

if __name__ == "__main__":
    with ProcessPool(2) as pool:
        futures = [pool.submit(chatter, tag, 1000, 3000) for tag in "ab"]
        assert sorted(f.result(timeout=60) for f in futures) == ["a", "b"]
        sys.stderr.write("done\n")
        sys.stderr.flush()
        sys.stdin.read()  # the pool stays up until the reader has had what it kept
"""


def test_a_reader_that_takes_nothing_loses_whole_lines_and_is_told_how_many_bytes(tmp_path):
    # 6 MB of lines, none read until every task is done: tasks are held up for a while, then
    # output is dropped so that they can finish; what is kept arrives whole, then a notice.
    (tmp_path / "chatter.py").write_text(PRINT_LINES)
    script = tmp_path / "unread.py"
    script.write_text(UNREAD_UNTIL_DONE)
    pipes = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}
    proc = subprocess.Popen([sys.executable, str(script)], cwd=tmp_path, **pipes)
    try:
        assert proc.stderr.readline() == b"done\n", proc.stderr.read().decode()
        kept = []
        while not (line := proc.stdout.readline()).startswith(b"ferropool:"):
            assert line, "the stream ended without a notice"
            kept.append(line)
        proc.stdin.close()
        assert proc.wait(timeout=WAIT) == 0
    finally:
        proc.kill()
        proc.wait()
        for stream in (proc.stdout, proc.stderr):
            stream.close()
    width = len("a0000:") + 3000 + 1
    assert 0 < len(kept) < 2000
    assert all(line == line[:1] + line[1:5] + b":" + line[:1] * 3000 + b"\n" for line in kept)
    assert len({line[:5] for line in kept}) == len(kept), "no line twice"
    dropped = 2000 * width - len(kept) * width
    assert line.decode() == (
        f"ferropool: {dropped} bytes of worker output were dropped: the reader of this stream took nothing for 1 s\n"
    )
