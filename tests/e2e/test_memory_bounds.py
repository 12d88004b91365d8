"""Memory of the real process against backends that make buffering costly: a body in tiny
chunks, a candidate that never reads what is mirrored to it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

import aiohttp
import psutil
import pytest
from aiohttp import web

from tests.conftest import Backend
from tests.e2e.conftest import ProxyProcess, StartProxy

pytestmark = pytest.mark.e2e

Serve = Callable[..., Awaitable[Backend]]
MIB = 1024 * 1024
PRIMARY_BODY = b'{"ok": true}'
# The process measured is the one serving: no supervisor in front of workers.
ONE_PROCESS = ("--workers", "1")


async def ok(request: web.BaseRequest) -> web.StreamResponse:
    async for _ in request.content.iter_any():
        pass  # read to its end, however large
    return web.Response(body=PRIMARY_BODY, content_type="application/json")


class PeakGrowth:
    """The proxy's resident memory above where it stood when entered, at its highest."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self._process = psutil.Process(proxy.pid)
        self._base = self._process.memory_info().rss
        self.peak = 0

    def measure(self) -> int:
        self.peak = max(self.peak, self._process.memory_info().rss - self._base)
        return self.peak

    @asynccontextmanager
    async def sampling(self) -> AsyncIterator[PeakGrowth]:
        async def sample() -> None:
            while True:
                self.measure()
                await asyncio.sleep(0.02)  # memory gives no event to await

        task = asyncio.get_running_loop().create_task(sample())
        try:
            yield self
        finally:
            task.cancel()
            self.measure()


@pytest.mark.timeout(60)
async def test_a_candidate_body_in_tiny_chunks_is_kept_within_the_comparison_cap(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """Kept one by one, 2-byte chunks cost about 20 times their size: a 4 MiB cap held
    some 270 MiB for one mirrored request."""
    cap = 4 * MIB
    piece = b"2\r\nab\r\n" * 65536  # 128 KiB of body in 2-byte chunks

    async def tiny_chunks(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(cap // (128 * 1024)):
                writer.write(piece)
                await writer.drain()
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    candidate = await asyncio.start_server(tiny_chunks, "127.0.0.1", 0)
    try:
        port = candidate.sockets[0].getsockname()[1]
        primary = await serve(ok)
        proxy = await start_proxy(
            primary.url,
            f"http://127.0.0.1:{port}",
            args=ONE_PROCESS,
            candidate={"timeout": 30},
            diff={"max_body_bytes": cap},
        )
        async with PeakGrowth(proxy).sampling() as growth:
            async with client.get(proxy.url + "/tiny") as response:
                assert await response.read() == PRIMARY_BODY
            [record] = await proxy.wait_records(1, timeout=30)
    finally:
        candidate.close()
    assert record["candidate"]["bytes"] == cap
    assert growth.peak < 64 * MIB, f"grew by {growth.peak / MIB:.0f} MiB"


@pytest.mark.timeout(60)
async def test_a_candidate_that_never_reads_holds_each_mirrored_body_once(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    """A body sent with its head in one write was a copy, held besides the mirror's own while
    the candidate did not read: twice ``mirror.max_body_bytes`` per mirror in flight."""
    mirrors, size = 12, 8 * MIB
    heads = 0
    all_arrived, done = asyncio.Event(), asyncio.Event()

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal heads
        await reader.readuntil(b"\r\n\r\n")
        heads += 1
        if heads == mirrors:
            all_arrived.set()
        await done.wait()
        writer.close()

    candidate = await asyncio.start_server(deaf, "127.0.0.1", 0)
    try:
        port = candidate.sockets[0].getsockname()[1]
        primary = await serve(ok, read_body=False)
        proxy = await start_proxy(
            primary.url,
            f"http://127.0.0.1:{port}",
            args=ONE_PROCESS,
            candidate={"timeout": 30},
            mirror={"methods": ["POST"], "max_body_bytes": size},
        )
        growth = PeakGrowth(proxy)
        body = b"b" * size

        async def upload(index: int) -> int:
            async with client.post(f"{proxy.url}/upload/{index}", data=body) as response:
                assert await response.read() == PRIMARY_BODY
                return response.status

        assert await asyncio.gather(*(upload(i) for i in range(mirrors))) == [200] * mirrors
        await all_arrived.wait()
        # Every mirror now holds its body, which the candidate does not take.
        held = growth.measure()
    finally:
        done.set()
        candidate.close()
    assert held < mirrors * size * 3 // 2, f"grew by {held / MIB:.0f} MiB"
