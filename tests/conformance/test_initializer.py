"""``initializer`` and ``initargs``: run once in each worker before its first task; a failing
initializer fails the tasks, saying why (CPython's ``test_init.py``)."""

from __future__ import annotations

import concurrent.futures as cf
import os

import pytest

import helpers
from helpers import INIT_ERROR_TEXT, sleep_and_return

from .util import T


def test_initializer_runs_in_each_worker(make_executor):
    tag = f"initialized-{os.urandom(4).hex()}"
    ex = make_executor(max_workers=2, initializer=helpers.record_init, initargs=(tag,))
    fs = [ex.submit(sleep_and_return, 0.05, None) for _ in range(4)]
    fs += [ex.submit(helpers.get_init_tag) for _ in range(6)]
    assert [f.result(timeout=T) for f in fs[4:]] == [tag] * 6


def _exception_texts(exc: BaseException) -> str:
    texts, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        texts.append(f"{type(exc).__name__}: {exc}")
        exc = exc.__cause__
    return "\n".join(texts)


def test_initializer_failure(make_executor, executor_kind):
    ex = make_executor(max_workers=2, initializer=helpers.init_fail)
    try:
        f = ex.submit(helpers.get_init_tag)
    except cf.BrokenExecutor:
        assert executor_kind.is_stdlib, "submit must return a future that fails"
        return
    with pytest.raises(Exception) as info:
        f.result(timeout=T)
    if executor_kind.is_stdlib:
        # The stdlib breaks the pool, without saying why.
        assert isinstance(info.value, cf.BrokenExecutor)
    else:
        assert INIT_ERROR_TEXT in _exception_texts(info.value)
