"""Shared fixtures: real HTTP servers on loopback ports, and the proxy in this process.

End-to-end fixtures that start the real ``shadowproxy`` process live in ``tests/e2e``.
"""

from __future__ import annotations

import asyncio
import copy
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
import trustme
from aiohttp import web

from shadowproxy.config import Config, parse_config

if TYPE_CHECKING:
    from shadowproxy.server import Proxy

Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
RawResponder = Callable[[bytes], Awaitable[bytes | None]]


@dataclass
class Seen:
    """A request as a backend received it."""

    method: str
    raw_path: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Backend:
    url: str
    port: int
    seen: list[Seen] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)


async def _start_server(handler: Handler) -> tuple[web.ServerRunner, int]:
    server = web.Server(handler, auto_decompress=False)
    runner = web.ServerRunner(server, access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, port


@pytest.fixture
async def serve() -> AsyncIterator[Callable[..., Awaitable[Backend]]]:
    """Start an HTTP backend on a loopback port that records what it received."""
    runners: list[web.ServerRunner] = []

    async def start(handler: Handler, *, read_body: bool = True) -> Backend:
        """``read_body=False`` leaves the body to the handler, for streaming uploads."""
        backend: Backend | None = None

        async def recording(request: web.BaseRequest) -> web.StreamResponse:
            body = await request.read() if read_body else b""
            assert backend is not None
            backend.seen.append(
                Seen(request.method, request.raw_path, list(request.headers.items()), body)
            )
            backend.arrived.set()
            return await handler(request)

        runner, port = await _start_server(recording)
        runners.append(runner)
        backend = Backend(url=f"http://127.0.0.1:{port}", port=port)
        return backend

    yield start
    for runner in runners:
        await runner.cleanup()


@pytest.fixture
async def serve_raw() -> AsyncIterator[Callable[[RawResponder], Awaitable[Backend]]]:
    """A backend that answers with exact bytes, for responses aiohttp would never write.

    The responder gets the request head and returns the bytes to send (then the connection
    closes), or None to close without a word.
    """
    servers: list[asyncio.Server] = []
    writers: set[asyncio.StreamWriter] = set()

    async def start(responder: RawResponder) -> Backend:
        async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writers.add(writer)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                answer = await responder(head)
                if answer:
                    writer.write(answer)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()
                writers.discard(writer)

        server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
        servers.append(server)
        port = server.sockets[0].getsockname()[1]
        return Backend(url=f"http://127.0.0.1:{port}", port=port)

    yield start
    for writer in list(writers):
        writer.close()
    for server in servers:
        server.close()
        await server.wait_closed()


def run_cli(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """``python -m shadowproxy ARGS`` to its end, with its output."""
    return subprocess.run(
        [sys.executable, "-m", "shadowproxy", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def read_fd_to_end(fd: int) -> bytes:
    """Everything ``fd`` gives until its writers close it (blocking: run it in a thread)."""
    chunks = []
    while chunk := os.read(fd, 65536):
        chunks.append(chunk)
    return b"".join(chunks)


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def proxy_config(primary: str, candidate: str, log_path: Path, /, **overrides: Any) -> Config:
    base = {
        "listen": "127.0.0.1:0",
        "admin": "127.0.0.1:0",
        "primary": {"url": primary, "timeout": 5},
        "candidate": {"url": candidate, "timeout": 2},
        "log": {"path": str(log_path), "flush_interval": 0.05},
        "diff": {"workers": 0},
    }
    return parse_config(merge(base, overrides))


@dataclass
class RunningProxy:
    proxy: Proxy
    log_path: Path

    @property
    def url(self) -> str:
        assert self.proxy.proxy_address is not None
        host, port = self.proxy.proxy_address
        return f"http://{host}:{port}"

    @property
    def admin_url(self) -> str:
        assert self.proxy.admin_address is not None
        host, port = self.proxy.admin_address
        return f"http://{host}:{port}"

    async def records(self) -> list[dict[str, Any]]:
        """Every exchange record, once all mirrors under way have finished."""
        await self.proxy.dispatcher.idle()
        self.proxy.writer.flush()
        lines = self.log_path.read_bytes().splitlines() if self.log_path.exists() else []
        parsed = [orjson.loads(line) for line in lines if line.strip()]
        return [r for r in parsed if r.get("event") == "exchange"]


@pytest.fixture
async def make_proxy(
    tmp_path: Path,
) -> AsyncIterator[Callable[..., Awaitable[RunningProxy]]]:
    """Start the proxy in this process, in front of the given backends."""
    from shadowproxy.server import Proxy

    started: list[Proxy] = []

    async def make(primary: str, candidate: str, /, **overrides: Any) -> RunningProxy:
        log_path = tmp_path / f"log-{len(started)}.jsonl"
        proxy = Proxy(proxy_config(primary, candidate, log_path, **overrides))
        await proxy.start()
        started.append(proxy)
        return RunningProxy(proxy, log_path)

    yield make
    for proxy in started:
        await proxy.stop()


@pytest.fixture
async def client() -> AsyncIterator[aiohttp.ClientSession]:
    """A client that shows bodies and headers exactly as they arrive."""
    async with aiohttp.ClientSession(
        auto_decompress=False,
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=30),
    ) as session:
        yield session


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    """A certificate authority for TLS tests: issue with ``ca.issue_cert(host)``."""
    return trustme.CA()
