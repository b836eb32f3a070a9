"""The local HTTP server that ``ferropool compare`` times its HTTP workloads against.

An aiohttp application on 127.0.0.1 (a free port chosen by the kernel), run by
its own event loop in a daemon thread of the ``compare`` process, so that
clients in this process's threads, in worker processes and in asyncio all reach
the same server.  ``GET /delay?ms=N`` waits N milliseconds without blocking the
loop and returns a small body: the stand-in for a remote service with latency.

The server's CPU time is counted in this process's, so CPU utilisation figures
of the HTTP workloads include the server's share for every strategy alike.
"""

from __future__ import annotations

import asyncio
import threading

__all__ = ["DelayServer"]

BODY = b"x" * 512
# The longest start() waits for the server thread to bind its socket.
START_TIMEOUT_S = 10.0


class DelayServer:
    """A ``/delay?ms=N`` HTTP server on 127.0.0.1, running in a background thread.

    Use as a context manager; ``url(ms)`` gives the address of one request.
    ``start()`` raises ``ImportError`` if aiohttp is missing and ``RuntimeError``
    if the server did not start within ``START_TIMEOUT_S``; ``stop()`` blocks
    until the server thread ends (bounded by the same timeout).
    """

    def __init__(self) -> None:
        self.port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def url(self, ms: int) -> str:
        """Return the URL of a request that the server answers after ``ms`` milliseconds."""
        return f"http://127.0.0.1:{self.port}/delay?ms={ms}"

    def start(self) -> DelayServer:
        import aiohttp.web  # noqa: F401 - fail here, in the caller's thread, if it is missing

        self._thread = threading.Thread(target=self._serve, name="compare-http-server", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_TIMEOUT_S):
            raise RuntimeError(f"the local HTTP server did not start within {START_TIMEOUT_S} s")
        if self._error is not None:
            raise RuntimeError(f"the local HTTP server failed: {self._error}") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._stopped is not None:
            self._loop.call_soon_threadsafe(self._stopped.set)
        if self._thread is not None:
            self._thread.join(START_TIMEOUT_S)

    def __enter__(self) -> DelayServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _serve(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # carried to start() (or lost after it: the workloads then fail)
            self._error = exc
            self._ready.set()

    async def _main(self) -> None:
        from aiohttp import web

        async def delay(request: web.Request) -> web.Response:
            await asyncio.sleep(int(request.query.get("ms", "0")) / 1000)
            return web.Response(body=BODY)

        app = web.Application()
        app.router.add_get("/delay", delay)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, "127.0.0.1", 0, backlog=1024)
            await site.start()
            self.port = runner.addresses[0][1]
            self._loop, self._stopped = asyncio.get_running_loop(), asyncio.Event()
            self._ready.set()
            await self._stopped.wait()
        finally:
            await runner.cleanup()
