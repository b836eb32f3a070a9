"""Which CPython build this is: free-threaded or not, and whether the GIL is on right now.

A free-threaded build (3.13t, 3.14t) runs Python threads in parallel unless the GIL has been
turned back on (``PYTHON_GIL=1``, ``-X gil=1``, or importing an extension module that does not
declare itself free-threading safe). ``Pool(strategy="auto")`` and ``ferropool compare`` read
``gil_enabled()`` each time they decide, since the GIL can come back after they were imported.
"""

from __future__ import annotations

import platform
import sys
import sysconfig

__all__ = ["describe_build", "free_threaded_build", "gil_enabled"]


def gil_enabled() -> bool:
    """Whether the GIL is on now: ``sys._is_gil_enabled()`` where it exists (3.13 and later),
    else True (every build before 3.13 has a GIL)."""
    is_enabled = getattr(sys, "_is_gil_enabled", None)
    return True if is_enabled is None else bool(is_enabled())


def free_threaded_build() -> bool:
    """Whether this interpreter was built free-threaded (``Py_GIL_DISABLED``)."""
    return bool(sysconfig.get_config_var("Py_GIL_DISABLED"))


def describe_build(*, gil: bool | None = None, free_threaded: bool | None = None) -> str:
    """Returns e.g. ``"CPython 3.11.7, GIL enabled"`` or ``"CPython 3.14.0 free-threaded, GIL
    disabled"``; ``gil`` and ``free_threaded`` default to this interpreter's."""
    gil = gil_enabled() if gil is None else gil
    free_threaded = free_threaded_build() if free_threaded is None else free_threaded
    build = " free-threaded" if free_threaded else ""
    state = "GIL enabled" if gil else "GIL disabled"
    return f"{platform.python_implementation()} {platform.python_version()}{build}, {state}"
