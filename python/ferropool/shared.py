"""Objects shared by every thread of every process: pass them to tasks as arguments.

``Lock``, ``RLock``, ``Event``, ``Semaphore``, ``BoundedSemaphore``, ``Barrier``, ``Queue`` and
``Value`` behave like their ``threading`` / ``queue`` / ``multiprocessing`` namesakes, and
``Array`` gives a numpy array whose memory every process reads and writes in place::

    from ferropool import ProcessPool, shared

    def work(counter, lock, i):
        counter.add(i)               # atomic, no lock needed
        with lock:                   # one process at a time
            ...

    counter, lock = shared.Value("q", 0), shared.Lock()
    with ProcessPool() as pool:
        list(pool.map(work, [counter] * 10, [lock] * 10, range(10)))
    assert counter.value == 45

How it works (``docs/shared-memory.md``)::

    creator process                       worker process
    Lock() ── memfd_create ── mmap         pickle.loads(..)
      │  state in an anonymous memory        └─ _rebuild ─ _reopen_segment(pid, fd)
      │  file: no name under /dev/shm               os.open("/proc/<pid>/fd/<fd>")
      └─ __reduce__ -> (pid, fd, id) ──────────────► mmap of the same memory file

Each object's state lives in its own anonymous memory file, mapped shared; waiting sleeps on
futexes in that memory, so a waiter costs nothing and is woken by any process. The memory is
freed by the kernel when the last process holding it closes it or exits: nothing to clean up,
nothing left behind when a process is killed.

Crossing processes: an object pickles as (sender's pid, its descriptor number, the segment's
random id); the receiver opens ``/proc/<pid>/fd/<n>``. So **the sending process must be alive
while the object is unpickled** (true for arguments sent to a pool's workers and results sent
back), and may not run under a different user. Within one process, unpickling returns the object
that is already there. All threads of a process share one object without pickling.

Blocking calls release the GIL and wake every 50 ms to run signal handlers, so Ctrl-C interrupts
a blocked ``acquire``, ``wait``, ``put`` or ``get`` with ``KeyboardInterrupt``.
"""

from __future__ import annotations

import os
import threading
import weakref

from . import _core
from ._core import OwnerDiedWarning

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, SupportsIndex

__all__ = [
    "Array",
    "Barrier",
    "BoundedSemaphore",
    "Event",
    "Lock",
    "OwnerDiedWarning",
    "Queue",
    "RLock",
    "SegmentUnavailableError",
    "Semaphore",
    "Value",
]


class SegmentUnavailableError(OSError):
    """Raised when unpickling a shared object whose memory can no longer be reached: the process
    that pickled it has exited (or closed it), or runs as another user. Pickle shared objects only
    to processes that unpickle them while the sender is alive, e.g. as a task's arguments."""


#: Objects of this process by segment id, so that unpickling one here returns it.
_live: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
#: Makes "look up, else map and register" one step, so that two threads unpickling the same
#: object get the same one (reentrant: restoring an object's state may unpickle another).
_live_lock = threading.RLock()


def _reopen_segment(pid: int, fd: int) -> int:
    """Return a new descriptor (close-on-exec) of the memory file that process ``pid`` holds as
    descriptor ``fd``. The one place that knows how a segment crosses processes."""
    if pid == os.getpid():
        return os.dup(fd)
    try:
        return os.open(f"/proc/{pid}/fd/{fd}", os.O_RDWR | os.O_CLOEXEC)
    except OSError as exc:
        raise SegmentUnavailableError(
            exc.errno,
            f"cannot reach shared memory held by process {pid} as descriptor {fd}: {exc.strerror}"
            " (the sender must be alive while the object is unpickled)",
        ) from exc


def _core_base(cls: type) -> type:
    for base in cls.__mro__:
        if base.__module__ == "ferropool._core":
            return base
    raise TypeError(f"{cls.__name__} is not a shared object class")


def _rebuild(cls: type, pid: int, fd: int, segment_id: int, args: tuple[Any, ...], state: Any = None) -> Any:
    """Unpickle a shared object: the one already in this process, or a new mapping of it."""
    with _live_lock:
        obj = _live.get(segment_id)
        if obj is None or type(obj) is not cls:
            obj = _core_base(cls).__new__(cls, *args, _attach=(_reopen_segment(pid, fd), segment_id))
            _live[segment_id] = obj
            if state is not None:
                obj._set_state(state)
        return obj


class _Shared:
    """Pickling by reference to the segment (see the module docstring)."""

    __slots__ = ()
    _fd: int
    _id: int

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        _live[self._id] = self

    def _args(self) -> tuple[Any, ...]:
        return ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), os.getpid(), self._fd, self._id, self._args()))

    def __repr__(self) -> str:
        return f"<ferropool.shared.{type(self).__name__} fd={self._fd} {self._describe()}>"

    def _describe(self) -> str:
        return ""


class Lock(_Shared, _core.SharedLock):
    """A lock shared by processes: ``threading.Lock``'s API, robust against a dying holder.

    ``acquire(blocking=True, timeout=-1)`` blocks (GIL released) until the lock is free, at most
    ``timeout`` seconds (``-1``: no limit), and returns whether it got the lock; with
    ``blocking=False`` it does not wait. Any thread of any process may ``release`` it;
    releasing an unlocked lock raises ``RuntimeError``. ``locked()`` tells whether it is held.

    If the holder process dies (a crashed worker), the lock is not lost: the next ``acquire``
    (after at most 100 ms of waiting, or at once with ``blocking=False``) takes it over, returns
    True, warns ``OwnerDiedWarning`` and sets ``owner_died`` to True (until an acquire through
    this object finds the lock cleanly released). The data the lock protects may be
    half-updated: check it. A thread that exits holding the lock in a live process is not
    detected, as with ``threading.Lock``.
    """

    __slots__ = ()

    def _describe(self) -> str:
        return "locked" if self.locked() else "unlocked"


class RLock(_Shared, _core.SharedRLock):
    """A recursive lock shared by processes: ``threading.RLock``'s API.

    The thread that holds it may acquire it again; it is free after as many ``release`` calls.
    Only the holder may release (``RuntimeError`` otherwise). ``acquire(blocking=True,
    timeout=-1)`` and the dead-holder take-over (``owner_died``, ``OwnerDiedWarning``) are as
    for ``Lock``; a taken-over RLock is held once.
    """

    __slots__ = ()

    def _describe(self) -> str:
        return "owned" if self._is_owned() else ""


class Event(_Shared, _core.SharedEvent):
    """An event flag shared by processes: ``threading.Event``'s API.

    ``set()`` wakes every waiter in every process; ``clear()`` resets the flag;
    ``wait(timeout=None)`` blocks (GIL released) until the flag is set or ``timeout`` seconds
    pass and returns the flag.
    """

    __slots__ = ()

    def _describe(self) -> str:
        return "set" if self.is_set() else "unset"


class Semaphore(_Shared, _core.SharedSemaphore):
    """A counting semaphore shared by processes: ``threading.Semaphore``'s API.

    ``acquire(blocking=True, timeout=None)`` takes one unit, blocking (GIL released) while there
    is none, at most ``timeout`` seconds, and returns whether it got one; ``release(n=1)`` gives
    ``n`` back and wakes waiters. ``get_value()`` returns the units available. A holder that
    dies does not give its unit back.
    """

    __slots__ = ()

    def __new__(cls, value: int = 1) -> Semaphore:
        return _core.SharedSemaphore.__new__(cls, value)

    def _describe(self) -> str:
        return f"value={self.get_value()}"


class BoundedSemaphore(Semaphore):
    """A ``Semaphore`` whose ``release`` raises ``ValueError`` rather than pass the initial
    value, like ``threading.BoundedSemaphore``."""

    __slots__ = ()

    def __new__(cls, value: int = 1) -> BoundedSemaphore:
        return _core.SharedSemaphore.__new__(cls, value, bounded=True)


class Barrier(_Shared, _core.SharedBarrier):
    """A barrier shared by processes: ``threading.Barrier``'s API.

    ``wait(timeout=None)`` blocks (GIL released) until ``parties`` threads, in any processes,
    have called it, and returns a distinct index in ``range(parties)``; the last to arrive runs
    ``action`` first (so ``action`` must pickle to reach other processes). A timeout (the
    argument, else the constructor's), a failing action or an interrupt breaks the barrier:
    every waiter raises ``threading.BrokenBarrierError``, as does every ``wait`` until
    ``reset()``. ``abort()`` breaks it; ``n_waiting`` and ``broken`` report its state.
    """

    __slots__ = ()

    def _args(self) -> tuple[Any, ...]:
        return (self.parties, self._action, self._timeout)

    def _describe(self) -> str:
        return "broken" if self.broken else f"waiters={self.n_waiting}/{self.parties}"


class Queue(_Shared, _core.SharedQueue):
    """A bounded FIFO queue shared by threads and processes: ``queue.Queue``'s API.

    Items are pickled into a ring of ``capacity_bytes`` bytes (default 4 MiB) in shared memory.
    Large buffers inside an item (numpy arrays, ``bytearray``, anything that pickles with
    protocol-5 ``PickleBuffer`` objects) of 64 KiB or more are not copied into the ring: they are
    written once into the queue's own memory file and the consumer's array is mapped straight
    from it (writable; its memory is freed when the consumer drops it). A consumer that dies
    holding such an array, or a producer that dies between writing the buffer and queueing the
    item, leaves that memory in use until every process has closed the queue.
    ``put(item, block=True, timeout=None)`` blocks (GIL released) while ``maxsize`` items
    (``maxsize <= 0``: no limit but the bytes) or ``capacity_bytes`` are queued, and raises
    ``queue.Full`` after ``timeout`` seconds or at once with ``block=False``; an item whose
    pickle, without those large buffers, is more than ``capacity_bytes - 4`` bytes raises
    ``ValueError`` (large ``bytes`` and ``str`` stay in the pickle).
    ``get(block=True, timeout=None)`` removes the oldest item, raising ``queue.Empty`` likewise.
    ``put_nowait``/``get_nowait``, ``qsize()``, ``empty()`` and ``full()`` are as in ``queue``
    (the sizes are snapshots). Every item is delivered exactly once, in the order of the puts,
    unless its consumer dies while taking it. A producer or consumer that dies in the middle
    of a call leaves the queue consistent.
    """

    __slots__ = ()

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_queue, (type(self), os.getpid(), self._fd, self._id, self._spill_fd))

    def _describe(self) -> str:
        return f"qsize={self.qsize()} maxsize={self.maxsize}"


def _rebuild_queue(cls: type[Queue], pid: int, fd: int, segment_id: int, spill_fd: int) -> Queue:
    """Unpickle a ``Queue``: as ``_rebuild``, with the queue's spill file beside its segment."""
    with _live_lock:
        obj = _live.get(segment_id)
        if obj is None or type(obj) is not cls:
            spill = _reopen_segment(pid, spill_fd)
            try:
                segment = _reopen_segment(pid, fd)
            except BaseException:
                os.close(spill)
                raise
            obj = _core.SharedQueue.__new__(cls, _attach=(segment, segment_id), _spill=spill)
            _live[segment_id] = obj
        return obj


_TYPES = {int: "q", float: "d"}


def _typecode(typecode_or_type: Any) -> str:
    if isinstance(typecode_or_type, str):
        return typecode_or_type
    if typecode_or_type in _TYPES:
        return _TYPES[typecode_or_type]
    code = getattr(typecode_or_type, "_type_", None)  # a ctypes simple type such as c_int
    if isinstance(code, str):
        return code
    raise TypeError(f"expected a typecode, int, float or a ctypes number type, got {typecode_or_type!r}")


class Value(_Shared, _core.SharedValue):
    """A number shared by processes, with atomic operations; like ``multiprocessing.Value``.

    ``Value(typecode_or_type="q", value=0, *, lock=True)``: ``typecode_or_type`` is an
    ``array`` type code (``b B h H i I l L q Q f d``), ``int`` (``q``), ``float`` (``d``) or a
    ctypes number type. ``.value`` reads and writes atomically; storing an integer outside the
    type's range raises ``OverflowError``.

    ``add(n=1)`` adds atomically and returns the **new** value (integers wrap around at the
    type's width, as in C). ``compare_and_swap(expected, new)`` stores ``new`` only if the value
    equals ``expected`` (floats: bit for bit) and returns whether it did. Neither needs a lock
    and neither blocks. ``v.value += 1`` is *not* atomic (a read, then a write): use ``add``,
    or hold ``get_lock()``, a shared ``RLock`` made with the value (absent with ``lock=False``).
    """

    __slots__ = ("_lock",)
    _lock: RLock | None

    def __new__(cls, typecode_or_type: Any = "q", value: Any = 0, *, lock: Any = True) -> Value:
        self = _core.SharedValue.__new__(cls, _typecode(typecode_or_type), value)
        self._lock = RLock() if lock is True else (lock or None)
        return self

    def get_lock(self) -> RLock:
        """Return the shared lock made with this value; ``AttributeError`` with ``lock=False``."""
        if self._lock is None:
            raise AttributeError("this Value was made with lock=False and has no lock")
        return self._lock

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), os.getpid(), self._fd, self._id, (self.typecode,), self._lock))

    def _set_state(self, lock: RLock | None) -> None:
        self._lock = lock

    def _describe(self) -> str:
        return f"{self.typecode} {self.value!r}"


# ------------------------------------------------------------------ Array (needs numpy)

_array_class: Any = None


def _numpy() -> Any:
    try:
        import numpy
    except ImportError as exc:
        raise ImportError("ferropool.shared.Array needs numpy: pip install 'ferropool[numpy]'") from exc
    return numpy


class _Memory:
    """The shared bytes of an array: the segment (its descriptor, for pickling) and the mmap
    that numpy views; freed when the last array viewing it is."""

    __slots__ = ("__weakref__", "address", "mmap", "segment")

    def __init__(self, segment: Any) -> None:
        import mmap

        np = _numpy()
        self.segment = segment
        self.mmap = mmap.mmap(segment._fd, segment.offset + max(segment.size, 1))
        self.address = np.frombuffer(self.mmap, np.uint8).__array_interface__["data"][0] + segment.offset


def _shared_array_class() -> Any:
    global _array_class
    if _array_class is not None:
        return _array_class
    with _live_lock:  # one class per process, or isinstance would tell arrays apart
        return _make_shared_array_class()


def _make_shared_array_class() -> Any:
    global _array_class
    if _array_class is None:
        np = _numpy()

        # numpy is imported on first use, so its class is not a static base here.
        class SharedArray(np.ndarray):  # type: ignore[misc,name-defined]
            """A numpy array in shared memory (see ``ferropool.shared.Array``). Views of it
            pickle by reference too; arrays computed from it are ordinary copies."""

            def __array_finalize__(self, obj: Any) -> None:
                self._memory = getattr(obj, "_memory", None)

            def __reduce_ex__(self, protocol: SupportsIndex) -> Any:
                view = _segment_view(self)
                if view is None:
                    return np.asarray(self).__reduce_ex__(protocol)
                return (_rebuild_array, view)

            def __reduce__(self) -> Any:
                return self.__reduce_ex__(2)

        _array_class = SharedArray
    return _array_class


def _segment_view(a: Any) -> tuple[Any, ...] | None:
    """Return ``(pid, fd, id, dtype, shape, strides, offset)`` if ``a`` lies in its segment."""
    memory = getattr(a, "_memory", None)
    if memory is None:
        return None
    start = a.__array_interface__["data"][0] - memory.address
    lo = hi = start
    for n, stride in zip(a.shape, a.strides, strict=True):
        if n == 0:
            lo, hi = start, start - a.itemsize
            break
        if stride > 0:
            hi += (n - 1) * stride
        else:
            lo += (n - 1) * stride
    if lo < 0 or hi + a.itemsize > memory.segment.size:
        return None
    seg = memory.segment
    return (os.getpid(), seg._fd, seg._id, a.dtype, a.shape, a.strides, start)


def _view(memory: _Memory, dtype: Any, shape: tuple[int, ...], strides: Any, offset: int) -> Any:
    np = _numpy()
    base = np.ndarray(shape, dtype, buffer=memory.mmap, offset=memory.segment.offset + offset, strides=strides)
    arr = base.view(_shared_array_class())
    arr._memory = memory
    return arr


def _rebuild_array(
    pid: int, fd: int, segment_id: int, dtype: Any, shape: tuple[int, ...], strides: tuple[int, ...], offset: int
) -> Any:
    memory = _live.get(segment_id)
    if memory is None:
        segment = _core.SharedMemory(0, _attach=(_reopen_segment(pid, fd), segment_id))
        memory = _Memory(segment)
        _live[segment_id] = memory
    return _view(memory, dtype, shape, strides, offset)


def Array(shape: Any, dtype: Any = float) -> Any:
    """Return a zero-filled numpy array of ``shape`` and ``dtype`` in shared memory.

    Passed to a task (pickled), it arrives as a view of the same memory: writes by any process
    are seen by all, with no copy. Slices and other views of it pickle the same way; arrays
    computed from it (``a + 1``) are ordinary copies. Numpy does no locking: coordinate writers
    with a ``Lock`` or by giving each task its own slice. Object dtypes are refused
    (``TypeError``). Needs numpy (``ImportError`` naming it otherwise).
    """
    np = _numpy()
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        raise TypeError("an Array of Python objects cannot be shared; use a numeric dtype")
    shape = tuple(shape) if np.iterable(shape) else (int(shape),)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    memory = _Memory(_core.SharedMemory(nbytes))
    _live[memory.segment._id] = memory
    return _view(memory, dtype, shape, None, 0)
