"""The fault matrix (``docs/faults.md``), measured: ferropool ``ProcessPool`` beside the standard pools and peers.

Each (library, case) runs in its own child process (``_fault_cases.main``) in a new session
under a watchdog: a child that does not finish within ``--timeout`` seconds is killed with its
whole process group and its cell says ``hang``. After the child exits, any process left in its
session 2 s later is killed and the cell adds ``leftover processes``. The child writes what it
observed (did the failing task's future raise, with which type and message; did the tasks
queued behind it and a task submitted afterwards succeed; how shutdown went) as JSON; this
script turns that observation into the short word in the table, so no cell is typed by hand.

Libraries: ferropool ``ProcessPool``; stdlib ``ProcessPoolExecutor`` (forkserver);
``multiprocessing.Pool`` (default start method); loky ``ProcessPoolExecutor``; pebble
``ProcessPool``; mpire ``WorkerPool``. Each pool has 2 workers. A library that cannot be
imported is skipped with a note.

Run::

    python benchmarks/fault_matrix.py                          # every case, a few minutes
    python benchmarks/fault_matrix.py --libs ferropool,stdlib --cases 1,4
    python benchmarks/fault_matrix.py --json bench-results/fault_matrix.json
    python benchmarks/fault_matrix.py --cases 14 --repeat 5  # a cell whose outcome is racy

A cell that varies between runs shows each outcome with its count (``--repeat``). Cases 10,
12 and 13 print ``not measured`` with a footnote that says why.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import _fault_cases as fc
import _harness as h

HERE = os.path.dirname(os.path.abspath(__file__))
CASE_CODE = "import sys; sys.path.insert(0, sys.argv[1]); import _fault_cases; _fault_cases.main(sys.argv[2:])"

# Library key -> (column title, module that must import).
LIBS = {
    "ferropool": ("ferropool", "ferropool"),
    "stdlib": ("stdlib (forkserver)", "concurrent.futures"),
    "mp.Pool": ("multiprocessing.Pool", "multiprocessing"),
    "loky": ("loky", "loky"),
    "pebble": ("pebble", "pebble"),
    "mpire": ("mpire", "mpire"),
}

CASES = {
    "0": "0. control: a plain task",
    "1": "1. task calls `os._exit(1)`",
    "2": "2. task segfaults",
    "3": "3. task SIGKILLs itself",
    "4": "4. task returns a `threading.Lock()`",
    "5": "5. task raises an exception that cannot be unpickled",
    "6": "6. argument cannot be unpickled in the worker",
    "7": "7. per-task timeout (1 s, task runs 20 s)",
    "8": "8. `future.cancel()` on a running task",
    "9": "9. parent SIGKILLed: workers gone within 1 s",
    "10": "10. Ctrl-C during `map`",
    "11a": "11a. `shutdown(wait=True)`, a worker that cannot exit (thread stuck in C, SIGTERM ignored)",
    "11b": "11b. stop now (`kill_workers()`, `shutdown(cancel_futures=True)` or the like), task stuck in C ignoring SIGTERM",
    "11c": "11c. program ends without shutdown, task stuck in C ignoring SIGTERM",
    "12": "12. recycling (`max_tasks_per_child`, memory limit)",
    "13": "13. backpressure (`max_pending`)",
    "14": "14. initializer raises",
    "15": "15. task forks a long-lived child, then calls `os._exit(1)`",
    "16": "16. the program ignores SIGCHLD, then a task calls `os._exit(1)`",
    "17": "17. 200 tiny tasks, then one calls `os._exit(1)`: earlier tasks keep their results",
}

NOT_MEASURED = {
    "10": "what Ctrl-C shows is terminal output (one traceback or one per worker, whether a "
    "second Ctrl-C is needed), which this script does not judge; tests/test_faults.py has it as a test",
    "12": "a feature, not a fault: there is nothing to break, only whether the option exists",
    "13": "a memory figure, not a fault outcome; see benchmarks/bench_map_memory.py",
}

DEFAULT_CASES = list(CASES)


# ---------------------------------------------------------------- running one cell


def run_cell(lib: str, case: str, timeout: float, settle: float) -> dict:
    """Runs one case in a child process under the watchdog; returns its observation and verdict."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report.json")
        log = os.path.join(tmp, "output.txt")
        t0 = time.monotonic()
        # Output goes to a file, not a pipe: a surviving worker would hold a pipe open.
        with open(log, "wb") as logf:
            child = subprocess.Popen(
                [sys.executable, "-c", CASE_CODE, HERE, lib, case, out, str(settle)],
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            try:
                rc = child.wait(timeout)
                watchdog = False
            except subprocess.TimeoutExpired:
                watchdog = True
                _killpg(child.pid)
                rc = child.wait()
        seconds = time.monotonic() - t0
        leftover = _leftover(child.pid)
        report = None
        if os.path.exists(out):
            with open(out) as f:
                report = json.load(f)
        with open(log, "rb") as f:
            output = f.read()[-3000:].decode("utf-8", "replace")
    cell = {
        "observed": report,
        "returncode": rc,
        "watchdog_killed": watchdog,
        "leftover_processes": leftover,
        "seconds": round(seconds, 2),
        "output_tail": output,
    }
    cell["outcome"] = verdict(case, cell)
    return cell


def _killpg(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except OSError:
        pass


def _leftover(sid: int) -> list:
    """Processes still in session ``sid`` 2 s after its leader exited (then killed)."""
    end = time.monotonic() + 2.0
    while time.monotonic() < end and fc.session_members(sid):
        time.sleep(0.05)
    left = fc.session_members(sid)
    described = [{"pid": p, "cmdline": _cmdline(p)} for p in left]
    fc.kill_all(left)
    return described


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()[:200]
    except OSError:
        return ""


# ---------------------------------------------------------------- from observation to word


def verdict(case: str, cell: dict) -> str:
    """Maps a cell's observation to its word in the table."""
    rep = cell["observed"]
    if rep is None:
        word = "hang" if cell["watchdog_killed"] else f"child died (exit {cell['returncode']})"
    elif not rep["applicable"]:
        word = "n/a (no API)"
    elif "case_error" in rep:
        err = rep["case_error"]
        word = f"error in case: {err['type']}"
    else:
        word = VERDICTS[case](rep)
        shutdown = rep.get("shutdown")
        if not case.startswith("11") and shutdown is not None and not shutdown["returned"]:
            word += ", shutdown hangs"
        elif not case.startswith("11") and shutdown is not None and "error" in shutdown:
            word += ", shutdown raises"
        if rep is not None and cell["watchdog_killed"]:
            word += ", exit hangs"
    if cell["leftover_processes"]:
        word += ", leftover processes"
    return word


def _ok(o: dict) -> bool:
    return o["state"] == "returned"


def _bad_task(rep: dict) -> str:
    """Cases 1-6: the failing task, the tasks queued behind it, one task submitted afterwards."""
    bad = rep["bad"]
    if bad["state"] == "unsettled":
        return "hang"
    if _ok(bad):
        return "no error"
    rest = [*rep.get("others", []), rep["after"]]
    if all(_ok(o) for o in rest):
        return "only task fails" if bad["state"] == "raised" else "fails at submit"
    failed = any(o["state"] in ("raised", "submit raised") for o in rest)
    hung = any(o["state"] == "unsettled" for o in rest)
    return "pool broken, then hang" if failed and hung else "pool broken" if failed else "other tasks hang"


def _control(rep: dict) -> str:
    return "ok" if _ok(rep["task"]) else f"fails: {rep['task'].get('type', rep['task']['state'])}"


def _timeout(rep: dict) -> str:
    task = rep["task"]
    if task["state"] == "unsettled":
        return "hang"
    if task["state"] != "raised" or not any(m.endswith(".TimeoutError") for m in task["mro"]):
        return "no timeout"
    word = "task runs on" if rep["runs_on"] else "task stopped"
    return word if _ok(rep["after"]) else word + ", pool broken"


def _cancel(rep: dict) -> str:
    if not rep["started"]:
        return "task never started"
    if not rep["cancel_returned"]:
        word = "cancel refused"
    else:
        word = "cancelled, task runs on" if rep["runs_on"] else "task stopped"
    if rep["after"]["state"] == "unsettled":
        return word + ", then hang"
    return word if _ok(rep["after"]) else word + ", pool broken"


def _parent_killed(rep: dict) -> str:
    if "error" in rep:
        return "not measured: " + rep["error"]
    if rep["workers_alive_after_1s"]:
        return "workers survive"
    if rep["helpers_alive_after_1s"]:
        return "helper processes survive"
    return "workers exit"


def _stuck_shutdown(rep: dict) -> str:
    """Cases 11a and 11b: does shutdown return within 8 s, and is the stuck worker gone?"""
    if not rep["started"]:
        return "task never started"
    if not rep["shutdown"]["returned"]:
        return "shutdown blocks > 8 s"
    if "error" in rep["shutdown"]:
        return "shutdown raises"
    return "returns, worker left running" if rep["stuck_worker_alive"] else "returns, worker gone"


def _exit_with_stuck_task(rep: dict) -> str:
    if not rep["started"]:
        return "task never started"
    if rep["exited_after_s"] is None:
        return "exit hangs > 12 s"
    word = f"exits after {rep['exited_after_s']:.0f} s"
    return word + ", worker left running" if rep["stuck_worker_alive"] else word


def _initializer(rep: dict) -> str:
    task = rep["task"]
    loop = rep["processes_started"] > 3 * fc.WORKERS + 2
    if task["state"] == "unsettled":
        return "restart loop" if loop else "hang"
    if task["state"] == "returned":
        return "error ignored"
    text = " ".join(task.get("chain", []))
    word = "clear error" if rep["initializer_message"] in text else "error without cause"
    return word + ", restart loop" if loop else word


VERDICTS = {
    "0": _control,
    **{c: _bad_task for c in "123456"},
    "7": _timeout,
    "8": _cancel,
    "9": _parent_killed,
    "11a": _stuck_shutdown,
    "11b": _stuck_shutdown,
    "11c": _exit_with_stuck_task,
    "14": _initializer,
    **{c: _bad_task for c in ("15", "16", "17")},
}


def combine(words: list) -> str:
    """One word if every run agreed, else each with its count, e.g. ``hang (1/3); ok (2/3)``."""
    distinct = sorted(set(words), key=words.index)
    if len(distinct) == 1:
        return distinct[0]
    return "; ".join(f"{w} ({words.count(w)}/{len(words)})" for w in distinct)


# ---------------------------------------------------------------- main


def available(libs: list) -> list:
    out = []
    for lib in libs:
        try:
            importlib.import_module(LIBS[lib][1])
        except Exception as exc:
            print(f"note: skipping {lib}: cannot import {LIBS[lib][1]} ({type(exc).__name__}: {exc})", file=sys.stderr)
            continue
        out.append(lib)
    return out


def table(cells: dict, cases: list, libs: list) -> str:
    rows = []
    for case in cases:
        if case in NOT_MEASURED:
            rows.append([CASES[case]] + ["not measured¹"] * len(libs))
        else:
            rows.append([CASES[case]] + [cells[case][lib]["outcome"] for lib in libs])
    text = h.markdown_table(["case"] + [LIBS[lib][0] for lib in libs], rows)
    notes = [f"case {c}: {why}" for c, why in NOT_MEASURED.items() if c in cases]
    if notes:
        text += "\n\n¹ not measured here — " + "; ".join(notes) + "."
    return text


def parse_args(argv: list | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--libs", default=",".join(LIBS), help="comma-separated, from: " + ", ".join(LIBS))
    p.add_argument(
        "--cases",
        default=",".join(DEFAULT_CASES),
        help="comma-separated case numbers of the matrix (10, 12, 13 print 'not measured')",
    )
    p.add_argument("--json", metavar="PATH", help="write every cell's observation here")
    p.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run each cell N times; differing outcomes are all shown with their counts",
    )
    p.add_argument("--timeout", type=float, default=20.0, help="watchdog: seconds a child may run (default 20)")
    args = p.parse_args(argv)
    args.libs = [s.strip() for s in args.libs.split(",") if s.strip()]
    args.cases = [s.strip() for s in args.cases.split(",") if s.strip()]
    for lib in args.libs:
        if lib not in LIBS:
            p.error(f"unknown library {lib!r}; choose from {', '.join(LIBS)}")
    for case in args.cases:
        if case not in CASES:
            p.error(f"unknown case {case!r}; choose from {', '.join(CASES)}")
    return args


def main(argv: list | None = None) -> int:
    args = parse_args(argv)
    libs = available(args.libs)
    # Every wait inside a child is bounded by `settle`, well inside the watchdog.
    settle = max(1.0, min(5.0, args.timeout / 4))
    cells: dict = {}
    t0 = time.monotonic()
    for case in args.cases:
        if case in NOT_MEASURED:
            continue
        cells[case] = {}
        for lib in libs:
            runs = [run_cell(lib, case, args.timeout, settle) for _ in range(args.repeat)]
            cell = cells[case][lib] = {**runs[-1], "outcome": combine([r["outcome"] for r in runs]), "runs": runs[:-1]}
            print(f"case {case:>2} {lib:<10} {cell['outcome']}  ({cell['seconds']:.1f} s)", file=sys.stderr, flush=True)
    print(table(cells, args.cases, libs))
    if args.json:
        h.write_json(
            args.json,
            {
                "machine": h.machine_info(),
                "command": " ".join([os.path.basename(sys.executable), *sys.argv]),
                "timeout_s": args.timeout,
                "settle_s": settle,
                "total_seconds": round(time.monotonic() - t0, 1),
                "libraries": {lib: LIBS[lib][0] for lib in libs},
                "cases": {c: CASES[c] for c in args.cases},
                "not_measured": {c: why for c, why in NOT_MEASURED.items() if c in args.cases},
                "cells": cells,
            },
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
