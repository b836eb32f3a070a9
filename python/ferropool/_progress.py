"""Progress bars for futures and for ``map``: ``ferropool.progress`` and ``map(..., progress=True)``.

Where counts come from and where they go::

    ProcessPool / ThreadPool future done ─► done callback ─┐   (map: one call per chunk, + its size;
    progress(iterator) yields an item ──────────────────────┤    progress(futures): one per future)
                                                            ▼
        _Bar.add(k) (n += k under a lock) or _Bar.tick(); redraw at most every INTERVAL s
                                                            ▼
          in Jupyter with ipywidgets: tqdm's widget (``tqdm.notebook``), or _WidgetBar without tqdm
          anywhere else:              tqdm's text bar on stderr, or _TextBar without tqdm

Every count goes through ``_Bar``: ``add`` costs an addition, a lock and a clock read, and
``tick`` (an iterator's items, counted by its one consumer) skips the lock. The bar itself is
redrawn at most every ``INTERVAL`` seconds, and ``map`` counts per chunk, never per item, so a
bar costs tiny tasks almost nothing. tqdm is an optional dependency (the ``progress`` extra);
without it the same calls draw a plain text bar. In a Jupyter kernel the bar is a widget when
ipywidgets is installed (the ``notebook`` extra) and a text bar on the cell's stderr, redrawn in
place, when it is not: never tqdm's "IProgress not found" warning.
"""

from __future__ import annotations

import concurrent.futures as cf
import html
import queue
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

__all__ = ["progress"]

#: Seconds between redraws of a bar (tqdm's ``mininterval``, which its options may override).
INTERVAL = 0.1
#: Seconds between the lines the fallback bar writes to a stream that is not a terminal.
TEXT_LINE_INTERVAL = 10.0
_monotonic = time.monotonic


def progress(
    futures: Iterable[Any], /, *, total: int | None = None, desc: str | None = None, file: Any = None, **options: Any
) -> Iterator[Any]:
    """Shows a progress bar (rate and ETA) while you iterate; returns the iterator to loop over.

    * A collection of futures (a list, set or tuple of ``concurrent.futures.Future``): yields
      each future once it is done, in completion order, like ``as_completed``; the bar counts
      completions as they happen (done callbacks), so it moves even while the loop body is busy.
      ``result()`` of a yielded future never blocks. The bar follows the futures rather than
      the loop: it closes when the last one completes (or is cancelled), even if the iterator
      was dropped, so ``progress(fs)`` followed by ``concurrent.futures.wait(fs)`` shows a bar
      too; ``close()`` or a ``with`` block closes it earlier.
    * Any iterator, such as ``as_completed(fs)`` or a generator: yields its items unchanged
      (tqdm's semantics) and counts one per item yielded. Give ``total`` (for example
      ``len(fs)``) to get a percentage and an ETA; without it the bar shows a count and a rate.

    The bar is drawn on ``file`` (default ``sys.stderr``; in a Jupyter notebook, a widget where
    ipywidgets is installed, unless ``file`` is given). Over an iterator it closes when the
    iteration ends or raises, or the returned iterator is closed (``close()``, the end of a
    ``with`` block) or dropped.
    ``options`` go to ``tqdm`` (``unit``, ``leave``, ``mininterval`` ...). Without tqdm
    installed (``pip install ferropool[progress]``) a plain text bar is drawn instead and
    ``options`` are ignored.
    """
    if isinstance(futures, (list, tuple, set, frozenset, dict)) or (
        hasattr(futures, "__len__") and iter(futures) is not futures
    ):
        if all(isinstance(f, cf.Future) for f in futures):
            unique = list(dict.fromkeys(futures))  # as_completed counts a repeated future once
            return _Completions(unique, _Bar(len(unique), desc, file, options))
        if total is None:
            total = len(futures)  # type: ignore[arg-type]
    elif total is None:
        try:
            total = len(futures)  # type: ignore[arg-type]
        except TypeError:
            total = None
    return _Items(iter(futures), _Bar(total, desc, file, options))


def map_bar(setting: Any, total: int | None) -> _Bar:
    """Opens the bar for ``map(..., progress=setting)``: ``True``, a description, or a dict
    of ``progress`` keywords (``desc``, ``file`` and tqdm options)."""
    if isinstance(setting, str):
        options: dict[str, Any] = {"desc": setting}
    elif isinstance(setting, dict):
        options = dict(setting)
    elif setting is True:
        options = {}
    else:
        raise TypeError(f"progress must be True, a description or a dict of options, not {setting!r}")
    desc, file = options.pop("desc", None), options.pop("file", None)
    return _Bar(options.pop("total", total), desc, file, options)


class _Bar:
    """A thread-safe, rate-limited counter in front of a tqdm bar (or ``_TextBar``).

    ``add`` may be called from any thread (done callbacks run on the pool's threads); the view
    is updated at most every ``interval`` seconds and once more, exactly, on ``close``. Calls
    after ``close`` are ignored, so late callbacks are harmless.
    """

    def __init__(self, total: int | None, desc: str | None, file: Any, options: dict[str, Any]) -> None:
        self.interval = float(options.pop("mininterval", INTERVAL))
        self.lock = threading.Lock()
        self.n = 0
        self.shown = 0
        self.next_draw = _monotonic() + self.interval
        self.closed = False
        self.view = _open_view(total, desc, file, options)

    def add(self, k: int) -> None:
        with self.lock:
            if self.closed:
                return
            self.n += k
            now = _monotonic()
            if now < self.next_draw:
                return
            self.next_draw = now + self.interval
            self.view.update(self.n - self.shown)
            self.shown = self.n

    def tick(self) -> None:
        """Counts one, without the lock: only for a bar that a single thread counts (an
        iterator's consumer); ``close`` from elsewhere at worst misses the last tick."""
        self.n += 1
        if _monotonic() >= self.next_draw:
            self.add(0)

    def close(self, at_least: int = 0) -> None:
        """Draws the final count (at least ``at_least``) and closes the bar; idempotent."""
        with self.lock:
            if self.closed:
                return
            self.closed = True
            self.n = max(self.n, at_least)
            try:
                if self.n != self.shown:
                    self.view.update(self.n - self.shown)
                    self.shown = self.n
            finally:
                self.view.close()


def _open_view(total: int | None, desc: str | None, file: Any, options: dict[str, Any]) -> Any:
    notebook = file is None and in_notebook()
    widgets = notebook and _have_ipywidgets()
    try:
        if widgets:
            from tqdm.notebook import tqdm  # a widget in the cell's output
        else:
            from tqdm import tqdm  # text, on ``file`` or stderr
    except ImportError:
        if widgets:
            return _WidgetBar(total, desc)
        return _TextBar(total, desc, file, redraw=notebook)
    # We rate-limit ourselves (every update we pass is one we want drawn), so tqdm must not
    # drop any: with its own mininterval it would skip about every other one.
    options.setdefault("miniters", 1)
    return tqdm(total=total, desc=desc, file=file, mininterval=0, **options)


def in_notebook() -> bool:
    """True when this code runs in a Jupyter kernel (a notebook, JupyterLab, VS Code...), whose
    front end can show widgets and HTML; False in a terminal, an IPython shell or a script."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has always loaded it
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:
        return False


def _have_ipywidgets() -> bool:
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


class _WidgetBar:
    """The bar drawn in a notebook with ipywidgets but without tqdm: a progress bar widget and
    a label with the count, rate and ETA (``_TextBar``'s words)."""

    def __init__(self, total: int | None, desc: str | None) -> None:
        import ipywidgets
        from IPython.display import display

        self.text = _TextBar(total, desc, file=None, redraw=False, quiet=True)
        self.bar = ipywidgets.IntProgress(value=0, min=0, max=total or 1, description=desc or "")
        if not total:
            self.bar.bar_style = "info"  # no total: the bar shows activity, the label the count
        self.label = ipywidgets.HTML(value=html.escape(self.text.figures(_monotonic())))
        display(ipywidgets.HBox([self.bar, self.label]))  # type: ignore[no-untyped-call]

    def update(self, k: int) -> None:
        self.text.n += k
        if self.text.total:
            self.bar.value = min(self.text.n, self.text.total)
        self.label.value = html.escape(self.text.figures(_monotonic()))

    def close(self) -> None:
        self.update(0)
        if not self.text.total or self.text.n >= self.text.total:
            self.bar.value = self.bar.max
            self.bar.bar_style = "success"
        else:
            self.bar.bar_style = "danger"  # stopped early: an error, or the loop was left


class _TextBar:
    """The bar drawn when tqdm is not installed: one line, rewritten in place on a terminal and
    in a notebook cell (``redraw``; Jupyter renders a carriage return as a rewrite); elsewhere (a
    log file, a pipe) a line every ``TEXT_LINE_INTERVAL`` seconds and at the end."""

    WIDTH = 20

    def __init__(
        self, total: int | None, desc: str | None, file: Any, *, redraw: bool = False, quiet: bool = False
    ) -> None:
        self.file = sys.stderr if file is None else file
        try:
            self.tty = bool(self.file.isatty())
        except Exception:
            self.tty = False
        self.redraw = redraw or self.tty
        self.erase = "\x1b[K" if self.tty else ""  # a notebook rewrites the whole line anyway
        self.quiet = quiet  # only counts and words: _WidgetBar draws them
        self.total = total
        self.prefix = f"{desc}: " if desc else ""
        self.n = 0
        self.start = self.last_line = _monotonic()
        if self.redraw:
            self._write("\r" + self.line(self.start))

    def figures(self, now: float) -> str:
        elapsed = now - self.start
        rate = self.n / elapsed if elapsed > 0 else 0.0
        text = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text += f" {_clock(elapsed)} elapsed, {rate:.1f}/s"
        if self.total and 0 < self.n < self.total and rate > 0:
            text += f", {_clock((self.total - self.n) / rate)} left"
        return text

    def line(self, now: float) -> str:
        if not self.total:
            return self.prefix + self.figures(now)
        done = min(1.0, self.n / self.total)
        filled = int(done * self.WIDTH)
        count, _, rest = self.figures(now).partition(" ")
        return f"{self.prefix}[{'#' * filled}{'.' * (self.WIDTH - filled)}] {count} {done:4.0%} {rest}"

    def update(self, k: int) -> None:
        self.n += k
        now = _monotonic()
        if self.redraw:
            self._write("\r" + self.line(now) + self.erase)
        elif now - self.last_line >= TEXT_LINE_INTERVAL:
            self.last_line = now
            self._write(self.line(now) + "\n")

    def close(self) -> None:
        self._write(("\r" if self.redraw else "") + self.line(_monotonic()) + self.erase + "\n")

    def _write(self, text: str) -> None:
        if self.quiet:
            return
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError):  # a closed stream must not fail the work it reports on
            pass


def _clock(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class _Items:
    """``progress(iterator)``: yields the iterator's items and counts them as they are yielded."""

    def __init__(self, items: Iterator[Any], bar: _Bar) -> None:
        self._items = items
        self._bar = bar
        # Closes the bar once, when called or when this iterator is garbage-collected.
        self._finalizer = weakref.finalize(self, bar.close)
        self._close: Callable[[], object] = self._finalizer

    def __iter__(self) -> _Items:
        return self

    def __next__(self) -> Any:
        try:
            item = next(self._items)
        except BaseException:  # the end, or the wrapped iterator raised: either way the bar is done
            self._close()
            raise
        self._bar.tick()
        return item

    def close(self) -> None:
        """Closes the bar (at its current count); iterating afterwards still yields items."""
        self._close()

    def __enter__(self) -> _Items:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()


class _Completions(_Items):
    """``progress(futures)``: yields the futures as they complete; done callbacks count them."""

    def __init__(self, futures: list[cf.Future[Any]], bar: _Bar) -> None:
        done: queue.SimpleQueue[cf.Future[Any]] = queue.SimpleQueue()
        left = [len(futures)]
        lock = threading.Lock()

        def on_done(fut: cf.Future[Any]) -> None:
            bar.add(1)
            done.put(fut)
            with lock:
                left[0] -= 1
                last = left[0] == 0
            if last:
                bar.close()

        super().__init__(_take(done, len(futures)), bar)
        # The bar follows the futures, not this iterator: dropping the iterator leaves it
        # counting (``progress(fs)`` then ``wait(fs)``); the last completion closes it.
        self._finalizer.detach()
        self._close = bar.close
        if not futures:
            bar.close()
        for fut in futures:  # runs on_done at once for futures already done
            fut.add_done_callback(on_done)

    def __next__(self) -> cf.Future[Any]:
        try:
            return next(self._items)  # counted when it completed, not here
        except BaseException:
            self._close()
            raise


def _take(done: queue.SimpleQueue[cf.Future[Any]], count: int) -> Iterator[cf.Future[Any]]:
    for _ in range(count):
        yield done.get()
