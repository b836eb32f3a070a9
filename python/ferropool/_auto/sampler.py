"""``GilSampler``: a helper thread that tells, while a solo probe step runs, whether the calls hold
the GIL.

The helper naps GIL_SAMPLE_S, then needs the GIL to go on; how late it gets it (less its own wait
for a CPU) is how long another thread kept the GIL without letting go. Code that holds the GIL
keeps it until the interpreter forces a switch (``sys.getswitchinterval()``, 5 ms by default):
the helper is about that late every time. Code in sleep, I/O or a C library that releases the GIL
(hashlib, numpy) lets the helper in at once. Each sample costs the measured calls one GIL
hand-off. The probe takes the median as ``Probe.end_solo``'s ``gil_late``.
"""

from __future__ import annotations

import _thread
import statistics
import threading
import time

from .decide import GIL_SAMPLE_S
from .measure import runqueue_wait_s

__all__ = ["GilSampler"]


class GilSampler:
    """Samples, from a helper thread, how long other threads keep the GIL; ``stop()`` returns
    the median delay."""

    def __init__(self) -> None:
        self._stop = threading.Event()
        self._late: list[float] = []
        # A bare thread: threading.Thread.start() waits for the thread to run, and join() for it
        # to end, which a tiny function's probe would pay for. This one ends by itself soon after
        # stop() (a daemon: it never holds up the interpreter).
        _thread.start_new_thread(self._run, ())

    def _run(self) -> None:
        while (late := _late_after_nap(self._stop, GIL_SAMPLE_S)) is not None:
            self._late.append(late)

    def stop(self) -> float | None:
        """Stops sampling; returns the median delay in seconds (None: fewer than two samples)."""
        self._stop.set()
        late = list(self._late)
        return statistics.median(late) if len(late) >= 2 else None


def _late_after_nap(event: threading.Event, nap: float) -> float | None:
    """Waits up to ``nap`` seconds for ``event``; returns None if it was set, else how late this
    thread got the GIL back after the nap, less the time it sat queued for a CPU behind other
    programs meanwhile (that is not the GIL)."""
    q0, t0 = runqueue_wait_s(), time.perf_counter()
    if event.wait(nap):
        return None
    late = time.perf_counter() - t0 - nap
    q1 = runqueue_wait_s()
    return late - (q1 - q0) if q0 is not None and q1 is not None else late
