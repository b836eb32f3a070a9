"""What a worker gets at start from ``multiprocessing``, as its ``spawn`` start method gives it.

``multiprocessing``'s synchronised objects (``Queue``, ``Lock``, ``Event``, ``Semaphore``,
``Value``, ``Array``...) pickle only while a process is being spawned
(``context.assert_spawning``): spawn pickles them into the new process's start data, their
semaphores by name and their pipes and shared memory by file descriptor, handed down with
``pass_fds``. A pool's initializer arguments are its workers' start data, so ``dumps_for_start``
pickles them the same way:

- inside ``multiprocessing.context.set_spawning_popen``, with ``_Start`` standing in for the
  spawning ``Popen``, and with ``ForkingPickler``'s reducers (connections, sockets, arenas);
- a descriptor becomes a ``SharedFd``: the parent keeps a duplicate and serves it, to any process
  holding its ``authkey``, over a ``multiprocessing.connection`` socket (``_Server``, like
  ``multiprocessing.resource_sharer`` but serving each descriptor as often as asked, since every
  worker the pool starts, replacements included, unpickles the same start data).

Workers take the parent's ``multiprocessing`` ``authkey`` (``parent_authkey``), as spawned
processes do, so that they can also reach a ``Manager``'s server through the proxies passed to tasks.

Semaphores made by the ``fork`` context (the default one on Linux before Python 3.14) are
unlinked as soon as they are made, so no process that was not forked from their maker can open
them. They travel as a ``SharedSemLock`` instead: the worker's lock, semaphore, queue or event
keeps its class and its Python code, and each operation on the semaphore underneath is carried
out by the parent, on the real one, by a thread that serves that worker thread alone (so a
recursive lock's owner is one worker thread, as it should be). It costs a round trip per
operation (tens of microseconds); a ``spawn`` or ``forkserver`` context's objects are used
directly.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
import time

from .errors import SerializationError

TYPE_CHECKING = False  # typing is not imported at run time: it costs a pool's start-up
if TYPE_CHECKING:
    from typing import Any, ClassVar


class SharedFd:
    """A descriptor of the parent, fetched from its ``_Server`` by ``detach`` (what
    ``multiprocessing.reduction.rebuild_connection`` and ``rebuild_arena`` call)."""

    def __init__(self, address: str, key: int) -> None:
        self.address, self.key = address, key

    def detach(self) -> int:
        """Returns a new descriptor for the shared one; raises ``OSError`` if the parent has
        stopped sharing it (its pool is gone)."""
        from multiprocessing import reduction
        from multiprocessing.connection import Client
        from multiprocessing.process import current_process

        with Client(self.address, authkey=current_process().authkey) as conn:
            conn.send((self.key, os.getpid()))
            if not conn.recv():
                raise OSError(f"the parent no longer shares descriptor #{self.key}")
            return reduction.recv_handle(conn)


class SharedSemLock:
    """Stands in, in a worker, for the ``_multiprocessing.SemLock`` of a lock or semaphore that
    the parent made with the ``fork`` context: every call is made by the parent on the real one
    (see the module doc). Each thread of the worker has one connection to the parent, for all
    such semaphores, served by a thread of its own there, whose identity is the owner a
    recursive lock records."""

    def __init__(self, address: str, key: int, kind: int, maxvalue: int, name: str | None) -> None:
        self._address, self._key = address, key
        self.kind, self.maxvalue, self.name = kind, maxvalue, name
        self.handle = None

    def __reduce__(self) -> tuple[Any, ...]:
        return SharedSemLock, (self._address, self._key, self.kind, self.maxvalue, self.name)

    def _call(self, op: str, *args: Any) -> Any:
        conn = _semlock_connection(self._address)
        conn.send((self._key, op, args))
        ok, value = conn.recv()
        if not ok:
            raise value
        return value

    def acquire(self, block: bool = True, timeout: float | None = None) -> bool:
        return bool(self._call("acquire", block, timeout))

    def release(self) -> None:
        self._call("release")

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _count(self) -> int:
        return int(self._call("_count"))

    def _is_mine(self) -> bool:
        return bool(self._call("_is_mine"))

    def _get_value(self) -> int:
        return int(self._call("_get_value"))

    def _is_zero(self) -> bool:
        return bool(self._call("_is_zero"))

    def _after_fork(self) -> None:
        """What ``multiprocessing.synchronize`` calls in a forked child: nothing left to do, as
        every fork already forgets this process's connections (``_forget_connections``)."""


#: This thread's connections to the parents' semaphore servers, by address.
_connections = threading.local()


def _forget_connections() -> None:
    """In a forked child: opens connections of its own from now on, since sharing the socket
    would mix the two processes' requests. Only the forking thread exists in the child, so its
    connections are all there are."""
    _connections.__dict__.clear()


os.register_at_fork(after_in_child=_forget_connections)


def _semlock_connection(address: str) -> Any:
    conns = _connections.__dict__
    conn = conns.get(address)
    if conn is None:
        from multiprocessing.connection import Client
        from multiprocessing.process import current_process

        conn = Client(address, authkey=current_process().authkey)
        conn.send(("semlocks", os.getpid()))
        conns[address] = conn
    return conn


def _rebuild_semlock(cls: Any, semlock: SharedSemLock) -> Any:
    """Builds, in a worker, a ``multiprocessing.synchronize`` lock or semaphore of class
    ``cls`` around ``semlock``, as its ``__setstate__`` does around a semaphore it opens."""
    obj = cls.__new__(cls)
    obj._semlock = semlock
    obj._make_methods()
    obj._is_fork_ctx = False
    return obj


# How long a parent thread acquiring for a worker waits at a time before it checks that the
# worker is still there: one that died must not get the semaphore afterwards.
_ACQUIRE_SLICE = 0.05


class _Server:
    """Serves, to processes that hold this process's ``authkey``, duplicates of descriptors
    and the operations of ``fork`` context semaphores (``SharedSemLock``)."""

    def __init__(self) -> None:
        from multiprocessing.connection import Listener
        from multiprocessing.process import current_process

        self._listener = Listener(authkey=current_process().authkey)
        self._fds: dict[int, int] = {}
        self._semlocks: dict[int, Any] = {}
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="ferropool-start-server", daemon=True).start()

    def share(self, fd: int) -> SharedFd:
        key = next(self._keys)
        with self._lock:
            self._fds[key] = os.dup(fd)
        return SharedFd(self._listener.address, key)

    def share_semlock(self, semlock: Any) -> SharedSemLock:
        key = next(self._keys)
        with self._lock:
            self._semlocks[key] = semlock
        return SharedSemLock(self._listener.address, key, semlock.kind, semlock.maxvalue, semlock.name)

    def release(self, keys: list[int]) -> None:
        with self._lock:
            for key in keys:
                self._semlocks.pop(key, None)
                fd = self._fds.pop(key, None)
                if fd is not None:
                    os.close(fd)

    def _serve(self) -> None:
        from multiprocessing import AuthenticationError, reduction

        while True:
            try:
                conn = self._listener.accept()
            except (AuthenticationError, EOFError, ConnectionError):
                continue  # a client without the key, or one that went away: not ours to serve
            except OSError:
                return
            try:
                request = conn.recv()
                if request[0] == "semlocks":
                    name = f"ferropool-semlock-{request[1]}"  # the worker's pid
                    threading.Thread(target=self._serve_semlocks, args=(conn,), name=name, daemon=True).start()
                    continue  # the connection is that thread's now
                key, pid = request
                with self._lock:
                    fd = self._fds.get(key)
                    conn.send(fd is not None)
                    if fd is not None:
                        reduction.send_handle(conn, fd, pid)
            except (OSError, EOFError, ValueError, TypeError, IndexError):
                pass
            conn.close()

    def _serve_semlocks(self, conn: Any) -> None:
        """Carries out one worker thread's calls on shared semaphores until it hangs up."""
        with conn:
            while True:
                try:
                    key, op, args = conn.recv()
                except (OSError, EOFError, ValueError, TypeError):
                    return
                with self._lock:
                    semlock = self._semlocks.get(key)
                try:
                    if semlock is None:
                        raise OSError(f"the parent no longer shares semaphore #{key}")
                    if op == "acquire":
                        value: Any = _acquire_for(conn, semlock, *args)
                        if value is None:
                            return  # the worker went while waiting
                    elif op in ("release", "_count", "_is_mine", "_get_value", "_is_zero"):
                        value = getattr(semlock, op)()
                    else:
                        raise ValueError(f"no semaphore operation {op!r}")
                    reply = (True, value)
                except Exception as exc:
                    reply = (False, exc)
                try:
                    conn.send(reply)
                except (OSError, EOFError):
                    if op == "acquire" and reply == (True, True) and semlock is not None:
                        semlock.release()  # the worker went before it heard it had it
                    return


def _acquire_for(conn: Any, semlock: Any, block: bool = True, timeout: float | None = None) -> bool | None:
    """Acquires ``semlock`` for the worker at the other end of ``conn``, as
    ``SemLock.acquire(block, timeout)`` would; None if the worker hung up while it waited (then
    nothing is acquired for it)."""
    if semlock.acquire(False):
        return True
    if not block:
        return False
    return _wait_for(conn, semlock, timeout)


def _wait_for(conn: Any, semlock: Any, timeout: float | None) -> bool | None:
    """``_acquire_for`` once the semaphore was not free: waits for it in slices, checking
    between them that the worker is still there."""
    deadline = None if timeout is None else time.monotonic() + max(0.0, timeout)
    while True:
        left = _ACQUIRE_SLICE if deadline is None else min(_ACQUIRE_SLICE, deadline - time.monotonic())
        if semlock.acquire(True, max(0.0, left)):
            if conn.poll(0):  # got it just as the worker went: not for anyone now
                semlock.release()
                return None
            return True
        if deadline is not None and time.monotonic() >= deadline:
            return False
        if conn.poll(0):  # it sends nothing while it waits for the answer: it hung up
            return None


_server: _Server | None = None
_server_pid = 0  # a forked child starts a server of its own
_server_lock = threading.Lock()


def _start_server() -> _Server:
    global _server, _server_pid
    with _server_lock:
        if _server is None or _server_pid != os.getpid():
            _server, _server_pid = _Server(), os.getpid()
        return _server


class _Start:
    """Stands in for ``multiprocessing``'s spawning ``Popen`` while start data is pickled."""

    def __init__(self) -> None:
        self.keys: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        return fd

    def DupFd(self, fd: int) -> SharedFd:  # multiprocessing's name
        shared = _start_server().share(fd)
        self.keys.append(shared.key)
        return shared

    def semlock(self, obj: Any) -> tuple[Any, ...]:
        """Reduces a ``multiprocessing.synchronize`` lock or semaphore: one made by the
        ``fork`` context as a ``SharedSemLock``, any other as spawn does."""
        if not getattr(obj, "_is_fork_ctx", False):
            return obj.__reduce_ex__(5)  # type: ignore[no-any-return]
        shared = _start_server().share_semlock(obj._semlock)
        self.keys.append(shared._key)
        return _rebuild_semlock, (type(obj), shared)


def release(keys: list[int]) -> None:
    """Stops sharing the descriptors and semaphores ``dumps_for_start`` shared (when their pool
    is gone)."""
    if keys and _server is not None and _server_pid == os.getpid():
        _server.release(keys)


_chosen_authkey: bytes | None = None


def parent_authkey() -> bytes:
    """Returns this process's ``multiprocessing`` ``authkey``, for the workers to take (a
    ``Manager`` made later uses the same). Without importing ``multiprocessing`` (about 14 ms
    of every start): until it is imported, the key is one chosen here, at random as
    ``multiprocessing`` chooses its own, and made its key when it is imported."""
    global _chosen_authkey
    module = sys.modules.get("multiprocessing.process")
    if module is not None:
        return bytes(module.current_process().authkey)
    if _chosen_authkey is None:
        from ._worker import _take_authkey

        _chosen_authkey = os.urandom(32)
        _take_authkey(_chosen_authkey)
    return _chosen_authkey


def dumps_for_start(obj: tuple[Any, tuple[Any, ...]], what: str) -> tuple[bytes, list[int]]:
    """Pickles a pool's ``(initializer, initargs)`` as spawn pickles a new process's data (see
    the module doc). Returns the pickle and the keys of the descriptors and semaphores it shares
    (for ``release``); raises ``SerializationError`` naming the argument that cannot be sent."""
    if "multiprocessing.context" not in sys.modules:  # then none of its objects exist here
        from ._serialize import dumps

        return dumps(obj, what), []
    from collections import ChainMap
    from multiprocessing import context, reduction

    from . import _by_value

    def reduce_semlock(obj: Any) -> tuple[Any, ...]:
        start = context.get_spawning_popen()
        assert isinstance(start, _Start)
        return start.semlock(obj)

    semlocks: dict[type, Any] = {}
    synchronize = sys.modules.get("multiprocessing.synchronize")
    if synchronize is not None:  # else none of its locks exist here
        for cls in (synchronize.Lock, synchronize.RLock, synchronize.Semaphore, synchronize.BoundedSemaphore):
            semlocks[cls] = reduce_semlock

    class StartPickler(_by_value.Pickler):
        # ForkingPickler's own reducers (connections, sockets, arenas) come first.
        dispatch_table: ClassVar = ChainMap(
            semlocks,
            reduction.ForkingPickler._extra_reducers,  # type: ignore[attr-defined]
            _by_value.Pickler.dispatch_table,
        )

    def pickled(part: Any, start: _Start) -> bytes:
        previous = context.get_spawning_popen()
        context.set_spawning_popen(start)  # type: ignore[arg-type]
        try:
            return _by_value.dumps(part, pickler=StartPickler)
        finally:
            context.set_spawning_popen(previous)

    start = _Start()
    try:
        return pickled(obj, start), start.keys
    except Exception as exc:
        release(start.keys)
        error: BaseException = exc
        path = what
        initializer, initargs = obj
        for name, part in [(f"{what}[0]", initializer)] + [(f"initargs[{i}]", a) for i, a in enumerate(initargs)]:
            probe = _Start()
            try:
                pickled(part, probe)
            except Exception as part_exc:
                error, path = part_exc, name
                break
            finally:
                release(probe.keys)
        raise SerializationError(f"{path}: {error}") from exc
