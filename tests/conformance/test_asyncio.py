"""An executor under asyncio: ``asyncio.wrap_future`` and ``loop.run_in_executor``."""

from __future__ import annotations

import asyncio

from helpers import mul

from .util import T


def test_asyncio_wrap_future(make_executor):
    ex = make_executor()

    async def main():
        return await asyncio.wait_for(asyncio.wrap_future(ex.submit(mul, 6, 7)), T)

    assert asyncio.run(main()) == 42


def test_asyncio_run_in_executor(make_executor):
    ex = make_executor()

    async def main():
        loop = asyncio.get_running_loop()
        calls = [loop.run_in_executor(ex, mul, i, 2) for i in range(5)]
        return await asyncio.wait_for(asyncio.gather(*calls), T)

    assert asyncio.run(main()) == [0, 2, 4, 6, 8]
