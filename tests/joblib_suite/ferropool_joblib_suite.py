"""pytest plugin: runs joblib's own ``joblib.test.test_parallel`` against ferropool's backends.

    make test-joblib-suite
    # which is:
    PYTHONPATH=tests/joblib_suite .venv/bin/python -m pytest -p ferropool_joblib_suite \
        --pyargs joblib.test.test_parallel

joblib's suite builds its backend lists (``BACKENDS``, ``ALL_VALID_BACKENDS``,
``RETURN_GENERATOR_BACKENDS``) from the registered backends when the test module is imported.
This plugin is loaded before collection, so it registers ``"ferropool"`` and
``"ferropool-threads"`` first; joblib then parametrises its backend tests over them too. Only the
tests given one of the two backends, by name or as an instance, are kept (198 with joblib 1.6):
the rest test joblib's own backends.

``FERROPOOL_JOBLIB_SUITE=joblib`` registers joblib's own ``LokyBackend`` and ``ThreadingBackend``
under the same two names instead: the reference the ferropool backends must match.

``SKIPPED`` lists the tests that do not apply, each with its reason; they show as skipped.
Setting ``FERROPOOL_JOBLIB_SUITE_NO_SKIP=1`` runs them too.
"""

from __future__ import annotations

import os

import pytest

#: The two names the suite's backend lists gain.
NAMES = ("ferropool", "ferropool-threads")

TARGET = os.environ.get("FERROPOOL_JOBLIB_SUITE", "ferropool") or "ferropool"
if TARGET == "ferropool":
    import ferropool.joblib  # noqa: F401  (registers both backends)
elif TARGET == "joblib":
    from joblib import register_parallel_backend
    from joblib._parallel_backends import LokyBackend, ThreadingBackend

    # Subclasses, so that the suite's backend instances of these two names can be told apart
    # from its own "loky" and "threading" ones.
    class ReferenceProcessBackend(LokyBackend):  # type: ignore[misc]
        """joblib's loky backend, under the name "ferropool"."""

    class ReferenceThreadsBackend(ThreadingBackend):  # type: ignore[misc]
        """joblib's threading backend, under the name "ferropool-threads"."""

    register_parallel_backend("ferropool", ReferenceProcessBackend)
    register_parallel_backend("ferropool-threads", ReferenceThreadsBackend)
else:
    raise pytest.UsageError(f"FERROPOOL_JOBLIB_SUITE={TARGET!r}: expected 'ferropool' or 'joblib'")

_LOKY_PARENT = (
    "the inner backend is named in a loky worker, a fresh interpreter that never imported "
    "ferropool.joblib (this plugin is not loaded there); joblib's own backends fail it too"
)
#: Tests (their id after ``::``) that do not apply to the ferropool backends, and why.
SKIPPED: dict[str, str] = {
    "test_nested_loop[loky-ferropool]": _LOKY_PARENT,
    "test_nested_loop[loky-ferropool-threads]": _LOKY_PARENT,
    "test_nested_loop[back_compat_backend-ferropool]": _LOKY_PARENT,  # a LokyBackend subclass
    "test_nested_loop[back_compat_backend-ferropool-threads]": _LOKY_PARENT,
}


def pytest_configure(config: pytest.Config) -> None:
    # Markers of joblib's own pytest configuration, which is not installed with the package.
    config.addinivalue_line("markers", "thread_unsafe: joblib: not safe under pytest-run-parallel")
    config.addinivalue_line("markers", "no_cover: joblib: not measured for coverage")


def _names_a_backend(item: pytest.Item) -> bool:
    """Tells whether a test runs on one of the two backends: by name or as an instance."""
    from joblib.parallel import BACKENDS

    classes = tuple(BACKENDS[name] for name in NAMES)
    callspec = getattr(item, "callspec", None)
    if callspec is None:
        return False
    return any(
        (isinstance(value, str) and value in NAMES) or type(value) in classes for value in callspec.params.values()
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kept, dropped = [], []
    for item in items:
        (kept if _names_a_backend(item) else dropped).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
    items[:] = kept
    for item in kept:
        reason = (
            None if os.environ.get("FERROPOOL_JOBLIB_SUITE_NO_SKIP") else SKIPPED.get(item.nodeid.split("::", 1)[1])
        )
        if reason is not None:
            item.add_marker(pytest.mark.skip(reason=reason))
