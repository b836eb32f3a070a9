"""What the build promises about free-threaded CPython (docs/free-threading.md): the extension is
the abi3 one on GIL builds and a version-specific one on free-threaded builds, and importing
ferropool on a free-threaded build leaves the GIL off. The free-threaded checks run only on such
an interpreter (3.14t); elsewhere they are skipped with the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ferropool import _core
from ferropool._interpreter import free_threaded_build

needs_free_threaded = pytest.mark.skipif(not free_threaded_build(), reason="needs a free-threaded CPython (3.14t)")


def test_the_extension_is_abi3_on_a_gil_build_and_version_specific_without_one():
    name = Path(_core.__file__).name
    if free_threaded_build():
        # No stable ABI for free-threaded 3.14: e.g. _core.cpython-314t-x86_64-linux-gnu.so
        assert ".abi3." not in name and "t-" in name, name
    else:
        assert name.endswith(".abi3.so"), name


@needs_free_threaded
def test_importing_ferropool_leaves_the_gil_off():
    code = "import sys, ferropool, ferropool._core, ferropool.shared; print(sys._is_gil_enabled())"
    env = {k: v for k, v in __import__("os").environ.items() if k != "PYTHON_GIL"}
    proc = subprocess.run(
        [sys.executable, "-W", "error::RuntimeWarning", "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False", proc.stderr
