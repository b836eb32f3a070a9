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

``SKIPPED`` lists the tests that do not apply, each with its reason, in three groups: tests that
read a ``concurrent.futures`` executor's private internals, deliberate differences (documented
in ``docs/usage.md``), and tests that the standard-library semantics change (``BrokenProcessPool``
errors, ``cancel_futures``, ``_RemoteTraceback``, ``_processes``) will make pass. They show
as skipped. ``FERROPOOL_CPYTHON_SUITE_NO_SKIP=1`` runs them too, and
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
    "ProcessPoolSpawnFailingInitializerTest::test_initializer": _private("_broken"),
    "FailingInitializerResourcesTest::test_spawn": "runs FailingInitializerTest.test_initializer, which reads _broken",
    "FailingInitializerResourcesTest::test_forkserver": "runs FailingInitializerTest.test_initializer, which reads _broken",
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
    "ThreadPoolExecutorTest::test_map_submits_without_iteration": (
        "map is lazy on its input: it submits items as their results are consumed, so an "
        "iterator never read submits nothing"
    ),
}

_DIED = "a dead worker raises WorkerDiedError, not yet a BrokenProcessPool"

#: Tests that the standard-library semantics change makes pass: WorkerDiedError subclassing
#: BrokenProcessPool, shutdown(cancel_futures=True), _RemoteTraceback causes and the
#: _max_workers/_processes attributes.
STDLIB_SEMANTICS: dict[str, str] = {
    _DEADLOCK + "test_crash_at_task_unpickle": _DIED,
    _DEADLOCK + "test_crash_big_data": _DIED,
    _DEADLOCK + "test_crash_during_func_exec_on_worker": _DIED,
    _DEADLOCK + "test_crash_during_result_pickle_on_worker": _DIED,
    _DEADLOCK + "test_shutdown_deadlock": _DIED,
    _PROCESS
    + "test_traceback": "the cause is ferropool.errors.RemoteTraceback, not concurrent.futures.process._RemoteTraceback",
    _SHUTDOWN + "test_cancel_futures": "shutdown(cancel_futures=True) semantics",
    _PROCESS + "test_idle_process_reuse_one": "reads _processes",
    _PROCESS + "test_idle_process_reuse_multiple": "reads _processes",
    _PROCESS + "test_killed_child": "reads _processes",
    _PROCESS + "test_max_tasks_per_child": "reads _processes",
}

for _test in STDLIB_SEMANTICS:
    STDLIB_SEMANTICS[_test] = "fixed by the stdlib-semantics change: " + STDLIB_SEMANTICS[_test]

SKIPPED: dict[str, str] = {**INTERNALS, **DIFFERENCES, **STDLIB_SEMANTICS}

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
