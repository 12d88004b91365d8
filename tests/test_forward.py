"""The primary path: the client gets exactly the primary's response, whatever it is."""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from tests.conftest import Backend, Handler, RawResponder, RunningProxy

MakeProxy = Callable[..., Awaitable[RunningProxy]]
Serve = Callable[[Handler], Awaitable[Backend]]
ServeRaw = Callable[[RawResponder], Awaitable[Backend]]


async def ok(_: web.BaseRequest) -> web.StreamResponse:
    return web.Response(text="ok")


@pytest.fixture
async def candidate(serve: Serve) -> Backend:
    return await serve(ok)


async def raw_get(url: str, request: bytes) -> bytes:
    """Send raw bytes, return every byte the proxy answers until it closes."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await reader.read(-1)
    writer.close()
    return data


async def test_status_reason_and_repeated_headers_pass_through(
    serve_raw: ServeRaw, candidate: Backend, make_proxy: MakeProxy
) -> None:
    answer = (
        b"HTTP/1.1 418 I Am A Custom Teapot\r\n"
        b"Content-Type: text/plain\r\n"
        b"Set-Cookie: a=1; Path=/\r\n"
        b"Set-Cookie: b=2; Path=/\r\n"
        b"X-Custom: first\r\n"
        b"X-Custom: second\r\n"
        b"Content-Length: 5\r\n"
        b"Connection: close\r\n\r\nhello"
    )

    async def respond(_: bytes) -> bytes:
        return answer

    primary = await serve_raw(respond)
    proxy = await make_proxy(primary.url, candidate.url)
    raw = await raw_get(proxy.url, b"GET /tea HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 418 I Am A Custom Teapot"
    assert lines.count(b"Set-Cookie: a=1; Path=/") == 1
    assert lines.count(b"Set-Cookie: b=2; Path=/") == 1
    assert [line for line in lines if line.startswith(b"X-Custom")] == [
        b"X-Custom: first",
        b"X-Custom: second",
    ]
    assert b"Content-Length: 5" in lines
    # Nothing the primary did not send: no Date, no Server added by the proxy.
    assert not any(line.lower().startswith((b"date:", b"server:")) for line in lines)
    assert body == b"hello"


async def test_header_bytes_that_are_not_utf8_pass_through_exactly(
    serve_raw: ServeRaw, candidate: Backend, make_proxy: MakeProxy
) -> None:
    # Older servers send ISO-8859-1 in reasons and values (a file name in Content-Disposition);
    # HTTP allows such bytes (obs-text), and the client must get them as they were sent.
    lines_sent = [
        b"HTTP/1.1 200 Tr\xe8s bien",
        b'Content-Disposition: attachment; filename="r\xe9sum\xe9.pdf"',
        b"X-Raw: \xff\xfe end",
        b"X-Utf8: caf\xc3\xa9",
        b"X-Plain: ascii",
        b"Content-Length: 2",
        b"Connection: close",
    ]

    async def respond(_: bytes) -> bytes:
        return b"\r\n".join(lines_sent) + b"\r\n\r\nok"

    primary = await serve_raw(respond)
    proxy = await make_proxy(primary.url, candidate.url)
    raw = await raw_get(proxy.url, b"GET /file HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == lines_sent[0]
    for line in lines_sent[1:5]:
        assert line in lines
    assert body == b"ok"
    # The record has the same answer, its text made loggable.
    records = await proxy.records()
    assert [r["outcome"] for r in records] == ["mismatch"]


async def test_gzip_body_passes_undecoded_both_ways(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    compressed = gzip.compress(b'{"hello": "world"}' * 100)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json"},
        )

    primary = await serve(handler)
    proxy = await make_proxy(primary.url, candidate.url, mirror={"methods": ["GET", "POST"]})
    upload = gzip.compress(b"payload" * 1000)
    async with client.post(
        proxy.url + "/z",
        data=upload,
        headers={"Content-Encoding": "gzip", "Accept-Encoding": "gzip"},
    ) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        assert response.headers["Content-Length"] == str(len(compressed))
        assert await response.read() == compressed
    assert primary.seen[0].body == upload
    assert primary.seen[0].header("Content-Encoding") == "gzip"


async def test_chunked_stream_arrives_as_it_is_sent(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse()
        await response.prepare(request)
        await response.write(b"first;")
        await release.wait()
        await response.write(b"second")
        await response.write_eof()
        return response

    primary = await serve(handler)
    proxy = await make_proxy(primary.url, candidate.url)
    async with client.get(proxy.url + "/stream") as response:
        assert response.headers.get("Transfer-Encoding") == "chunked"
        first = await response.content.readexactly(6)
        assert first == b"first;"  # arrived while the primary still holds the rest
        release.set()
        assert await response.content.read() == b"second"


async def test_streamed_answer_keeps_header_bytes_that_are_not_utf8(
    candidate: Backend, make_proxy: MakeProxy
) -> None:
    # A stream's head goes out before its body exists: the other path to the client.
    release = asyncio.Event()
    head = b"HTTP/1.1 200 OK\r\nX-Name: caf\xe9\r\nTransfer-Encoding: chunked\r\n\r\n"

    async def on_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(head + b"6\r\nfirst;\r\n")
        await release.wait()
        writer.write(b"6\r\nsecond\r\n0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(on_connection, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        proxy = await make_proxy(f"http://127.0.0.1:{port}", candidate.url)
        host, proxy_port = proxy.url.removeprefix("http://").split(":")
        reader, writer = await asyncio.open_connection(host, int(proxy_port))
        writer.write(b"GET /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        received = await reader.readuntil(b"first;")  # while the primary holds the rest
        assert b"\r\nX-Name: caf\xe9\r\n" in received
        release.set()
        assert b"second" in await reader.read(-1)
        writer.close()
    finally:
        server.close()


async def test_head_204_304_and_redirects(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/empty":
            return web.Response(status=204)
        if request.path == "/cached":
            return web.Response(status=304, headers={"ETag": '"v1"'})
        if request.path == "/moved":
            return web.Response(status=302, headers={"Location": "/elsewhere"})
        return web.Response(body=b"x" * 1234, content_type="application/octet-stream")

    primary = await serve(handler)
    proxy = await make_proxy(primary.url, candidate.url)
    async with client.head(proxy.url + "/file") as response:
        assert response.status == 200
        assert response.headers["Content-Length"] == "1234"
        assert await response.read() == b""
    async with client.get(proxy.url + "/empty") as response:
        assert response.status == 204
        assert await response.read() == b""
    async with client.get(proxy.url + "/cached") as response:
        assert response.status == 304
        assert response.headers["ETag"] == '"v1"'
    async with client.get(proxy.url + "/moved", allow_redirects=False) as response:
        assert response.status == 302
        assert response.headers["Location"] == "/elsewhere"
    assert [s.raw_path for s in primary.seen].count("/elsewhere") == 0


async def test_a_304_keeps_its_content_length_in_place(
    serve_raw: ServeRaw, candidate: Backend, make_proxy: MakeProxy
) -> None:
    # RFC 9110 (section 15.4.5): a 304 may carry the Content-Length of the representation it
    # stands for; no body follows it.
    async def respond(_: bytes) -> bytes:
        return (
            b'HTTP/1.1 304 Not Modified\r\nETag: "v1"\r\nContent-Length: 50\r\n'
            b"Cache-Control: max-age=60\r\n\r\n"
        )

    primary = await serve_raw(respond)
    proxy = await make_proxy(primary.url, candidate.url)
    raw = await raw_get(proxy.url, b"GET /cached HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    head, _, body = raw.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[:4] == [
        b"HTTP/1.1 304 Not Modified",
        b'ETag: "v1"',
        b"Content-Length: 50",
        b"Cache-Control: max-age=60",
    ]
    assert body == b""


async def test_encoded_query_and_binary_body_reach_primary_exactly(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    blob = os.urandom(70_000)

    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=blob, content_type="application/octet-stream")

    primary = await serve(handler)
    proxy = await make_proxy(primary.url, candidate.url)
    raw_path = "/search/a%2Fb?q=caf%C3%A9&x=%20y+z&empty=&flag"
    async with client.get(aiohttp.client.URL(proxy.url + raw_path, encoded=True)) as response:
        assert await response.read() == blob
    assert primary.seen[0].raw_path == raw_path


async def test_request_headers_forwarded_with_forwarding_context(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url)
    headers = {
        "Host": "shop.example",
        "X-Forwarded-For": "203.0.113.7",
        "X-Thing": "kept",
        "Connection": "keep-alive, X-Hop",
        "X-Hop": "dropped",
        "Keep-Alive": "timeout=5",
    }
    async with client.get(proxy.url + "/h", headers=headers, skip_auto_headers=["User-Agent"]):
        pass
    seen = primary.seen[0]
    assert seen.header("Host") == "shop.example"
    assert seen.header("X-Thing") == "kept"
    assert seen.header("X-Forwarded-For") == "203.0.113.7, 127.0.0.1"
    assert seen.header("X-Forwarded-Proto") == "http"
    assert seen.header("X-Forwarded-Host") == "shop.example"
    assert seen.header("X-Request-Id")
    assert seen.header("X-Hop") is None
    assert seen.header("Keep-Alive") is None
    assert seen.header("User-Agent") is None  # nothing the client did not send


async def test_options_asterisk_reaches_both_backends_without_the_path_prefix(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy
) -> None:
    primary = await serve(ok)
    proxy = await make_proxy(primary.url + "/base", candidate.url)
    raw = await raw_get(proxy.url, b"OPTIONS * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    assert raw.startswith(b"HTTP/1.1 200"), raw
    [record] = await proxy.records()
    assert [s.raw_path for s in primary.seen] == ["*"]  # not "/base*"
    assert [s.raw_path for s in candidate.seen] == ["*"]
    assert (record["path"], record["outcome"]) == ("*", "match")


async def test_host_rewritten_when_config_says_so(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url, primary={"host": "primary.internal"})
    async with client.get(proxy.url + "/", headers={"Host": "public.example"}):
        pass
    assert primary.seen[0].header("Host") == "primary.internal"


async def test_primary_down_gives_502_json(
    candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    proxy = await make_proxy(dead, candidate.url)
    async with client.get(proxy.url + "/x") as response:
        assert response.status == 502
        body = await response.json()
        assert body["error"] == "primary_unreachable"
        assert body["request_id"]
        # The proxy's own answer says so, and names no versions.
        assert response.headers.getall("Server") == ["shadowproxy"]


async def test_primary_head_with_a_control_character_gives_502_json(
    serve_raw: ServeRaw, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    async def respond(_: bytes) -> bytes:
        return b"HTTP/1.1 200 OK\r\nX-A: foo\x00bar\r\nContent-Length: 2\r\n\r\nok"

    primary = await serve_raw(respond)
    proxy = await make_proxy(primary.url, candidate.url)
    with capture_logs() as logs:
        async with client.get(proxy.url + "/x") as response:
            assert response.status == 502
            assert (await response.json())["error"] == "primary_invalid_response"
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_primary_errors_total{kind="primary_invalid_response"} 1.0' in metrics
    assert not [e for e in logs if e["log_level"] == "error"], logs


async def test_primary_timeout_gives_504(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    never = asyncio.Event()

    async def hang(_: web.BaseRequest) -> web.StreamResponse:
        await never.wait()
        raise AssertionError

    primary = await serve(hang)
    proxy = await make_proxy(primary.url, candidate.url, primary={"timeout": 0.3})
    async with client.get(proxy.url + "/slow") as response:
        assert response.status == 504
        assert (await response.json())["error"] == "primary_timeout"


async def test_a_client_pausing_its_upload_is_not_a_primary_timeout(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy
) -> None:
    # The pause is longer than the primary's timeout, well within the client's idle timeout.
    primary = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url, primary={"timeout": 0.3})
    host, port = proxy.url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nfirst")
    await writer.drain()
    await asyncio.sleep(1.0)  # the client's pause mid-body
    writer.write(b"-last")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    assert head.startswith(b"HTTP/1.1 200"), head
    assert primary.seen[0].body == b"first-last"


@pytest.mark.timeout(15)
async def test_upload_that_stalls_after_an_early_answer_is_the_clients_fault(
    candidate: Backend, make_proxy: MakeProxy
) -> None:
    # The primary starts answering as soon as it has the request head; the client sends ten
    # bytes of a thousand, then stalls past the idle timeout.
    async def early(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        await writer.drain()
        await reader.read()  # until the proxy gives up on this exchange
        writer.close()

    primary = await asyncio.start_server(early, "127.0.0.1", 0)
    port = primary.sockets[0].getsockname()[1]
    proxy = await make_proxy(
        f"http://127.0.0.1:{port}", candidate.url, limits={"idle_timeout": 0.3}
    )
    host, proxy_port = proxy.url.removeprefix("http://").split(":")
    with capture_logs() as logs:
        reader, writer = await asyncio.open_connection(host, int(proxy_port))
        writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"x" * 10)
        await writer.drain()
        async with asyncio.timeout(10):
            received = await reader.read(-1)  # the proxy closes: the answer cannot be finished
        writer.close()
    primary.close()
    assert received.startswith(b"HTTP/1.1 200 OK")
    assert received.endswith(b"hello\r\n")  # no last chunk: the client sees a broken answer
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_primary_errors_total{kind="truncated"}' not in metrics
    events = [e["event"] for e in logs]
    assert "client_body_failed" in events
    assert "primary_body_truncated" not in events


async def test_backend_connections_are_kept_alive_and_counted(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url)
    for n in range(5):
        async with client.get(f"{proxy.url}/item/{n}") as response:
            assert response.status == 200
        await proxy.records()  # one at a time: each mirror done before the next request
    metrics = proxy.proxy.metrics.render().decode()
    for backend in ("primary", "candidate"):
        opened = f'shadowproxy_backend_connections_opened_total{{backend="{backend}"}} 1.0'
        assert opened in metrics
    assert "secondary" not in metrics


async def test_client_gone_before_the_answer_is_not_an_error(
    serve: Serve, candidate: Backend, make_proxy: MakeProxy
) -> None:
    arrived, release = asyncio.Event(), asyncio.Event()

    async def slow(_: web.BaseRequest) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.Response(text="late")

    primary = await serve(slow)
    proxy = await make_proxy(primary.url, candidate.url)
    host, port = proxy.url.removeprefix("http://").split(":")
    with capture_logs() as logs:
        _, writer = await asyncio.open_connection(host, int(port))
        writer.write(b"GET /gone HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await arrived.wait()
        writer.close()
        await writer.wait_closed()
        release.set()
        await proxy.records()
        async with aiohttp.ClientSession() as session, session.get(proxy.url + "/next") as r:
            assert r.status == 200  # and the proxy keeps serving
    assert not [e for e in logs if e["log_level"] == "error"], logs
