"""pytest plugin: runs CPython's own ``test.test_concurrent_futures`` against ferropool.

    make test-cpython-suite
    # which is, in a Python 3.13 virtual environment (.venv313):
    PYTHONPATH=tests/cpython_suite .venv313/bin/python -m pytest -p ferropool_cpython_suite \
        --pyargs test.test_concurrent_futures

The suite builds its test classes when each module is imported, by crossing a behaviour mixin
with the executor mixins of ``test.test_concurrent_futures.util`` (``ThreadPoolMixin``,
``ProcessPoolForkMixin``, ``ProcessPoolForkserverMixin``, ``ProcessPoolSpawnMixin``). This plugin
is loaded before collection and sets those mixins' ``executor_type`` to ``ferropool.ThreadPool``
and ``ferropool.ProcessPool``. ferropool has one way of starting a worker (a fresh interpreter,
as spawn), so only the spawn classes run; the fork and forkserver ones would repeat them and are
deselected (they still get their ``mp_context``, which ``ProcessPool`` ignores).

``SKIPPED`` lists the tests that do not apply, each with its reason, in two groups: tests that
read a ``concurrent.futures`` executor's private internals (or name it in a child interpreter),
and deliberate differences (documented in ``docs/usage.md``). They show as skipped. ``FERROPOOL_CPYTHON_SUITE_NO_SKIP=1`` runs them too, and
``FERROPOOL_CPYTHON_SUITE=stdlib`` runs the suite on the standard library's executors: the
reference.
"""

from __future__ import annotations

import os

import pytest

TARGET = os.environ.get("FERROPOOL_CPYTHON_SUITE", "ferropool") or "ferropool"
if TARGET not in ("ferropool", "stdlib"):
    raise pytest.UsageError(f"FERROPOOL_CPYTHON_SUITE={TARGET!r}: expected 'ferropool' or 'stdlib'")

_DEADLOCK = "ProcessPoolSpawnExecutorDeadlockTest::"
_PROCESS = "ProcessPoolSpawnProcessPoolExecutorTest::"
_SHUTDOWN = "ProcessPoolSpawnProcessPoolShutdownTest::"


def _private(name: str) -> str:
    return f"reads {name}, a private attribute of the standard library's executor"


#: Tests that read private internals of concurrent.futures' executors, or depend on how they
#: are built.
INTERNALS: dict[str, str] = {
    _DEADLOCK + "test_shutdown_deadlock_pickle": _private("_executor_manager_thread"),
    _PROCESS + "test_max_tasks_per_child_defaults_to_spawn_context": _private("_mp_context"),
    _PROCESS + "test_python_finalization_error": (
        "makes the second thread the standard library's executor starts fail; ferropool's threads are not those"
    ),
}
# The test's child interpreter (python -I) imports its executor as concurrent.futures.<name>,
# where ferropool's classes are not.
for _name in ("test_hang_gh83386", "test_interpreter_shutdown", "test_submit_after_interpreter_shutdown"):
    for _cls in ("ThreadPoolShutdownTest::", _SHUTDOWN):
        INTERNALS[_cls + _name] = "its child interpreter imports the executor from concurrent.futures by name"

_AT_SUBMIT = "an argument that cannot be pickled raises at submit, not from result()"
_EAGER = "every worker starts with the pool (the standard library starts them on demand)"
_TASK_FAILS = "a task or result that fails to unpickle fails that task alone; the pool stays usable"

#: Deliberate differences from the standard library (docs/usage.md, "CPython's test suite").
DIFFERENCES: dict[str, str] = {
    _DEADLOCK + "test_error_at_task_pickle": _AT_SUBMIT,
    _PROCESS + "test_saturation": _AT_SUBMIT + " (it submits a Semaphore's acquire; and reads _processes)",
    _SHUTDOWN + "test_processes_terminate": _AT_SUBMIT + " (it passes a Semaphore; and reads _processes)",
    _DEADLOCK + "test_error_at_task_unpickle": _TASK_FAILS,
    _DEADLOCK + "test_exit_at_task_unpickle": _TASK_FAILS,
    _DEADLOCK + "test_error_during_result_unpickle_in_result_handler": _TASK_FAILS,
    _DEADLOCK + "test_exit_during_result_unpickle_in_result_handler": _TASK_FAILS,
    _PROCESS + "test_idle_process_reuse_one": _EAGER,
    _PROCESS + "test_idle_process_reuse_multiple": _EAGER,
    _PROCESS + "test_killed_child": (
        "a dead worker fails only its task and the pool is not broken: submit keeps working"
    ),
    _SHUTDOWN + "test_cancel_futures": (
        "shutdown(cancel_futures=True) cancels every task no worker has started; the standard "
        "library cannot cancel the max_workers + 1 it has already queued to its workers, which "
        "the test counts on finishing"
    ),
    "ThreadPoolExecutorTest::test_map_submits_without_iteration": (
        "map keeps a bounded amount of work in flight and submits more as results are consumed: "
        "a map never iterated runs only its first chunks"
    ),
}

SKIPPED: dict[str, str] = {**INTERNALS, **DIFFERENCES}

#: Executor mixins whose classes are deselected: ferropool starts every worker as spawn does.
_OTHER_START_METHODS = ("ProcessPoolFork", "ProcessPoolForkserver")


def pytest_configure(config: pytest.Config) -> None:
    if TARGET == "stdlib":
        return
    from test.test_concurrent_futures import util

    import ferropool

    util.ThreadPoolMixin.executor_type = ferropool.ThreadPool
    for mixin in (util.ProcessPoolForkMixin, util.ProcessPoolForkserverMixin, util.ProcessPoolSpawnMixin):
        mixin.executor_type = ferropool.ProcessPool


def _test_id(item: pytest.Item) -> str:
    """``Class::test`` (or ``module::Class::test`` where a name is ambiguous)."""
    return "::".join(item.nodeid.split("::")[1:])


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, deselected = [], []
    for item in items:
        cls = getattr(item, "cls", None)
        if cls is not None and cls.__name__.startswith(_OTHER_START_METHODS):
            deselected.append(item)
        else:
            kept.append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept
    if TARGET == "stdlib" or os.environ.get("FERROPOOL_CPYTHON_SUITE_NO_SKIP"):
        return
    for item in items:
        test_id = _test_id(item)
        reason = SKIPPED.get(test_id) or SKIPPED.get(test_id.split("::")[-1])
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
