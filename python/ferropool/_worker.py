"""The main loop of a worker process.

A worker is a fresh interpreter started by the parent's dispatcher (``dispatcher/mod.rs``) with one
end of a unix socket inherited as a descriptor. It reads frames from that socket and answers
each ``Task`` with ``Ok`` or ``Err`` in the order the tasks came, which is what lets the parent
know which task a worker is running. Protocol: ``docs/wire-format.md``; life cycle:
``docs/worker-lifecycle.md``.

Its stdout and stderr are pipes the parent relays a whole line at a time; stdout is made
line-buffered so that a ``print`` shows up when it is made. Its log records go to the parent
(``_logs.py``) as soon as ``logging`` is imported: importing it costs a worker ~6 ms, so that
happens only if the initializer or a task imports it.
"""

from __future__ import annotations

# _signal, not signal: the same functions without importing enum (about 1.5 ms a worker).
import _signal  # type: ignore[import-not-found]  # (typeshed has no stub for it)
import faulthandler
import os
import sys
import time

from . import _core, _serialize
from ._serialize import dumps_exception, dumps_result, loads

_perf = time.perf_counter_ns


async def _probe() -> None:
    pass


_probe_coroutine = _probe()
_Coroutine = type(_probe_coroutine)
_probe_coroutine.close()


async def _probe_generator():
    yield


_AsyncGenerator = type(_probe_generator())


def _run_here(coroutine):
    """Runs a coroutine a plain task returned to completion: on the async initializer's loop if
    there is one (what it opened belongs to that loop), else on this thread."""
    if _async_setup is not None:
        return _async_setup.run(coroutine)
    import asyncio

    return asyncio.run(coroutine)


def main() -> None:
    """Runs the worker until the parent says ``Shutdown`` or goes away."""
    fd = int(sys.argv[-1])
    # Inherited across exec on purpose, so it is not close-on-exec: make it so before anything
    # runs, or every program a task starts would hold the socket open (and a task's crash
    # would not end the stream).
    os.set_inheritable(fd, False)
    # Ctrl-C in a terminal reaches the whole process group; the parent decides what stops.
    _signal.signal(_signal.SIGINT, _signal.SIG_IGN)
    # A crash in native code prints the Python stack to stderr, which the parent relays and
    # attaches to the WorkerDiedError of the task that was running.
    faulthandler.enable()
    if sys.stdout is not None and hasattr(sys.stdout, "reconfigure"):
        sys.stdout.reconfigure(line_buffering=True)
    conn = _core.WorkerConnection(fd)
    frame = conn.recv()
    if frame is None or frame[0] != _core.KIND_INIT:
        return
    threads = _initialize(conn, frame[2])
    if threads:
        _serve(conn, threads)


def _initialize(conn, payload: bytes) -> int:
    """Applies the pool's configuration and runs the initializer; returns the number of task
    threads (0 if the worker must exit)."""
    try:
        config = loads(payload)
        sys.path[:] = config["sys_path"]
        if config.get("cwd"):
            os.chdir(config["cwd"])
        _serialize.zero_copy_threshold = config.get("zero_copy_threshold", _serialize.DEFAULT_ZERO_COPY_THRESHOLD)
        if config.get("authkey") is not None:
            _take_authkey(config["authkey"])
        if config["initializer"] is not None:
            initializer, initargs = loads(config["initializer"])
            try:
                started = initializer(*initargs)
            except BaseException:
                _log_initializer_failure()
                raise
            if type(started) in (_Coroutine, _AsyncGenerator):  # an async initializer
                from ._concurrent_worker import AsyncInitializer

                global _async_setup
                _async_setup = AsyncInitializer(started)
        if config.get("native_threads") and "threadpoolctl" not in sys.modules and _any_native_loaded():
            _limit_loaded_native_threads(config["native_threads"])
        # After the initializer, so that its own logging configuration (basicConfig...) holds.
        _ship_logs_once_imported(conn.log_sender(), config.get("log_level"))
    except BaseException as exc:
        failure = dumps_exception(exc)
        _finish_multiprocessing()
        conn.send(_core.KIND_INITFAILED, 0, failure)
        conn.flush()
        return 0
    # Flushed before any task runs: the parent treats a death before Ready as a failure to
    # start (tasks are requeued), and a death after it as the running task's crash.
    conn.send(_core.KIND_READY, 0, b"")
    conn.flush()
    return max(1, int(config.get("threads", 1)))


def _finish_multiprocessing() -> None:
    """Runs ``multiprocessing``'s exit handlers now, if it is loaded, for a worker about to exit:
    a ``multiprocessing.Queue`` the initializer wrote to (its log records, say) is flushed before
    the parent hears of the failure, as it is before a standard-library worker's exit is seen."""
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util._exit_function()


def _log_initializer_failure() -> None:
    """Logs the initializer's exception on the ``concurrent.futures`` logger at CRITICAL, as the
    standard library's workers do, where logging has a handler here (one the initializer set up,
    such as a ``QueueHandler`` to the parent); else the parent's ``BrokenPoolError`` says it all."""
    logging = sys.modules.get("logging")
    if logging is None:
        return
    logger = logging.getLogger("concurrent.futures")
    if logger.hasHandlers():
        logger.critical("Exception in initializer:", exc_info=True)


#: The async initializer's loop and cleanup (``_concurrent_worker.AsyncInitializer``), if any.
_async_setup = None


def _ship_logs_once_imported(sender, level: int | None) -> None:
    """Installs ``_logs.ShipToParent`` now if ``logging`` is loaded, else when it first is."""

    def install(module) -> None:
        from ._logs import install_in_worker

        install_in_worker(sender, level)

    _after_import("logging", install)


def _take_authkey(authkey: bytes) -> None:
    """Makes ``authkey`` this process's ``multiprocessing`` authkey (in a worker, the parent's, as
    a spawned process's is), now if ``multiprocessing`` is loaded, else when it first is: a
    process that never uses it does not pay for importing it."""

    def take(module) -> None:
        module.current_process().authkey = authkey

    _after_import("multiprocessing.process", take)


def _after_import(name: str, action) -> None:
    """Calls ``action(module)`` now if module ``name`` is loaded, else right after it is."""
    module = sys.modules.get(name)
    if module is not None:
        action(module)
        return
    sys.meta_path.insert(0, _AfterImport(name, action))


class _AfterImport:
    """A ``sys.meta_path`` finder that waits for one module's import, lets the usual finders
    load it, and calls an action right after the module has run. It removes itself then."""

    def __init__(self, name: str, action) -> None:
        self.name, self.action = name, action

    def find_spec(self, name, path=None, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        for finder in sys.meta_path:
            spec = finder.find_spec(name, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None:
                break
        else:
            return None
        loader, action = spec.loader, self.action
        if loader is None:  # nothing will run the module: nothing to hook
            return spec
        run = loader.exec_module

        def exec_module(module) -> None:
            run(module)
            action(module)

        # Patches this spec's own loader instance, not its class.
        loader.exec_module = exec_module  # type: ignore[method-assign]
        return spec


def _any_native_loaded() -> bool:
    # threadpoolctl costs ~30 ms to import: only worth it if the initializer loaded numpy & co.
    return any(name in sys.modules for name in ("numpy", "scipy", "torch", "numexpr", "sklearn"))


def _serve(conn, threads: int) -> None:
    """Runs tasks until ``Shutdown``: plain ones on this thread, one at a time, unless the pool
    gives each worker several threads; coroutines (and, then, plain tasks) through a ``Runner``
    (``_concurrent_worker.py``), created on first need."""
    recv, send = conn.recv, conn.send
    TASK, SHUTDOWN, OK, ERR = _core.KIND_TASK, _core.KIND_SHUTDOWN, _core.KIND_OK, _core.KIND_ERR
    CANCEL, ASYNC, SKIP_ONLY = _core.KIND_CANCEL, _core.FLAG_ASYNC, _core.FLAG_SKIP_ONLY
    concurrent = threads > 1
    runner = None
    # pool.stats()' serialising time: the share of the run time spent unpickling the call and
    # pickling the result, in 255ths, rides in each answer's flags byte. It is measured on one
    # task in SHARE_EVERY (two more clock reads) and repeated on the others.
    share, SHARE_EVERY = 0, 16
    while True:
        frame = recv()
        if frame is None:
            return
        kind, task_id, payload, buffers, flags = frame
        frame = None  # the buffers' only holders are the names below (see "Drop" further down)
        if kind == TASK:
            if flags or concurrent:
                if runner is None:
                    from ._concurrent_worker import Runner

                    runner = Runner(conn, threads, _async_setup)
                if flags & ASYNC:
                    runner.submit_coroutine(task_id, payload, buffers)
                else:
                    runner.submit_plain(task_id, payload, buffers)
                continue
            if runner is not None and runner.busy():
                runner.announce_start(task_id)  # it runs beside coroutines still unanswered
            measure = not task_id % SHARE_EVERY
            start = _perf()
            loaded = called = 0
            try:
                fn, args, kwargs = loads(payload, buffers=buffers)
                if measure:
                    loaded = _perf()
                value = fn(*args, **kwargs)
                if type(value) is _Coroutine:  # from a callable not flagged async (a partial...)
                    value = _run_here(value)
                if measure:
                    called = _perf()
                out, out_buffers = dumps_result(value)
                kind = OK
            except BaseException as exc:
                out, out_buffers = dumps_exception(exc), None
                kind = ERR
            # Drop our references before answering: a received buffer is unmapped once nothing
            # uses it, which frees its memory file for the parent's next buffer.
            fn = args = kwargs = buffers = value = None
            end = _perf()
            ns = end - start
            if measure and called and ns:
                share = (loaded - start + end - called) * 255 // ns
            run_us = min(ns // 1000, 0xFFFFFFFF)
            try:
                send(kind, task_id, out, run_us, out_buffers, share)
            except (OSError, MemoryError) as exc:
                answer_unsendable(send, exc, task_id, run_us, out_buffers, share)
        elif kind == CANCEL:
            if runner is not None:
                runner.cancel(task_id, stop=not flags & SKIP_ONLY)
        elif kind == SHUTDOWN:
            if runner is not None:
                runner.wait_idle()
            if _async_setup is not None:
                _async_setup.finish()
            conn.flush()
            return


def answer_unsendable(send, exc: BaseException, task_id: int, run_us: int, buffers, flags) -> None:
    """Answers a task whose answer could not be sent: with ``buffers``, their memory files
    could not be made (no memory, no descriptor left), and the task fails with that error
    instead, the worker staying; without, the socket itself failed (the parent is gone) and
    ``exc`` is raised again."""
    if buffers is None:
        raise exc
    exc.add_note("ferropool: raised while handing the task's result to the parent in shared memory")
    send(_core.KIND_ERR, task_id, dumps_exception(exc), run_us, None, flags)


#: Environment variables that size the thread pools of native libraries (OpenMP, OpenBLAS, MKL,
#: Apple Accelerate, BLIS, numexpr); each is read once, when its library loads.
NATIVE_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def bootstrap_command(executable: str | None = None, native_threads: int | None = None) -> list[str]:
    """Returns the command line that starts one worker (the socket fd is appended by Rust).

    The worker gets the parent's interpreter flags (``-I``, ``-E``, ``-s``, ``-O``, ``-X``,
    ``-W``...), as multiprocessing's spawn passes them, and ``-P``: ``-c`` would otherwise put
    the current directory first on ``sys.path`` while the worker boots, so a module there named
    like one the worker imports would run in it. Once booted it takes the parent's ``sys.path``.

    With ``native_threads``, the worker sets ``NATIVE_THREAD_VARIABLES`` to it before importing
    anything, unless the parent's environment already sets them (an explicit choice wins).
    """
    import subprocess  # the parent's side only: workers never call this

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    limit = ""
    if native_threads is not None:
        limit = f"import os; [os.environ.setdefault(v, {str(native_threads)!r}) for v in {NATIVE_THREAD_VARIABLES!r}]; "
    code = f"{limit}import sys; sys.path.append({package_parent!r}); from ferropool._worker import main; main()"
    flags = subprocess._args_from_interpreter_flags()  # type: ignore[attr-defined]
    return [executable or sys.executable, *flags, "-P", "-c", code]


def _limit_loaded_native_threads(n: int) -> None:
    """Limits native thread pools already loaded (by the initializer, say) to ``n`` threads,
    with threadpoolctl if it is installed; libraries loaded later read the environment."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    # Kept alive for the worker's life: the limit holds until the object is collected.
    global _native_limit
    _native_limit = threadpool_limits(limits=n)


_native_limit = None


if __name__ == "__main__":
    main()
