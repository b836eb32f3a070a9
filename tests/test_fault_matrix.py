"""Smoke test of ``benchmarks/fault_matrix.py``: it runs cases, and its words match what it saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks", "fault_matrix.py")


@pytest.mark.timeout(120)
def test_fault_matrix_reports_measured_outcomes(tmp_path):
    out = tmp_path / "matrix.json"
    proc = subprocess.run(
        [sys.executable, SCRIPT, "--libs", "ferropool", "--cases", "1,4", "--json", str(out), "--timeout", "20"],
        capture_output=True,
        text=True,
        timeout=100,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(out.read_text())

    for case in ("1", "4"):
        cell = data["cells"][case]["ferropool"]
        assert isinstance(cell["outcome"], str) and cell["outcome"]
        assert cell["outcome"] in proc.stdout  # the printed table shows the same word

    # Case 1: the word is the one the observation calls for, not a constant of the script.
    cell = data["cells"]["1"]["ferropool"]
    seen = cell["observed"]
    assert seen["bad"]["state"] == "raised", seen
    assert [o["state"] for o in seen["others"]] == ["returned"] * len(seen["others"]), seen
    assert seen["after"]["state"] == "returned", seen
    assert not cell["leftover_processes"] and not cell["watchdog_killed"], cell
    assert cell["outcome"] == "only task fails"
