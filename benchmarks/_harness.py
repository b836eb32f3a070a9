"""Shared helpers for ferropool's benchmarks: timing, peak memory, machine info, output.

A benchmark measures one figure like this::

    reset_peak_rss()                      # best effort: peak RSS of this process := current
    stats = measure(lambda: work(ex), repeats=5, sample=rss.sample)
    peak = rss.peak()                     # this process + every live descendant

- :func:`measure` runs a callable ``repeats`` times in this process tree and
  returns a :class:`Stats` (median, min, max, IQR).  The median is the figure we
  report; min/max and IQR show how noisy the run was.
- :class:`TreeRss` tracks the peak resident set of the benchmark's own process
  tree: ``VmHWM`` of this process and of every live descendant (workers, a
  forkserver), read from ``/proc/<pid>/status``.  ``VmHWM`` is each process's own
  high-water mark, so sampling while workers are alive is enough; summing them
  over-estimates the simultaneous peak a little (peaks need not coincide).
- :func:`rusage_peaks` gives ``ru_maxrss`` for this process and for its waited
  children (the largest single child that has exited), for the whole run.
- :func:`machine_info`, :func:`write_json` and :func:`markdown_table` describe
  and print the results.

Linux-only for memory figures (``/proc``); elsewhere they are ``None``.
psutil is not needed.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field

__all__ = [
    "Stats",
    "TreeRss",
    "fmt_kib",
    "fmt_seconds",
    "machine_info",
    "markdown_table",
    "measure",
    "reset_peak_rss",
    "rusage_peaks",
    "write_json",
]


@dataclass(frozen=True)
class Stats:
    """Timings of one figure, in seconds: the median and the spread of ``runs``."""

    median: float
    min: float
    max: float
    q1: float
    q3: float
    runs: tuple = field(default_factory=tuple)

    @classmethod
    def of(cls, runs: Sequence[float]) -> Stats:
        """Summarise ``runs`` (at least one value); IQR needs 2+ runs, else it is the value."""
        if not runs:
            raise ValueError("Stats.of needs at least one run")
        runs = tuple(float(r) for r in runs)
        if len(runs) >= 2:
            q1, _, q3 = statistics.quantiles(runs, n=4, method="inclusive")
        else:
            q1 = q3 = runs[0]
        return cls(statistics.median(runs), min(runs), max(runs), q1, q3, runs)

    @property
    def spread(self) -> float:
        """Return (max - min) / median, a unitless noise indicator."""
        return (self.max - self.min) / self.median if self.median > 0 else 0.0

    def to_json(self) -> dict:
        """Return a JSON-ready dict with ``_s`` suffixed keys."""
        d = asdict(self)
        return {
            "median_s": d["median"],
            "min_s": d["min"],
            "max_s": d["max"],
            "q1_s": d["q1"],
            "q3_s": d["q3"],
            "runs_s": list(d["runs"]),
        }


def measure(
    fn: Callable[[], object],
    *,
    repeats: int,
    warmup: Callable[[], object] | None = None,
    sample: Callable[[], object] | None = None,
    check: Callable[[object], None] | None = None,
) -> Stats:
    """Run ``fn`` ``repeats`` times and return the wall-clock :class:`Stats`.

    ``warmup`` (if given) runs once first, untimed, to start workers and import
    modules.  ``sample`` runs after each timed call, outside the timed region (use
    it to sample memory).  ``check`` receives each result so a broken executor
    fails loudly instead of producing a fast, wrong figure.  Exceptions from any
    of them propagate.
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    if warmup is not None:
        warmup()
    if sample is not None:
        sample()
    runs = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        runs.append(time.perf_counter() - t0)
        if check is not None:
            check(result)
        if sample is not None:
            sample()
    return Stats.of(runs)


# ---------------------------------------------------------------- memory


def _status_kib(pid: object, key: str) -> int | None:
    """Return a ``kB`` field of ``/proc/<pid>/status``, or None if unreadable."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            for line in f:
                if line.startswith(key.encode() + b":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _descendants(root: int) -> list:
    """Return the pids of every live descendant of ``root`` (scans ``/proc``)."""
    children: dict = {}
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue  # the process exited while we scanned
        # Field 4 is the ppid; the command name (field 2) may contain spaces, so
        # split after its closing parenthesis.
        try:
            ppid = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = [], [root]
    while stack:
        for child in children.get(stack.pop(), ()):
            out.append(child)
            stack.append(child)
    return out


def tree_peak_kib() -> int:
    """Return the peak RSS (``VmHWM``, KiB) of this process plus that of each live descendant
    (a forkserver's workers included); 0 where ``/proc`` cannot be read."""
    return (_status_kib("self", "VmHWM") or 0) + sum(
        _status_kib(pid, "VmHWM") or 0 for pid in _descendants(os.getpid())
    )


def reset_peak_rss() -> bool:
    """Reset this process's ``VmHWM`` to its current RSS; return whether it worked.

    Writes ``5`` to ``/proc/self/clear_refs`` (Linux >= 4.0), so each figure's
    peak covers only that figure and not the benchmarks that ran before it.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


class TreeRss:
    """Track the peak RSS (KiB) of this process and of its live descendants.

    Create it just before constructing the pool: descendants alive at that moment
    (say, a forkserver started earlier) are excluded, so each figure is charged
    only for the processes it started.  Call :meth:`sample` while workers are
    alive (e.g. after each timed run, before shutdown); :meth:`peak` returns the
    largest values seen.  Every figure is None on systems without ``/proc``.
    """

    def __init__(self) -> None:
        self._exclude = set(_descendants(os.getpid()))
        self._self_kib: int | None = None
        self._children_kib: int | None = None
        self._tree_kib: int | None = None
        self._max_children = 0

    def sample(self) -> None:
        """Read ``VmHWM`` of this process and its descendants now; keep the maxima."""
        own = _status_kib("self", "VmHWM")
        if own is None:
            return
        kids = [k for k in (_status_kib(p, "VmHWM") for p in self._new_descendants()) if k]
        kids_sum = sum(kids)
        self._self_kib = max(self._self_kib or 0, own)
        self._children_kib = max(self._children_kib or 0, kids_sum)
        self._tree_kib = max(self._tree_kib or 0, own + kids_sum)
        self._max_children = max(self._max_children, len(kids))

    def _new_descendants(self) -> list:
        return [p for p in _descendants(os.getpid()) if p not in self._exclude]

    def peak(self) -> dict:
        """Return ``{"self_kib", "children_kib", "tree_kib", "live_children"}``."""
        return {
            "self_kib": self._self_kib,
            "children_kib": self._children_kib,
            "tree_kib": self._tree_kib,
            "live_children": self._max_children,
        }


def rusage_peaks() -> dict:
    """Return ``ru_maxrss`` (KiB on Linux) of this process and of its waited children."""
    return {
        "self_maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
        "children_maxrss_kib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss,
    }


# ---------------------------------------------------------------- machine and output


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def machine_info() -> dict:
    """Return what a reader needs to judge the figures: cores, CPU, Python, load."""
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "cpu_model": _cpu_model(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_at_start": load,
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


def run_json_child(code: str, args: Sequence[str], tree: str | None = None, timeout: float = 300) -> dict:
    """Runs ``code`` with ``args`` in a fresh interpreter, with ``<tree>/python`` first on its
    path when a source tree is given (a ferropool build to compare) and this folder after it
    (so that the child can import this module), and returns the JSON object on the last line it
    prints. A failing child raises ``CalledProcessError``."""
    env = dict(os.environ)
    path = [os.path.dirname(os.path.abspath(__file__))]
    if tree is not None:
        path.insert(0, os.path.join(os.path.abspath(tree), "python"))
    env["PYTHONPATH"] = os.pathsep.join(path)
    out = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=timeout, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def write_json(path: str, data: dict) -> None:
    """Write ``data`` as indented JSON to ``path``, creating parent folders."""
    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, sort_keys=False)
        f.write("\n")


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """Return a GitHub-flavoured markdown table; numbers right-aligned, text left."""
    rows = [[("" if c is None else str(c)) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in rows:
        for i, c in enumerate(r):
            widths[i] = max(widths[i], len(c))

    def numeric(col: int) -> bool:
        cells = [r[col] for r in rows if r[col] not in ("", "-")]
        return bool(cells) and all(_looks_numeric(c) for c in cells)

    align = [numeric(i) for i in range(len(headers))]
    out = ["| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |"]
    out.append(
        "|"
        + "|".join(("-" * (w + 1) + ":") if a else ("-" * (w + 2)) for w, a in zip(widths, align, strict=True))
        + "|"
    )
    for r in rows:
        cells = [c.rjust(w) if a else c.ljust(w) for c, w, a in zip(r, widths, align, strict=False)]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def _looks_numeric(cell: str) -> bool:
    s = cell.strip().rstrip("x%").replace(",", "")
    for suffix in (" ms", " s", " us", " MiB", " KiB", "/s"):
        if s.endswith(suffix):
            s = s[: -len(suffix)]
    try:
        float(s)
        return True
    except ValueError:
        return False


def fmt_seconds(s: float | None) -> str:
    """Format a duration with a unit that keeps 3 significant digits."""
    if s is None:
        return "-"
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.0f} us"


def fmt_kib(kib: int | None) -> str:
    """Format a KiB figure as MiB."""
    return "-" if kib is None else f"{kib / 1024:.0f} MiB"
