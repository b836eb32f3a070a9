"""Type stubs and reference docs for ``ferropool._core``, the Rust extension module.

Everything here is internal API used by ``ferropool``'s Python modules; users import from
``ferropool`` instead. Blocking methods release the GIL while they wait.
"""

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future
from typing import Any, Generic, Self, TypeVar, final

from typing_extensions import disjoint_base

__all__ = [
    "FLAG_ASYNC",
    "FLAG_SKIP_ONLY",
    "KIND_CANCEL",
    "KIND_ERR",
    "KIND_HEARTBEAT",
    "KIND_HELLO",
    "KIND_INIT",
    "KIND_INITFAILED",
    "KIND_LOG",
    "KIND_OK",
    "KIND_READY",
    "KIND_SHUTDOWN",
    "KIND_START",
    "KIND_TASK",
    "OUTCOME_BROKEN",
    "OUTCOME_CANCELLED",
    "OUTCOME_RAISED",
    "OUTCOME_RETURNED",
    "OUTCOME_TIMED_OUT",
    "OUTCOME_WORKER_DIED",
    "SERIALIZE_SAMPLE_EVERY",
    "EngineBrokenError",
    "LogSender",
    "OwnerDiedWarning",
    "PrefixedMap",
    "ProcessPoolEngine",
    "SharedBarrier",
    "SharedBuffer",
    "SharedEvent",
    "SharedLock",
    "SharedMemory",
    "SharedQueue",
    "SharedRLock",
    "SharedSemaphore",
    "SharedValue",
    "ThreadWorkQueue",
    "WorkerConnection",
    "WorkerSender",
    "__version__",
    "drop_spare_buffers",
    "runqueue_wait_ns",
    "trim_spare_buffers",
]

__version__: str

KIND_HELLO: int
KIND_INIT: int
KIND_READY: int
KIND_INITFAILED: int
KIND_TASK: int
KIND_OK: int
KIND_ERR: int
KIND_CANCEL: int
KIND_SHUTDOWN: int
KIND_HEARTBEAT: int
KIND_START: int
FLAG_ASYNC: int
FLAG_SKIP_ONLY: int
KIND_LOG: int

# The ``code`` that ``ProcessPoolEngine.deliver`` passes to ``settle`` for each outcome.
OUTCOME_RETURNED: int
OUTCOME_RAISED: int
OUTCOME_WORKER_DIED: int
OUTCOME_BROKEN: int
OUTCOME_CANCELLED: int
OUTCOME_TIMED_OUT: int
#: Serialisation is timed for one task in this many: those whose id is a multiple of it.
SERIALIZE_SAMPLE_EVERY: int

class EngineBrokenError(RuntimeError):
    """Raised by ``ProcessPoolEngine.submit`` when the pool is broken; ``args[0]`` is the reason
    (bytes: a pickled ``(exception, traceback)`` from a failed initializer, or plain text)."""

_F = TypeVar("_F", bound=Future[Any])

@final
class ProcessPoolEngine:
    """The parent side of a process pool: runs opaque task payloads on worker processes.

    Starts a dispatcher thread at once, which spawns ``workers`` processes by running
    ``command`` with the worker's socket descriptor number appended, and sends each ``init``
    as its first frame.
    """

    def __new__(
        cls,
        workers: int,
        command: list[str],
        init: bytes,
        *,
        max_tasks_per_child: int | None = None,
        max_memory_per_child: int | None = None,
        max_pending: int | None = None,
        threads_per_worker: int = 1,
    ) -> ProcessPoolEngine:
        """``threads_per_worker``: tasks each worker runs at once (a ``HybridPool``)."""
    @property
    def workers(self) -> int:
        """The number of worker processes kept alive."""
    def submit(
        self,
        id: int,
        payload: bytes,
        timeout: float | None = None,
        buffers: list[Any] | None = None,
        is_async: bool = False,
    ) -> None:
        """Queues task ``id`` with its out-of-band ``buffers`` (contiguous byte buffers, e.g.
        ``PickleBuffer.raw()``; each is written to a memory file that travels with the task, or
        the file of an identical buffer still held by a task is reused; ``is_async``: the call is
        a coroutine function, run on the worker's event loop), to be stopped (its worker sent SIGTERM, then SIGKILL a second
        later, and replaced) if it runs longer than ``timeout`` seconds. Never blocks on
        workers; with ``max_pending``, waits (GIL released, signals checked every 50 ms) while
        that many tasks are unfinished. Raises ``ValueError`` for a negative or non-finite
        timeout, ``RuntimeError`` after ``close`` and ``EngineBrokenError`` when the pool is
        broken."""
    def cancel(self, id: int) -> bool:
        """Cancels task ``id``. Returns True if no worker had it yet: it was removed, never runs
        and gets no outcome. Otherwise returns False and has it stopped in the background: the
        worker skips it if it has not begun it, or is stopped and replaced if it is running; the
        task then ends with outcome 4 (cancelled), unless it finished first."""
    def is_queued(self, id: int) -> bool:
        """Returns whether task ``id`` still waits in the pool's queue."""
    def cancel_all(self) -> list[int]:
        """Removes every task no worker has yet and returns their ids."""
    def cancel_waiting(self) -> list[int]:
        """Removes every task no worker has yet and returns their ids, as ``cancel_all``; then
        the dispatcher cancels every task a worker holds but has not started, on its next turn:
        each is skipped by its worker and ends with outcome 4 (cancelled). Running tasks are left
        to finish."""
    def close(self, *, abort: bool = False) -> None:
        """Stops accepting tasks; queued ones still run, then workers exit. With ``abort``,
        kills the workers now and reports every unfinished task as cancelled. Returns
        immediately."""
    def join(self, timeout: float | None = None) -> bool:
        """Waits for the dispatcher to end after ``close``; returns False on timeout. Ctrl-C
        interrupts the wait (``KeyboardInterrupt``; it waits in slices without the GIL)."""
    def stats(self, timeout: float = 1.0) -> list[dict[str, Any]]:
        """Returns one dict per worker slot: ``worker`` (slot number), ``pid`` (None between
        processes), ``tasks``, ``failed`` (of those, raised), ``alive_us`` (time ready),
        ``busy_us`` (sum of run times measured in the worker), ``max_task_us``,
        ``serialize_us`` (part of busy spent pickling in the worker), ``transport_us`` (time
        the worker held work beyond its run time), ``restarts`` and ``recent_restarts`` (the last
        16 as dicts of ``cause``, ``pid``, ``exitcode``, ``signal``). Waits up to ``timeout``
        seconds for the dispatcher's fresh snapshot, then returns the latest one."""
    @property
    def sampled_loads_ns(self) -> int:
        """Nanoseconds spent unpickling the results of tasks whose id is a multiple of
        ``SERIALIZE_SAMPLE_EVERY``."""
    def deliver(
        self,
        futures: dict[int, _F],
        loads: Callable[[bytes], Any],
        settle: Callable[[_F, int, Any, BaseException | None], None],
        logs: Callable[[list[tuple[int, int, bytes]], int], None] | None = None,
    ) -> bool:
        """Waits for the next batch of outcomes (without the GIL) and delivers it: each task's
        future is popped from ``futures`` by id; a returned value is unpickled with ``loads`` (with
        ``buffers=`` the result's out-of-band buffers as ``SharedBuffer`` objects, if any) and
        set on the future (in Rust, when nobody waits on it and it has no callbacks); every other
        outcome, or a ``loads`` failure, goes to ``settle(future, code, detail, error)``: ``code``
        ``OUTCOME_RETURNED`` (detail is the payload, error the ``loads`` or ``set_result``
        failure), ``OUTCOME_RAISED`` (the payload), ``OUTCOME_WORKER_DIED`` (detail is
        ``(pid, exit_code, signal, stderr_tail, reason)``, ``reason`` saying why the pool stopped
        the worker, or None if it died by itself), ``OUTCOME_BROKEN`` (the reason as bytes),
        ``OUTCOME_CANCELLED`` (cancelled, or stopped by ``close(abort=True)``: detail is None) or
        ``OUTCOME_TIMED_OUT`` (detail is ``(pid, timeout_seconds)``). Log records the
        workers sent come first, to ``logs(records, dropped)``: ``[(worker, pid, payload)]`` and
        how many were dropped because too many waited. Returns False once the pool has ended."""

@final
class WorkerConnection:
    """The worker's end of its socket to the parent."""

    def __new__(cls, fd: int) -> WorkerConnection:
        """Takes ownership of the inherited socket descriptor ``fd``."""
    def recv(self) -> tuple[int, int, bytes, list[SharedBuffer] | None, int] | None:
        """Returns the next frame as ``(kind, id, payload, buffers, flags)``, or None when the
        parent has gone. ``buffers`` is None or the task's out-of-band buffers, mapped
        copy-on-write. Flushes queued frames before blocking; skips tasks the parent cancelled
        (a ``Cancel`` for a task already handed out is returned, for the worker to act on)."""
    def sender(self) -> WorkerSender:
        """Returns a handle through which other threads send frames on this connection."""
    def send(
        self, kind: int, id: int, payload: bytes, aux: int = 0, buffers: list[Any] | None = None, flags: int = 0
    ) -> None:
        """Queues a frame; writes it now unless more tasks are buffered and the batch is younger
        than 1 ms and smaller than 256 KiB. ``aux`` is the task's run time in microseconds,
        ``flags`` the share of it spent pickling, in 255ths."""
    def flush(self) -> None:
        """Writes every queued frame now."""
    def log_sender(self) -> LogSender:
        """Returns a ``LogSender`` on this connection, usable from any thread."""

@final
class LogSender:
    """Sends log records to the parent from any thread of a worker."""

    def send(self, payload: bytes) -> None:
        """Queues a ``Log`` frame; it leaves within a millisecond. Blocks only while 256 KiB are
        queued and the socket is full; raises ``OSError`` once the parent has gone."""

@final
class ThreadWorkQueue:
    """The task queue and worker loop of ``ThreadPool``: ``(future, fn, args, kwargs)`` items in
    a Rust queue; popping holds the GIL while work is queued and releases it only to block."""

    def __new__(cls, max_threads: int) -> ThreadWorkQueue: ...
    def put(
        self,
        future: Future[Any],
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any] | None = None,
    ) -> bool:
        """Queues a task; returns True when the caller should start another worker thread (no
        thread is idle and fewer than ``max_threads`` exist). Raises ``RuntimeError`` if closed."""
    def get(
        self, timeout: float | None = None
    ) -> tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]] | None:
        """Pops a task, blocking up to ``timeout`` seconds; None on timeout or when closed and empty."""
    def run_worker(self) -> None:
        """Runs tasks in the calling thread until the queue is closed and empty."""
    def stats(self) -> list[tuple[int, int, int]]:
        """Returns ``(tasks, busy_ns, max_task_ns)`` per thread that has run ``run_worker``."""
    def close(self) -> None:
        """Refuses new tasks and wakes every waiting worker; queued tasks can still be taken."""
    def drain(self) -> list[tuple[Future[Any], Callable[..., Any], tuple[Any, ...], dict[str, Any]]]:
        """Removes and returns every queued task."""
    @property
    def idle(self) -> int:
        """Worker threads blocked waiting for a task."""
    def wait_idle(self, n: int, timeout: float) -> bool:
        """Blocks until at least ``n`` worker threads are idle or ``timeout`` seconds pass;
        returns whether they are."""
    @property
    def threads(self) -> int:
        """Worker threads reserved so far."""
    @property
    def max_threads(self) -> int: ...
    @property
    def closed(self) -> bool: ...
    def __len__(self) -> int: ...

_T = TypeVar("_T")
_A = TypeVar("_A")

@final
class PrefixedMap(Iterator[_T], Generic[_T]):
    """``PrefixedMap(values, func, iterable)``: yields the items of the list ``values``, then
    ``func(item)`` for each item of ``iterable``, computed as they are asked for; what
    ``itertools.chain(values, map(func, iterable))`` yields, at the cost per item of the built-in
    ``map`` (the iterator of ``Pool(strategy="auto").map`` when it runs serially). An exception
    from ``func`` or the iterable is raised at that item; iterating again goes on with the next.
    Raises ``TypeError`` at construction if ``values`` is not a list, ``func`` not callable or
    ``iterable`` not iterable."""

    def __new__(cls, values: list[_T], func: Callable[[_A], _T], iterable: Iterable[_A], /) -> PrefixedMap[_T]: ...
    def __iter__(self) -> Self: ...
    def __next__(self) -> _T: ...

def runqueue_wait_ns() -> int | None:
    """Nanoseconds the calling thread has been runnable but not running, from Linux's
    ``schedstat``; None where it cannot be read. Reads without releasing the GIL (see
    ``_auto.measure.runqueue_wait_s``)."""

# ---------------------------------------------------------------- shared memory (ferropool.shared)
# Each class keeps one object's state in an anonymous memory file (memfd). ``_attach=(fd, id)``
# maps an existing one instead of creating it: the class takes ownership of ``fd`` (which must
# have been opened for it alone) and checks that the file holds that kind of object with that
# id; the other arguments are then ignored. ``_fd`` and ``_id`` are what ``ferropool.shared``
# pickles. Blocking methods release the GIL and run signal handlers every 50 ms. The public
# classes, with the user docs, are the subclasses in ``ferropool.shared``.

class OwnerDiedWarning(RuntimeWarning):
    """Warned by an acquire that took over a shared lock from a process that died holding it."""

@disjoint_base
class SharedLock:
    """A robust lock in shared memory (``threading.Lock`` API)."""

    def __new__(cls, *, _attach: tuple[int, int] | None = None) -> Self: ...
    def acquire(self, blocking: bool = True, timeout: float = ...) -> bool:
        """Returns whether the lock was acquired; takes over a dead holder's lock (then warns
        ``OwnerDiedWarning`` and sets ``owner_died``)."""
    def release(self) -> None:
        """Raises ``RuntimeError`` if the lock is not held."""
    def locked(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, _exc_type: object, _exc: object, _tb: object, /) -> None: ...
    @property
    def owner_died(self) -> bool:
        """Whether the last acquire through this object took the lock over from a dead process."""
    @property
    def _fd(self) -> int: ...
    @property
    def _id(self) -> int: ...

@disjoint_base
class SharedRLock:
    """A robust recursive lock in shared memory (``threading.RLock`` API)."""

    def __new__(cls, *, _attach: tuple[int, int] | None = None) -> Self: ...
    def acquire(self, blocking: bool = True, timeout: float = ...) -> bool: ...
    def release(self) -> None:
        """Raises ``RuntimeError`` unless the calling thread holds the lock."""
    def _is_owned(self) -> bool: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, _exc_type: object, _exc: object, _tb: object, /) -> None: ...
    @property
    def owner_died(self) -> bool: ...
    @property
    def _fd(self) -> int: ...
    @property
    def _id(self) -> int: ...

@disjoint_base
class SharedEvent:
    """An event flag in shared memory (``threading.Event`` API)."""

    def __new__(cls, *, _attach: tuple[int, int] | None = None) -> Self: ...
    def is_set(self) -> bool: ...
    def set(self) -> None: ...
    def clear(self) -> None: ...
    def wait(self, timeout: float | None = None) -> bool:
        """Blocks until set or ``timeout`` seconds pass; returns the flag."""
    @property
    def _fd(self) -> int: ...
    @property
    def _id(self) -> int: ...

@disjoint_base
class SharedSemaphore:
    """A counting semaphore in shared memory (``threading.Semaphore`` API); ``bounded`` makes
    ``release`` past the initial value raise ``ValueError``."""

    def __new__(cls, value: int = 1, *, bounded: bool = False, _attach: tuple[int, int] | None = None) -> Self: ...
    def acquire(self, blocking: bool = True, timeout: float | None = None) -> bool: ...
    def release(self, n: int = 1) -> None: ...
    def get_value(self) -> int: ...
    def __enter__(self) -> bool: ...
    def __exit__(self, _exc_type: object, _exc: object, _tb: object, /) -> None: ...
    @property
    def _bounded(self) -> bool: ...
    @property
    def _fd(self) -> int: ...
    @property
    def _id(self) -> int: ...

@disjoint_base
class SharedBarrier:
    """A barrier in shared memory (``threading.Barrier`` API, raising
    ``threading.BrokenBarrierError``)."""

    def __new__(
        cls,
        parties: int,
        action: Callable[[], object] | None = None,
        timeout: float | None = None,
        *,
        _attach: tuple[int, int] | None = None,
    ) -> Self: ...
    def wait(self, timeout: float | None = None) -> int:
        """Returns this arrival's index; a timeout, failing action or interrupt breaks the barrier."""
    def reset(self) -> None: ...
    def abort(self) -> None: ...
    @property
    def parties(self) -> int: ...
    @property
    def n_waiting(self) -> int: ...
    @property
    def broken(self) -> bool: ...
    @property
    def _action(self) -> Callable[[], object] | None: ...
    @property
    def _timeout(self) -> float | None: ...
    @property
    def _fd(self) -> int: ...
    @property
    def _id(self) -> int: ...

@disjoint_base
class SharedQueue:
    """A bounded queue of pickled items in shared memory (``queue.Queue`` API, raising
    ``queue.Full``/``queue.Empty``)."""

    def __new__(
        cls,
        maxsize: int = 0,
        *,
        capacity_bytes: int = ...,
        _attach: tuple[int, int] | None = None,
        _spill: int | None = None,
    ) -> Self:
        """``_attach`` and ``_spill`` (both or neither) hand over descriptors of another
        process's queue segment and spill file, which the new object then owns."""
    def put(self, item: object, block: bool = True, timeout: float | None = None) -> None: ...
    def put_nowait(self, item: object) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None) -> Any: ...
    def get_nowait(self) -> Any: ...
    def qsize(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    @property
    def maxsize(self) -> int: ...
    @property
    def capacity_bytes(self) -> int: ...
    @property
    def _fd(self) -> int: ...
    @property
    def _id(self) -> int: ...
    @property
    def _spill_fd(self) -> int: ...

@disjoint_base
class SharedValue:
    """A number in shared memory: atomic ``value``, ``add`` (returns the new value, integers wrap)
    and ``compare_and_swap`` (returns whether it swapped)."""

    def __new__(cls, typecode: str, value: object | None = None, *, _attach: tuple[int, int] | None = None) -> Self: ...
    @property
    def value(self) -> Any: ...
    @value.setter
    def value(self, value: Any) -> None: ...
    def add(self, n: object | None = None) -> Any: ...
    def compare_and_swap(self, expected: object, new: object) -> bool: ...
    @property
    def typecode(self) -> str: ...
    @property
    def _fd(self) -> int: ...
    @property
    def _id(self) -> int: ...

@final
class SharedMemory:
    """``size`` zero-filled bytes of shared memory, starting ``offset`` bytes into the memory file."""

    def __new__(cls, size: int, *, _attach: tuple[int, int] | None = None) -> SharedMemory: ...
    @property
    def size(self) -> int: ...
    @property
    def offset(self) -> int: ...
    @property
    def _fd(self) -> int: ...
    @property
    def _id(self) -> int: ...

@final
class SharedBuffer:
    """A buffer received from another process: a memory file mapped into this one. Exports its
    bytes, writable, through the buffer protocol (``memoryview(buf)``, ``numpy.frombuffer``); the
    mapping is released when the last object using it goes."""

    def __len__(self) -> int: ...

def drop_spare_buffers() -> int:
    """Closes the memory files this process keeps for reuse (up to 16 files and 256 MiB, each
    for at most 2 s after its last use; a buffer's next memory file is copied into a spare one
    at memcpy speed instead of being allocated page by page). Returns how many were closed."""

def trim_spare_buffers() -> int:
    """Closes the memory files and mappings this process keeps for reuse that have been unused
    for more than 2 s, and returns how many; the others stay. Cheap enough for an idle loop: it
    does nothing within 250 ms of the last trim. A pool's dispatcher calls it on its idle tick."""

@final
class WorkerSender:
    """Sends frames on a worker's connection from any thread (tasks run concurrently)."""

    def send(
        self, kind: int, id: int, payload: bytes, aux: int = 0, buffers: list[Any] | None = None, hold: bool = False
    ) -> None:
        """Sends a frame with its out-of-band buffers; with ``hold`` it may wait up to 1 ms to
        share a write with the frames that follow. Releases the GIL while writing."""
