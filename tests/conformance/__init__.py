"""Conformance suite: every ``concurrent.futures.Executor`` behaviour x every executor kind.

One file per behaviour, modelled on CPython's ``Lib/test/test_concurrent_futures/``
(``executor.py``, ``test_wait.py``, ``test_as_completed.py``, ``test_shutdown.py``,
``test_init.py``, ``test_future.py``, ``test_process_pool.py``, ``test_thread_pool.py``): the
facts are theirs, the code is ours. The executor kinds and their fixtures (``executor_kind``,
``make_executor``, ``make_gate``) live in ``tests/conftest.py``, which other test files share;
``FERROPOOL_CONFORMANCE_TARGET=stdlib`` runs the suite against the reference implementation.

Rules: tasks block on :class:`helpers.Gate` (never ``sleep`` to synchronise), every wait is
bounded, every gate is opened in ``finally`` and again at teardown.

This folder is a package so that its file names may repeat those of ``tests/`` (pytest imports
test modules without a package by their bare name).
"""
