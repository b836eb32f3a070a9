"""``pool.stats()``: immutable snapshots of what a pool's workers have done.

Every pool kind returns a ``PoolStats``: ``ProcessPool`` with one ``WorkerStats`` per worker
slot (figures the Rust dispatcher counts, see ``crates/ferropool-engine/src/stats.rs``),
``ThreadPool`` one per thread, ``DaskPool`` and ``RayPool`` pool totals only (their own keys,
``submitted``, ``done``..., are in ``extra`` and in ``as_dict()``). ``str()`` gives a table for
people, ``as_dict()`` plain JSON-serialisable data for programs, and in a notebook the same
table shows as HTML (``_repr_html_``).

Times are in seconds. A slot's figures add up over every process that held it: ``restarts``
counts replacements, ``recent_restarts`` keeps the last 16 with their cause.
"""

from __future__ import annotations

import html as _html
import signal as _signal
import types
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["PoolStats", "Restart", "WorkerStats"]

#: The causes a ``Restart`` can name.
RESTART_CAUSES = ("crashed", "start_failed", "max_tasks_per_child", "max_memory_per_child", "task_timeout", "cancelled")


@dataclass(frozen=True)
class Restart:
    """One replacement of a worker process: its ``cause`` (one of ``RESTART_CAUSES``), and how
    process ``pid`` ended: ``exitcode`` if it exited, ``signal`` (a number) if killed."""

    cause: str
    pid: int
    exitcode: int | None
    signal: int | None

    def __str__(self) -> str:
        if self.signal is not None:
            try:
                how = f"killed by {_signal.Signals(self.signal).name}"
            except ValueError:
                how = f"killed by signal {self.signal}"
        elif self.exitcode is not None:
            how = f"exit code {self.exitcode}"
        else:
            how = "ended"
        return f"{self.cause} (pid {self.pid}, {how})"

    def as_dict(self) -> dict[str, Any]:
        return {"cause": self.cause, "pid": self.pid, "exitcode": self.exitcode, "signal": self.signal}


@dataclass(frozen=True)
class WorkerStats:
    """What one worker (a process slot, or a thread) has done.

    ``busy_s`` is the sum of task run times measured where they ran (unpickling the call and
    pickling the result included, for processes); ``serialize_s`` is the part of it spent
    pickling; ``alive_s`` the time the worker was ready (None where unknown) and ``idle_s``
    what of that was not busy. ``transport_s`` is the time the parent saw the worker holding
    work beyond its run time: socket latency, batching and the worker loop.
    """

    worker: int
    pid: int | None
    tasks: int
    failed: int
    busy_s: float
    max_task_s: float
    alive_s: float | None = None
    serialize_s: float | None = None
    transport_s: float | None = None
    restarts: int = 0
    recent_restarts: tuple[Restart, ...] = ()

    @property
    def idle_s(self) -> float | None:
        """Time ready without a task running (``alive_s - busy_s``), None where unknown."""
        return None if self.alive_s is None else max(0.0, self.alive_s - self.busy_s)

    @property
    def mean_task_s(self) -> float | None:
        """Mean task run time, None before the first task."""
        return self.busy_s / self.tasks if self.tasks else None

    @classmethod
    def from_engine(cls, d: Mapping[str, Any]) -> WorkerStats:
        """Builds one from a dict of ``ProcessPoolEngine.stats()``."""
        return cls(
            worker=d["worker"],
            pid=d["pid"],
            tasks=d["tasks"],
            failed=d["failed"],
            busy_s=d["busy_us"] / 1e6,
            max_task_s=d["max_task_us"] / 1e6,
            alive_s=d["alive_us"] / 1e6,
            serialize_s=d["serialize_us"] / 1e6,
            transport_s=d["transport_us"] / 1e6,
            restarts=d["restarts"],
            recent_restarts=tuple(Restart(**r) for r in d["recent_restarts"]),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "worker": self.worker,
            "pid": self.pid,
            "tasks": self.tasks,
            "failed": self.failed,
            "busy_s": self.busy_s,
            "idle_s": self.idle_s,
            "alive_s": self.alive_s,
            "mean_task_s": self.mean_task_s,
            "max_task_s": self.max_task_s,
            "serialize_s": self.serialize_s,
            "transport_s": self.transport_s,
            "restarts": self.restarts,
            "recent_restarts": [r.as_dict() for r in self.recent_restarts],
        }


@dataclass(frozen=True)
class PoolStats:
    """A snapshot of a pool: totals, and ``workers`` (a tuple of ``WorkerStats``).

    ``parent_serialize_s`` estimates the time this process spent pickling calls and unpickling
    results (one task in 64 is timed); ``log_records`` and ``dropped_log_records`` count worker
    log records handled here and dropped for volume. ``extra`` holds figures particular to a
    pool kind (the cluster pools' ``submitted``, ``done``, ``failed``, ``cancelled``,
    ``timed_out``, ``running``, ``mean_task_s``); ``as_dict()`` puts them at its top level.
    """

    kind: str
    tasks: int
    failed: int
    busy_s: float
    max_task_s: float | None
    restarts: int
    workers: tuple[WorkerStats, ...] = ()
    parent_serialize_s: float | None = None
    log_records: int = 0
    dropped_log_records: int = 0
    extra: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def mean_task_s(self) -> float | None:
        """Mean task run time over every worker, None before the first task."""
        return self.busy_s / self.tasks if self.tasks else None

    @classmethod
    def of_workers(cls, kind: str, workers: tuple[WorkerStats, ...], **kw: Any) -> PoolStats:
        """Builds the snapshot of a pool from its workers' figures, with their totals."""
        return cls(
            kind=kind,
            tasks=sum(w.tasks for w in workers),
            failed=sum(w.failed for w in workers),
            busy_s=sum(w.busy_s for w in workers),
            max_task_s=max((w.max_task_s for w in workers), default=None),
            restarts=sum(w.restarts for w in workers),
            workers=workers,
            **kw,
        )

    def as_dict(self) -> dict[str, Any]:
        """Returns the snapshot as plain data (JSON-serialisable)."""
        out: dict[str, Any] = {
            "kind": self.kind,
            "tasks": self.tasks,
            "failed": self.failed,
            "busy_s": self.busy_s,
            "mean_task_s": self.mean_task_s,
            "max_task_s": self.max_task_s,
            "restarts": self.restarts,
            "parent_serialize_s": self.parent_serialize_s,
            "log_records": self.log_records,
            "dropped_log_records": self.dropped_log_records,
            "workers": [w.as_dict() for w in self.workers],
        }
        out.update(self.extra)
        return out

    def __str__(self) -> str:
        head, extra, rows = self._table()
        lines = [head]
        if extra:
            lines.append("  " + extra)
        if rows:
            widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
            for r in rows:
                lines.append("  " + "  ".join(c.rjust(wd) for c, wd in zip(r, widths, strict=False)) + "  " + r[-1])
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        """The table of ``str()`` as HTML, which Jupyter shows for a cell ending in ``pool.stats()``."""
        head, _, rows = self._table()
        out = [f"<div><p><b>{_html.escape(head)}</b></p>"]
        if self.extra:  # the cluster pools' own figures: one row each
            out.append('<table class="ferropool-stats-extra"><tbody>')
            for key, value in self.extra.items():
                out.append(f"<tr><th>{_html.escape(str(key))}</th><td>{_html.escape(str(value))}</td></tr>")
            out.append("</tbody></table>")
        if rows:
            out.append('<table class="ferropool-stats">')
            out.append("<thead><tr>" + "".join(f"<th>{_html.escape(c)}</th>" for c in rows[0]) + "</tr></thead><tbody>")
            for r in rows[1:]:
                out.append("<tr>" + "".join(f"<td>{_html.escape(c)}</td>" for c in r) + "</tr>")
            out.append("</tbody></table>")
        out.append("</div>")
        return "\n".join(out)

    def _table(self) -> tuple[str, str, list[tuple[str, ...]]]:
        """The heading line, the ``extra`` figures line and the rows (column names first; no rows
        without workers) that ``str()`` and ``_repr_html_`` lay out."""
        head = f"{self.kind}: {len(self.workers)} workers, {self.tasks} tasks ({self.failed} failed), {self.restarts} restarts"
        if self.mean_task_s is not None:
            head += f", mean task {_ms(self.mean_task_s)} ms"
        if self.parent_serialize_s is not None:
            head += f", pickling here ~{_ms(self.parent_serialize_s)} ms"
        if self.dropped_log_records:
            head += f", {self.dropped_log_records} worker log records dropped"
        extra = ", ".join(f"{k}={v}" for k, v in self.extra.items())
        rows: list[tuple[str, ...]] = []
        if self.workers:
            rows.append(
                (
                    "worker",
                    "pid",
                    "tasks",
                    "failed",
                    "busy_s",
                    "idle_s",
                    "mean_ms",
                    "max_ms",
                    "pickle_ms",
                    "transport_ms",
                    "restarts",
                )
            )
            for w in self.workers:
                restarts = str(w.restarts)
                if w.recent_restarts:
                    restarts += f" (last: {w.recent_restarts[-1]})"
                rows.append(
                    (
                        str(w.worker),
                        "-" if w.pid is None else str(w.pid),
                        str(w.tasks),
                        str(w.failed),
                        f"{w.busy_s:.3f}",
                        _opt(w.idle_s, "{:.3f}"),
                        _opt(w.mean_task_s and w.mean_task_s * 1e3, "{:.3f}"),
                        f"{w.max_task_s * 1e3:.3f}",
                        _opt(w.serialize_s and w.serialize_s * 1e3, "{:.1f}"),
                        _opt(w.transport_s and w.transport_s * 1e3, "{:.1f}"),
                        restarts,
                    )
                )
        return head, extra, rows


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def _opt(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)
