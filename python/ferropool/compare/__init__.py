"""``ferropool compare``: time workloads serially and with each strategy at several worker counts, then recommend one.

The modules, in the order a run goes through them:

- :mod:`.cli`: the ``compare`` subcommand's options and its entry point;
- :mod:`.workloads`: what is timed (the built-in workloads, or the user's ``module:function``);
- :mod:`.strategies`: how it is run (serial, stdlib and ferropool pools, asyncio);
- :mod:`.measure`: the timing loop, which returns the JSON-ready report;
- :mod:`.usage`: CPU time and peak memory of this process and of each pool's workers;
- :mod:`.report`: the recommendation, the table and the progress line;
- :mod:`.plot`: ``--plot FILE``, a chart of time against workers;
- :mod:`.server`: the local HTTP server the HTTP workloads call;
- :mod:`.tasks`: the functions that run inside the workers (also used by the benchmarks).

- :mod:`.result`: ``ferropool.compare.run()``, the same from Python, and its report in a notebook.

This file imports nothing: worker processes import :mod:`.tasks` by name to run a task, and
must not load the rest of the command with it (``run`` and ``Comparison`` load on first use).
"""

TYPE_CHECKING = False
if TYPE_CHECKING:  # for type checkers only: at run time ``__getattr__`` loads them
    from .result import Comparison, run

__all__ = ["Comparison", "run"]


def __getattr__(name: str) -> object:
    if name in ("run", "Comparison"):
        from . import result

        return getattr(result, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
