"""The extension module ``ferropool._core``: its stubs match it, and its frame kinds are the
engine's."""

from __future__ import annotations

import subprocess
import sys

import pytest

from ferropool import _core


def test_stubs_match_the_extension_module():
    pytest.importorskip("mypy", reason="mypy is in the test extra; install ferropool[test]")
    proc = subprocess.run(
        [sys.executable, "-m", "mypy.stubtest", "ferropool._core"], capture_output=True, text=True, timeout=240
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_frame_kinds_are_distinct_and_stable():
    kinds = {name: getattr(_core, name) for name in _core.__all__ if name.startswith("KIND_")}
    assert len(set(kinds.values())) == len(kinds) == 12
    # Numbers are part of the wire format (docs/wire-format.md): changing one breaks old workers.
    assert (
        kinds["KIND_TASK"],
        kinds["KIND_OK"],
        kinds["KIND_ERR"],
        kinds["KIND_SHUTDOWN"],
        kinds["KIND_LOG"],
        kinds["KIND_START"],
    ) == (5, 6, 7, 9, 11, 12)


def test_engine_rejects_zero_workers_and_empty_command():
    with pytest.raises(ValueError, match="at least one worker"):
        _core.ProcessPoolEngine(0, [sys.executable], b"")
    with pytest.raises(ValueError, match="empty worker command"):
        _core.ProcessPoolEngine(1, [], b"")
