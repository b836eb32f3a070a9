"""``ferropool.DaskPool`` on a real Dask ``LocalCluster`` (worker processes) started here.

The behaviour tests are shared with ``test_ray.py`` (``remote_cases``); this file adds the
cluster and what is Dask's own.
"""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

distributed = pytest.importorskip("distributed", reason="needs the dask extra: pip install 'ferropool[dask]'")

import ferropool  # noqa: E402
import helpers  # noqa: E402
from ferropool._cluster.remote import running_tasks  # noqa: E402
from remote_cases import *  # noqa: E402, F403  (the shared tests)
from remote_cases import WAIT, square  # noqa: E402


@pytest.fixture(scope="module")
def client():
    # Dask's default allowed-failures (3): a task on a worker that dies is tried on three
    # more before it fails, so a test that kills workers does not fail its neighbours' tasks.
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None)
    client = distributed.Client(cluster)
    yield client
    client.close()
    cluster.close()


@pytest.fixture
def no_leaked_children():
    """Replaces the conftest check: the cluster's worker processes belong to the module, and
    Dask's nannies replace workers that a test killed."""
    yield


@pytest.fixture
def make_rpool(client):
    made = []

    def make(**options):
        pool = ferropool.DaskPool(client, **options)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        helpers.shutdown_bounded(pool, cancel_futures=True)
    # A task stopped while blocked in C takes its worker down up to a second later: wait for
    # every stopped task to be gone and both workers to be up, so the next test starts clean.
    deadline = time.monotonic() + WAIT
    while any(client.run(running_tasks, on_error="return").values()) or len(client.nthreads()) < 2:
        assert time.monotonic() < deadline, "a stopped task or a replaced worker did not settle"
        time.sleep(0.05)  # polling the cluster's state, bounded by the deadline


@pytest.fixture
def rpool(make_rpool):
    return make_rpool()


def test_pool_uses_the_cluster_threads(rpool):
    assert rpool.max_workers == 2
    assert "DaskPool" in repr(rpool)


def test_shutdown_leaves_a_passed_client_open(client):
    pool = ferropool.DaskPool(client)
    pool.shutdown()
    assert client.submit(square, 4).result(timeout=WAIT) == 16


def test_address_string_makes_an_owned_client(client):
    pool = ferropool.DaskPool(client.scheduler.address)
    try:
        assert pool.client is not client
        assert pool.submit(square, 6).result(timeout=WAIT) == 36
    finally:
        pool.shutdown()
    assert pool.client.status == "closed"


def test_missing_extra_names_it():
    code = "import sys; sys.modules['distributed'] = None\nimport ferropool\ntry:\n    ferropool.DaskPool\nexcept ImportError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'ferropool[dask]'" in out.stdout, out.stderr
