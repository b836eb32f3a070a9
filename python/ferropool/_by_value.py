"""Functions and classes pickled by value: one namespace per module in each process.

``cloudpickle`` rebuilds a function pickled by value (from ``__main__``, a lambda, a closure)
with a fresh globals dict per ``dumps`` call. A pool pickles its initializer and each task
function separately, so an initializer that sets a global of ``__main__`` and a task that reads it
would see two different dicts: the task raises ``NameError`` where the standard library's
workers, which import ``__main__``, see one module.

``Pickler`` is ``cloudpickle.Pickler`` with two reducers replaced in what it writes:

- functions are rebuilt by ``make_function``, which binds every function of one module (the
  ``__name__`` cloudpickle records with it) to one dict per process, the worker's stand-in for
  that module;
- the state of functions (their referenced globals) and of classes (their attributes) is applied
  by ``set_function_state`` and ``set_class_state``, which merge rather than overwrite.

Merging: each name the parent sends is remembered with a fingerprint of its value. A name the
namespace (or class) does not hold yet is set. A name it holds keeps its value when the parent
sends the same fingerprint again, since the parent has not changed it and the value here may be
the worker's own (an initializer's connection, a class attribute it set, a dict it filled). A
new fingerprint means the parent rebound the name (a cell re-run in a notebook), and the new
value wins. Fingerprints: a function's code, a class's or module's identity (cloudpickle keeps
one class object per class per process), otherwise the value's pickle.
"""

from __future__ import annotations

import _pickle as pickle
import _thread
import io
import types
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import cloudpickle
from cloudpickle import cloudpickle as _cloudpickle

PROTOCOL = 5

#: Module name -> the namespace every function of that module rebuilt here is bound to.
_namespaces: dict[str, dict[str, Any]] = {}
#: Module name -> {global name: fingerprint of the value the parent last sent}.
_namespace_marks: dict[str, dict[str, Any]] = {}
#: Class -> {attribute name: fingerprint}, for classes whose state has been applied once.
_class_marks: weakref.WeakKeyDictionary[type, dict[str, Any]] = weakref.WeakKeyDictionary()
_lock = _thread.RLock()  # fingerprinting pickles values, whose reducers may come back here


def _fingerprint(value: Any) -> Any:
    """Returns what tells two values the parent sent apart (None: cannot tell, never equal)."""
    if isinstance(value, types.FunctionType):
        return ("code", value.__code__, value.__defaults__)
    if isinstance(value, (type, types.ModuleType)):
        return ("id", id(value))
    try:
        return ("pickle", pickle.dumps(value, PROTOCOL))
    except Exception:
        return None


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b)
    except Exception:  # defaults that compare elementwise (arrays)
        return False


def _merge(
    current: Mapping[str, Any], marks: dict[str, Any], incoming: dict[str, Any], assign: Callable[[str, Any], Any]
) -> None:
    for name, value in incoming.items():
        mark = _fingerprint(value)
        if name in current and mark is not None and _same(marks.get(name), mark):
            continue
        assign(name, value)
        marks[name] = mark


def make_function(
    code: types.CodeType,
    base_globals: dict[str, Any],
    name: str | None,
    argdefs: tuple[Any, ...] | None,
    closure: tuple[Any, ...] | None,
) -> types.FunctionType:
    """``cloudpickle``'s ``_make_function``, binding the function to its module's namespace."""
    module = base_globals.get("__name__")
    if isinstance(module, str):
        with _lock:
            namespace = _namespaces.setdefault(module, base_globals)
            _namespace_marks.setdefault(module, {})
    else:  # globals without a name (exec with a dict of one's own): cloudpickle's behaviour
        namespace = base_globals
    namespace["__builtins__"] = __builtins__
    return types.FunctionType(code, namespace, name, argdefs, closure)


def set_function_state(fn: types.FunctionType, state: tuple[dict[str, Any], dict[str, Any]]) -> None:
    """``cloudpickle``'s ``_function_setstate``, merging the globals (see the module doc)."""
    attributes, slots = state
    slots = dict(slots)
    incoming = slots.pop("__globals__")
    slots["__globals__"] = {}
    _cloudpickle._function_setstate(fn, (attributes, slots))
    namespace = fn.__globals__
    module = namespace.get("__name__")
    with _lock:
        if isinstance(module, str) and _namespaces.get(module) is namespace:
            _merge(namespace, _namespace_marks[module], incoming, namespace.__setitem__)
        else:
            namespace.update(incoming)


def set_class_state(cls: type, state: tuple[dict[str, Any], dict[str, Any]]) -> type:
    """``cloudpickle``'s ``_class_setstate`` the first time a class is rebuilt here; later, the
    attributes merge (see the module doc), so an attribute set in this process survives."""
    with _lock:
        marks = _class_marks.get(cls)
        if marks is None:
            _class_marks[cls] = {name: _fingerprint(value) for name, value in state[0].items()}
            _cloudpickle._class_setstate(cls, state)
            return cls
        attributes = {k: v for k, v in state[0].items() if k not in ("_abc_impl", "__firstlineno__", "__dict__")}
        _merge(cls.__dict__, marks, attributes, lambda name, value: setattr(cls, name, value))
    return cls


class Pickler(cloudpickle.Pickler):  # type: ignore[misc]
    """``cloudpickle.Pickler`` whose functions and classes rebuild through this module."""

    def reducer_override(self, obj: Any) -> Any:
        reduced = super().reducer_override(obj)
        if type(reduced) is not tuple or len(reduced) < 6:
            return reduced
        if reduced[0] is _cloudpickle._make_function and reduced[5] is _cloudpickle._function_setstate:
            return (make_function, *reduced[1:5], set_function_state)
        if reduced[5] is _cloudpickle._class_setstate:
            return (*reduced[:5], set_class_state)
        return reduced


def dumps(obj: Any, buffer_callback: Any = None, pickler: type[Pickler] = Pickler) -> bytes:
    """Pickles ``obj`` with ``pickler`` (``Pickler`` by default), as ``cloudpickle.dumps`` does."""
    out = io.BytesIO()
    pickler(out, PROTOCOL, buffer_callback=buffer_callback).dump(obj)
    return out.getvalue()
