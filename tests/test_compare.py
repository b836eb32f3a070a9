"""Tests for ``ferropool compare`` (``ferropool/compare/``, ``__main__.py``) and the benchmark smoke run.

The command runs in a subprocess, as a user would run it, with a bounded timeout;
the pieces it is made of (recommendation, runners, factories, server, progress)
are also tested in-process.
"""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ferropool._util import usable_cpu_count
from ferropool.compare import cli, measure, tasks
from ferropool.compare import report as compare_report
from ferropool.compare import strategies as compare_strategies
from ferropool.compare.workloads import BUILTIN, Workload

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "benchmarks" / "bench_pools.py"
# Strategies that must run wherever ferropool's core is built; the others may be "unavailable: ...".
MUST_RUN = (
    "serial",
    "ThreadPoolExecutor",
    "ProcessPoolExecutor",
    "ferropool.ThreadPool",
    "ferropool.ProcessPool",
    "asyncio",
)
MAY_BE_MISSING = ("ferropool.HybridPool", "ferropool.Pool(auto)")
# A quick run of every workload takes ~8 s on 2 idle cores; the margin is for loaded CI machines.
QUICK_TIMEOUT_S = 100


def _importable(name: str) -> bool:
    try:
        __import__(name)
        return True
    except ImportError:
        return False


def _cli(*args: str, timeout: float = 50, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ferropool", *args], capture_output=True, text=True, timeout=timeout, cwd=cwd
    )


def _rows(entry: dict) -> list:
    return [r for r in entry.get("by_workers", []) if r["available"]]


@pytest.fixture(scope="module")
def quick_report() -> dict:
    proc = _cli("compare", "--quick", "--json", timeout=QUICK_TIMEOUT_S - 5)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_every_builtin_workload_is_timed_or_skipped_with_reason(quick_report):
    workloads = quick_report["workloads"]
    assert set(workloads) == set(BUILTIN)
    for name, wl in workloads.items():
        assert wl["description"]
        if not wl["available"]:
            assert "not installed" in wl["skipped"], (name, wl)
            continue
        assert set(wl["strategies"]) == set(cli.STRATEGY_NAMES)
        assert wl["tasks"] > 0
    for name, module in (("http", "aiohttp"), ("async_http", "aiohttp"), ("array", "numpy")):
        assert workloads[name]["available"] == _importable(module), name


@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_json_figures_are_consistent(quick_report):
    cores = quick_report["machine"]["usable_cores"]
    for name, wl in quick_report["workloads"].items():
        if not wl["available"]:
            continue
        repeats = quick_report["config"]["repeats"]
        serial = _rows(wl["strategies"]["serial"])
        # serial is timed again at every worker count: its row pools those runs
        assert len(serial) == 1 and serial[0]["speedup"] == 1.0
        assert len(serial[0]["runs_s"]) == repeats * len(wl["sweep"])
        for strategy, entry in wl["strategies"].items():
            if strategy in MAY_BE_MISSING and not entry["available"]:
                assert entry["error"].startswith("unavailable: "), (name, strategy)
                continue
            assert entry["available"], (name, strategy, entry.get("error"))
            for r in entry["by_workers"] if strategy != "serial" else []:
                assert r["available"], (name, strategy, r)
                assert 0 < r["min_s"] <= r["median_s"] <= r["max_s"], (name, strategy)
                assert len(r["runs_s"]) == repeats
                if repeats % 2:  # the baseline is serial's median at the same worker count: one of its runs
                    assert r["baseline_s"] in serial[0]["runs_s"], (name, strategy)
                assert math.isclose(r["speedup"], r["baseline_s"] / r["median_s"], rel_tol=1e-9)
                assert math.isclose(r["efficiency"], r["speedup"] / min(r["workers"] or cores, cores), rel_tol=1e-9)
                assert r["cpu_utilisation"] is None or r["cpu_utilisation"] >= 0


@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_worker_counts_are_swept(quick_report):
    cores = quick_report["machine"]["usable_cores"]
    for name, wl in quick_report["workloads"].items():
        if not wl["available"]:
            continue
        expected = sorted({1, 2, cores} | ({2 * cores} if wl["kind"] == "io" else set()))
        assert wl["sweep"] == expected, name
        for strategy in ("ThreadPoolExecutor", "ferropool.ProcessPool", "asyncio"):
            assert [r["workers"] for r in wl["strategies"][strategy]["by_workers"]] == expected, (name, strategy)


@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_process_pools_report_their_workers_memory(quick_report):
    if not quick_report["machine"]["per_worker_usage"]:
        pytest.skip("no /proc: worker processes cannot be measured here")
    wl = quick_report["workloads"]["cpu"]
    for strategy in ("ProcessPoolExecutor", "ferropool.ProcessPool"):
        for r in wl["strategies"][strategy]["by_workers"]:
            assert r["worker_processes"] == r["workers"], (strategy, r)
            assert r["workers_peak_rss_bytes"] > 1 << 20, (strategy, r)
    for r in wl["strategies"]["ferropool.ThreadPool"]["by_workers"]:
        assert r["worker_processes"] == 0 and r["workers_peak_rss_bytes"] is None


@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_json_has_one_recommendation_per_workload(quick_report):
    for name, wl in quick_report["workloads"].items():
        if wl["available"]:
            rec = wl["recommendation"]
            assert rec.startswith(f"{name}: ") and "->" in rec and "\n" not in rec


def test_table_and_progress_print():
    proc = _cli("compare", "--quick", "--workload", "sleep", "--repeats", "1")
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "sleep: " in out and "cpu: " not in out
    for strategy in MUST_RUN:
        assert strategy in out
    assert "-> sleep: " in out and "Total time:" in out
    assert "[1/1] sleep" in proc.stderr  # stderr is not a terminal: a plain line per workload


def test_quiet_prints_no_progress():
    proc = _cli("compare", "--quick", "--workload", "tiny", "--repeats", "1", "--strategy", "asyncio", "--quiet")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_plot_html_writes_a_chart(tmp_path):
    out = tmp_path / "x.html"
    proc = _cli("compare", "--quick", "--workload", "sleep", "--repeats", "1", "--quiet", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    page = out.read_text()
    assert "<svg" in page and "<polyline" in page and "ferropool.ThreadPool" in page


def test_plot_png_when_matplotlib_is_installed(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "x.png"
    proc = _cli("compare", "--quick", "--workload", "sleep", "--repeats", "1", "--quiet", "--plot", str(out))
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("compare", "--workload", "cpu,nope"), "unknown workload 'nope'"),
        (("compare", "--strategy", "fibers"), "unknown strategy 'fibers'"),
        (("compare", "--repeats", "0"), "--repeats"),
        (("compare", "--workers", "2,0"), "--workers"),
        (("frobnicate",), "invalid choice"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(args, needle):
    proc = _cli(*args, timeout=30)
    assert proc.returncode == 2
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "error:" in lines[0], proc.stderr


# ---------------------------------------------------------------- user targets

TARGET_MODULE = """
import asyncio

VALUE = 3


def square(i):
    return i * i


async def asquare(i):
    await asyncio.sleep(0.001)
    return i * i


def boom(i):
    if i == 2:
        raise ValueError("no twos here")
    return i
"""


@pytest.fixture
def target_dir(tmp_path) -> Path:
    """A folder holding ``compare_target.py``; the CLI runs there, as a user would beside their module."""
    (tmp_path / "compare_target.py").write_text(textwrap.dedent(TARGET_MODULE))
    return tmp_path


def _user_report(target_dir: Path, target: str) -> dict:
    proc = _cli(
        "compare",
        target,
        "--items",
        "6",
        "--quick",
        "--json",
        "--workers",
        "1,2",
        "--strategy",
        "ThreadPoolExecutor,ProcessPoolExecutor,ferropool.ProcessPool,asyncio",
        cwd=target_dir,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert list(report["workloads"]) == [target]
    return report["workloads"][target]


@pytest.mark.parametrize(("target", "is_async"), [("compare_target:square", False), ("compare_target:asquare", True)])
def test_user_target_is_timed_with_every_strategy(target_dir, target, is_async):
    wl = _user_report(target_dir, target)
    assert wl["tasks"] == 6 and wl["is_async"] is is_async and wl["sweep"] == [1, 2]
    for strategy in ("serial", "ThreadPoolExecutor", "ProcessPoolExecutor", "ferropool.ProcessPool", "asyncio"):
        assert wl["strategies"][strategy]["available"], (strategy, wl["strategies"][strategy])
    assert wl["recommendation"].startswith(f"{target}: ")


@pytest.mark.parametrize(
    ("target", "expected"),
    [
        (
            "nosuch_module_5f1c:func",
            "ferropool compare: cannot import 'nosuch_module_5f1c:func': No module named 'nosuch_module_5f1c'",
        ),
        (
            "compare_target:missing",
            "ferropool compare: cannot import 'compare_target:missing': module 'compare_target' has no attribute 'missing'",
        ),
        ("compare_target:VALUE", "ferropool compare: 'compare_target:VALUE' is not callable: it is a int"),
        (
            "compare_target:boom",
            "ferropool compare: 'compare_target:boom' raised ValueError: no twos here (in the call boom(2))",
        ),
        ("no_colon", "ferropool compare: expected MODULE:FUNCTION, got 'no_colon'"),
    ],
)
def test_bad_target_exits_2_with_one_line(target_dir, target, expected):
    proc = _cli("compare", target, "--items", "4", "--quick", cwd=target_dir, timeout=30)
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    assert proc.stderr.splitlines() == [expected]


# ---------------------------------------------------------------- the pieces, in-process


def _entry(*speedups_by_workers) -> dict:
    return {
        "available": True,
        "by_workers": [
            {"available": True, "workers": w, "shape": str(w), "speedup": s} for w, s in speedups_by_workers
        ],
    }


def _wl(thread: float, process: float, asyncio_: float = 0.5, is_async: bool = False) -> dict:
    return {
        "is_async": is_async,
        "strategies": {
            "serial": _entry((1, 1.0)),
            "ThreadPoolExecutor": _entry((1, 1.0), (2, thread * 0.9), (4, thread * 0.95)),
            "ferropool.ThreadPool": _entry((1, 1.0), (2, thread), (4, thread)),
            "ProcessPoolExecutor": _entry((1, 1.0), (2, process)),
            "ferropool.ProcessPool": _entry((1, 1.0), (2, process)),
            "asyncio": _entry((1, 1.0), (4, asyncio_)),
            "ferropool.HybridPool": {"available": False, "error": "unavailable: no HybridPool"},
        },
    }


@pytest.mark.parametrize(
    ("wl", "expected"),
    [
        (
            _wl(1.0, 1.9),
            "w: the GIL serialises threads (1.0x); processes give 1.9x on 2 cores "
            "-> use ferropool.ProcessPool(max_workers=2)",
        ),
        (_wl(3.8, 1.9), "use ferropool.ThreadPool(max_workers=2)"),  # fewest workers within 5% of the best
        (_wl(0.9, 1.1), "stay serial"),
        (_wl(1.5, 3.0), "processes scale further: 3.0x with 2 workers, threads 1.5x"),
        (_wl(1.9, 1.9, asyncio_=3.5, is_async=True), "-> use asyncio (gather under an asyncio.Semaphore(4))"),
        (_wl(3.5, 1.9, asyncio_=3.5), "-> use ferropool.ThreadPool"),  # sync work: threads before asyncio
    ],
)
def test_recommendation_follows_the_measurements(wl, expected):
    rec = compare_report.recommend("w", wl, cores=2)
    assert expected in rec and "\n" not in rec, rec


def test_recommendation_without_the_gil_takes_threads_as_parallel():
    # Threads that scale: the reason is the disabled GIL, not the work releasing it.
    rec = compare_report.recommend("w", _wl(3.8, 1.9), cores=2, gil_enabled=False)
    assert "the GIL is disabled, so threads run the work in parallel: threads give 3.8x" in rec, rec
    assert "-> use ferropool.ThreadPool(max_workers=2)" in rec
    # Threads that do not scale without a GIL: the work serialises them, not the GIL.
    rec = compare_report.recommend("w", _wl(1.0, 1.9), cores=2, gil_enabled=False)
    assert "threads do not scale (1.0x) although the GIL is disabled" in rec, rec
    assert "the GIL serialises" not in rec and "-> use ferropool.ProcessPool(max_workers=2)" in rec
    # With the GIL on, the same figures read as before.
    assert "the GIL serialises threads" in compare_report.recommend("w", _wl(1.0, 1.9), cores=2, gil_enabled=True)
    assert "releases the GIL or waits" in compare_report.recommend("w", _wl(3.8, 1.9), cores=2, gil_enabled=True)


def test_recommendation_defaults_to_this_interpreters_gil(monkeypatch):
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert "the GIL is disabled" in compare_report.recommend("w", _wl(3.8, 1.9), cores=2)
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: True, raising=False)
    assert "releases the GIL or waits" in compare_report.recommend("w", _wl(3.8, 1.9), cores=2)


@pytest.mark.timeout(QUICK_TIMEOUT_S)
def test_report_names_the_build_it_ran_on(quick_report):
    from ferropool._interpreter import describe_build

    machine = quick_report["machine"]
    assert machine["build"] == describe_build()  # e.g. "CPython 3.11.7, GIL enabled"
    assert machine["gil_enabled"] is (getattr(sys, "_is_gil_enabled", lambda: True)())
    first = compare_report.format_report(quick_report).splitlines()[0]
    assert f", {describe_build()}, " in first, first


def test_recommendation_cautions_when_serial_did_not_get_a_whole_core():
    wl = {**_wl(1.0, 1.9), "kind": "cpu"}
    wl["strategies"]["serial"]["by_workers"][0]["cpu_utilisation"] = 0.3  # 0.6 of a core on 2 cores
    rec = compare_report.recommend("w", wl, cores=2)
    assert rec.endswith(
        "(caution: serial got 0.60 of a core, other programs competed for the CPU: "
        "these figures understate what pools can do)"
    ), rec
    wl["strategies"]["serial"]["by_workers"][0]["cpu_utilisation"] = 0.49
    assert "caution" not in compare_report.recommend("w", wl, cores=2)


def test_recommendation_names_stdlib_only_when_clearly_faster():
    wl = _wl(1.0, 1.9)
    assert "ferropool.ProcessPool" in compare_report.recommend("cpu", wl, cores=2)
    wl["strategies"]["ProcessPoolExecutor"] = _entry((2, 1.9 * 1.2))
    assert "use ProcessPoolExecutor(max_workers=2)" in compare_report.recommend("cpu", wl, cores=2)
    wl["strategies"]["ferropool.ProcessPool"] = {"available": False, "error": "cannot create"}
    assert "use ProcessPoolExecutor" in compare_report.recommend("cpu", wl, cores=2)


async def _async_double(x):
    return 2 * x


@pytest.mark.parametrize(
    "make",
    [
        lambda: compare_strategies.SerialRunner(),
        lambda: compare_strategies.AsyncioRunner(3),
        lambda: compare_strategies.ExecutorRunner(ThreadPoolExecutor(2), 2),
    ],
)
def test_runners_run_sync_and_async_tasks_in_order(make):
    runner = make()
    try:
        assert runner.run(tasks.add_one, None, range(10)) == list(range(1, 11))
        assert runner.run(None, _async_double, range(10)) == list(range(0, 20, 2))
    finally:
        runner.close()


def test_hybrid_and_auto_light_up_when_ferropool_has_them(monkeypatch):
    import ferropool

    class FakeHybridPool(ThreadPoolExecutor):
        def __init__(self, processes, threads_per_process):
            super().__init__(processes * threads_per_process)

    class FakePool(ThreadPoolExecutor):
        def __init__(self, *, strategy):
            assert strategy == "auto"
            super().__init__(3)
            self.max_workers = 3

    monkeypatch.setattr(ferropool, "HybridPool", FakeHybridPool, raising=False)
    monkeypatch.setattr(ferropool, "Pool", FakePool, raising=False)
    wl = Workload("tiny", "tiny", "io", tasks.add_one, None, tuple(range(8)), [i + 1 for i in range(8)], (0,))
    wanted = [
        s for s in compare_strategies.STRATEGIES if s.name in ("serial", "ferropool.HybridPool", "ferropool.Pool(auto)")
    ]
    report = measure.run_compare([wl], strategies=wanted, repeats=1, workers=[1, 4])
    strategies = report["workloads"]["tiny"]["strategies"]
    cores = report["machine"]["usable_cores"]
    hybrid = strategies["ferropool.HybridPool"]["by_workers"]
    assert [r["shape"] for r in hybrid] == ["1x1", f"{min(4, cores)}x{math.ceil(4 / min(4, cores))}"]
    assert all(r["available"] for r in hybrid)
    assert [r["shape"] for r in strategies["ferropool.Pool(auto)"]["by_workers"]] == ["auto (3)"]


def test_missing_strategy_is_unavailable_and_the_run_goes_on(monkeypatch):
    import ferropool

    # As if this ferropool had no HybridPool (it is a lazy attribute: hide it from __getattr__ too).
    monkeypatch.delattr(ferropool, "HybridPool", raising=False)
    monkeypatch.delitem(ferropool._LAZY, "HybridPool", raising=False)
    wl = Workload("tiny", "tiny", "cpu", tasks.add_one, None, (1, 2), [2, 3], (0,))
    wanted = [
        s for s in compare_strategies.STRATEGIES if s.name in ("serial", "ferropool.HybridPool", "ThreadPoolExecutor")
    ]
    report = measure.run_compare([wl], strategies=wanted, repeats=1, workers=[2])
    strategies = report["workloads"]["tiny"]["strategies"]
    assert strategies["ferropool.HybridPool"] == {
        "available": False,
        "error": f"unavailable: ferropool {ferropool.__version__} has no HybridPool",
    }
    assert strategies["ThreadPoolExecutor"]["available"]
    assert "ferropool.HybridPool: unavailable" in compare_report.format_report(report)
    report["machine"]["busy_cores_at_start"] = 1.5  # another program was busy: the table says so
    assert "Warning: other programs kept 1.5 cores busy" in compare_report.format_report(report)


def test_local_server_answers_blocking_and_async_clients():
    pytest.importorskip("aiohttp")
    from ferropool.compare.server import BODY, DelayServer

    with DelayServer() as server:
        assert tasks.http_get(server.url(1)) == len(BODY)
        assert tasks.run_async(tasks.http_get_async, server.url(1)) == len(BODY)


def test_progress_is_a_line_per_workload_off_a_terminal():
    stream = io.StringIO()
    progress = compare_report.Progress(stream=stream)
    progress.workload("cpu", 0, 2)
    progress.step("cpu: 2 workers, run 1 of 5")
    progress.workload("sleep", 1, 2)
    progress.done()
    assert [line.split(" (")[0] for line in stream.getvalue().splitlines()] == [
        "ferropool compare: [1/2] cpu",
        "ferropool compare: [2/2] sleep",
    ]
    quiet = io.StringIO()
    compare_report.Progress(quiet=True, stream=quiet).workload("cpu", 0, 1)
    assert quiet.getvalue() == ""


@pytest.mark.timeout(150)
def test_bench_pools_quick_writes_json(tmp_path):
    if not BENCH.exists():
        pytest.skip(f"{BENCH} not found: tests run outside the source tree")
    out = tmp_path / "pools.json"
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--repeats", "2", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=140,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())
    assert {"schema", "machine", "config", "executors", "results", "ratios", "rusage", "total_s"} <= set(data)
    assert set(data["results"]) == {
        "tiny_submit_gather",
        "tiny_map_default",
        "cpu_scaling",
        "startup",
        "import_time",
        "cold_start",
    }
    stdlib = "stdlib ProcessPoolExecutor(forkserver)"
    assert data["results"]["tiny_submit_gather"][stdlib]["stats"]["median_s"] > 0
    assert data["results"]["cpu_scaling"]["serial"]["speedup"] == 1.0
    assert data["results"]["startup"][stdlib]["time_to_first_result"]["median_s"] > 0
    ferropool_ok = _importable("ferropool._core")
    if ferropool_ok:
        for name in ("ferropool ProcessPool", "ferropool ThreadPool"):
            assert "error" not in data["results"]["tiny_submit_gather"][name], data["results"]["tiny_submit_gather"][
                name
            ]
    for ratio in data["ratios"]:
        assert {"ratio", "value", "target", "met"} <= set(ratio)
    assert "### Ratios against targets" in proc.stdout


def test_auto_warms_up_on_the_real_items_and_decides_for_them():
    # The other pools warm up on small arguments (sleep(0) here); auto decides from its first
    # calls, so it warms up on the workload's own: 10 ms sleeps go to threads, sleep(0) would
    # have stayed serial.
    from contextlib import ExitStack

    wl = Workload("sleep", "sleep", "io", tasks.sleep_task, None, (0.01,) * 6, [0.01] * 6, (0.0,))
    auto = next(s for s in compare_strategies.STRATEGIES if s.name == "ferropool.Pool(auto)")
    with ExitStack() as stack:
        rows: dict = {auto.name: []}
        timed = measure._start(auto, None, wl, usable_cpu_count(), stack, rows, {})
        assert timed is not None, rows
        decision = timed.runner.executor.decisions["ferropool.compare.tasks.sleep_task"]
        assert decision.strategy == "threads", decision


# ---------------------------------------------------------------- compare.run() from Python


def _negate(x):
    return -x


def test_run_from_python_returns_the_report_with_its_table():
    from ferropool.compare import Comparison, run

    result = run(_negate, items=[3, 4, 5], strategies=["ThreadPoolExecutor"], workers=[2], repeats=1)
    assert isinstance(result, Comparison)
    (name,) = result["workloads"]
    assert name.endswith(":_negate")
    wl = result["workloads"][name]
    assert wl["tasks"] == 3 and wl["sweep"] == [2]
    assert sorted(wl["strategies"]) == ["ThreadPoolExecutor", "serial"]
    assert str(result) == compare_report.format_report(result)
    assert result.recommendations() == {name: wl["recommendation"]}
    assert json.loads(json.dumps(result)) == dict(result)  # still the --json report


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"target": _negate, "strategies": ["threads"]}, ValueError, "unknown strategy 'threads'"),
        ({"workloads": ["nope"]}, ValueError, "unknown workload 'nope'"),
        ({"target": _negate, "workloads": ["cpu"]}, ValueError, "either a target or workloads"),
        ({"target": _negate, "items": 0}, ValueError, "items must be >= 1"),
        ({"target": _negate, "items": []}, ValueError, "items is empty"),
        ({"target": _negate, "workers": [0]}, ValueError, "workers must be positive integers"),
        ({"target": _negate, "repeats": 0}, ValueError, "repeats must be >= 1"),
        ({"target": 42}, ValueError, "target must be a function or 'module:function', not int"),
        ({"target": "nosuch_module_xyz:f"}, Exception, "cannot import 'nosuch_module_xyz:f'"),
    ],
)
def test_run_from_python_names_bad_input(kwargs, error, words):
    from ferropool.compare import run

    with pytest.raises(error, match=words):
        run(**kwargs)
