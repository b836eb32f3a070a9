"""Pickling between the parent and its workers (``ferropool._serialize``), tested in one process:
what ``dumps``/``dumps_call``/``dumps_result`` produce, what ``loads`` rebuilds, which buffers
go out of band, how exceptions travel, and how a failure names the part that cannot be pickled.
"""

from __future__ import annotations

import functools
import pickle
import sys
import threading

import pytest

import helpers
from ferropool import _serialize
from ferropool._serialize import (
    DEFAULT_ZERO_COPY_THRESHOLD,
    describe_failure,
    dumps,
    dumps_call,
    dumps_exception,
    dumps_result,
    loads,
    loads_exception,
)
from ferropool.errors import RemoteError, RemoteTraceback, SerializationError

T = DEFAULT_ZERO_COPY_THRESHOLD
BIG = helpers.make_pattern(T)  # exactly the threshold: travels out of band
SMALL = helpers.make_pattern(T - 1)  # one byte less: stays in the pickle


class Unpicklable:
    """Hashable, with a stable repr, and refuses to be pickled by either pickler."""

    def __reduce__(self):
        raise TypeError("Unpicklable refuses")

    def __repr__(self) -> str:
        return "Unpicklable()"


class Holder:
    """A plain object whose attributes ``describe_failure`` walks."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)


class CallableHolder(Holder):
    def __call__(self):
        return None


def echo(value):
    return value


def triple(x):
    return 3 * x


def round_trip(obj):
    return loads(dumps(obj))


def call_round_trip(fn, args=(), kwargs=None, threshold=T):
    """``dumps_call`` then ``loads``; returns ``(fn, args, kwargs)`` as rebuilt and the buffers."""
    data, buffers = dumps_call(fn, args, kwargs or {}, threshold)
    return loads(data, buffers=buffers), buffers


@pytest.fixture
def no_cloudpickle(monkeypatch):
    """Fail the test if cloudpickle is used: the plain-pickle path must suffice."""

    def forbidden():
        raise AssertionError("cloudpickle was used for an object plain pickle handles")

    monkeypatch.setattr(_serialize, "_cloud", forbidden)


@pytest.fixture
def in_main(monkeypatch):
    """Return ``put(fn)``: make ``fn`` a function of ``__main__`` that plain pickle can find by
    name there (as in a script), and remove it from ``__main__`` at teardown."""
    main = sys.modules["__main__"]

    def put(fn, name="ferropool_test_main_function"):
        fn.__module__ = "__main__"
        fn.__qualname__ = fn.__name__ = name
        monkeypatch.setattr(main, name, fn, raising=False)
        return fn

    return put


# ------------------------------------------------------------ dumps and loads


@pytest.mark.parametrize(
    "obj",
    [
        None,
        42,
        "text",
        b"\x00bytes",
        (1, [2.5, {"k": {3, 4}}], frozenset("ab")),
        {"nested": [(), [[]], {"": None}]},
        Holder(a=1, b=[2]),
    ],
    ids=["none", "int", "str", "bytes", "containers", "nested", "object"],
)
def test_plain_objects_round_trip_without_cloudpickle(no_cloudpickle, obj):
    back = round_trip(obj)
    if isinstance(obj, Holder):
        assert type(back) is Holder and vars(back) == vars(obj)
    else:
        assert back == obj and type(back) is type(obj)


def test_importable_function_pickles_by_reference(no_cloudpickle):
    data = dumps(helpers.mul)
    assert b"helpers" in data and b"mul" in data
    assert loads(data) is helpers.mul


def test_lambda_pickles_by_value():
    fn = lambda x: x * 7  # noqa: E731
    back = round_trip(fn)
    assert back is not fn
    assert back(6) == 42


def test_closure_pickles_by_value_with_its_cell():
    factor = 5

    def scale(x):
        return x * factor

    back = round_trip(scale)
    assert back(3) == 15
    assert back.__closure__[0].cell_contents == 5


def test_main_function_pickles_by_value(in_main, monkeypatch):
    fn = in_main(lambda x: x + 1)
    assert b"__main__" in pickle.dumps(fn), "plain pickle would send a name the worker cannot import"
    data = dumps(fn)
    monkeypatch.delattr(sys.modules["__main__"], fn.__name__)  # a worker's __main__ lacks it
    assert loads(data)(41) == 42


def test_instance_of_a_main_class_pickles_by_value(in_main, monkeypatch):
    class Point:
        def __init__(self, x):
            self.x = x

    in_main(Point, "FerropoolTestPoint")
    data = dumps(Point(3))
    monkeypatch.delattr(sys.modules["__main__"], "FerropoolTestPoint")
    back = loads(data)
    assert back.x == 3 and type(back).__name__ == "FerropoolTestPoint"


def test_the_text_main_inside_plain_data_still_round_trips():
    # "__main__" in the pickle sends the object through cloudpickle: slower, still the same value.
    assert round_trip(["__main__", b"__main__"]) == ["__main__", b"__main__"]


# ---------------------------------------------------------------------- failures


@pytest.mark.parametrize(
    "obj, message",
    [
        ((1, threading.Lock()), "args[1]: cannot pickle '_thread.lock' object"),
        ((1, {"conn": Unpicklable()}), "args[1]['conn']: Unpicklable refuses"),
        ([[Holder(ok=1, handle=Unpicklable())]], "args[0][0].handle: Unpicklable refuses"),
        ((i for i in range(3)), "args: cannot pickle 'generator' object"),
    ],
    ids=["lock", "dict-value", "attribute", "generator"],
)
def test_dumps_names_the_part_that_cannot_be_pickled(obj, message):
    with pytest.raises(SerializationError) as info:
        dumps(obj, "args")
    assert str(info.value) == message
    assert info.value.__cause__ is not None, "the pickler's own error is the cause"


def test_serialization_error_is_a_type_error_and_a_pickling_error():
    with pytest.raises(SerializationError) as info:
        dumps(threading.Lock())
    assert isinstance(info.value, TypeError)
    assert isinstance(info.value, pickle.PicklingError)
    assert str(info.value).startswith("object: "), "the default name of what is pickled"


def test_describe_failure_walks_tuples_lists_dicts_sets_and_attributes():
    bad = Unpicklable()
    reason = TypeError("outer")
    assert describe_failure((0, [1, {"k": bad}]), "args", reason) == "args[1][1]['k']: Unpicklable refuses"
    assert describe_failure({"a": 1, 2: (bad,)}, "kwargs", reason) == "kwargs[2][0]: Unpicklable refuses"
    assert describe_failure(frozenset([bad]), "x", reason) == "x{Unpicklable()}: Unpicklable refuses"
    assert describe_failure(Holder(a=Holder(b=bad)), "result", reason) == "result.a.b: Unpicklable refuses"


def test_describe_failure_names_the_object_itself_when_no_part_fails():
    assert describe_failure(Unpicklable(), "args[0]", TypeError("own")) == "args[0]: own"
    # Callables and classes are not taken apart: the message names them as a whole.
    assert describe_failure(CallableHolder(bad=Unpicklable()), "fn", TypeError("fn fails")) == "fn: fn fails"
    assert describe_failure(Holder, "fn", TypeError("class fails")) == "fn: class fails"


def test_describe_failure_stops_twenty_levels_down():
    nested: object = Unpicklable()
    for _ in range(30):
        nested = [nested]
    message = describe_failure(nested, "x", TypeError("deep"))
    assert message.startswith("x" + "[0]" * 20 + ": ")
    assert "[0]" * 21 not in message


# ------------------------------------------------------------------- dumps_call


def test_dumps_call_round_trips_a_call():
    (fn, args, kwargs), buffers = call_round_trip(helpers.capture, (1, "two"), {"three": [3]})
    assert fn is helpers.capture
    assert args == (1, "two") and kwargs == {"three": [3]}
    assert buffers is None
    assert fn(*args, **kwargs) == ((1, "two"), {"three": [3]})


@pytest.mark.parametrize(
    "args",
    [(1,), (2.5,), ("s",), (None,), (True,), (1j,), (1, 2.5, "s", None, False, 3j), ()],
    ids=["int", "float", "str", "none", "bool", "complex", "mixed", "no-args"],
)
def test_dumps_call_with_only_atomic_arguments_skips_the_buffer_machinery(monkeypatch, args):
    def collector(threshold):
        raise AssertionError("atomic arguments cannot hold a buffer")

    monkeypatch.setattr(_serialize, "_collector", collector)
    data, buffers = dumps_call(helpers.capture, args, {})
    assert buffers is None
    assert loads(data) == (helpers.capture, args, {})


@pytest.mark.parametrize(
    "args, kwargs",
    [((b"x",), {}), (([1],), {}), ((1,), {"k": 1})],
    ids=["bytes", "list", "kwargs"],
)
def test_dumps_call_with_other_arguments_collects_buffers(monkeypatch, args, kwargs):
    thresholds = []
    real = _serialize._collector

    def collector(threshold):
        thresholds.append(threshold)
        return real(threshold)

    monkeypatch.setattr(_serialize, "_collector", collector)
    (_, back_args, back_kwargs), buffers = call_round_trip(echo, args, kwargs)
    assert thresholds == [T]
    assert buffers is None, "nothing large enough to leave the pickle"
    assert (back_args, back_kwargs) == (args, kwargs)


def test_dumps_call_function_by_value_is_pickled_once_and_rebuilt_once():
    fn = lambda x: x - 1  # noqa: E731
    first, _ = dumps_call(fn, (1,), {})
    second, _ = dumps_call(fn, (2,), {})
    rebuilt_first, args_first, _ = loads(first)
    rebuilt_second, args_second, _ = loads(second)
    assert rebuilt_first is rebuilt_second, "one function rebuilt per key, reused after"
    assert rebuilt_first is not fn
    assert (rebuilt_first(*args_first), rebuilt_second(*args_second)) == (0, 1)
    other, _ = dumps_call(lambda x: x - 1, (1,), {})
    assert loads(other)[0] is not rebuilt_first, "another function, another key"


def test_dumps_call_main_function_survives_a_main_without_it(in_main, monkeypatch):
    fn = in_main(lambda *args: ("main", args))
    data, buffers = dumps_call(fn, ("__main__", 2), {})  # the text too: counted, not confused
    monkeypatch.delattr(sys.modules["__main__"], fn.__name__)
    back_fn, args, kwargs = loads(data, buffers=buffers)
    assert back_fn(*args, **kwargs) == ("main", ("__main__", 2))


def test_rebuilt_functions_are_bounded():
    for i in range(_serialize._REBUILT_MAX + 50):
        data, _ = dumps_call(lambda x, i=i: x + i, (1,), {})
        assert loads(data)[0](1) == 1 + i
    assert len(_serialize._rebuilt) <= _serialize._REBUILT_MAX


@pytest.mark.parametrize(
    "fn, args, kwargs, message",
    [
        (Holder(lock=threading.Lock()).__init__, (), {}, "fn: cannot pickle '_thread.lock' object"),
        (echo, (1, Unpicklable()), {}, "args[1]: Unpicklable refuses"),
        (echo, ([0, {"deep": Unpicklable()}],), {}, "args[0][1]['deep']: Unpicklable refuses"),
        (echo, (1,), {"conn": Unpicklable()}, "kwargs['conn']: Unpicklable refuses"),
    ],
    ids=["fn", "args", "nested-args", "kwargs"],
)
def test_dumps_call_names_the_part_that_cannot_be_pickled(fn, args, kwargs, message):
    with pytest.raises(SerializationError) as info:
        dumps_call(fn, args, kwargs)
    assert str(info.value) == message


def test_a_failed_call_leaves_no_buffer_behind():
    with pytest.raises(SerializationError):
        dumps_call(echo, (BIG, Unpicklable()), {})
    (_, args, _), buffers = call_round_trip(echo, ([1, 2],))
    assert buffers is None
    assert args == ([1, 2],)


# ------------------------------------------------------------ out-of-band buffers


def assert_out_of_band(data: bytes, buffers, nbytes: int) -> None:
    assert buffers is not None and [memoryview(b).nbytes for b in buffers] == [nbytes]
    assert len(data) < nbytes, "the buffer's bytes are not also in the pickle"


@pytest.mark.parametrize("kind", [bytes, bytearray])
def test_large_bytes_travel_out_of_band_and_keep_their_type(kind):
    value = kind(BIG)
    data, buffers = dumps_call(echo, (value,), {})
    assert_out_of_band(data, buffers, T)
    _, (back,), _ = loads(data, buffers=buffers)
    assert type(back) is kind and back == value


def test_bytes_below_the_threshold_stay_in_the_pickle():
    data, buffers = dumps_call(echo, (SMALL,), {})
    assert buffers is None
    assert len(data) > len(SMALL)
    assert loads(data)[1] == (SMALL,)


def test_memoryview_travels_out_of_band_with_its_format_and_shape():
    view = memoryview(bytearray(BIG)).cast("d", (T // 16, 2))
    data, buffers = dumps_call(echo, (view,), {})
    assert_out_of_band(data, buffers, T)
    _, (back,), _ = loads(data, buffers=buffers)
    assert type(back) is memoryview
    assert (back.format, back.shape) == ("d", (T // 16, 2))
    assert back.tobytes() == BIG


def test_non_contiguous_memoryview_arrives_as_bytes_in_the_pickle():
    view = memoryview(BIG + BIG)[::2]
    data, buffers = dumps_call(echo, (view,), {})
    assert buffers is None
    _, (back,), _ = loads(data)
    assert type(back) is bytes and back == view.tobytes()


def test_large_bytes_are_found_three_levels_deep_in_arguments():
    args = (1, [("x", BIG)])
    kwargs = {"data": BIG, "more": [bytearray(BIG)]}
    data, buffers = dumps_call(echo, args, kwargs)
    assert buffers is not None and len(buffers) == 3
    _, back_args, back_kwargs = loads(data, buffers=buffers)
    assert back_args == args and back_kwargs == kwargs
    assert type(back_kwargs["more"][0]) is bytearray


def test_large_bytes_deeper_or_in_long_lists_stay_in_the_pickle():
    deep = ((((BIG,),),),)  # four levels of tuples inside the arguments
    long = ([BIG, *range(_serialize._SCAN_MAX_ITEMS)],)  # a list too long to search
    for args in (deep, long):
        data, buffers = dumps_call(echo, args, {})
        assert buffers is None
        assert loads(data)[1] == args


def test_no_threshold_keeps_every_buffer_in_the_pickle():
    data, buffers = dumps_call(echo, (BIG,), {}, threshold=None)
    assert buffers is None
    assert len(data) > T
    assert loads(data)[1] == (BIG,)


def test_each_call_gets_its_own_buffer_list():
    other = bytes(reversed(BIG))
    _, first = dumps_call(echo, (BIG,), {})
    _, second = dumps_call(echo, (other,), {})
    assert first is not second
    assert [bytes(b) for b in first] == [BIG]
    assert [bytes(b) for b in second] == [other]


# ------------------------------------------------------------------- numpy arrays


@pytest.fixture
def np():
    return pytest.importorskip("numpy")


@pytest.mark.parametrize("order", ["C", "F"])
def test_contiguous_array_travels_out_of_band(np, order):
    array = np.asarray(np.arange(T // 8, dtype=np.float64).reshape(-1, 16), order=order)
    data, buffers = dumps_call(echo, (array,), {})
    assert_out_of_band(data, buffers, T)
    _, (back,), _ = loads(data, buffers=buffers)
    assert back.dtype == array.dtype and back.shape == array.shape
    assert (back == array).all()


def test_small_array_stays_in_the_pickle(np):
    array = np.arange(T - 1, dtype=np.uint8)
    data, buffers = dumps_call(echo, (array,), {})
    assert buffers is None
    assert (loads(data)[1][0] == array).all()


def test_non_contiguous_array_stays_in_the_pickle(np):
    array = np.arange(2 * T, dtype=np.uint8)[::2]
    assert array.nbytes >= T and not array.flags.contiguous
    data, buffers = dumps_call(echo, (array,), {})
    assert buffers is None
    _, (back,), _ = loads(data)
    assert (back == array).all()


def test_zero_dimensional_arrays_round_trip(np):
    small = np.array(5.5)
    data, buffers = dumps_call(echo, (small,), {})
    assert buffers is None
    back = loads(data)[1][0]
    assert back.shape == () and back.dtype == small.dtype and back == 5.5
    large = np.frombuffer(BIG, dtype=f"V{T}").reshape(())  # one item of T bytes
    data, buffers = dumps_call(echo, (large,), {})
    assert_out_of_band(data, buffers, T)
    back = loads(data, buffers=buffers)[1][0]
    assert back.shape == () and back.tobytes() == BIG


def test_object_array_stays_pickled(np):
    array = np.array([BIG, "text", None], dtype=object)
    data, buffers = dumps_call(echo, (array,), {})
    assert buffers is None, "an object array has no buffer of its own; its items are pickled"
    back = loads(data)[1][0]
    assert back.dtype == object and list(back) == [BIG, "text", None]


# ------------------------------------------------------------------- dumps_result


def test_atomic_result_is_a_plain_pickle(monkeypatch):
    monkeypatch.setattr(_serialize, "_collector", None)  # would fail if called
    for value in (0, 1.5, "done", None, True, 2j):
        data, buffers = dumps_result(value)
        assert buffers is None and loads(data) == value


def test_large_result_travels_out_of_band():
    for result in (BIG, [BIG, 1], (b"small", {"k": BIG})):
        data, buffers = dumps_result(result)
        assert_out_of_band(data, buffers, T)
        assert loads(data, buffers=buffers) == result


def test_result_with_zero_copy_off_stays_in_the_pickle(monkeypatch):
    monkeypatch.setattr(_serialize, "zero_copy_threshold", None)
    data, buffers = dumps_result([BIG])
    assert buffers is None
    assert loads(data) == [BIG]


def test_result_threshold_is_the_processes_own(monkeypatch):
    monkeypatch.setattr(_serialize, "zero_copy_threshold", 1000)
    data, buffers = dumps_result(SMALL[:1000])
    assert_out_of_band(data, buffers, 1000)
    assert loads(data, buffers=buffers) == SMALL[:1000]


def test_result_by_value_and_its_failure():
    data, _ = dumps_result(lambda: "made in a worker")
    assert loads(data)() == "made in a worker"
    with pytest.raises(SerializationError) as info:
        dumps_result(["ok", {"lock": threading.Lock()}])
    assert str(info.value) == "result[1]['lock']: cannot pickle '_thread.lock' object"


# ---------------------------------------------------------------------- exceptions


def raise_in_worker():
    raise ValueError("boom from the worker")


def caught(fn, *args) -> BaseException:
    try:
        fn(*args)
    except BaseException as exc:
        return exc
    raise AssertionError(f"{fn.__name__} did not raise")


def test_exception_arrives_with_its_traceback_as_cause():
    exc = loads_exception(dumps_exception(caught(raise_in_worker)))
    assert type(exc) is ValueError and exc.args == ("boom from the worker",)
    cause = exc.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "Traceback (most recent call last)" in cause.tb
    assert "in raise_in_worker" in cause.tb
    assert 'raise ValueError("boom from the worker")' in cause.tb
    assert str(cause).startswith('\n"""\n') and str(cause).endswith('"""')


def test_exception_of_a_local_class_pickles_by_value():
    class LocalError(Exception):
        pass

    def fail():
        raise LocalError("local", 2)

    exc = loads_exception(dumps_exception(caught(fail)))
    assert type(exc).__name__ == "LocalError"
    assert exc.args == ("local", 2)
    assert "in fail" in exc.__cause__.tb


class NeedsTwo(Exception):
    """Cannot be rebuilt from its pickle: ``__init__`` takes two arguments, ``args`` holds one."""

    def __init__(self, a, b):
        super().__init__(f"{a}/{b}")


def test_exception_that_cannot_be_rebuilt_arrives_as_remote_error():
    def fail():
        raise NeedsTwo(1, 2)

    exc = loads_exception(dumps_exception(caught(fail)))
    assert type(exc) is RemoteError
    assert exc.type_name == f"{NeedsTwo.__module__}.NeedsTwo"
    assert exc.message == "1/2"
    assert "in fail" in exc.__cause__.tb


def test_exception_that_cannot_be_pickled_arrives_as_remote_error():
    def fail():
        raise KeyError(threading.Lock())

    exc = loads_exception(dumps_exception(caught(fail)))
    assert type(exc) is RemoteError
    assert exc.type_name == "builtins.KeyError"
    assert "_thread.lock" in exc.message
    assert "in fail" in exc.__cause__.tb


def test_garbage_instead_of_an_exception_arrives_as_remote_error():
    exc = loads_exception(b"not a pickle")
    assert type(exc) is RemoteError
    assert exc.type_name == "UnpicklingError"
    assert exc.message.startswith("the worker's exception could not be unpickled: ")
    assert isinstance(exc.__cause__, RemoteTraceback)


def test_dumps_call_by_reference_loads_as_dumps_calls_pickle():
    import os.path

    from ferropool._serialize import dumps_call, dumps_call_by_reference

    shared = "repeated" * 10
    for fn, args in (
        (helpers.echo, (1,)),
        (pow, (2, 10, 1000)),
        (os.path.join, ("a", "b")),
        # The same string twice: the second is a memo reference, numbered as in a pickle of args.
        (helpers.capture, (shared, 1.5, None, True, shared, 2**100, 3j, "é")),
    ):
        fast = dumps_call_by_reference(fn, args)
        assert fast is not None, fn
        assert pickle.loads(fast) == pickle.loads(dumps_call(fn, args, {})[0])
        again = dumps_call_by_reference(fn, args)  # from the cached opcodes
        assert again == fast


def test_dumps_call_by_reference_declines_what_dumps_call_must_handle():
    from ferropool._serialize import dumps_call_by_reference

    assert dumps_call_by_reference(lambda x: x, (1,)) is None  # by value
    assert dumps_call_by_reference(helpers.echo, ([1],)) is None  # not an atomic value
    assert dumps_call_by_reference(helpers.echo, ("x" * 70_000,)) is None  # more than one frame
    assert dumps_call_by_reference(functools.partial(helpers.echo), (1,)) is None  # not a function
