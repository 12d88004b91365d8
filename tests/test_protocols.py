"""Protocols beyond plain HTTP/1.1 JSON: TLS both sides, WebSockets, streams, Unix sockets."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest
import trustme
from aiohttp import WSMsgType, web

from tests.conftest import Backend, RawResponder, RunningProxy

MakeProxy = Callable[..., Awaitable[RunningProxy]]
Serve = Callable[..., Awaitable[Backend]]


@pytest.fixture
def ca_file(ca: trustme.CA, tmp_path: Path) -> str:
    path = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


async def ok(_: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


async def start_tls_backend(
    handler: Callable[[web.BaseRequest], Awaitable[web.StreamResponse]],
    context: ssl.SSLContext,
) -> tuple[web.ServerRunner, int]:
    runner = web.ServerRunner(web.Server(handler), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=context)
    await site.start()
    return runner, runner.addresses[0][1]


@pytest.fixture
async def tls_backends() -> AsyncIterator[list[web.ServerRunner]]:
    runners: list[web.ServerRunner] = []
    yield runners
    for runner in runners:
        await runner.cleanup()


def server_context(ca: trustme.CA, name: str, *, require_client: bool = False) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(name).configure_cert(context)
    if require_client:
        context.verify_mode = ssl.CERT_REQUIRED
        ca.configure_trust(context)
    return context


async def test_https_upstream_verified_with_a_custom_ca_and_sni(
    ca: trustme.CA,
    ca_file: str,
    serve: Serve,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
    tls_backends: list[web.ServerRunner],
) -> None:
    async def echo_host(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text=request.host)

    runner, port = await start_tls_backend(echo_host, server_context(ca, "primary.internal"))
    tls_backends.append(runner)
    candidate = await serve(ok)
    proxy = await make_proxy(
        f"https://127.0.0.1:{port}",
        candidate.url,
        primary={"host": "primary.internal", "tls": {"ca_file": ca_file}},
    )
    async with client.get(proxy.url + "/") as response:
        assert response.status == 200
        assert await response.text() == "primary.internal"


async def test_https_upstream_with_an_unknown_ca_is_refused(
    ca: trustme.CA,
    serve: Serve,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
    tls_backends: list[web.ServerRunner],
) -> None:
    runner, port = await start_tls_backend(ok, server_context(ca, "127.0.0.1"))
    tls_backends.append(runner)
    candidate = await serve(ok)
    proxy = await make_proxy(f"https://127.0.0.1:{port}", candidate.url)
    async with client.get(proxy.url + "/") as response:
        assert response.status == 502


async def test_mtls_backend_gets_the_client_certificate(
    ca: trustme.CA,
    ca_file: str,
    tmp_path: Path,
    serve: Serve,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
    tls_backends: list[web.ServerRunner],
) -> None:
    runner, port = await start_tls_backend(ok, server_context(ca, "127.0.0.1", require_client=True))
    tls_backends.append(runner)
    identity = ca.issue_cert("shadowproxy.client")
    cert, key = tmp_path / "client.pem", tmp_path / "client.key"
    identity.cert_chain_pems[0].write_to_path(str(cert))
    identity.private_key_pem.write_to_path(str(key))
    candidate = await serve(ok)
    url = f"https://127.0.0.1:{port}"
    without = await make_proxy(url, candidate.url, primary={"tls": {"ca_file": ca_file}})
    async with client.get(without.url + "/") as response:
        assert response.status == 502  # the backend rejects a client without the certificate
    tls = {"ca_file": ca_file, "cert_file": str(cert), "key_file": str(key)}
    with_cert = await make_proxy(url, candidate.url, primary={"tls": tls})
    async with client.get(with_cert.url + "/") as response:
        assert response.status == 200
        assert await response.text() == "ok"


async def test_tls_listener(
    ca: trustme.CA,
    tmp_path: Path,
    serve: Serve,
    make_proxy: MakeProxy,
) -> None:
    identity = ca.issue_cert("127.0.0.1")
    cert, key = tmp_path / "server.pem", tmp_path / "server.key"
    identity.cert_chain_pems[0].write_to_path(str(cert))
    identity.private_key_pem.write_to_path(str(key))

    async def proto(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text=request.headers.get("X-Forwarded-Proto", ""))

    primary = await serve(proto)
    candidate = await serve(ok)
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        listen_tls={"address": "127.0.0.1:0", "cert_file": str(cert), "key_file": str(key)},
    )
    assert proxy.proxy.tls_address is not None
    context = ssl.create_default_context()
    ca.configure_trust(context)
    host, port = proxy.proxy.tls_address
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://{host}:{port}/", ssl=context) as response,
    ):
        assert await response.text() == "https"


async def test_websocket_relayed_both_ways_and_never_mirrored(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(protocols=("chat",))
        await ws.prepare(request)
        async for message in ws:
            if message.type is WSMsgType.TEXT:
                if message.data == "bye":
                    await ws.close(code=4001, message=b"done")
                    break
                await ws.send_str("echo:" + message.data)
            elif message.type is WSMsgType.BINARY:
                await ws.send_bytes(message.data[::-1])
        return ws

    primary = await serve(echo)
    candidate = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url)
    async with client.ws_connect(proxy.url + "/ws", protocols=("chat",)) as ws:
        assert ws.protocol == "chat"
        await ws.send_str("hello")
        assert (await ws.receive()).data == "echo:hello"
        await ws.send_bytes(b"\x00\x01\x02")
        assert (await ws.receive()).data == b"\x02\x01\x00"
        await ws.send_str("bye")
        closing = await ws.receive()
        assert closing.type is WSMsgType.CLOSE
        assert ws.close_code == 4001
    assert candidate.seen == []
    metrics = proxy.proxy.metrics.render().decode()
    assert "shadowproxy_websocket_upgrades_total 1.0" in metrics
    assert 'shadowproxy_requests_total{status="101"} 1.0' in metrics  # an answered request


async def test_websocket_close_reason_passes_both_ways(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    closed_by_client: asyncio.Queue[tuple[int, str]] = asyncio.Queue()

    async def closing(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        message = await ws.receive()
        if message.type is WSMsgType.TEXT:  # "bye": the primary closes
            await ws.close(code=4001, message=b"done here")
        else:  # the client closed
            await closed_by_client.put((message.data, message.extra))
        return ws

    primary = await serve(closing)
    proxy = await make_proxy(primary.url, (await serve(ok)).url)
    async with client.ws_connect(proxy.url + "/ws", autoclose=False) as ws:
        await ws.send_str("bye")
        message = await ws.receive()
        assert (message.type, message.data, message.extra) == (
            WSMsgType.CLOSE,
            4001,
            "done here",
        )
    async with client.ws_connect(proxy.url + "/ws") as ws:
        await ws.close(code=4002, message=b"client leaves")
    assert await closed_by_client.get() == (4002, "client leaves")


async def test_a_websocket_message_over_the_limit_closes_both_sides_with_1009(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """Messages are held whole on their way through: their size is bounded."""
    primary_saw: asyncio.Queue[aiohttp.WSMessage] = asyncio.Queue()

    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=0)
        await ws.prepare(request)
        while (message := await ws.receive()).type is WSMsgType.TEXT:
            await ws.send_str(message.data * (1 if len(message.data) < 10 else 200))
        await primary_saw.put(message)
        return ws

    primary = await serve(echo)
    proxy = await make_proxy(
        primary.url,
        (await serve(ok)).url,
        limits={"max_websocket_message_bytes": "1 KiB"},
    )
    # The client sends too much: it is told 1009, and the primary gets the same close.
    async with client.ws_connect(proxy.url + "/ws", max_msg_size=0) as ws:
        await ws.send_str("small")
        assert (await ws.receive()).data == "small"
        await ws.send_str("x" * 2000)
        message = await ws.receive()
        assert (message.type, ws.close_code) == (WSMsgType.CLOSE, 1009)
    closed = await primary_saw.get()
    assert (closed.type, closed.data) == (WSMsgType.CLOSE, 1009)
    # The primary sends too much: the client is told 1009 too.
    async with client.ws_connect(proxy.url + "/ws", max_msg_size=0) as ws:
        await ws.send_str("y" * 10)  # answered 200 times over: 2,000 bytes
        message = await ws.receive()
        assert (message.type, ws.close_code) == (WSMsgType.CLOSE, 1009)


UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


async def upgrade_answer_head(url: str) -> list[bytes]:
    """The status line and header lines the proxy answers a WebSocket upgrade with."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(UPGRADE)
        head = await reader.readuntil(b"\r\n\r\n")
    finally:
        writer.close()
    return head.removesuffix(b"\r\n\r\n").split(b"\r\n")


async def test_refused_websocket_upgrade_passes_the_primarys_status_and_headers(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    async def refuse(_: web.BaseRequest) -> web.StreamResponse:
        challenge = {"WWW-Authenticate": 'Bearer realm="chat"', "X-Why": "no token"}
        return web.Response(status=401, headers=challenge, text="log in first")

    primary = await serve(refuse)
    proxy = await make_proxy(primary.url, (await serve(ok)).url)
    head = await upgrade_answer_head(proxy.url)
    assert head[0] == b"HTTP/1.1 401 Unauthorized"
    assert b'WWW-Authenticate: Bearer realm="chat"' in head
    assert b"X-Why: no token" in head
    metrics = proxy.proxy.metrics.render().decode()
    assert "shadowproxy_websocket_upgrades_total 0.0" in metrics  # none was relayed
    assert 'shadowproxy_requests_total{status="401"} 1.0' in metrics


async def test_websocket_upgrade_redirect_is_passed_on_not_followed(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    async def accept(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.close()
        return ws

    elsewhere = await serve(accept)

    async def redirect(_: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=307, headers={"Location": elsewhere.url + "/ws"})

    primary = await serve(redirect)
    proxy = await make_proxy(primary.url, (await serve(ok)).url)
    head = await upgrade_answer_head(proxy.url)
    assert head[0] == b"HTTP/1.1 307 Temporary Redirect"
    assert f"Location: {elsewhere.url}/ws".encode() in head
    assert elsewhere.seen == []  # the client decides whether to follow, as for any request


async def test_websocket_handshake_carries_the_primarys_own_headers(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    async def accept(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        ws.headers["Set-Cookie"] = "lb=node-7; Path=/"
        await ws.prepare(request)
        await ws.close()
        return ws

    primary = await serve(accept)
    proxy = await make_proxy(primary.url, (await serve(ok)).url)
    head = await upgrade_answer_head(proxy.url)
    assert head[0] == b"HTTP/1.1 101 Switching Protocols"
    assert b"Set-Cookie: lb=node-7; Path=/" in head
    assert sum(line.lower().startswith(b"sec-websocket-accept:") for line in head) == 1


async def test_websocket_upgrade_to_a_primary_that_is_down_gets_a_502(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proxy = await make_proxy(dead, (await serve(ok)).url)
    head = await upgrade_answer_head(proxy.url)
    assert head[0] == b"HTTP/1.1 502 Bad Gateway"
    assert b"Server: shadowproxy" in head


def masked_text_frame(text: bytes) -> bytes:
    """A client's text frame, masked as RFC 6455 requires of clients (the key is all zeros)."""
    return bytes([0x81, 0x80 | len(text)]) + b"\0\0\0\0" + text


async def test_a_websocket_broken_off_by_the_primary_is_broken_off_for_the_client(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    async def drop_after_one_message(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()
        assert request.transport is not None
        request.transport.abort()  # no Close frame: an abnormal closure (1006)
        return ws

    primary = await serve(drop_after_one_message)
    proxy = await make_proxy(primary.url, (await serve(ok)).url)
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(UPGRADE)
        assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 101 ")
        writer.write(masked_text_frame(b"hi"))
        # Nothing but the end of the connection: 1006 must never be sent in a Close frame.
        assert await reader.read() == b""
    finally:
        writer.close()


async def test_a_websocket_broken_off_by_the_client_is_broken_off_for_the_primary(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    ended: asyncio.Future[aiohttp.WSMessage] = asyncio.get_running_loop().create_future()

    async def echo(request: web.BaseRequest) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        while (message := await ws.receive()).type is WSMsgType.TEXT:
            await ws.send_str(message.data)
        ended.set_result(message)
        return ws

    primary = await serve(echo)
    proxy = await make_proxy(primary.url, (await serve(ok)).url)
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(UPGRADE)
    await reader.readuntil(b"\r\n\r\n")
    writer.write(masked_text_frame(b"hi"))
    assert await reader.readexactly(4) == b"\x81\x02hi"
    writer.transport.abort()
    message = await ended
    # The primary sees its connection end, not a Close frame with the reserved code 1006.
    assert message.type is WSMsgType.CLOSED


async def test_an_invalid_websocket_handshake_is_refused_before_the_primary_sees_it(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    primary = await serve(ok)
    proxy = await make_proxy(primary.url, (await serve(ok)).url)
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(UPGRADE.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"X: y"))
        answer = await reader.read()
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ")
    assert b"Server: shadowproxy" in head.split(b"\r\n")
    assert b"invalid WebSocket handshake" in body
    assert primary.seen == []


async def test_upgrade_headers_on_a_post_or_an_http10_request_make_no_websocket(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    primary = await serve(ok)
    proxy = await make_proxy(primary.url, (await serve(ok)).url)
    host, port = proxy.url.removeprefix("http://").split(":")
    for request in (
        UPGRADE.replace(b"GET /ws HTTP/1.1", b"POST /ws HTTP/1.1").replace(
            b"\r\n\r\n", b"\r\nContent-Length: 2\r\n\r\nhi"
        ),
        UPGRADE.replace(b"HTTP/1.1", b"HTTP/1.0"),
    ):
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            writer.write(request)
            status = await reader.readline()
        finally:
            writer.close()
        assert status.endswith(b" 200 OK\r\n")
    # Each reached the primary as the request it was (a relayed upgrade is always a GET).
    assert [(seen.method, seen.header("Upgrade")) for seen in primary.seen] == [
        ("POST", None),
        ("GET", None),
    ]


async def test_server_sent_events_stream_without_buffering(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    done = asyncio.Event()

    async def events(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        await response.write(b"data: first\n\n")
        await done.wait()  # the stream stays open until the test has seen the first event
        await response.write(b"data: last\n\n")
        await response.write_eof()
        return response

    primary = await serve(events)
    candidate = await serve(events)
    proxy = await make_proxy(primary.url, candidate.url)
    started = time.perf_counter()
    async with client.get(proxy.url + "/events") as response:
        first = await response.content.readuntil(b"\n\n")
        assert first == b"data: first\n\n"
        assert time.perf_counter() - started < 0.1
        done.set()
        assert await response.content.read() == b"data: last\n\n"


async def test_unix_socket_upstream(
    tmp_path: Path, serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    path = tmp_path / "app.sock"
    runner = web.ServerRunner(web.Server(ok), access_log=None, shutdown_timeout=0.5)
    await runner.setup()
    await web.UnixSite(runner, str(path)).start()
    try:
        candidate = await serve(ok)
        proxy = await make_proxy(f"unix://{path}", candidate.url)
        async with client.get(proxy.url + "/over/unix") as response:
            assert response.status == 200
            assert await response.text() == "ok"
        [record] = await proxy.records()
        assert record["outcome"] == "match"
    finally:
        await runner.cleanup()


async def test_https_candidate_is_mirrored_with_its_own_tls_settings(
    ca: trustme.CA,
    ca_file: str,
    serve: Serve,
    make_proxy: MakeProxy,
    client: aiohttp.ClientSession,
    tls_backends: list[web.ServerRunner],
) -> None:
    runner, port = await start_tls_backend(ok, server_context(ca, "candidate.internal"))
    tls_backends.append(runner)
    primary = await serve(ok)
    proxy = await make_proxy(
        primary.url,
        f"https://127.0.0.1:{port}",
        candidate={"host": "candidate.internal", "tls": {"ca_file": ca_file}},
    )
    async with client.get(proxy.url + "/") as response:
        assert await response.text() == "ok"
    [record] = await proxy.records()
    assert record["outcome"] == "match", record


async def exchange_raw(url: str, payload: bytes, *, half_close: bool = True) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(payload)
    await writer.drain()
    if half_close:
        writer.write_eof()
    data = await reader.read(-1)
    writer.close()
    return data


async def echo_body(request: web.BaseRequest) -> web.StreamResponse:
    return web.Response(body=b"got:" + await request.read())


async def test_http10_client_gets_an_http10_answer(serve: Serve, make_proxy: MakeProxy) -> None:
    primary = await serve(ok)
    candidate = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url)
    raw = await exchange_raw(proxy.url, b"GET /old HTTP/1.0\r\nHost: x\r\n\r\n", half_close=False)
    assert raw.startswith(b"HTTP/1.0 200")
    assert raw.endswith(b"\r\n\r\nok")


@pytest.mark.parametrize("whole", [True, False], ids=["whole", "streamed"])
async def test_http10_keep_alive_client_gets_a_close_after_a_body_of_unknown_length(
    whole: bool, serve: Serve, make_proxy: MakeProxy
) -> None:
    """HTTP/1.0 has no chunked framing: the close is what ends such a body for the client."""
    streamed = asyncio.Event()

    async def chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
        if whole:  # the whole answer in one write: it arrives with its head
            writer.write(head + b"0\r\n\r\n")
        else:  # the rest once the client has the first piece: the answer streams
            writer.write(head)
            await streamed.wait()
            writer.write(b"6\r\n world\r\n0\r\n\r\n")
        await writer.drain()
        await reader.read()
        writer.close()

    server = await asyncio.start_server(chunked, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        proxy = await make_proxy(f"http://127.0.0.1:{port}", (await serve(ok)).url)
        host, proxy_port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(proxy_port))
        writer.write(b"GET /old HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\n\r\n")
        received = await reader.readuntil(b"hello")
        streamed.set()
        async with asyncio.timeout(5):  # else it waits for limits.idle_timeout (75 s)
            received += await reader.read(-1)
        writer.close()
    finally:
        server.close()
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200")
    assert b"content-length" not in head.lower()
    assert body == (b"hello" if whole else b"hello world")


async def test_request_header_bytes_that_are_not_utf8_reach_the_primary_exactly(
    serve_raw: Callable[[RawResponder], Awaitable[Backend]], serve: Serve, make_proxy: MakeProxy
) -> None:
    heads: list[bytes] = []

    async def record(head: bytes) -> bytes:
        heads.append(head)
        return b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"

    primary = await serve_raw(record)
    candidate = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url, mirror={"sample_rate": 0})
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Legacy: caf\xe9 \xff\r\nConnection: close\r\n\r\n"
    raw = await exchange_raw(proxy.url, request, half_close=False)
    assert raw.startswith(b"HTTP/1.1 200")
    assert b"\r\nX-Legacy: caf\xe9 \xff\r\n" in heads[0]  # obs-text, byte for byte


async def test_pipelined_requests_are_answered_in_order(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    async def path(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(text=request.path)

    primary = await serve(path)
    candidate = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url)
    pipeline = b"".join(
        f"GET /{n} HTTP/1.1\r\nHost: x\r\n{'Connection: close' if n == 3 else ''}\r\n\r\n".encode()
        for n in (1, 2, 3)
    )
    raw = await exchange_raw(proxy.url, pipeline, half_close=False)
    bodies = [part.split(b"\r\n\r\n", 1)[1][:2] for part in raw.split(b"HTTP/1.1 ")[1:]]
    assert bodies == [b"/1", b"/2", b"/3"]


async def test_expect_100_continue(serve: Serve, make_proxy: MakeProxy) -> None:
    primary = await serve(echo_body)
    candidate = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url)
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n"
        b"Expect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    await writer.drain()
    interim = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout=5)
    assert interim.startswith(b"HTTP/1.1 100 Continue")
    writer.write(b"hello")
    await writer.drain()
    final = await reader.read(-1)
    writer.close()
    assert final.startswith(b"HTTP/1.1 200")
    assert final.endswith(b"got:hello")


async def test_endless_streams_are_compared_over_a_window(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    stop = asyncio.Event()

    def endless(last: str) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
        async def events(request: web.BaseRequest) -> web.StreamResponse:
            response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await response.prepare(request)
            await response.write(b"data: one\n\ndata: two\n\n")
            await response.write(f"data: {last}\n\n".encode())
            await stop.wait()  # never ends on its own
            return response

        return events

    primary = await serve(endless("three"))
    candidate = await serve(endless("THREE"))
    proxy = await make_proxy(primary.url, candidate.url, candidate={"timeout": 0.3})
    async with client.get(proxy.url + "/events") as response:
        assert await response.content.readuntil(b"three\n\n")
        [record] = await proxy.records()  # compared while the client's stream is still open
    stop.set()
    assert record["outcome"] == "mismatch"
    assert "body_truncated" in record["notes"]
    [difference] = record["differences"]
    assert difference["where"] == "body"
