"""``Pool(strategy="auto")``: measures a function's first calls, then runs the rest where they go
fastest."""

from __future__ import annotations

from .decide import STRATEGIES, Decision, Figures, decide
from .pool import Pool

__all__ = ["STRATEGIES", "Decision", "Figures", "Pool", "decide"]
