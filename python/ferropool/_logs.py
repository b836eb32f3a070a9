"""Log records of worker processes, handled by the parent's ``logging`` configuration.

In a worker, ``install_in_worker`` puts a handler on the root logger that ships each record to
the parent as a ``Log`` frame (``docs/wire-format.md``), from whichever thread logged it; the
root level is the parent's effective root level at pool creation, so records the parent would
drop are not even made. In the parent, the result thread hands the records to
``handle_records`` before the outcomes of the tasks that logged them, so a task's records are
handled by the time its future is done. Each is rebuilt with ``logging.makeLogRecord`` and
passed to the logger of the same name, with the worker's identity added::

    worker: logger.warning("x %s", 1) ─► ShipToParent.emit ─► pickled dict ─► Log frame
    parent: dispatcher ─► engine.deliver(..., logs=) ─► handle_records ─► logging.getLogger(name).handle

``record.process`` stays the worker's pid; ``record.processName`` becomes
``ferropool-worker-<pid>``, and ``record.worker`` / ``record.worker_pid`` name the worker slot
and process. Volume is bounded at both ends: a worker blocks when 256 KiB of records wait in
its socket, and the parent drops records past 10,000 waiting (saying how many in a warning of
the ``ferropool`` logger).
"""

from __future__ import annotations

import _pickle as pickle  # not pickle: that imports re, struct and more, for the same functions
import logging

TYPE_CHECKING = False  # typing is not imported at run time: it costs a pool's start-up
if TYPE_CHECKING:
    from typing import Any

#: Logger of ferropool's own messages.
LOGGER = logging.getLogger("ferropool")

#: Record attributes kept as they are when pickling a record's dict fails.
_PLAIN = (str, int, float, bool, type(None))


class ShipToParent(logging.Handler):
    """Sends every record to the parent process (installed on a worker's root logger)."""

    def __init__(self, sender: Any) -> None:
        super().__init__()
        self._sender = sender
        self._formatter = logging.Formatter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._sender.send(self._payload(record))
        except Exception:
            self.handleError(record)

    def _payload(self, record: logging.LogRecord) -> bytes:
        fields = dict(record.__dict__)
        # Formatted here: arguments and exceptions may not pickle, or not mean the same there.
        fields["msg"] = record.getMessage()
        fields["args"] = None
        if record.exc_info:
            if not record.exc_text:
                record.exc_text = self._formatter.formatException(record.exc_info)
            fields["exc_text"] = record.exc_text
        fields["exc_info"] = None
        fields.pop("message", None)
        try:
            return pickle.dumps(fields, protocol=5)
        except Exception:
            plain = {k: v if isinstance(v, _PLAIN) else repr(v) for k, v in fields.items()}
            return pickle.dumps(plain, protocol=5)


def install_in_worker(sender: Any, level: int | None) -> None:
    """Ships the root logger's records to the parent, at ``level`` unless the worker's own
    configuration (its initializer) already changed the root level."""
    root = logging.getLogger()
    if level is not None and root.level == logging.WARNING:
        root.setLevel(level)
    if not any(isinstance(h, ShipToParent) for h in root.handlers):
        root.addHandler(ShipToParent(sender))


class RecordCounter:
    """Counts the worker records a pool handled and dropped (for ``pool.stats()``)."""

    def __init__(self) -> None:
        self.handled = 0
        self.dropped = 0

    def handle_records(self, records: list[tuple[int, int, bytes]], dropped: int) -> None:
        """Handles ``[(worker, pid, payload)]`` from ``engine.deliver`` in the parent."""
        for worker, pid, payload in records:
            try:
                record = logging.makeLogRecord(pickle.loads(payload))
            except Exception as exc:
                LOGGER.warning("a log record from worker process %d could not be read: %r", pid, exc)
                continue
            record.worker = worker
            record.worker_pid = pid
            record.processName = f"ferropool-worker-{pid}"
            logger = logging.getLogger(record.name)
            # The parent's configuration may have changed since the pool started.
            if logger.isEnabledFor(record.levelno):
                logger.handle(record)
            self.handled += 1
        if dropped:
            self.dropped += dropped
            LOGGER.warning("%d log records from worker processes were dropped: more than 10,000 were waiting", dropped)
