"""The backend connection pool (shadowproxy/pool.py) against raw servers on loopback: what goes
on the wire, how answers are framed, keep-alive and its limits, failures, timeouts and
backpressure."""

from __future__ import annotations

import asyncio
import base64
import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from multidict import CIMultiDict

from shadowproxy.config import Backend as BackendConfig
from shadowproxy.pool import (
    HIGH_WATER,
    MAX_HEAD_BYTES,
    ConnectFailed,
    ConnectionClosed,
    InvalidResponse,
    Pool,
    Timing,
    UpstreamResponse,
)
from tests.conftest import Backend, RawResponder

pytestmark = pytest.mark.timeout(10)

# asyncio's socket transports hand over at most this much per read (data_received).
READ_SIZE = 256 * 1024


# -- a raw HTTP/1.1 server -------------------------------------------------------------------


@dataclass
class Request:
    """One request as the server read it off the wire."""

    head: bytes
    """Request line and header fields, without the blank line."""
    body: bytes

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    @property
    def target(self) -> bytes:
        return self.line.split(b" ")[1]

    @property
    def fields(self) -> list[tuple[bytes, bytes]]:
        pairs = [line.split(b":", 1) for line in self.head.split(b"\r\n")[1:]]
        return [(name, value.strip()) for name, value in pairs]

    def values(self, name: bytes) -> list[bytes]:
        return [value for key, value in self.fields if key.lower() == name.lower()]


class Peer:
    """The server's side of one connection, for a handler to script."""

    def __init__(
        self,
        server: RawServer,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        index: int,
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.index = index
        """1 for the first connection accepted, 2 for the next..."""

    async def request(self) -> Request | None:
        """The next whole request, body included; None when the client closed instead."""
        try:
            raw = await self.reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError as error:
            if error.partial:
                raise
            self.server.saw_eof(self.index)
            return None
        request = Request(raw[:-4], b"")
        if b"chunked" in [v.lower() for v in request.values(b"Transfer-Encoding")]:
            body = bytearray()
            while size := int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16):
                body += (await self.reader.readexactly(size + 2))[:-2]
            assert await self.reader.readuntil(b"\r\n") == b"\r\n"  # no trailers
            request.body = bytes(body)
        elif lengths := request.values(b"Content-Length"):
            request.body = await self.reader.readexactly(int(lengths[0]))
        self.server.requests.append(request)
        return request

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def until_closed(self) -> None:
        """Read (and drop) whatever comes until the client closes the connection."""
        while await self.reader.read(65536):
            pass
        self.server.saw_eof(self.index)


ConnectionHandler = Callable[[Peer], Awaitable[None]]


@dataclass
class RawServer:
    """A TCP (or unix socket) server whose handler writes exact bytes; it counts connections."""

    handler: ConnectionHandler
    url: str = ""
    accepted: int = 0
    open_now: int = 0
    max_open: int = 0
    requests: list[Request] = field(default_factory=list)
    eof: asyncio.Event = field(default_factory=asyncio.Event)
    """Set when a client closed a connection while the server read from it."""
    closed_by_client: list[int] = field(default_factory=list)
    server: asyncio.Server | None = None
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def saw_eof(self, index: int) -> None:
        self.closed_by_client.append(index)
        self.eof.set()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.accepted += 1
        self.open_now += 1
        self.max_open = max(self.max_open, self.open_now)
        try:
            await self.handler(Peer(self, reader, writer, self.accepted))
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            self.open_now -= 1
            writer.close()
            self.tasks.discard(task)

    async def start(self, unix: Path | None = None) -> None:
        if unix is None:
            self.server = await asyncio.start_server(self._on_connection, "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"
        else:
            self.server = await asyncio.start_unix_server(self._on_connection, str(unix))
            self.url = f"unix://{unix}"

    async def stop(self) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        await self.server.wait_closed()


StartServer = Callable[..., Awaitable[RawServer]]
MakePool = Callable[..., Pool]
ServeRaw = Callable[[RawResponder], Awaitable[Backend]]


@pytest.fixture
async def raw_server() -> AsyncIterator[StartServer]:
    """Start a raw server; ``unix=path`` listens on a unix socket instead of a loopback port."""
    servers: list[RawServer] = []

    async def start(handler: ConnectionHandler, *, unix: Path | None = None) -> RawServer:
        server = RawServer(handler)
        await server.start(unix)
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.stop()


@pytest.fixture
async def make_pool() -> AsyncIterator[MakePool]:
    """A pool to the given URL; the backend settings are `shadowproxy.config.Backend`'s."""
    pools: list[Pool] = []

    def make(url: str, *, timing: Timing = Timing.TOTAL, **settings: Any) -> Pool:
        pool = Pool(BackendConfig(url=url, **settings), timing=timing)
        pools.append(pool)
        return pool

    yield make
    for pool in pools:
        await pool.close()


def ok(body: bytes = b"ok", *extra: bytes) -> bytes:
    """A keep-alive answer with a Content-Length."""
    fields = b"".join(line + b"\r\n" for line in extra)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), fields, body)


def answer_each(answer: bytes) -> ConnectionHandler:
    """Answer every request on the connection with the same bytes."""

    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(answer)

    return handler


def answer_once(answer: bytes) -> ConnectionHandler:
    """Read one request, send the bytes, close."""

    async def handler(peer: Peer) -> None:
        if await peer.request() is not None:
            await peer.send(answer)

    return handler


def respond(answer: bytes | None) -> RawResponder:
    """For `serve_raw` (tests/conftest.py): these bytes to every request, then a close."""

    async def responder(_: bytes) -> bytes | None:
        return answer

    return responder


async def read_all(response: UpstreamResponse) -> bytes:
    return b"".join([chunk async for chunk in response.iter_chunks()])


async def read_into(response: UpstreamResponse, received: bytearray) -> None:
    """Read the body into ``received``: what arrived stays there when reading fails."""
    while chunk := await response.read_chunk():
        received += chunk


async def fetch(
    pool: Pool,
    method: str = "GET",
    path: str = "/",
    headers: CIMultiDict[str] | None = None,
    body: bytes | AsyncIterator[bytes] | None = None,
) -> tuple[UpstreamResponse, bytes]:
    """One whole exchange: the response (released) and its body."""
    response = await pool.request(method, path, headers or CIMultiDict(), body)
    try:
        return response, await read_all(response)
    finally:
        response.release()


async def pieces(*chunks: bytes) -> AsyncIterator[bytes]:
    for chunk in chunks:
        yield chunk


# -- keep-alive --------------------------------------------------------------------------------


async def test_sequential_requests_share_one_connection(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok(b"hello")))
    pool = make_pool(server.url)
    for _ in range(2):
        response, body = await fetch(pool)
        assert (response.status, response.reason, body) == (200, "OK", b"hello")
        assert response.complete
        assert pool.open_connections == 1
    assert server.accepted == 1
    assert len(server.requests) == 2


async def test_answer_with_connection_close_is_not_reused(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok(b"x", b"Connection: close")))
    pool = make_pool(server.url)
    for _ in range(2):
        _, body = await fetch(pool)
        assert body == b"x"
    assert server.accepted == 2


async def test_a_name_is_resolved_once_for_many_connections(
    raw_server: StartServer, make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every answer closes its connection, so every request connects anew; "localhost" may
    # also give ::1 first, where nothing listens: the next address is tried.
    server = await raw_server(answer_each(ok(b"x", b"Connection: close")))
    loop = asyncio.get_running_loop()
    resolved: list[str] = []
    real = loop.getaddrinfo

    async def counting(host: Any, *args: Any, **kwargs: Any) -> Any:
        resolved.append(host)
        return await real(host, *args, **kwargs)

    monkeypatch.setattr(loop, "getaddrinfo", counting)
    pool = make_pool(server.url.replace("127.0.0.1", "localhost"))
    for _ in range(3):
        _, body = await fetch(pool)
        assert body == b"x"
    assert server.accepted == 3
    assert resolved == ["localhost"]


async def test_release_before_the_body_is_read_closes_the_connection(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    """The rest of an unread body would be taken for the next answer: never reuse."""
    server = await raw_server(answer_each(ok(b"b" * 2_000_000)))
    pool = make_pool(server.url)
    response = await pool.request("GET", "/", CIMultiDict())
    assert not response.complete
    response.release()
    assert pool.open_connections == 0
    _, body = await fetch(pool)
    assert len(body) == 2_000_000
    assert server.accepted == 2


async def test_idle_connections_close_after_the_keepalive_timeout(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url, keepalive_timeout=0.1)
    await fetch(pool)
    async with asyncio.timeout(2):
        await server.eof.wait()
    assert pool.open_connections == 0


# -- the request head ------------------------------------------------------------------------


async def test_request_line_and_caller_headers_go_out_as_given(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url)
    headers = CIMultiDict([("x-lower", "1"), ("X-UPPER", "2"), ("Accept", "*/*"), ("X-Dup", "a")])
    headers.add("X-Dup", "b")
    await fetch(pool, "GET", "/a%2Fb?x=%20", headers)
    port = server.url.rsplit(":", 1)[1]
    assert server.requests[0].head.decode() == (
        "GET /a%2Fb?x=%20 HTTP/1.1\r\n"
        "x-lower: 1\r\nX-UPPER: 2\r\nAccept: */*\r\nX-Dup: a\r\nX-Dup: b\r\n"
        f"Host: 127.0.0.1:{port}"
    )
    # The caller's multidict is left as it was.
    assert list(headers.items()) == [
        ("x-lower", "1"),
        ("X-UPPER", "2"),
        ("Accept", "*/*"),
        ("X-Dup", "a"),
        ("X-Dup", "b"),
    ]


async def test_host_from_the_caller_is_not_doubled(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url)
    await fetch(pool, headers=CIMultiDict([("host", "shop.example")]))
    request = server.requests[0]
    assert request.values(b"Host") == [b"shop.example"]
    assert request.fields == [(b"host", b"shop.example")]


@pytest.mark.parametrize("prefix", ["/prefix", "/prefix/"])
async def test_backend_path_prefix_goes_before_the_target(
    raw_server: StartServer, make_pool: MakePool, prefix: str
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url + prefix)
    await fetch(pool, path="/a%2Fb?x=%20")
    assert server.requests[0].line == b"GET /prefix/a%2Fb?x=%20 HTTP/1.1"


async def test_asterisk_target_gets_no_path_prefix(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url + "/prefix")
    await fetch(pool, "OPTIONS", "*")
    assert server.requests[0].line == b"OPTIONS * HTTP/1.1"


async def test_url_credentials_become_basic_authorization(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url.replace("http://", "http://user:pw@"))
    await fetch(pool)
    await fetch(pool, headers=CIMultiDict([("authorization", "Bearer mine")]))
    first, second = server.requests
    assert first.values(b"Authorization") == [b"Basic " + base64.b64encode(b"user:pw")]
    # The credentials are not in the Host the URL gave.
    assert first.values(b"Host") == [server.url.removeprefix("http://").encode()]
    # The caller's own Authorization wins, and is the only one.
    assert second.values(b"Authorization") == [b"Bearer mine"]


# -- request bodies ----------------------------------------------------------------------------


async def test_bytes_body_gets_its_real_content_length(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url)
    wrong = CIMultiDict([("Content-Length", "99"), ("X-After", "1")])
    await fetch(pool, "POST", "/", wrong, b"hello")
    request = server.requests[0]
    assert request.values(b"Content-Length") == [b"5"]
    assert request.values(b"X-After") == [b"1"]
    assert request.body == b"hello"
    # A right Content-Length from the caller is sent once, where the caller put it.
    right = CIMultiDict([("content-length", "5"), ("X-After", "1")])
    await fetch(pool, "PUT", "/", right, b"hello")
    assert server.requests[1].fields[:2] == [(b"content-length", b"5"), (b"X-After", b"1")]
    assert server.requests[1].values(b"Content-Length") == [b"5"]
    assert server.requests[1].body == b"hello"


@pytest.mark.parametrize("body", [None, b""])
async def test_post_without_body_sends_content_length_zero(
    raw_server: StartServer, make_pool: MakePool, body: bytes | None
) -> None:
    """Else a backend could wait for a body; a GET without one gets no framing at all."""
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url)
    await fetch(pool, "POST", "/", body=body)
    await fetch(pool, "GET", "/", body=body)
    post, get = server.requests
    assert post.values(b"Content-Length") == [b"0"]
    assert post.values(b"Transfer-Encoding") == []
    assert get.values(b"Content-Length") == []
    assert get.values(b"Transfer-Encoding") == []


async def test_iterator_body_without_length_goes_chunked(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url)
    response, _ = await fetch(pool, "POST", "/up", body=pieces(b"hello ", b"", b"x" * 70_000))
    assert response.status == 200
    request = server.requests[0]
    assert request.values(b"Transfer-Encoding") == [b"chunked"]
    assert request.values(b"Content-Length") == []
    assert request.body == b"hello " + b"x" * 70_000
    # The whole body was sent: the connection is reusable.
    await fetch(pool)
    assert server.accepted == 1


async def test_iterator_body_with_content_length_goes_raw(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    seen: list[bytes] = []

    async def handler(peer: Peer) -> None:
        head = await peer.reader.readuntil(b"\r\n\r\n")
        seen.append(head + await peer.reader.readexactly(11))
        await peer.send(ok())

    server = await raw_server(handler)
    pool = make_pool(server.url)
    headers = CIMultiDict([("Content-Length", "11")])
    await fetch(pool, "PUT", "/", headers, pieces(b"hello", b" ", b"world"))
    head, _, body = seen[0].partition(b"\r\n\r\n")
    assert b"Content-Length: 11" in head.split(b"\r\n")
    assert b"transfer-encoding" not in head.lower()
    assert body == b"hello world"


async def test_failing_body_iterator_ends_the_request_with_its_error(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url)

    async def broken() -> AsyncIterator[bytes]:
        yield b"part"
        raise RuntimeError("the client went away")

    with pytest.raises(RuntimeError, match="went away"):
        await pool.request("POST", "/", CIMultiDict(), broken())
    assert pool.open_connections == 0


# -- answers -----------------------------------------------------------------------------------


async def test_chunked_answer_is_reassembled(raw_server: StartServer, make_pool: MakePool) -> None:
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhel")
            await peer.send(b"lo\r\n6;ext=1\r\n world\r\n")
            await peer.send(b"0\r\n\r\n")

    server = await raw_server(handler)
    pool = make_pool(server.url)
    for _ in range(2):
        response, body = await fetch(pool)
        assert body == b"hello world"
        assert response.complete
    assert server.accepted == 1


async def test_head_answer_has_no_body_and_the_connection_is_reused(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    async def handler(peer: Peer) -> None:
        while (request := await peer.request()) is not None:
            if request.line.startswith(b"HEAD "):
                await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n")
            else:
                await peer.send(ok(b"got"))

    server = await raw_server(handler)
    pool = make_pool(server.url)
    response = await pool.request("HEAD", "/", CIMultiDict())
    assert response.complete
    assert response.header("content-length") == "100"
    assert await response.read_chunk() == b""
    response.release()
    _, body = await fetch(pool)
    assert body == b"got"
    assert server.accepted == 1


async def test_informational_answers_are_skipped(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    async def handler(peer: Peer) -> None:
        while await peer.request() is not None:
            await peer.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            await peer.send(b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>; rel=preload\r\n\r\n")
            await peer.send(ok(b"final", b"X-Final: 1"))

    server = await raw_server(handler)
    pool = make_pool(server.url)
    for _ in range(2):
        response, body = await fetch(pool, "POST", "/", body=b"data")
        assert (response.status, response.reason, body) == (200, "OK", b"final")
        assert response.headers == (("Content-Length", "5"), ("X-Final", "1"))
    assert server.accepted == 1


@pytest.mark.parametrize(
    "head",
    [
        b"HTTP/1.1 204 No Content\r\n\r\n",
        # A 304's Content-Length is that of the representation it stands for: no body follows.
        b'HTTP/1.1 304 Not Modified\r\nContent-Length: 50\r\nETag: "v1"\r\n\r\n',
    ],
    ids=["204", "304"],
)
async def test_no_body_statuses_complete_at_the_head(
    raw_server: StartServer, make_pool: MakePool, head: bytes
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(head)
        while await peer.request() is not None:
            await peer.send(ok(b"next"))

    server = await raw_server(handler)
    pool = make_pool(server.url)
    response = await pool.request("GET", "/", CIMultiDict())
    assert response.status == int(head[9:12])
    assert response.complete
    assert await read_all(response) == b""
    response.release()
    _, body = await fetch(pool)
    assert body == b"next"
    assert server.accepted == 1


@pytest.mark.parametrize("version", [b"HTTP/1.1", b"HTTP/1.0"])
async def test_answer_that_ends_with_the_connection_is_complete_and_not_reused(
    raw_server: StartServer, make_pool: MakePool, version: bytes
) -> None:
    server = await raw_server(answer_once(version + b" 200 OK\r\nX-A: 1\r\n\r\nuntil the end"))
    pool = make_pool(server.url)
    response, body = await fetch(pool)
    assert body == b"until the end"
    assert response.complete
    assert pool.open_connections == 0
    await fetch(pool)
    assert server.accepted == 2


async def test_a_second_answer_in_the_same_read_is_not_merged(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    extra = b"HTTP/1.1 404 Nope\r\nContent-Length: 3\r\n\r\nbad"
    server = await raw_server(answer_each(ok(b"ok") + extra))
    pool = make_pool(server.url)
    response, body = await fetch(pool)
    assert (response.status, response.reason, body) == (200, "OK", b"ok")
    assert response.headers == (("Content-Length", "2"),)
    # The backend spoke out of turn: the connection is not used again.
    await fetch(pool)
    assert server.accepted == 2


# -- failures ----------------------------------------------------------------------------------


async def test_refused_connection_is_connect_failed(make_pool: MakePool) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, never listening: refused
    pool = make_pool(f"http://127.0.0.1:{port}")
    with pytest.raises(ConnectFailed):
        await pool.request("GET", "/", CIMultiDict())
    assert pool.open_connections == 0


async def test_garbage_instead_of_http_is_invalid_response(
    serve_raw: ServeRaw, make_pool: MakePool
) -> None:
    server = await serve_raw(respond(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n\r\n"))
    pool = make_pool(server.url)
    with pytest.raises(InvalidResponse, match="not valid HTTP"):
        await pool.request("GET", "/", CIMultiDict())
    assert pool.open_connections == 0


async def test_switching_protocols_unasked_is_invalid_response(
    serve_raw: ServeRaw, make_pool: MakePool
) -> None:
    """llhttp stops at a 101 with Upgrade; the pool never asks for one: a broken answer, not a
    connection the backend closed (nor an error escaping into the event loop)."""
    server = await serve_raw(
        respond(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n")
    )
    pool = make_pool(server.url)
    with pytest.raises(InvalidResponse, match="switches protocols"):
        await pool.request("GET", "/", CIMultiDict())
    assert pool.open_connections == 0


async def test_endless_head_is_refused_without_buffering_it(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    """A backend that never ends its head: refused once it passes the limit, and the proxy
    closes the connection instead of reading (and keeping) more."""
    line = b"X-Pad: " + b"p" * 1000 + b"\r\n"
    written = 0

    async def handler(peer: Peer) -> None:
        nonlocal written
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\n")
        try:
            while True:  # ends when the client closes: the write fails
                await peer.send(line)
                written += len(line)
        finally:
            peer.server.saw_eof(peer.index)

    server = await raw_server(handler)
    pool = make_pool(server.url)
    # Bounded here: without the limit the request would wait for the head forever.
    with pytest.raises(InvalidResponse, match="too large"):
        async with asyncio.timeout(5):
            await pool.request("GET", "/", CIMultiDict())
    async with asyncio.timeout(5):
        await server.eof.wait()
    assert written > MAX_HEAD_BYTES
    assert pool.open_connections == 0


async def test_whole_head_over_the_limit_is_refused(
    serve_raw: ServeRaw, make_pool: MakePool
) -> None:
    # 70 KiB: on loopback at most two reads, the first under 64 KiB if split at all.
    fields = b"".join(b"X-Pad-%d: %b\r\n" % (i, b"p" * 1000) for i in range(70))
    server = await serve_raw(
        respond(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")
    )
    pool = make_pool(server.url)
    with pytest.raises(InvalidResponse, match="too large"):
        await pool.request("GET", "/", CIMultiDict())


async def test_too_many_header_fields_is_invalid_response(
    serve_raw: ServeRaw, make_pool: MakePool
) -> None:
    fields = b"".join(b"X-%d: 1\r\n" % i for i in range(300))
    server = await serve_raw(
        respond(b"HTTP/1.1 200 OK\r\n" + fields + b"Content-Length: 0\r\n\r\n")
    )
    pool = make_pool(server.url)
    with pytest.raises(InvalidResponse, match="too many header fields"):
        await pool.request("GET", "/", CIMultiDict())


@pytest.mark.parametrize(
    ("head", "problem"),
    [
        (b"HTTP/1.1 200 OK\r\nX-A: foo\x00bar", "control character"),
        (b"HTTP/1.1 200 OK\r\nX-A: esc\x1b[31m", "control character"),
        (b"HTTP/1.1 200 OK\r\nX-A: del\x7f", "control character"),
        (b"HTTP/1.1 200 O\x01K", "control character"),
        (b"HTTP/1.1 099 Low", "below 100"),
    ],
    ids=["nul", "escape", "delete", "reason", "status-099"],
)
async def test_a_head_that_cannot_be_passed_on_is_invalid_response(
    head: bytes, problem: str, serve_raw: ServeRaw, make_pool: MakePool
) -> None:
    # The parser is lenient with header bytes; what no HTTP writer may send is refused here.
    server = await serve_raw(respond(head + b"\r\nContent-Length: 0\r\n\r\n"))
    pool = make_pool(server.url)
    with pytest.raises(InvalidResponse, match=problem):
        await pool.request("GET", "/", CIMultiDict())
    assert pool.open_connections == 0


async def test_tabs_and_bytes_that_are_not_ascii_in_a_head_are_kept(
    serve_raw: ServeRaw, make_pool: MakePool
) -> None:
    server = await serve_raw(
        respond(b"HTTP/1.1 200 Tr\xe8s bien\r\nX-A: a\tb \xff\r\nContent-Length: 0\r\n\r\n")
    )
    response, _ = await fetch(make_pool(server.url))
    assert (response.status, response.reason) == (200, "Tr\xe8s bien")
    assert response.headers[0] == ("X-A", "a\tb \udcff")


async def test_close_before_answering_is_connection_closed(
    serve_raw: ServeRaw, make_pool: MakePool
) -> None:
    """On a fresh connection that is the backend's answer: not retried."""
    heads: list[bytes] = []

    async def close_silently(head: bytes) -> None:
        heads.append(head)
        return None

    server = await serve_raw(close_silently)
    pool = make_pool(server.url)
    with pytest.raises(ConnectionClosed, match="before answering"):
        await pool.request("GET", "/", CIMultiDict())
    assert len(heads) == 1
    assert pool.open_connections == 0


async def test_close_mid_body_delivers_what_came_then_connection_closed(
    serve_raw: ServeRaw, make_pool: MakePool
) -> None:
    server = await serve_raw(
        respond(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"0123456789")
    )
    pool = make_pool(server.url)
    response = await pool.request("GET", "/", CIMultiDict())
    received = bytearray()
    with pytest.raises(ConnectionClosed, match="mid-answer"):
        await read_into(response, received)
    assert received == b"0123456789"
    assert not response.complete
    response.release()
    assert pool.open_connections == 0


# -- a keep-alive connection the backend closed -----------------------------------------------


def close_on_second_request(peer_answer: bytes) -> ConnectionHandler:
    """The first connection answers one request with keep-alive, then closes when the next
    request arrives, as a backend whose idle timeout ran out while the request was on the
    way; later connections answer normally."""

    async def handler(peer: Peer) -> None:
        if peer.index == 1:
            await peer.request()
            await peer.send(ok(b"first"))
            await peer.request()
            return
        while await peer.request() is not None:
            await peer.send(peer_answer)

    return handler


async def test_idempotent_request_on_a_stale_connection_is_retried(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(close_on_second_request(ok(b"second")))
    pool = make_pool(server.url)
    _, body = await fetch(pool)
    assert body == b"first"
    response, body = await fetch(pool, path="/again")
    assert (response.status, body) == (200, b"second")
    assert server.accepted == 2
    # Sent once on the stale connection and once more on the new one.
    assert [r.target for r in server.requests] == [b"/", b"/again", b"/again"]


async def test_a_retry_goes_to_a_new_connection_and_happens_once(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    # Two kept-alive connections, both closed by the backend when the next request arrives:
    # the retry does not take the other stale one, it opens a third.
    opened = asyncio.Event()

    async def handler(peer: Peer) -> None:
        if peer.index <= 2:
            await peer.request()
            if peer.index == 2:
                opened.set()
            else:
                await opened.wait()  # both connections are open before either answers
            await peer.send(ok(b"first"))
            await peer.request()
            return
        while await peer.request() is not None:
            await peer.send(ok(b"fresh"))

    server = await raw_server(handler)
    pool = make_pool(server.url, max_connections=2)
    first = await asyncio.gather(fetch(pool), fetch(pool))
    assert [body for _, body in first] == [b"first", b"first"]
    _, body = await fetch(pool, path="/again")
    assert body == b"fresh"
    assert server.accepted == 3
    # Once on a stale connection, once more on the new one: never a third time.
    assert [r.target for r in server.requests].count(b"/again") == 2


async def test_post_on_a_stale_connection_is_not_retried(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(close_on_second_request(ok(b"second")))
    pool = make_pool(server.url)
    await fetch(pool)
    with pytest.raises(ConnectionClosed):
        await pool.request("POST", "/order", CIMultiDict(), b"buy")
    assert server.accepted == 1
    assert [r.target for r in server.requests] == [b"/", b"/order"]


async def test_an_early_answer_outlives_a_body_write_that_meets_the_reset(
    make_pool: MakePool,
) -> None:
    """A backend may answer before reading the body (an early 413) and close unread: a reset.
    A piece of the body written after the reset came but before the answer was read fails;
    the answer, already in the kernel's buffer, must still be read, not reported as a
    connection closed before answering."""
    loop = asyncio.get_running_loop()
    listener = socket.create_server(("127.0.0.1", 0))
    listener.setblocking(False)
    reset_sent: asyncio.Future[None] = loop.create_future()

    async def answer_early_then_reset() -> None:
        peer, _ = await loop.sock_accept(listener)
        with peer:
            head = b""
            while b"\r\n\r\n" not in head:
                head += await loop.sock_recv(peer, 65536)
            peer.sendall(b"HTTP/1.1 413 Too Large\r\nContent-Length: 3\r\n\r\nbig")
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        reset_sent.set_result(None)

    async def body() -> AsyncIterator[bytes]:
        yield b"first"
        await reset_sent
        # Resumed before the event loop polls the pool's socket again: this write meets the
        # reset while the answer still waits in the kernel's buffer.
        yield b"second"

    backend = loop.create_task(answer_early_then_reset())
    with listener:
        port = listener.getsockname()[1]
        pool = make_pool(f"http://127.0.0.1:{port}")
        headers = CIMultiDict({"Content-Length": "11"})
        response = await pool.request("POST", "/upload", headers, body())
        try:
            assert (response.status, await read_all(response)) == (413, b"big")
        finally:
            response.release()
        await backend
    assert pool.open_connections == 0


# -- timeouts ----------------------------------------------------------------------------------


async def never_answer(peer: Peer) -> None:
    await peer.request()
    await peer.until_closed()


async def test_total_timeout_without_an_answer(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(never_answer)
    pool = make_pool(server.url, timeout=0.2)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await pool.request("GET", "/", CIMultiDict())
    assert 0.15 <= loop.time() - started < 1.0
    # The connection the request timed out on is closed, not kept.
    async with asyncio.timeout(2):
        await server.eof.wait()
    assert pool.open_connections == 0


async def test_deadline_ends_a_total_request_before_the_timeout(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(never_answer)
    pool = make_pool(server.url, timeout=5)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(TimeoutError):
        await pool.request("GET", "/", CIMultiDict(), deadline=started + 0.2)
    assert loop.time() - started < 1.0


def slow_body(chunks: int, every: float) -> ConnectionHandler:
    """A chunked answer: one chunk every ``every`` seconds."""

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(chunks):
            await asyncio.sleep(every)  # the backend's pace
            await peer.send(b"4\r\nslow\r\n")
        await peer.send(b"0\r\n\r\n")

    return handler


async def test_idle_timing_lets_a_slow_body_take_longer_than_the_timeout(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(slow_body(12, 0.05))  # 0.6 s in all, each wait 0.05 s
    pool = make_pool(server.url, timing=Timing.IDLE, timeout=0.3)
    _, body = await fetch(pool)
    assert body == b"slow" * 12


async def test_total_timing_ends_the_same_slow_body(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(slow_body(12, 0.05))
    pool = make_pool(server.url, timing=Timing.TOTAL, timeout=0.3)
    response = await pool.request("GET", "/", CIMultiDict())
    received = bytearray()
    with pytest.raises(TimeoutError):
        await read_into(response, received)
    response.release()
    assert len(received) < 4 * 12


async def slow_upload(chunks: int, every: float) -> AsyncIterator[bytes]:
    """A client that uploads at its own pace."""
    for _ in range(chunks):
        await asyncio.sleep(every)  # the client's pace
        yield b"up"


async def test_idle_timing_does_not_count_a_slow_upload_against_the_backend(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    # The backend answers once the whole body is in: 0.6 s of upload, timeout 0.3 s.
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url, timing=Timing.IDLE, timeout=0.3)
    response, body = await fetch(pool, "POST", "/up", body=slow_upload(12, 0.05))
    assert (response.status, body) == (200, b"ok")
    assert server.requests[0].body == b"up" * 12


async def paused_upload(pause: float) -> AsyncIterator[bytes]:
    """A client that stops mid-body for ``pause`` seconds."""
    yield b"first;"
    await asyncio.sleep(pause)  # the client's pause
    yield b"last"


async def test_idle_timing_does_not_count_a_client_pausing_its_upload(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    # The client pauses for longer than the backend's timeout; the backend owes nothing then.
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url, timing=Timing.IDLE, timeout=0.3)
    response, body = await fetch(pool, "POST", "/up", body=paused_upload(1.0))
    assert (response.status, body) == (200, b"ok")
    assert server.requests[0].body == b"first;last"


@pytest.mark.timeout(5)
async def test_idle_timing_ends_a_body_that_stalls(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
        await peer.until_closed()

    server = await raw_server(handler)
    pool = make_pool(server.url, timing=Timing.IDLE, timeout=0.3)
    loop = asyncio.get_running_loop()
    response = await pool.request("GET", "/", CIMultiDict())
    assert await response.read_chunk() == b"a" * 10
    stalled = loop.time()
    with pytest.raises(TimeoutError):
        await response.read_chunk()
    assert 0.1 <= loop.time() - stalled < 1.5
    response.release()
    async with asyncio.timeout(2):
        await server.eof.wait()


# -- limits and backpressure -------------------------------------------------------------------


async def test_max_connections_bounds_concurrent_requests(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    held: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def handler(peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        while (request := await peer.request()) is not None:
            go = loop.create_future()
            held.put_nowait(go)
            await go  # until the test lets this answer go
            await peer.send(ok(request.target))

    server = await raw_server(handler)
    pool = make_pool(server.url, max_connections=2)
    tasks = [asyncio.create_task(fetch(pool, path=f"/{i}")) for i in range(5)]
    first = [await held.get(), await held.get()]
    # Two requests are held by the server; the other three wait for a connection.
    assert pool.open_connections == 2
    assert server.accepted == 2
    assert not any(task.done() for task in tasks)
    for go in first:
        go.set_result(None)
    for _ in range(3):
        (await held.get()).set_result(None)
    results = await asyncio.gather(*tasks)
    assert sorted(body for _, body in results) == [b"/0", b"/1", b"/2", b"/3", b"/4"]
    assert server.max_open == 2
    assert server.accepted == 2


@pytest.mark.timeout(10)
async def test_waiting_for_a_slot_is_bounded_by_the_timeout_not_the_connect_timeout(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    held: asyncio.Queue[asyncio.Future[None]] = asyncio.Queue()

    async def handler(peer: Peer) -> None:
        loop = asyncio.get_running_loop()
        while await peer.request() is not None:
            go = loop.create_future()
            held.put_nowait(go)
            await go
            await peer.send(ok())

    server = await raw_server(handler)
    pool = make_pool(server.url, max_connections=1, connect_timeout=0.1, timeout=1.0)
    first = asyncio.create_task(fetch(pool))
    release_first = await held.get()
    second = asyncio.create_task(fetch(pool))  # waits for the one connection
    third = asyncio.create_task(fetch(pool))
    await asyncio.sleep(0.3)  # three connect timeouts: waiting for a slot is not connecting
    assert not second.done()
    release_first.set_result(None)
    (await held.get()).set_result(None)
    _, body = await second
    assert body == b"ok"
    # The third waits on; past the backend's timeout it gives up.
    with pytest.raises(TimeoutError):
        await third
    await first
    assert server.accepted == 1


async def test_slow_reader_bounds_what_is_buffered(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    payload = os.urandom(2 * 1024 * 1024)

    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(payload))
        for start in range(0, len(payload), 65536):
            await peer.send(payload[start : start + 65536])

    server = await raw_server(handler)
    pool = make_pool(server.url)
    response = await pool.request("GET", "/", CIMultiDict())
    # A reader busy elsewhere: without backpressure the whole body would pile up meanwhile.
    await asyncio.sleep(0.2)
    assert HIGH_WATER < response.buffered <= HIGH_WATER + READ_SIZE
    received = bytearray()
    most = response.buffered
    while chunk := await response.read_chunk():
        received += chunk
        most = max(most, response.buffered)
        await asyncio.sleep(0.005)  # still slow
    response.release()
    assert most <= HIGH_WATER + READ_SIZE
    assert bytes(received) == payload
    assert server.accepted == 1


async def test_a_whole_answer_released_unread_leaves_its_connection_usable(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    # 100 kB: reading pauses past HIGH_WATER in the same read that completes the answer.
    server = await raw_server(answer_each(ok(b"x" * 100_000)))
    pool = make_pool(server.url)
    response = await pool.request("GET", "/", CIMultiDict())
    async with asyncio.timeout(2):
        while not response.complete:  # noqa: ASYNC110 (no event: the answer arrives unread)
            await asyncio.sleep(0.01)
    assert response.buffered > HIGH_WATER
    response.release()  # a caller that had read enough (a capture cap)
    _, body = await fetch(pool)
    assert len(body) == 100_000
    assert server.accepted == 1


# -- header injection --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("X-Evil", "a\r\nInjected: 1"),
        ("X-Evil", "a\nInjected: 1"),
        ("X-Evil", "a\rInjected: 1"),
        ("X-Evil\r\nInjected", "1"),
    ],
)
async def test_line_break_in_a_header_is_refused_before_sending(
    raw_server: StartServer, make_pool: MakePool, name: str, value: str
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url)
    headers = CIMultiDict([("Accept", "*/*"), (name, value)])
    with pytest.raises(ValueError, match="line break"):
        await pool.request("GET", "/", headers)
    assert server.accepted == 0
    assert pool.open_connections == 0
    # The pool still works for a clean request.
    _, body = await fetch(pool)
    assert body == b"ok"
    assert server.requests[0].values(b"Injected") == []


# -- unix sockets and closing ------------------------------------------------------------------


async def test_unix_socket_backend(
    raw_server: StartServer, make_pool: MakePool, tmp_path: Path
) -> None:
    path = tmp_path / "s.sock"
    server = await raw_server(answer_each(ok(b"over unix")), unix=path)
    pool = make_pool(f"unix://{path}")
    for _ in range(2):
        response, body = await fetch(pool, path="/x?y=1")
        assert (response.status, body) == (200, b"over unix")
    assert server.accepted == 1
    assert server.requests[0].line == b"GET /x?y=1 HTTP/1.1"
    assert server.requests[0].values(b"Host") == [b"localhost"]
    # With a path prefix after the socket path.
    prefixed = make_pool(f"unix://{path}:/api")
    await fetch(prefixed, path="/x")
    assert server.requests[-1].line == b"GET /api/x HTTP/1.1"


async def test_close_ends_idle_connections_and_later_requests(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    server = await raw_server(answer_each(ok()))
    pool = make_pool(server.url)
    await fetch(pool)
    assert pool.open_connections == 1
    await pool.close()
    async with asyncio.timeout(2):
        await server.eof.wait()
    assert server.closed_by_client == [1]
    with pytest.raises(ConnectFailed):
        await pool.request("GET", "/", CIMultiDict())
    assert server.accepted == 1


async def test_close_ends_an_answer_being_read(
    raw_server: StartServer, make_pool: MakePool
) -> None:
    async def handler(peer: Peer) -> None:
        await peer.request()
        await peer.send(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nstart")
        await peer.until_closed()

    server = await raw_server(handler)
    pool = make_pool(server.url)
    response = await pool.request("GET", "/", CIMultiDict())
    assert await response.read_chunk() == b"start"
    await pool.close()
    with pytest.raises(ConnectionClosed):
        await response.read_chunk()
    response.release()
    async with asyncio.timeout(2):
        await server.eof.wait()
