"""Raw-socket clients and small backends for the hardening tests."""

from __future__ import annotations

import asyncio
import contextlib
import resource
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from tests.conftest import Backend, Handler, RawResponder, RunningProxy

MakeProxy = Callable[..., Awaitable[RunningProxy]]
Serve = Callable[..., Awaitable[Backend]]
ServeRaw = Callable[[RawResponder], Awaitable[Backend]]


async def ok(_: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


def json_handler(body: bytes) -> Handler:
    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=body, content_type="application/json")

    return handler


def host_port(url: str) -> tuple[str, int]:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


@dataclass
class Answer:
    """Everything a server sent on one connection until it closed (or the wait ran out)."""

    data: bytes
    closed: bool

    @property
    def status(self) -> int | None:
        line = self.data.split(b"\r\n", 1)[0]
        parts = line.split(b" ", 2)
        if len(parts) < 2 or not line.startswith(b"HTTP/1.") or not parts[1].isdigit():
            return None
        return int(parts[1])

    @property
    def head(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[0]

    @property
    def body(self) -> bytes:
        return self.data.partition(b"\r\n\r\n")[2]


async def exchange(url: str, request: bytes, *, wait: float = 5.0, whole: bool = False) -> Answer:
    """Send raw bytes and read until the server closes or ``wait`` seconds pass (see
    `read_all` for ``whole``)."""
    reader, writer = await asyncio.open_connection(*host_port(url))
    try:
        with contextlib.suppress(ConnectionError):
            writer.write(request)
            await writer.drain()
        return await read_all(reader, wait, whole=whole)
    finally:
        writer.close()


def _complete(data: bytes) -> bool:
    """A whole response with a Content-Length is in ``data`` (nothing more is waited for)."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False


async def read_all(reader: asyncio.StreamReader, wait: float, *, whole: bool = False) -> Answer:
    """Read until the server closes or ``wait`` seconds pass; with ``whole``, also stop after a
    complete response with a Content-Length (the connection is then reported open)."""
    data = bytearray()
    try:
        async with asyncio.timeout(wait):
            while chunk := await reader.read(65536):
                data += chunk
                if whole and _complete(data):
                    return Answer(bytes(data), closed=False)
    except TimeoutError:
        return Answer(bytes(data), closed=False)
    except ConnectionError:
        pass
    return Answer(bytes(data), closed=True)


def raise_fd_limit(wanted: int) -> None:
    """Raise this process's soft limit on open files to ``wanted`` when the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
