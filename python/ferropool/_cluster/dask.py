"""``DaskPool``: ferropool's executor API on a Dask distributed cluster.

Each task is one Dask task running ``remote.run_task`` (see ``remote`` for the data flow).
Finished Dask futures are handed by Dask's callback thread to a collector thread that fetches
their outcomes in batches (one ``client.gather`` per batch, not one round trip per task).

What Dask lacks and this adds (dask/distributed#391): stopping a running task. ``cancel()`` and
timeouts call ``client.cancel(force=True)`` — which drops a queued task but lets a running one
run on — and then ``remote.stop_task`` on the workers: it raises in the task's thread, and
kills the worker process (its nanny starts a new one) if the task is blocked in C for a second.
``shutdown(cancel_futures=True)`` asks the workers which ferropool tasks run
(``remote.running_tokens``) and cancels the others only, as the standard library does.
"""

from __future__ import annotations

import queue
import threading
from typing import Any

try:
    import distributed
    from distributed.scheduler import KilledWorker
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "ferropool.DaskPool needs Dask distributed: pip install 'ferropool[dask]'", name=exc.name
    ) from exc

from .remote import SHARE_THRESHOLD, RemoteFuture, RemotePool, died, run_task, running_tokens, stop_task

__all__ = ["DaskPool"]


class DaskPool(RemotePool):
    """Runs calls on a Dask distributed cluster, with the API of ``ferropool.ProcessPool``.

    ``client`` is a ``distributed.Client``, a scheduler address (``"tcp://host:8786"``), or
    None for the current default client, or, if there is none, a new ``LocalCluster`` on this
    machine (as ``distributed.Client()`` makes). A client or cluster the pool made is closed by
    ``shutdown``; one passed in is left open.

    ``submit``, ``map`` (chunked, bounded), ``options(task_timeout=)``, ``shutdown`` and
    ``stats()`` behave as on ``ProcessPool``; futures are ``concurrent.futures.Future``.
    ``task_timeout`` (seconds) limits each task's run time; past it the future raises
    ``TaskTimeoutError`` and the task is stopped (see the module doc). ``cancel()`` stops a
    running task the same way. numpy arrays of at least ``share_threshold`` bytes passed as
    arguments are scattered to the cluster once per array object (None: never).

    Workers must be able to import ferropool (and the task's own modules), and run tasks in
    processes (``processes=True``, the default): a stopped task blocked in C kills its worker.
    """

    _engine_name = "Dask"

    def __init__(
        self,
        client: distributed.Client | str | None = None,
        *,
        task_timeout: float | None = None,
        share_threshold: int | None = SHARE_THRESHOLD,
    ) -> None:
        self._owns_client = False
        if client is None:
            try:
                client = distributed.get_client()
            except ValueError:
                client = distributed.Client()
                self._owns_client = True
        elif isinstance(client, str):
            client = distributed.Client(client)
            self._owns_client = True
        self._client = client
        self._max_workers = max(1, sum(client.nthreads().values()))
        super().__init__(task_timeout=task_timeout, share_threshold=share_threshold)
        self._done: queue.SimpleQueue = queue.SimpleQueue()
        self._collector = threading.Thread(target=self._collect, name="ferropool-dask-results", daemon=True)
        self._collector.start()

    @property
    def client(self) -> distributed.Client:
        """The Dask client the pool submits through."""
        return self._client

    def _engine_submit(self, fut: RemoteFuture, payload: bytes, shared: list) -> Any:
        name = getattr(fut._fn, "__name__", "task")
        dfut = self._client.submit(
            run_task, payload, fut._token, *shared, key=f"ferropool-{name}-{fut._token}", pure=False
        )
        dfut.add_done_callback(lambda d: self._done.put((fut, d)))
        return dfut

    def _collect(self) -> None:
        """Settles finished tasks, fetching the results of each batch with one gather."""
        while True:
            item = self._done.get()
            if item is None:
                return
            batch = [item]
            while True:
                try:
                    item = self._done.get_nowait()
                except queue.Empty:
                    break
                if item is None:
                    self._done.put(None)
                    break
                batch.append(item)
            finished = [(f, d) for f, d in batch if d.status == "finished"]
            outcomes: list = []
            if finished:
                try:
                    outcomes = self._client.gather([d for _, d in finished])
                except BaseException:
                    outcomes = []  # one went missing meanwhile: fetch them one by one below
            for i, (fut, d) in enumerate(finished):
                if i < len(outcomes):
                    self._settle(fut, outcomes[i], None)
                else:
                    self._settle_one(fut, d)
            for fut, d in batch:
                if d.status != "finished":
                    self._settle_one(fut, d)

    def _settle_one(self, fut: RemoteFuture, d: Any) -> None:
        try:
            if d.status == "cancelled":
                raise distributed.client.FutureCancelledError(d.key, "cancelled on the cluster")
            outcome = d.result()
        except BaseException as exc:
            self._settle(fut, None, exc)
        else:
            self._settle(fut, outcome, None)

    def _engine_error(self, fut: RemoteFuture, exc: BaseException) -> BaseException:
        if isinstance(exc, KilledWorker):
            err = died(fut, "Dask", f"{exc} (Dask retried it on new workers {exc.allowed_failures} times first)")
            err.__cause__ = exc
            return err
        return exc

    def _engine_share(self, array: Any) -> Any:
        return self._client.scatter(array, hash=False)

    def _engine_stop(self, fut: RemoteFuture, handle: Any) -> None:
        # Cancel first, so that the scheduler forgets the task and a worker killed below does
        # not make it run again elsewhere.
        self._client.cancel([handle], force=True)
        self._client.run(stop_task, fut._token, on_error="ignore")

    def _engine_running(self) -> set[str] | None:
        tokens = self._client.run(running_tokens, on_error="ignore")
        return {token for listed in tokens.values() for token in listed}

    def _engine_drop(self, fut: RemoteFuture, handle: Any) -> None:
        self._client.cancel([handle], force=True)

    def _engine_close(self) -> None:
        self._done.put(None)
        if self._owns_client:
            self._client.close()

    def __repr__(self) -> str:
        # A closed client has no scheduler (None): its pool still has a repr.
        scheduler = getattr(self._client.scheduler, "address", None)
        return f"<DaskPool max_workers={self._max_workers} scheduler={scheduler!r}>"
