"""``Pool(strategy="auto")``: measures a function's first calls, then runs the rest where they go
fastest.

One concept per module:

- ``pool.py``: ``Pool``, the executor: its API, the queue of calls waiting for a decision, the
  threads that run the probe's steps, and the hand-off to the chosen backend.
- ``probe.py``: ``Probe``, the policy: a pure state machine from measured samples to the next
  action (measure alone, measure a pair, decide). No threads, no clock.
- ``decide.py``: the decision model: from ``Figures`` to a ``Decision``, by estimated time per call.
- ``measure.py``: the clocks behind the samples (wall, CPU, time waiting for a CPU, pickled sizes).
- ``sampler.py``: ``GilSampler``, the helper thread that tells whether solo calls hold the GIL.
- ``backends.py``: the serial executor, the private event loop, the coroutine adapter.
- ``futures.py``: joining and gathering futures.
- ``explain.py``: the words of ``Pool.explain()``.

How the probe decides: ``docs/auto.md``.
"""

from __future__ import annotations

from .decide import STRATEGIES, Decision, Figures, decide
from .pool import Pool

__all__ = ["STRATEGIES", "Decision", "Figures", "Pool", "decide"]
