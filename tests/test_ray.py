"""``ferropool.RayPool`` on a real local Ray instance (``ray.init(num_cpus=2)``) started here.

The behaviour tests are shared with ``test_dask.py`` (``remote_cases``); this file adds the
Ray instance and what is Ray's own.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ray = pytest.importorskip("ray", reason="needs the ray extra: pip install 'ferropool[ray]'")

import ferropool  # noqa: E402
import helpers  # noqa: E402
from remote_cases import *  # noqa: E402, F403  (the shared tests)
from remote_cases import WAIT, square  # noqa: E402

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def ray_instance():
    # Ray workers do not get the driver's sys.path: give them this folder (remote_cases,
    # helpers) and whatever ferropool was imported from.
    path = os.pathsep.join(
        [TESTS_DIR, os.path.dirname(os.path.dirname(ferropool.__file__)), os.environ.get("PYTHONPATH", "")]
    )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
    yield
    ray.shutdown()


@pytest.fixture
def no_leaked_children():
    """Replaces the conftest check: Ray's processes belong to the module's Ray instance, and
    Ray starts workers on demand."""
    yield


@pytest.fixture
def make_rpool(ray_instance):
    made = []

    def make(**options):
        pool = ferropool.RayPool(**options)
        made.append(pool)
        return pool

    yield make
    for pool in made:
        helpers.shutdown_bounded(pool, cancel_futures=True)


@pytest.fixture
def rpool(make_rpool):
    return make_rpool()


def test_pool_uses_the_cluster_cpus(rpool):
    assert rpool.max_workers == 2
    assert "RayPool" in repr(rpool)


def test_shutdown_leaves_an_existing_ray_connection(make_rpool):
    make_rpool().shutdown()
    assert ray.is_initialized()
    assert ray.get(ray.remote(square).remote(4), timeout=WAIT) == 16


def test_missing_extra_names_it():
    code = "import sys; sys.modules['ray'] = None\nimport ferropool\ntry:\n    ferropool.RayPool\nexcept ImportError as e:\n    print(e)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'ferropool[ray]'" in out.stdout, out.stderr


def test_shutdown_with_cancel_futures_returns_once_ray_has_stopped_the_tasks(make_rpool, gate_factory):
    # Ray kills a cancelled task's worker after ray.cancel returns: a shutdown that returned
    # before that let the kill land on whatever that worker ran next, another pool's task.
    pool = make_rpool()
    started = gate_factory()
    futures = [pool.submit(helpers.started_then_sleep, started, 60)]
    assert started.wait(WAIT)
    futures += [pool.submit(square, i) for i in range(5)]
    pool.shutdown(wait=True, cancel_futures=True)
    refs = [f._handle for f in futures]
    _, unfinished = ray.wait(refs, num_returns=len(refs), timeout=0, fetch_local=False)
    assert not unfinished, "shutdown returned while Ray was still stopping tasks"
    assert ray.get(ray.remote(square).remote(5), timeout=WAIT) == 25
