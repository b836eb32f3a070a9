"""``RayPool``: a ``concurrent.futures`` executor on Ray (what ray-project/ray#29456 asks for).

Each task is one Ray task running ``remote.run_task`` (see ``remote`` for the data flow),
declared with ``max_retries=0``: a task whose worker dies fails with ``WorkerDiedError`` at
once, as on ``ProcessPool``, instead of Ray's default of running it up to three more times.
Results come back through ``ObjectRef.future()``.

What Ray lacks and this adds (ray-project/ray#18916): a per-task timeout, kept by the parent,
which stops the task with ``ray.cancel(force=True)``. That kills the worker process running it;
Ray starts a new one when it next needs one. ``cancel()`` does the same.
"""

from __future__ import annotations

from typing import Any

try:
    import ray
    import ray.exceptions
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError("ferropool.RayPool needs Ray: pip install 'ferropool[ray]'", name=exc.name) from exc

from .remote import SHARE_THRESHOLD, RemoteFuture, RemotePool, died, run_task

__all__ = ["RayPool"]

_remote_run = None


def _task() -> Any:
    global _remote_run
    if _remote_run is None:
        _remote_run = ray.remote(max_retries=0, num_cpus=1)(run_task)
    return _remote_run


class RayPool(RemotePool):
    """Runs calls as Ray tasks, with the API of ``ferropool.ProcessPool``.

    Connects with ``ray.init(address=address, **ray_init)`` unless Ray is already initialised
    in this process, in which case that connection is used (``address`` and ``ray_init`` are
    then ignored). ``address=None`` starts a local Ray instance, ``"auto"`` joins a running
    one. ``shutdown`` calls ``ray.shutdown()`` only if this pool called ``ray.init``.

    ``submit``, ``map`` (chunked, bounded), ``options(task_timeout=)``, ``shutdown`` and
    ``stats()`` behave as on ``ProcessPool``; futures are ``concurrent.futures.Future``.
    ``task_timeout`` (seconds) limits each task's run time: past it the future raises
    ``TaskTimeoutError`` and the task's worker process is killed (``ray.cancel(force=True)``).
    ``cancel()`` stops a running task the same way. numpy arrays of at least
    ``share_threshold`` bytes passed as arguments are put in Ray's object store once per array
    object (None: never); the task receives them read-only, as Ray hands out such arrays.
    Each task asks Ray for one CPU.
    """

    _engine_name = "Ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        task_timeout: float | None = None,
        share_threshold: int | None = SHARE_THRESHOLD,
        **ray_init: Any,
    ) -> None:
        self._owns_ray = False
        if not ray.is_initialized():
            ray.init(address=address, **ray_init)
            self._owns_ray = True
        self._max_workers = max(1, int(ray.cluster_resources().get("CPU", 1)))
        super().__init__(task_timeout=task_timeout, share_threshold=share_threshold)
        self._run = _task()

    def _engine_submit(self, fut: RemoteFuture, payload: bytes, shared: list) -> Any:
        ref = self._run.remote(payload, fut._token, *shared)
        ref.future().add_done_callback(lambda f: self._on_done(fut, f))
        return ref

    def _on_done(self, fut: RemoteFuture, f: Any) -> None:
        try:
            outcome = f.result()
        except BaseException as exc:
            self._settle(fut, None, exc)
        else:
            self._settle(fut, outcome, None)

    def _engine_error(self, fut: RemoteFuture, exc: BaseException) -> BaseException:
        lost = (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.OutOfMemoryError)
        if isinstance(exc, lost):
            err = died(fut, "Ray", f"{type(exc).__name__}: {exc}")
            err.__cause__ = exc
            return err
        return exc

    def _engine_share(self, array: Any) -> Any:
        return ray.put(array)

    def _engine_stop(self, fut: RemoteFuture, handle: Any) -> None:
        ray.cancel(handle, force=True)

    def _engine_await_stopped(self, handles: list, timeout: float) -> None:
        # A cancelled task's reference resolves once Ray has acted on the cancel: the task
        # left its queue, or its worker was killed.
        ray.wait(handles, num_returns=len(handles), timeout=timeout, fetch_local=False)

    def _engine_close(self) -> None:
        if self._owns_ray:
            ray.shutdown()

    def __repr__(self) -> str:
        return f"<RayPool max_workers={self._max_workers}>"
