"""A task's exception reaches the caller as the original type and arguments, with the worker's
traceback as ``__cause__`` (process kinds) or in its own traceback (thread kinds)."""

from __future__ import annotations

import concurrent.futures.process
import traceback

import pytest

import helpers
from helpers import TaskError, raise_value_error

from .util import T


@pytest.mark.parametrize(
    "fn, arg, exc_type",
    [(raise_value_error, "boom", ValueError), (helpers.raise_key_error, "missing", KeyError)],
)
def test_exception_type_and_args(make_executor, fn, arg, exc_type):
    ex = make_executor()
    f = ex.submit(fn, arg)
    with pytest.raises(exc_type) as info:
        f.result(timeout=T)
    assert type(info.value) is exc_type
    assert info.value.args == (arg,)
    assert type(f.exception(timeout=T)) is exc_type


def test_user_exception_with_several_args(make_executor):
    ex = make_executor()
    with pytest.raises(TaskError) as info:
        ex.submit(helpers.raise_task_error, 3, "bad input").result(timeout=T)
    assert info.value.args == (3, "bad input")


def test_builtin_raising(make_executor):
    ex = make_executor()
    with pytest.raises(ZeroDivisionError):
        ex.submit(divmod, 1, 0).result(timeout=T)


@pytest.mark.kinds("process")
def test_remote_traceback_in_cause(make_executor, executor_kind):
    ex = make_executor()
    with pytest.raises(ValueError) as info:
        ex.submit(raise_value_error, "remote boom").result(timeout=T)
    exc = info.value
    assert exc.args == ("remote boom",)
    cause = exc.__cause__
    assert cause is not None, "the worker's traceback must be attached as __cause__"
    assert "raise_value_error" in str(cause)
    assert type(cause) is concurrent.futures.process._RemoteTraceback, "code checking for the stdlib's class finds it"
    assert "raise ValueError(text)" in cause.tb
    # What a user sees when the exception is printed.
    assert "raise_value_error" in "".join(traceback.format_exception(exc))


@pytest.mark.kinds("thread")
def test_thread_traceback_includes_task_frame(make_executor):
    ex = make_executor()
    with pytest.raises(ValueError) as info:
        ex.submit(raise_value_error, "boom").result(timeout=T)
    names = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "raise_value_error" in names
