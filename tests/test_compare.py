"""Tests for ``ferropool compare`` (``_compare.py``, ``__main__.py``) and the benchmark smoke run.

The command runs in a subprocess, as a user would run it, with a bounded timeout.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from ferropool import _compare

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_pools.py"
FERROPOOL_STRATEGIES = ("ferropool.ThreadPool", "ferropool.ProcessPool")


def _ferropool_pools_importable() -> bool:
    try:
        import ferropool

        return hasattr(ferropool, "ProcessPool") and hasattr(ferropool, "ThreadPool")
    except Exception:  # noqa: BLE001
        return False


def _cli(*args: str, timeout: float = 50) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferropool", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def quick_report() -> dict:
    proc = _cli("compare", "--quick", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_json_has_every_workload_and_strategy(quick_report):
    assert set(quick_report["workloads"]) == {"cpu", "sleep"}
    for wl in quick_report["workloads"].values():
        assert set(wl["strategies"]) == set(_compare.STRATEGIES)
        assert wl["tasks"] > 0 and wl["description"]


def test_json_medians_and_speedups_are_consistent(quick_report):
    must_run = set(_compare.STRATEGIES)
    if not _ferropool_pools_importable():
        must_run -= set(FERROPOOL_STRATEGIES)
    for name, wl in quick_report["workloads"].items():
        serial = wl["strategies"]["serial"]["median_s"]
        for strategy, e in wl["strategies"].items():
            if strategy not in must_run and not e["available"]:
                assert e["error"], (name, strategy)
                continue
            assert e["available"], (name, strategy, e.get("error"))
            assert 0 < e["min_s"] <= e["median_s"] <= e["max_s"], (name, strategy)
            assert len(e["runs_s"]) == quick_report["config"]["repeats"]
            assert math.isclose(e["speedup"], serial / e["median_s"], rel_tol=1e-9), (name, strategy)
        assert wl["strategies"]["serial"]["speedup"] == 1.0


def test_json_has_one_recommendation_per_workload(quick_report):
    for name, wl in quick_report["workloads"].items():
        rec = wl["recommendation"]
        assert rec.startswith(f"{name}: ") and "->" in rec and "\n" not in rec


def test_table_prints():
    proc = _cli("compare", "--quick", "--workload", "sleep", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sleep: " in out and "cpu: " not in out
    for strategy in _compare.STRATEGIES:
        assert strategy in out
    assert "-> sleep: " in out and "Total time:" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("compare", "--workload", "cpu,nope"), "unknown workload 'nope'"),
        (("compare", "--repeats", "0"), "--repeats"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, needle):
    proc = _cli(*args, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "error:" in lines[0], proc.stderr


def _strategies(thread: float, process: float) -> dict:
    def entry(speedup, workers):
        return {"available": True, "speedup": speedup, "max_workers": workers}

    return {
        "serial": entry(1.0, 1),
        "ferropool.ThreadPool": entry(thread, 6),
        "ferropool.ProcessPool": entry(process, 2),
        "ThreadPoolExecutor": entry(thread, 6),
        "ProcessPoolExecutor": entry(process, 2),
    }


@pytest.mark.parametrize(
    ("thread", "process", "verdict"),
    [(1.0, 1.9, "use ProcessPool"), (5.8, 1.9, "use ThreadPool"), (0.9, 1.1, "stay serial")],
)
def test_recommendation_follows_the_measurements(thread, process, verdict):
    rec = _compare.recommend("w", _strategies(thread, process), cores=2)
    assert verdict in rec and f"{thread:.1f}x" in rec and f"{process:.1f}x" in rec


def test_recommendation_falls_back_to_stdlib_names():
    strategies = _strategies(1.0, 1.9)
    strategies["ferropool.ProcessPool"] = {"available": False, "error": "missing"}
    assert "use ProcessPoolExecutor" in _compare.recommend("cpu", strategies, cores=2)


@pytest.mark.timeout(150)
def test_bench_pools_quick_writes_json(tmp_path):
    if not BENCH.exists():
        pytest.skip(f"{BENCH} not found: tests run outside the source tree")
    out = tmp_path / "pools.json"
    proc = subprocess.run([sys.executable, str(BENCH), "--quick", "--repeats", "2", "--json", str(out)],
                          capture_output=True, text=True, timeout=140)
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"schema", "machine", "config", "executors", "results", "ratios", "rusage", "total_s"} <= set(data)
    assert set(data["results"]) == {"tiny_submit_gather", "tiny_map_default", "cpu_scaling", "startup", "import_time", "cold_start"}
    stdlib = "stdlib ProcessPoolExecutor(forkserver)"
    assert data["results"]["tiny_submit_gather"][stdlib]["stats"]["median_s"] > 0
    assert data["results"]["cpu_scaling"]["serial"]["speedup"] == 1.0
    assert data["results"]["startup"][stdlib]["time_to_first_result"]["median_s"] > 0
    if _ferropool_pools_importable():
        for name in ("ferropool ProcessPool", "ferropool ThreadPool"):
            assert "error" not in data["results"]["tiny_submit_gather"][name], data["results"]["tiny_submit_gather"][name]
    for ratio in data["ratios"]:
        assert {"ratio", "value", "target", "met"} <= set(ratio)
    assert "### Ratios against targets" in proc.stdout
