"""Functions and classes of ``__main__`` sent by value share one namespace per worker
(``_by_value.py``): an initializer's globals and class attributes are the task's.

Each scenario is a real script run as ``__main__`` in a child interpreter, under a timeout.
"""

from __future__ import annotations

import textwrap

import pytest

import helpers
from ferropool import _by_value

SCRIPT_TIMEOUT = 60

PRELUDE = """
import sys
from ferropool import HybridPool, ProcessPool
POOLS = {"process": lambda **kw: ProcessPool(2, **kw), "hybrid": lambda **kw: HybridPool(2, threads_per_process=2, **kw)}
make_pool = POOLS[sys.argv[1]]
"""


def run_main(tmp_path, body: str, pool: str) -> str:
    done = helpers.run_script(tmp_path, PRELUDE + textwrap.dedent(body), pool, timeout=SCRIPT_TIMEOUT)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.mark.parametrize("pool", ["process", "hybrid"])
def test_a_global_the_initializer_sets_is_the_tasks(tmp_path, pool):
    out = run_main(
        tmp_path,
        """
        def init(dsn):
            global conn
            conn = {"dsn": dsn}

        def query(q):
            return f"{conn['dsn']}:{q}"

        if __name__ == "__main__":
            with make_pool(initializer=init, initargs=("db",)) as p:
                print(list(p.map(query, range(4))))
        """,
        pool,
    )
    assert out == "['db:0', 'db:1', 'db:2', 'db:3']"


@pytest.mark.parametrize("pool", ["process", "hybrid"])
def test_a_global_the_parent_also_defines_keeps_the_initializers_value(tmp_path, pool):
    # The task's pickle carries the parent's ``conn = None``: it must not undo the initializer.
    out = run_main(
        tmp_path,
        """
        conn = None
        cache = {}

        def init(dsn):
            global conn
            conn = dsn
            cache["ready"] = True

        def query(q):
            return (conn, cache.get("ready"), q)

        if __name__ == "__main__":
            with make_pool(initializer=init, initargs=("db",)) as p:
                print(list(p.map(query, range(3))), p.submit(lambda: conn).result())
        """,
        pool,
    )
    assert out == "[('db', True, 0), ('db', True, 1), ('db', True, 2)] db"


@pytest.mark.parametrize("pool", ["process", "hybrid"])
def test_a_class_attribute_the_initializer_sets_is_the_tasks(tmp_path, pool):
    out = run_main(
        tmp_path,
        """
        class Config:
            value = None

            def get(self):
                return self.value

        def init(value):
            Config.value = value

        def task(i):
            return (Config.value, Config().get(), i)

        if __name__ == "__main__":
            with make_pool(initializer=init, initargs=("set",)) as p:
                print(list(p.map(task, range(3))))
        """,
        pool,
    )
    assert out == "[('set', 'set', 0), ('set', 'set', 1), ('set', 'set', 2)]"


def test_a_global_the_parent_rebinds_reaches_the_workers(tmp_path):
    # The other way round: a value the parent changed (a notebook cell run again) wins.
    out = run_main(
        tmp_path,
        """
        if __name__ == "__main__":
            with make_pool() as p:
                LIMIT = 1
                first = p.submit(lambda: LIMIT).result()
                LIMIT = 2
                print(first, p.submit(lambda: LIMIT).result())
        """,
        "process",
    )
    assert out == "1 2"


def test_functions_of_one_module_rebuild_into_one_namespace():
    namespace = {"__name__": "by_value_test_module"}
    exec("def setter(v):\n    global shared\n    shared = v\ndef getter():\n    return shared\n", namespace)
    setter = _by_value.make_function(
        namespace["setter"].__code__, {"__name__": "by_value_test_module"}, None, None, None
    )
    getter = _by_value.make_function(
        namespace["getter"].__code__, {"__name__": "by_value_test_module"}, None, None, None
    )
    setter(42)
    assert getter() == 42
    assert setter.__globals__ is getter.__globals__
