"""Small helpers that several pool modules share: the usable CPU count and option checks.

Imports only ``math`` and ``os``, so that any module (including one a worker process loads)
can use it without slowing its import.
"""

from __future__ import annotations

import math
import os

__all__ = ["check_seconds", "usable_cpu_count"]


def usable_cpu_count() -> int:
    """Returns the number of CPUs this process may run on (affinity-aware)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_seconds(name: str, value: float | None) -> float | None:
    """Returns ``value`` as a float, or None for None: the check behind every ``*_timeout`` option.

    Raises ``TypeError`` if ``value`` is not a number (``bool`` included) and ``ValueError`` if it
    is not positive and finite; ``name`` is the option's name in the message.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a number of seconds or None, not {type(value).__name__}")
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"{name} must be a positive, finite number of seconds, not {value!r}")
    return float(value)
