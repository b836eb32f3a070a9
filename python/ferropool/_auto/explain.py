"""The words of ``Pool.explain()``: per function, the strategy chosen, the rule that fired and the
figures it came from, or how far the probe got; ``Explanation`` is that text, shown as an HTML
table in a notebook."""

from __future__ import annotations

import html
from typing import Any

from .decide import OVERHEAD_S, Decision
from .probe import Probe

__all__ = ["Explanation", "describe", "row"]


class Explanation(str):
    """What ``Pool.explain()`` returns: its text (a ``str``: print it, search it) that a notebook
    shows as an HTML table, one row per function (``_repr_html_``)."""

    heading: str
    rows: tuple[tuple[str, str, str, str, tuple[str, ...]], ...]

    def __new__(cls, heading: str, rows: list[tuple[str, str, str, str, tuple[str, ...]]], text: str) -> Explanation:
        self = super().__new__(cls, text)
        self.heading = heading
        self.rows = tuple(rows)
        return self

    def _repr_html_(self) -> str:
        out = [f"<div><p><b>{html.escape(self.heading)}</b></p>"]
        if not self.rows:
            out.append("<p>no function has run yet</p></div>")
            return "\n".join(out)
        out.append('<table class="ferropool-explain"><thead><tr>')
        out.append("".join(f"<th>{c}</th>" for c in ("function", "strategy", "workers", "rule", "figures")))
        out.append("</tr></thead><tbody>")
        for name, strategy, workers, rule, figures in self.rows:
            cells = [html.escape(c) for c in (name, strategy, workers, rule)]
            cells.append("<br>".join(html.escape(f) for f in figures))
            out.append("<tr>" + "".join(f'<td style="text-align:left">{c}</td>' for c in cells) + "</tr>")
        out.append("</tbody></table></div>")
        return "\n".join(out)

    def __reduce__(self) -> tuple[Any, ...]:
        return Explanation, (self.heading, list(self.rows), str(self))

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:
        printer.text(str(self))  # the text as printed, not a quoted string full of \n


def row(name: str, decision: Decision | None, probe: Probe) -> tuple[str, str, str, str, tuple[str, ...]]:
    """Returns the HTML table's row for the function ``name``: its name, strategy, workers, rule
    and the lines of figures under ``describe``'s first line."""
    lines = describe(name, decision, probe)
    figures = tuple(line.strip() for line in lines[1:])
    if decision is None:
        return name, "still measuring", "", lines[0].split(": ", 1)[1], figures
    w = decision.workers
    workers = f"{w[0]} x {w[1]}" if isinstance(w, tuple) else str(w)
    return name, decision.strategy, workers, decision.rule, figures


def describe(name: str, decision: Decision | None, probe: Probe) -> list[str]:
    """Returns ``explain()``'s lines for the function ``name``."""
    if decision is None:
        n = probe.measured
        return [f"  {name}: still measuring ({n} call{'s' if n != 1 else ''} so far)"]
    d = decision
    workers = f"{d.workers[0]} x {d.workers[1]}" if isinstance(d.workers, tuple) else str(d.workers)
    lines = [f"  {name}: {d.strategy} ({workers} worker{'s' if workers != '1' else ''}): {d.rule}"]
    f = d.figures
    if f is None:
        return lines
    speed = "not measured" if f.pair_speedup is None else f"{f.pair_speedup:.2f}x"
    if probe.rechecked:
        speed += " (pair run twice: other programs held cores during the first)"
    sizes = (
        "cannot be pickled"
        if not f.picklable
        else f"{_bytes(f.arg_bytes)} args, {_bytes(f.result_bytes)} result, {_secs(f.pickle_s or 0.0)} to pickle"
    )
    queued = probe.solo_queued
    late = probe.gil_late  # about the switch interval: the calls held the GIL throughout
    lines.append(
        f"    measured {f.calls} calls: wall {_secs(f.wall_s)}, CPU {_secs(f.cpu_s)} per call "
        f"(CPU/wall {f.cpu_ratio:.2f}"
        + (f"; {_secs(queued)} queued for a CPU behind other programs left out" if queued > 0.05 * f.wall_s else "")
        + ")"
        + (f"; GIL: another thread waited {_secs(late)} for it" if late is not None else "")
        + ("; GIL disabled: threads run in parallel" if not f.gil_enabled else "")
        + f"; 2 threads: {speed}"
        + (f"; free cores during the pair: {f.free_cores:.1f}" if f.free_cores is not None else "")
        + f"; pickled: {sizes}"
    )
    column = 1 if f.via_map else 0
    lines.append(
        f"    overhead per call ({'map, batched' if f.via_map else 'submit'}): "
        + ", ".join(f"{k} {_secs(v[column])}" for k, v in OVERHEAD_S.items() if k in d.estimates)
    )
    lines.append("    estimated time per call: " + ", ".join(f"{k} {_secs(v)}" for k, v in d.estimates.items()))
    return lines


def _secs(s: float) -> str:
    if s >= 1:
        return f"{s:.2f} s"
    if s >= 1e-3:
        return f"{s * 1e3:.1f} ms"
    return f"{s * 1e6:.1f} us"


def _bytes(n: int | None) -> str:
    if n is None:
        return "?"
    if n >= 1 << 20:
        return f"{n / (1 << 20):.1f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{n} B"
