"""Pickling of calls, results and exceptions between the parent and its workers.

Plain ``pickle`` first: it is fast and covers functions importable by module and name. Objects
the worker could not import that way — lambdas, closures, and anything defined in ``__main__``
or interactively — go through ``cloudpickle``, which pickles them by value. ``__main__`` is
detected by looking for its name in the plain pickle (a C-speed substring search), so the fast
path costs one extra scan and the slow path is taken only when needed.

Functions pickled by value are the common slow case (a ``map`` or ``submit`` loop over a
function from ``__main__``). Each such function is cloudpickled once per parent process and
sent as a ``_ByValue`` blob with a process-unique key; workers rebuild it once per key and
reuse it, so the per-task cost stays that of plain pickle.

When pickling fails, ``describe_failure`` walks the object to name the innermost part that
fails, so errors read ``args[1]['conn']: cannot pickle 'socket' object``.
"""

from __future__ import annotations

import itertools
# The C module itself: ``pickle`` re-exports these very functions but imports re and enum,
# which would slow every worker's start. traceback is imported when an exception is sent.
import _pickle as pickle
import types
import weakref

from .errors import RemoteError, SerializationError

TYPE_CHECKING = False  # typing is not imported at run time: workers start faster without it
if TYPE_CHECKING:
    from typing import Any

PROTOCOL = 5
_MAIN = b"__main__"
_cloudpickle = None


def _cloud():
    global _cloudpickle
    if _cloudpickle is None:
        import cloudpickle

        _cloudpickle = cloudpickle
    return _cloudpickle


def _plain(obj: Any, main_count: int = 0) -> bytes | None:
    """Returns ``obj`` plainly pickled, or None if that fails or refers to ``__main__`` (which the
    worker cannot import) more than the ``main_count`` times already accounted for."""
    try:
        data = pickle.dumps(obj, PROTOCOL)
    except Exception:
        return None
    return data if data.count(_MAIN) == main_count else None


def dumps(obj: Any, what: str = "object") -> bytes:
    """Pickles ``obj`` for another process; raises ``SerializationError`` naming the culprit.

    ``what`` is the name of ``obj`` used in the error's path (``args``, ``result``...).
    """
    data = _plain(obj)
    if data is not None:
        return data
    try:
        return _cloud().dumps(obj, PROTOCOL)
    except Exception as exc:
        raise SerializationError(describe_failure(obj, what, exc)) from exc


class _ByValue:
    """A function pickled by value once; unpickles through the worker's cache (see module doc)."""

    __slots__ = ("key", "blob", "main_count")

    def __init__(self, key: int, blob: bytes):
        self.key = key
        self.blob = blob
        self.main_count = blob.count(_MAIN)

    def __reduce__(self):
        return (_rebuild_by_value, (self.key, self.blob))


_by_value: "weakref.WeakKeyDictionary[Any, _ByValue]" = weakref.WeakKeyDictionary()
_by_value_keys = itertools.count(1)
_rebuilt: dict[int, Any] = {}
_REBUILT_MAX = 256


def _rebuild_by_value(key: int, blob: bytes) -> Any:
    fn = _rebuilt.get(key)
    if fn is None:
        if len(_rebuilt) >= _REBUILT_MAX:  # bounded: a new lambda per call must not leak
            del _rebuilt[next(iter(_rebuilt))]
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
    wrapped = _ByValue(next(_by_value_keys), _cloud().dumps(fn, PROTOCOL))
    try:
        _by_value[fn] = wrapped
    except TypeError:
        pass
    return wrapped


def dumps_call(fn: Any, args: tuple, kwargs: dict) -> bytes:
    """Pickles a call ``fn(*args, **kwargs)``; errors name ``fn``, ``args[i]`` or ``kwargs[k]``."""
    try:
        encoded = _function_by_value(fn)
    except Exception:
        pass  # cloudpickle below names the failure
    else:
        data = _plain((encoded, args, kwargs), encoded.main_count if type(encoded) is _ByValue else 0)
        if data is not None:
            return data
    try:
        return _cloud().dumps((fn, args, kwargs), PROTOCOL)
    except Exception as exc:
        for part, name in ((fn, "fn"), (args, "args"), (kwargs, "kwargs")):
            if _fails(part):
                raise SerializationError(describe_failure(part, name, exc)) from exc
        raise SerializationError(f"call: {exc}") from exc


loads = pickle.loads


def _fails(obj: Any) -> BaseException | None:
    try:
        _cloud().dumps(obj, PROTOCOL)
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
