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
  holding its ``authkey``, over a ``multiprocessing.connection`` socket (``_FdServer``, like
  ``multiprocessing.resource_sharer`` but serving each descriptor as often as asked, since every
  worker the pool starts, replacements included, unpickles the same start data).

Workers take the parent's ``multiprocessing`` ``authkey`` (``parent_authkey``), as spawned
processes do, so that they can also reach a ``Manager``'s server through the proxies passed to tasks.

Semaphores made by the ``fork`` context (the default one on Linux before Python 3.14) are
unlinked as soon as they are made, so no process that was not forked from their maker can open
them; ``dumps_for_start`` names the argument and the way out (a ``spawn`` or ``forkserver``
context) instead.
"""

from __future__ import annotations

import itertools
import os
import sys
import threading
from typing import Any, ClassVar

from .errors import SerializationError


class SharedFd:
    """A descriptor of the parent, fetched from its ``_FdServer`` by ``detach`` (what
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


class _FdServer:
    """Serves duplicates of descriptors to processes that hold this process's ``authkey``."""

    def __init__(self) -> None:
        from multiprocessing.connection import Listener
        from multiprocessing.process import current_process

        self._listener = Listener(authkey=current_process().authkey)
        self._fds: dict[int, int] = {}
        self._keys = itertools.count(1)
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="ferropool-fd-server", daemon=True).start()

    def share(self, fd: int) -> SharedFd:
        key = next(self._keys)
        with self._lock:
            self._fds[key] = os.dup(fd)
        return SharedFd(self._listener.address, key)

    def release(self, keys: list[int]) -> None:
        with self._lock:
            for key in keys:
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
            with conn:
                try:
                    key, pid = conn.recv()
                    with self._lock:
                        fd = self._fds.get(key)
                        conn.send(fd is not None)
                        if fd is not None:
                            reduction.send_handle(conn, fd, pid)
                except (OSError, EOFError, ValueError, TypeError):
                    continue


_server: _FdServer | None = None
_server_pid = 0  # a forked child starts a server of its own
_server_lock = threading.Lock()


def _fd_server() -> _FdServer:
    global _server, _server_pid
    with _server_lock:
        if _server is None or _server_pid != os.getpid():
            _server, _server_pid = _FdServer(), os.getpid()
        return _server


class _Start:
    """Stands in for ``multiprocessing``'s spawning ``Popen`` while start data is pickled."""

    def __init__(self) -> None:
        self.keys: list[int] = []

    def duplicate_for_child(self, fd: int) -> int:
        return fd

    def DupFd(self, fd: int) -> SharedFd:  # multiprocessing's name
        shared = _fd_server().share(fd)
        self.keys.append(shared.key)
        return shared


def release(keys: list[int]) -> None:
    """Stops sharing the descriptors ``dumps_for_start`` shared (when their pool is gone)."""
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
        from ._worker import _after_import

        _chosen_authkey = key = os.urandom(32)

        def adopt(module: Any) -> None:
            module.current_process().authkey = key

        _after_import("multiprocessing.process", adopt)
    return _chosen_authkey


def dumps_for_start(obj: tuple[Any, tuple[Any, ...]], what: str) -> tuple[bytes, list[int]]:
    """Pickles a pool's ``(initializer, initargs)`` as spawn pickles a new process's data (see
    the module doc). Returns the pickle and the keys of the descriptors it shares (for
    ``release``); raises ``SerializationError`` naming the argument that cannot be sent."""
    if "multiprocessing.context" not in sys.modules:  # then none of its objects exist here
        from ._serialize import dumps

        return dumps(obj, what), []
    from collections import ChainMap
    from multiprocessing import context, reduction

    from . import _by_value

    class StartPickler(_by_value.Pickler):
        # ForkingPickler's own reducers (connections, sockets, arenas) come first.
        dispatch_table: ClassVar = ChainMap(
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
        message = f"{path}: {error}"
        if "fork context" in str(error):
            message = (
                f"{path}: a multiprocessing lock, queue or semaphore made by the 'fork' context cannot reach "
                "the pool's workers, which start as fresh interpreters as with the 'spawn' start method: "
                "make it with multiprocessing.get_context('spawn') (or 'forkserver')"
            )
        raise SerializationError(message) from exc
