"""``ferropool compare --plot FILE``: a chart of median time against workers, one line per strategy.

``.html`` is a self-contained page of inline SVG, one chart per workload (no
dependency); ``.png`` draws the same with matplotlib, if it is installed.
Serial is drawn as a dashed horizontal line, since it has no workers.
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Iterator
from typing import Any

__all__ = ["check_path", "svg", "write"]

COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f")
W, H, LEFT, RIGHT, TOP, BOTTOM = 560, 300, 60, 190, 30, 40


def check_path(path: str) -> str | None:
    """Return why ``path`` cannot be written as a plot (one line), or None if it can."""
    ext = os.path.splitext(path)[1].lower()
    if ext not in (".html", ".htm", ".png"):
        return f"cannot write plot {path!r}: the file name must end in .html or .png"
    if ext == ".png":
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            return f"--plot {path} needs matplotlib: pip install 'ferropool[plot]' (or write .html)"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder) or not os.access(folder, os.W_OK):
        return f"cannot write plot {path!r}: {folder} is not a writable folder"
    return None


def _series(wl: dict[str, Any]) -> Iterator[tuple[str, list[tuple[int, float]]]]:
    """Yield ``(strategy, [(workers, median_s), ...])`` for every strategy with timed rows."""
    for name, entry in wl.get("strategies", {}).items():
        points = [
            (r["workers"], r["median_s"])
            for r in entry.get("by_workers", [])
            if r.get("available") and r.get("workers")
        ]
        if points:
            yield name, points


def svg(title: str, wl: dict[str, Any]) -> str:
    """The chart of one workload's report as an SVG element (what ``.html`` holds, and what a
    notebook shows inline)."""
    return _svg(title, wl)


def _svg(title: str, wl: dict[str, Any]) -> str:
    series = list(_series(wl))
    xs = sorted({x for _, pts in series for x in (p[0] for p in pts)}) or [1]
    ys = [p[1] for _, pts in series for p in pts]
    y_max = max(ys) * 1.1 if ys else 1.0
    pw, ph = W - LEFT - RIGHT, H - TOP - BOTTOM
    lx = [math.log2(x) for x in xs]
    span = (max(lx) - min(lx)) or 1.0

    def px(x: float) -> float:
        return LEFT + (math.log2(x) - min(lx)) / span * pw if len(xs) > 1 else LEFT + pw / 2

    def py(y: float) -> float:
        return TOP + ph - y / y_max * ph

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="11">',
        f'<text x="{LEFT}" y="18" font-size="13">{html.escape(title)}</text>',
        f'<line x1="{LEFT}" y1="{TOP + ph}" x2="{LEFT + pw}" y2="{TOP + ph}" stroke="#000"/>',
        f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + ph}" stroke="#000"/>',
        f'<text x="{LEFT + pw / 2}" y="{H - 6}" text-anchor="middle">workers</text>',
        f'<text x="12" y="{TOP + ph / 2}" transform="rotate(-90 12 {TOP + ph / 2})" text-anchor="middle">'
        "median time (s)</text>",
    ]
    for x in xs:
        out.append(f'<text x="{px(x):.1f}" y="{TOP + ph + 14}" text-anchor="middle">{x}</text>')
    for i in range(5):
        y = y_max * i / 4
        out.append(f'<text x="{LEFT - 4}" y="{py(y) + 4:.1f}" text-anchor="end">{y:.3g}</text>')
    for k, (name, pts) in enumerate(series):
        colour = COLOURS[k % len(COLOURS)]
        if len(pts) == 1 and name == "serial":
            y = py(pts[0][1])
            out.append(
                f'<line x1="{LEFT}" y1="{y:.1f}" x2="{LEFT + pw}" y2="{y:.1f}" stroke="{colour}" '
                'stroke-dasharray="5,4"/>'
            )
        else:
            coords = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in pts)
            out.append(f'<polyline points="{coords}" fill="none" stroke="{colour}" stroke-width="2"/>')
            out += [f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="3" fill="{colour}"/>' for x, y in pts]
        ly = TOP + 12 + 15 * k
        out.append(f'<rect x="{W - RIGHT + 10}" y="{ly - 8}" width="10" height="10" fill="{colour}"/>')
        out.append(f'<text x="{W - RIGHT + 24}" y="{ly + 1}">{html.escape(name)}</text>')
    out.append("</svg>")
    return "\n".join(out)


def _html(report: dict[str, Any]) -> str:
    m = report["machine"]
    parts = [
        "<!DOCTYPE html>",
        '<html><head><meta charset="utf-8"><title>ferropool compare</title></head><body>',
        f"<h1>ferropool compare</h1><p>{m['usable_cores']} usable cores, Python {html.escape(m['python'])}, "
        f"median of {report['config']['repeats']} runs</p>",
    ]
    for name, wl in report["workloads"].items():
        parts.append(f"<h2>{html.escape(name)}</h2><p>{html.escape(wl['description'])}</p>")
        if not wl.get("available"):
            parts.append(f"<p>skipped: {html.escape(wl['skipped'])}</p>")
            continue
        parts.append(_svg(name, wl))
        parts.append(f"<p>{html.escape(wl['recommendation'])}</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


def _png(report: dict[str, Any], path: str) -> None:
    # A Figure without pyplot draws with Agg and leaves the process's backend alone: a notebook
    # that writes a .png keeps its inline plots.
    from matplotlib.figure import Figure

    shown = [(n, wl) for n, wl in report["workloads"].items() if wl.get("available")]
    fig = Figure(figsize=(8, 3.2 * max(1, len(shown))))
    axes = fig.subplots(len(shown) or 1, 1, squeeze=False)
    for ax, (name, wl) in zip(axes[:, 0], shown, strict=False):  # one spare axis when nothing ran
        for strategy, pts in _series(wl):
            if strategy == "serial" and len(pts) == 1:
                ax.axhline(pts[0][1], linestyle="--", color="grey", label=strategy)
            else:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=strategy)
        ax.set_xscale("log", base=2)
        ax.set_title(f"{name}: {wl['description']}", fontsize=9)
        ax.set_xlabel("workers")
        ax.set_ylabel("median time (s)")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def write(report: dict[str, Any], path: str) -> None:
    """Write the chart of ``report`` to ``path`` (.html or .png, see :func:`check_path`)."""
    if path.lower().endswith(".png"):
        _png(report, path)
        return
    with open(path, "w", encoding="utf-8") as f:
        f.write(_html(report))
