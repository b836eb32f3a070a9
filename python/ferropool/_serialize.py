"""Pickling of calls, results and exceptions between the parent and its workers.

Plain ``pickle`` first: it is fast and covers functions importable by module and name. Objects
the worker could not import that way — lambdas, closures, and anything defined in ``__main__``
or interactively — go through ``cloudpickle``, which pickles them by value. ``__main__`` is
detected by looking for its name in the plain pickle (a C-speed substring search), so the fast
path costs one extra scan and the slow path is taken only when needed.

Functions pickled by value are the common slow case (a ``map`` or ``submit`` loop over a
function from ``__main__``). Each such function is cloudpickled once per parent process and
sent as a ``_ByValue`` blob with a process-unique key; workers rebuild it once per key and
reuse it, so the per-task cost stays that of plain pickle. Functions pickled by value from one
module share one namespace in each worker, as the module would (``_by_value.py``).

When pickling fails, ``describe_failure`` walks the object to name the innermost part that
fails, so errors read ``args[1]['conn']: cannot pickle 'socket' object``.

Large buffers travel out of band (pickle protocol 5): numpy arrays and anything else that pickles
with ``PickleBuffer`` hand their buffers to ``buffer_callback``, and ``bytes``, ``bytearray`` and
``memoryview`` objects of at least the threshold, found among the arguments or in the result
(up to three levels of small tuples and lists deep), are wrapped so that they do too. Buffers
below the threshold stay in the pickle. The rest is the engine's job: each out-of-band buffer
goes into a memory file whose descriptor travels with the frame, and the receiver maps it and
rebuilds the objects on the mapping (``docs/shared-memory.md``, "Buffers").
"""

from __future__ import annotations

# The C module itself: ``pickle`` re-exports these very functions but imports re and enum,
# which would slow every worker's start. traceback is imported when an exception is sent.
import _pickle as pickle
import _thread
import itertools
import types
import weakref

from .errors import RemoteError, SerializationError

TYPE_CHECKING = False  # typing is not imported at run time: workers start faster without it
if TYPE_CHECKING:
    from typing import Any, SupportsIndex

PROTOCOL = 5
_MAIN = b"__main__"
_by_value_module = None

#: Buffers of at least this many bytes travel out of band, through shared memory, by default.
#: Below it, copying them inside the pickle is cheaper than a memory file (see
#: ``benchmarks/bench_zero_copy.py --sweep``).
DEFAULT_ZERO_COPY_THRESHOLD = 64 * 1024
#: The threshold this process uses for what it sends (a worker's is set by its pool).
zero_copy_threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD
_RAW_TYPES = (bytes, bytearray, memoryview)
#: Types among a call's arguments that make ``_wrap_raw`` worth calling (a C-speed test first).
_MAYBE_RAW = frozenset((bytes, bytearray, memoryview, tuple, list, dict))
_local = _thread._local()
#: Types that can hold no buffer: a call or result made only of them skips the buffer machinery
#: (a few hundred nanoseconds, which tiny tasks notice).
_ATOMIC = frozenset((int, float, str, bool, type(None), complex))
#: Containers longer than this are not searched for large bytes (a long list of small items is
#: the common case, and scanning it would cost more than it could save).
_SCAN_MAX_ITEMS = 64


class _Buffers(list):
    """``buffer_callback`` that keeps buffers of at least ``threshold`` bytes out of band."""

    __slots__ = ("threshold",)

    def __init__(self, threshold: int):
        super().__init__()
        self.threshold = threshold

    def __call__(self, buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: leave it in the pickle
            return True
        if raw.nbytes < self.threshold:
            return True
        self.append(raw)
        return False


class _Raw:
    """A large ``bytes``, ``bytearray`` or ``memoryview``, pickled with an out-of-band buffer."""

    __slots__ = ("obj",)

    def __init__(self, obj: Any):
        self.obj = obj

    def __reduce_ex__(self, protocol: SupportsIndex):
        obj = self.obj
        if type(obj) is memoryview:
            if not obj.contiguous:
                return (bytes, (obj.tobytes(),))
            return (_rebuild_memoryview, (pickle.PickleBuffer(obj), obj.format, obj.shape))
        return (_rebuild_bytes if type(obj) is bytes else bytearray, (pickle.PickleBuffer(obj),))


def _rebuild_bytes(buffer: Any) -> bytes:
    # A bytes object owns its memory: this is the one copy, out of the mapping.
    return bytes(buffer)


def _rebuild_memoryview(buffer: Any, fmt: str, shape: tuple) -> memoryview:
    view = memoryview(buffer)
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    # typeshed lists the format letters one by one; fmt is whatever the sender's view had.
    return view if fmt == "B" and len(shape) == 1 else view.cast(fmt, shape)  # type: ignore[call-overload]


def _collector(threshold: int) -> _Buffers:
    """This thread's (empty) buffer collector, reused from call to call: a new one costs more
    than pickling a small call."""
    buffers = getattr(_local, "buffers", None)
    if buffers is None:
        buffers = _local.buffers = _Buffers(threshold)
    buffers.threshold = threshold
    return buffers


def _taken(buffers: _Buffers) -> list | None:
    """The buffers collected (a list of their own), leaving the collector empty for reuse."""
    if not buffers:
        return None
    out = list(buffers)
    buffers.clear()
    return out


def _wrap_raw(obj: Any, threshold: int, depth: int = 3) -> Any:
    """Returns ``obj`` with large bytes-like objects wrapped in ``_Raw`` (the same object when
    there are none), looking into small tuples, lists and dict values ``depth`` levels deep."""
    kind = type(obj)
    if kind in _RAW_TYPES:
        return _Raw(obj) if (obj.nbytes if kind is memoryview else len(obj)) >= threshold else obj
    if depth == 0:
        return obj
    if kind is tuple or kind is list:
        if len(obj) > _SCAN_MAX_ITEMS:
            return obj
        items = [_wrap_raw(x, threshold, depth - 1) for x in obj]
        if all(a is b for a, b in zip(items, obj, strict=False)):
            return obj
        return tuple(items) if kind is tuple else items
    if kind is dict and len(obj) <= _SCAN_MAX_ITEMS:
        values = {k: _wrap_raw(v, threshold, depth - 1) for k, v in obj.items()}
        return obj if all(values[k] is v for k, v in obj.items()) else values
    return obj


def _cloud():
    """``_by_value``, imported on first need (it imports cloudpickle)."""
    global _by_value_module
    if _by_value_module is None:
        from . import _by_value as module

        _by_value_module = module
    return _by_value_module


def _plain(obj: Any, main_count: int = 0, buffers: _Buffers | None = None) -> bytes | None:
    """Returns ``obj`` plainly pickled, or None if that fails or refers to ``__main__`` (which the
    worker cannot import) more than the ``main_count`` times already accounted for. Large
    out-of-band buffers go to ``buffers`` (if given)."""
    try:
        data = pickle.dumps(obj, PROTOCOL, buffer_callback=buffers)
    except Exception:
        if buffers:
            buffers.clear()
        return None
    if data.count(_MAIN) != main_count:
        if buffers:
            buffers.clear()
        return None
    return data


def dumps(obj: Any, what: str = "object") -> bytes:
    """Pickles ``obj`` for another process; raises ``SerializationError`` naming the culprit.

    ``what`` is the name of ``obj`` used in the error's path (``args``, ``result``...).
    """
    data = _plain(obj)
    if data is not None:
        return data
    try:
        return _cloud().dumps(obj)
    except Exception as exc:
        raise SerializationError(describe_failure(obj, what, exc)) from exc


class _ByValue:
    """A function pickled by value once; unpickles through the worker's cache (see module doc)."""

    __slots__ = ("blob", "key", "main_count")

    def __init__(self, key: int, blob: bytes):
        self.key = key
        self.blob = blob
        self.main_count = blob.count(_MAIN)

    def __reduce__(self):
        return (_rebuild_by_value, (self.key, self.blob))


_by_value: weakref.WeakKeyDictionary[Any, _ByValue] = weakref.WeakKeyDictionary()
_by_value_keys = itertools.count(1)
_rebuilt: dict[int, Any] = {}
_REBUILT_MAX = 256


def _rebuild_by_value(key: int, blob: bytes) -> Any:
    fn = _rebuilt.get(key)
    if fn is None:
        if len(_rebuilt) >= _REBUILT_MAX:  # bounded: a new lambda per call must not leak
            # Another task thread may evict at the same moment (HybridPool; free-threaded
            # builds): either may find the oldest gone, or the dict changing under it.
            try:
                _rebuilt.pop(next(iter(_rebuilt), -1), None)  # -1: no key is negative
            except RuntimeError:
                pass
        fn = _rebuilt[key] = pickle.loads(blob)
    return fn


def _needs_value(fn: Any) -> bool:
    """True for functions a worker cannot import by module and name."""
    module = getattr(fn, "__module__", None)
    qualname = getattr(fn, "__qualname__", "")
    return module == "__main__" or module is None or "<lambda>" in qualname or "<locals>" in qualname


def _function_by_value(fn: Any) -> Any:
    if not isinstance(fn, types.FunctionType) or not _needs_value(fn):
        return fn
    try:
        return _by_value[fn]
    except (KeyError, TypeError):
        pass
    wrapped = _ByValue(next(_by_value_keys), _cloud().dumps(fn))
    try:
        _by_value[fn] = wrapped
    except TypeError:
        pass
    return wrapped


def dumps_call(
    fn: Any, args: tuple, kwargs: dict, threshold: int | None = DEFAULT_ZERO_COPY_THRESHOLD
) -> tuple[bytes, list | None]:
    """Pickles a call ``fn(*args, **kwargs)``; errors name ``fn``, ``args[i]`` or ``kwargs[k]``.

    Returns the pickle and its out-of-band buffers (None if there are none): buffers of at least
    ``threshold`` bytes (None: no buffer goes out of band).
    """
    buffers = None
    if threshold is not None and (
        kwargs or not (type(args[0]) in _ATOMIC if len(args) == 1 else _ATOMIC.issuperset(map(type, args)))
    ):
        buffers = _collector(threshold)
        if not _MAYBE_RAW.isdisjoint(map(type, args)):
            args = _wrap_raw(args, threshold)
        if kwargs:
            kwargs = _wrap_raw(kwargs, threshold, 2)
    try:
        encoded = _function_by_value(fn)
    except Exception:
        pass  # cloudpickle below names the failure
    else:
        data = _plain((encoded, args, kwargs), encoded.main_count if type(encoded) is _ByValue else 0, buffers)
        if data is not None:
            return data, _taken(buffers) if buffers is not None else None
    try:
        data = _cloud().dumps((fn, args, kwargs), buffers)
        return data, _taken(buffers) if buffers is not None else None
    except Exception as exc:
        if buffers:
            buffers.clear()
        for part, name in ((fn, "fn"), (args, "args"), (kwargs, "kwargs")):
            if _fails(part):
                raise SerializationError(describe_failure(part, name, exc)) from exc
        raise SerializationError(f"call: {exc}") from exc


loads = pickle.loads


def dumps_result(result: Any) -> tuple[bytes, list | None]:
    """Pickles a task's result for the parent, large buffers out of band (see the module doc)."""
    threshold = zero_copy_threshold
    if type(result) in _ATOMIC:
        return pickle.dumps(result, PROTOCOL), None
    if threshold is None:
        return dumps(result, "result"), None
    buffers = _collector(threshold)
    if type(result) in _MAYBE_RAW:
        result = _wrap_raw(result, threshold)
    data = _plain(result, 0, buffers)
    if data is not None:
        return data, _taken(buffers)
    try:
        data = _cloud().dumps(result, buffers)
        return data, _taken(buffers)
    except Exception as exc:
        buffers.clear()
        raise SerializationError(describe_failure(result, "result", exc)) from exc


def _fails(obj: Any) -> BaseException | None:
    try:
        _cloud().dumps(obj)
    except Exception as exc:
        return exc
    return None


def describe_failure(obj: Any, path: str, exc: BaseException, _depth: int = 0) -> str:
    """Returns ``"<path>: <reason>"`` for the innermost part of ``obj`` that cannot be pickled."""
    if _depth < 20:
        children: list[tuple[str, Any]] = []
        if isinstance(obj, (tuple, list)):
            children = [(f"{path}[{i}]", x) for i, x in enumerate(obj)]
        elif isinstance(obj, dict):
            children = [(f"{path}[{k!r}]", v) for k, v in obj.items()]
        elif isinstance(obj, (set, frozenset)):
            children = [(f"{path}{{{x!r}}}", x) for x in obj]
        elif hasattr(obj, "__dict__") and not isinstance(obj, type) and not callable(obj):
            children = [(f"{path}.{k}", v) for k, v in vars(obj).items()]
        for child_path, child in children:
            child_exc = _fails(child)
            if child_exc is not None:
                return describe_failure(child, child_path, child_exc, _depth + 1)
    return f"{path}: {exc}"


def dumps_exception(exc: BaseException) -> bytes:
    """Pickles an exception raised in a worker together with its formatted traceback.

    If the exception would not survive the trip (it cannot be pickled, or cannot be rebuilt
    from its pickle), a ``RemoteError`` with its type name and message goes instead.
    """
    import traceback

    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        data = dumps((exc, tb))
        pickle.loads(data)  # rebuilding fails for e.g. an __init__ with extra required arguments
        return data
    except Exception:
        stand_in = RemoteError(f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc))
        return pickle.dumps((stand_in, tb), PROTOCOL)


def loads_exception(data: bytes) -> BaseException:
    """Rebuilds a worker's exception with its traceback as ``__cause__``."""
    from .errors import RemoteTraceback

    try:
        exc, tb = pickle.loads(data)
    except Exception as e:
        exc, tb = RemoteError(type(e).__name__, f"the worker's exception could not be unpickled: {e}"), ""
    exc.__cause__ = RemoteTraceback(f'\n"""\n{tb}"""')
    return exc


#: ``dumps_call_by_reference``'s pickled functions: the opcodes that load each, by function.
_function_ops: dict[Any, bytes] = {}
#: Most functions kept there; past it the cache starts again (it holds the functions alive).
_FUNCTION_OPS_MAX = 256
#: Pickle opcodes: protocol 5 header, FRAME, MEMOIZE, EMPTY_DICT + TUPLE3 + STOP.
_PROTO5, _FRAME, _MEMOIZE, _CALL_END = b"\x80\x05", 0x95, "MEMOIZE", b"}\x87."
#: A pickle at most this long has a single frame (the pickler cuts frames at 64 KiB).
_ONE_FRAME_MAX = 65536


def dumps_call_by_reference(fn: Any, args: tuple) -> bytes | None:
    """The pickle ``dumps_call(fn, args, {})`` makes, built faster when ``fn`` is a function the
    worker imports by name and ``args`` are atomic values (ints, strings...); None otherwise, and
    the caller uses ``dumps_call``.

    Pickling a function by reference costs about a third of a tiny task's ``submit``: the pickler
    finds its module and checks that the name leads back to it, every time. Here a function's
    opcodes are pickled once and kept; each call pickles only ``args`` and joins the pieces.
    The opcodes keep no memo entry (``MEMOIZE`` is dropped), so those of ``args`` number theirs
    from zero as they would alone. A function later rebound under its name is still sent by that
    name (the worker imports whatever the name holds then).
    """
    if type(fn) not in _BY_REFERENCE or not (
        type(args[0]) in _ATOMIC if len(args) == 1 else _ATOMIC.issuperset(map(type, args))
    ):
        return None
    ops = _function_ops.get(fn)
    if ops is None:
        ops = _opcodes_of(fn)
        if ops is None:
            return None
        if len(_function_ops) >= _FUNCTION_OPS_MAX:
            _function_ops.clear()
        _function_ops[fn] = ops
    data = pickle.dumps(args, PROTOCOL)
    if len(data) > _ONE_FRAME_MAX:
        return None
    body = data[11:-1] if data[2] == _FRAME else data[2:-1]
    return b"".join((_PROTO5, ops, body, _CALL_END))


_BY_REFERENCE = frozenset((types.FunctionType, types.BuiltinFunctionType))


def _opcodes_of(fn: Any) -> bytes | None:
    """The opcodes that load ``fn`` by reference, without memo entries; None if ``fn`` must go
    by value or cannot be pickled, or its pickle reads the memo."""
    if _function_by_value(fn) is not fn:
        return None
    try:
        data = pickle.dumps(fn, PROTOCOL)
    except Exception:
        return None
    if data.count(_MAIN):
        return None
    import pickletools  # once per function

    ops = list(pickletools.genops(data))
    out = []
    for (op, _arg, pos), nxt in itertools.pairwise(ops):
        if op.name in ("PROTO", "FRAME", _MEMOIZE):
            continue
        if "GET" in op.name:
            return None
        out.append(data[pos : nxt[2]])
    return b"".join(out)
