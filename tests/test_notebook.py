"""ferropool in a real Jupyter notebook: cells run one by one in an IPython kernel (nbclient).

Each test starts a kernel (the Python running the tests, so the installed ferropool), runs cells
built with nbformat and reads their outputs as a notebook front end would get them: streams,
displays (widgets, HTML) and errors. A function defined in a cell goes to the worker processes
by value; progress bars are widgets where ipywidgets is installed and text otherwise; an
interrupt of the kernel during ``map`` stops the pool's workers and leaves the kernel usable;
``stats()``, ``Pool.explain()`` and the ``compare`` result show as HTML.
"""

from __future__ import annotations

import asyncio
import json
import os
import pathlib
import re
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

nbformat = pytest.importorskip("nbformat", reason="needs the test extra: pip install 'ferropool[test]'")
nbclient = pytest.importorskip("nbclient", reason="needs the test extra: pip install 'ferropool[test]'")
pytest.importorskip("ipykernel", reason="needs the test extra: pip install 'ferropool[test]'")

# Kernel start-up takes a second or two, more on a loaded machine; every cell is bounded, and
# each test (a kernel and a few cells, 2-7 s here) gets more than the default 60 s.
CELL_TIMEOUT = 60
pytestmark = pytest.mark.timeout(180)
KERNEL = "ferropool-test-python"
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "application/vnd.jupyter.widget-state+json"

DEFINE = """\
import os, time
def cube(x):
    return x ** 3
def slow(x, folder):
    open(os.path.join(folder, str(os.getpid())), "w").close()  # this worker has started a task
    time.sleep(60)
    return x
"""


class Notebook:
    """A notebook being run cell by cell in one kernel; ``run`` returns a cell's outputs."""

    def __init__(self, client: Any, nb: Any) -> None:
        self.client = client
        self.nb = nb

    async def start(self, code: str) -> tuple[Any, asyncio.Task[Any]]:
        """Starts running ``code`` as a new cell; returns the cell and the task to await."""
        cell = nbformat.v4.new_code_cell(code)
        self.nb.cells.append(cell)
        task = asyncio.ensure_future(self.client.async_execute_cell(cell, len(self.nb.cells) - 1))
        return cell, task

    async def run(self, code: str) -> list[Any]:
        cell, task = await self.start(code)
        await task
        return list(cell.outputs)

    def widget_states(self) -> list[dict[str, Any]]:
        """The state of every widget model the kernel created (what nbclient stores in the
        notebook's metadata, as a front end would save it)."""
        self.client.set_widgets_metadata()
        stored = self.nb.metadata.get("widgets", {}).get(WIDGET_STATE, {}).get("state", {})
        return [m["state"] | {"_model_name": m["model_name"]} for m in stored.values()]


@pytest.fixture(autouse=True)
def this_python_kernel(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel spec that runs this very Python (so the ferropool under test), found first
    whatever other ``python3`` kernels this machine has installed."""
    home = tmp_path_factory.mktemp("jupyter")
    spec = home / "kernels" / KERNEL
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(json.dumps({"argv": argv, "display_name": KERNEL, "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(home))


def in_kernel(body: Callable[[Notebook], Awaitable[None]], cwd: pathlib.Path) -> None:
    """Runs ``body`` with a fresh kernel whose working directory is ``cwd``, then stops it."""
    nb = nbformat.v4.new_notebook()
    client = nbclient.NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name=KERNEL,
        allow_errors=True,
        resources={"metadata": {"path": str(cwd)}},
    )

    async def main() -> None:
        async with client.async_setup_kernel():
            await body(Notebook(client, nb))

    asyncio.run(asyncio.wait_for(main(), timeout=170))


def text(outputs: list[Any], name: str = "stdout") -> str:
    return "".join(o.get("text", "") for o in outputs if o["output_type"] == "stream" and o["name"] == name)


def errors(outputs: list[Any]) -> list[Any]:
    return [o for o in outputs if o["output_type"] == "error"]


def html_of(outputs: list[Any]) -> str:
    shown = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})]
    assert len(shown) == 1, outputs
    return str(shown[0])


def test_cell_function_runs_in_process_and_hybrid_pools(tmp_path):
    expect = sum(x**3 for x in range(200))

    async def body(notebook: Notebook) -> None:
        out = await notebook.run(DEFINE + "import sys\nprint(sys.executable)")
        assert text(out) == f"{sys.executable}\n", out  # the kernel runs the Python under test
        out = await notebook.run(
            "from ferropool import HybridPool, ProcessPool\n"
            "with ProcessPool(2) as pool:\n"
            "    print(sum(pool.map(cube, range(200))), pool.submit(cube, 3).result())\n"
            "with HybridPool(2, 2) as pool:\n"
            "    print(sum(pool.map(cube, range(200), chunksize=7)), pool.submit(cube, 4).result())\n"
        )
        assert not errors(out), out
        assert text(out).split("\n") == [f"{expect} 27", f"{expect} 64", ""]

    in_kernel(body, tmp_path)


@pytest.mark.parametrize("tqdm", [True, False], ids=["tqdm", "no-tqdm"])
@pytest.mark.parametrize("widgets", [True, False], ids=["ipywidgets", "no-ipywidgets"])
def test_map_progress_in_a_notebook(tmp_path, widgets, tqdm):
    """A widget where ipywidgets is installed (tqdm's, or ferropool's own without tqdm); a text bar
    on the cell's stderr otherwise, without tqdm's warning about it."""
    hide = [name for name, present in (("ipywidgets", widgets), ("tqdm", tqdm)) if not present]
    if widgets:
        pytest.importorskip("ipywidgets")
    if tqdm:
        pytest.importorskip("tqdm")

    async def body(notebook: Notebook) -> None:
        # As when the package is not installed: ``import name`` raises ImportError.
        setup = "import sys\n" + "".join(f"sys.modules[{name!r}] = None\n" for name in hide)
        assert not errors(await notebook.run(setup + DEFINE))
        out = await notebook.run(
            "from ferropool import ProcessPool\n"
            "with ProcessPool(2) as pool:\n"
            "    print(sum(pool.map(cube, range(40), progress='cubes')))\n"
        )
        assert not errors(out), out
        assert text(out) == f"{sum(x**3 for x in range(40))}\n"
        stderr = text(out, "stderr")
        assert "IProgress" not in stderr and "Warning" not in stderr, stderr
        displays = [o for o in out if o["output_type"] == "display_data"]
        if widgets:
            assert [WIDGET_MIME in o["data"] for o in displays] == [True], out
            bars = [s for s in notebook.widget_states() if s["_model_name"].endswith("ProgressModel")]
            assert len(bars) == 1, notebook.widget_states()
            assert bars[0]["value"] == bars[0]["max"] == 40, bars
            labels = " ".join(f"{s.get('description', '')} {s.get('value', '')}" for s in notebook.widget_states())
            assert "40/40" in labels and "cubes" in labels, labels
            assert stderr == ""
        else:
            assert displays == [], out
            final = stderr.rstrip("\n").rsplit("\r", 1)[-1]  # the line as the notebook shows it
            assert final.startswith("cubes: ") and "40/40" in final and "100%" in final, repr(stderr)

    in_kernel(body, tmp_path)


def _have(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _alive(pid: int) -> bool:
    try:
        state = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"  # a zombie has exited; its parent (the kernel) reaps it in its own time


MAP_CELLS = {
    "with-ProcessPool": (
        "with ProcessPool(2) as pool:\n    print(list(pool.map(slow, range(20), [FOLDER] * 20)))",
        "ProcessPool",
    ),
    "ProcessPool-progress": (
        "pool = ProcessPool(2)\nprint(list(pool.map(slow, range(20), [FOLDER] * 20, progress=True)))",
        "ProcessPool",
    ),
    "with-HybridPool": (
        "with HybridPool(2, 2) as pool:\n    print(list(pool.map(slow, range(20), [FOLDER] * 20)))",
        "HybridPool",
    ),
}


@pytest.mark.parametrize("case", list(MAP_CELLS))
def test_interrupt_during_map_stops_the_workers(tmp_path, case):
    code, kind = MAP_CELLS[case]
    started = tmp_path / "started"
    started.mkdir()

    async def body(notebook: Notebook) -> None:
        setup = f"from ferropool import {kind}\nFOLDER = {str(started)!r}\n"
        assert not errors(await notebook.run(setup + DEFINE))
        cell, task = await notebook.start(code)
        deadline = time.monotonic() + CELL_TIMEOUT
        # Both workers are in a task (each wrote its pid): the map is under way.
        while len(os.listdir(started)) < 2:
            assert not task.done(), cell.outputs
            assert time.monotonic() < deadline, "the map's tasks never started"
            await asyncio.sleep(0.02)
        pids = [int(name) for name in os.listdir(started)]
        assert all(_alive(pid) for pid in pids)
        interrupted = time.monotonic()
        await notebook.client.km.interrupt_kernel()
        await asyncio.wait_for(task, timeout=10)
        while any(_alive(pid) for pid in pids) and time.monotonic() - interrupted < 5:
            await asyncio.sleep(0.02)
        stopped_after = time.monotonic() - interrupted
        assert stopped_after < 2, f"workers still running {stopped_after:.1f} s after the interrupt"

        raised = errors(cell.outputs)
        assert [e["ename"] for e in raised] == ["KeyboardInterrupt"], cell.outputs
        trace = "\n".join(raised[0]["traceback"])
        assert "During handling of the above exception" not in trace, trace
        assert "Traceback" not in text(cell.outputs, "stderr"), cell.outputs  # no worker tracebacks

        out = await notebook.run(f"with {kind}(2) as fresh:\n    print(sum(fresh.map(cube, range(10))))")
        assert not errors(out), out
        assert text(out) == f"{sum(x**3 for x in range(10))}\n"

    in_kernel(body, tmp_path)


def test_stats_explain_and_compare_show_as_html(tmp_path):
    async def body(notebook: Notebook) -> None:
        assert not errors(await notebook.run(DEFINE))
        out = await notebook.run(
            "from ferropool import ProcessPool\n"
            "with ProcessPool(2) as pool:\n"
            "    list(pool.map(cube, range(50)))\n"
            "stats = pool.stats()\n"
            "print(stats.tasks, len(stats.workers))\n"
            "stats"
        )
        assert not errors(out), out
        tasks, workers = map(int, text(out).split())
        page = html_of(out)
        assert "<table" in page and "<th>busy_s</th>" in page, page
        assert f"{workers} workers, {tasks} tasks" in page
        rows = re.findall(r"<tr><td>(\d+)</td><td>([-\d]+)</td><td>(\d+)</td>", page)
        assert len(rows) == workers == 2, page
        assert sum(int(r[2]) for r in rows) == tasks > 0, page

        out = await notebook.run(
            "import ferropool\n"
            "auto = ferropool.Pool()\n"
            "print(sum(auto.map(cube, range(300))))\n"
            "auto.shutdown()\n"
            "explained = auto.explain()\n"
            "explained"
        )
        assert not errors(out), out
        page = html_of(out)
        assert "<table" in page and "<th>strategy</th>" in page, page
        (row,) = re.findall(r"<tr><td[^>]*>(.*?)</td><td[^>]*>(.*?)</td>", page)
        assert row[0].endswith("cube"), page
        out = await notebook.run("print(explained.splitlines()[1].split(': ')[1].split(' (')[0])")
        assert text(out).strip() == row[1], (text(out), page)  # the table says what the text says

        out = await notebook.run(
            "from ferropool import compare\n"
            "result = compare.run(cube, items=8, strategies=['ferropool.ThreadPool'], workers=[1, 2], repeats=1)\n"
            "print(sorted(result['workloads']))\n"
            "result.chart()"
        )
        assert not errors(out), out
        (name,) = eval(text(out))  # the one workload: the cell's function
        page = html_of(out)
        assert page.count("<svg") == 1 and page.count("<polyline") == 1, page  # ThreadPool's line
        assert "ferropool.ThreadPool" in page and "serial" in page, page
        out = await notebook.run("result")
        page = html_of(out)
        assert "<svg" in page and "ferropool.ThreadPool" in page and name.split(":")[1] in page, page

        # What --json wrote shows the same way.
        out = await notebook.run(
            "import json\n"
            "with open('report.json', 'w') as f:\n"
            "    json.dump(result, f)\n"
            "compare.Comparison.load('report.json').chart()"
        )
        assert html_of(out).count("<polyline") == 1, out

        if _have("matplotlib"):  # the .png file, written without taking the notebook's inline plots away
            out = await notebook.run(
                "import matplotlib\n"
                "before = matplotlib.get_backend()\n"
                "result.plot('chart.png')\n"
                "print(matplotlib.get_backend() == before, os.path.getsize('chart.png') > 1000)"
            )
            assert not errors(out), out
            assert text(out) == "True True\n", out

    in_kernel(body, tmp_path)


def test_stats_html_of_a_cluster_pool_lists_its_own_figures():
    """DaskPool and RayPool have no per-worker rows: their figures are a table of their own, and
    every value is escaped."""
    import types

    from ferropool import PoolStats

    stats = PoolStats(
        kind="DaskPool",
        tasks=3,
        failed=1,
        busy_s=0.3,
        max_task_s=None,
        restarts=0,
        extra=types.MappingProxyType({"submitted": 4, "cancelled": "<1>"}),
    )
    page = stats._repr_html_()
    assert "<b>DaskPool: 0 workers, 3 tasks (1 failed), 0 restarts" in page, page
    assert re.findall(r"<tr><th>(\w+)</th><td>(.*?)</td></tr>", page) == [
        ("submitted", "4"),
        ("cancelled", "&lt;1&gt;"),
    ]
