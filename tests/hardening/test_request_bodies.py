"""Request bodies from clients: over the size limit (413, by Content-Length or as a chunked
stream) or broken off into something that is not HTTP (400): the primary never gets a complete
request, nothing is compared, and no primary error is counted for the client's doing."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from tests.conftest import Backend
from tests.hardening.support import MakeProxy, Serve, exchange, host_port, ok, read_all
from tests.hardening.test_hostile_clients import assert_no_traceback, error_of, still_serving

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def backends(serve: Serve) -> tuple[Backend, Backend]:
    return await serve(ok), await serve(ok)


async def test_body_over_the_limit_gets_413_by_content_length(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url, limits={"max_request_body_bytes": 100})
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 101\r\n\r\n" + b"a" * 101
    answer = await exchange(proxy.url, request, whole=True)
    assert answer.status == 413
    assert primary.seen == []
    request = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\nConnection: close\r\n\r\n"
    assert (await exchange(proxy.url, request + b"a" * 100)).status == 200
    assert len(primary.seen[0].body) == 100
    # Counted as every rejection is, as the chunked one is.
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_client_rejected_total{reason="request_too_large"} 1.0' in metrics


async def test_chunked_body_over_the_limit_gets_413_and_the_primary_no_complete_request(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        limits={"max_request_body_bytes": 100},
        mirror={"methods": ["POST"]},
    )
    chunks = b"".join(b"40\r\n" + b"a" * 64 + b"\r\n" for _ in range(4)) + b"0\r\n\r\n"
    head = b"POST /up HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    answer = await exchange(proxy.url, head + chunks, whole=True)
    assert answer.status == 413, answer.data
    assert error_of(answer) == "request_too_large"
    await still_serving(proxy.url)
    # The primary's handler never got a whole request body: only the GET above arrived.
    assert [s.method for s in primary.seen] == ["GET"]
    assert await proxy.records() == []
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_primary_errors_total{kind="primary_failed"}' not in metrics
    assert_no_traceback(caplog)


async def test_client_sending_a_broken_chunked_body_late_gets_400(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url)
    reader, writer = await asyncio.open_connection(*host_port(proxy.url))
    writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
    await writer.drain()
    await asyncio.sleep(0.2)  # the request is on its way to the primary by now
    writer.write(b"zz\r\nnot a chunk\r\n")
    await writer.drain()
    answer = await read_all(reader, 5, whole=True)
    writer.close()
    assert answer.status == 400, answer.data
    assert primary.seen == []
    metrics = proxy.proxy.metrics.render().decode()
    assert "shadowproxy_primary_errors_total{" not in metrics
    assert_no_traceback(caplog)


async def test_client_leaving_mid_upload_is_no_primary_error(
    serve: Serve, make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    async def slow_reader(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        return web.Response(text="ok")

    primary = await serve(slow_reader, read_body=False)
    candidate = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url, mirror={"methods": ["POST"]})
    reader, writer = await asyncio.open_connection(*host_port(proxy.url))
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n" + b"a" * 1000)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.transport.abort()
    await asyncio.sleep(0.3)
    await still_serving(proxy.url)
    assert await proxy.records() == []
    metrics = proxy.proxy.metrics.render().decode()
    assert "shadowproxy_primary_errors_total{" not in metrics
    assert 'shadowproxy_client_rejected_total{reason="client_aborted"} 1.0' in metrics
    assert_no_traceback(caplog)
    del reader


async def test_client_leaving_mid_download_is_no_primary_error(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    release = asyncio.Event()

    async def stream(request: web.BaseRequest) -> web.StreamResponse:
        if request.path == "/":
            return web.Response(text="ok")
        response = web.StreamResponse()
        await response.prepare(request)
        for _ in range(50):
            await response.write(b"d" * 65536)
            await asyncio.sleep(0.01)
        await release.wait()
        await response.write_eof()
        return response

    primary = await serve(stream)
    candidate = await serve(ok)
    proxy = await make_proxy(primary.url, candidate.url)
    reader, writer = await asyncio.open_connection(*host_port(proxy.url))
    writer.write(b"GET /download HTTP/1.1\r\nHost: x\r\n\r\n")
    await writer.drain()
    await reader.readexactly(100_000)
    writer.transport.abort()
    await asyncio.sleep(0.8)
    release.set()
    await still_serving(proxy.url)
    assert [r["path"] for r in await proxy.records()] == ["/"]
    metrics = proxy.proxy.metrics.render().decode()
    assert "shadowproxy_primary_errors_total{" not in metrics
    assert 'shadowproxy_mirror_skipped_total{reason="client_aborted"} 1.0' in metrics


async def test_a_stalled_body_is_cut_off_after_the_idle_timeout(
    serve: Serve, make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    whole_bodies: list[int] = []

    async def reads(request: web.BaseRequest) -> web.StreamResponse:
        whole_bodies.append(len(await request.read()))
        return web.Response(text="ok")

    primary = await serve(reads, read_body=False)
    candidate = await serve(ok)
    proxy = await make_proxy(
        primary.url, candidate.url, limits={"idle_timeout": 0.5}, mirror={"methods": ["POST"]}
    )
    reader, writer = await asyncio.open_connection(*host_port(proxy.url))
    writer.write(b"POST /up HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n" + b"a" * 10)
    await writer.drain()
    answer = await read_all(reader, 5, whole=True)
    writer.close()
    assert answer.status == 408, answer.data
    assert error_of(answer) == "request_timeout"
    await still_serving(proxy.url)
    assert whole_bodies == [0]  # the GET's; the POST's body never arrived whole
    metrics = proxy.proxy.metrics.render().decode()
    assert "shadowproxy_primary_errors_total{" not in metrics
    # The client is still there: its mirror is skipped as incomplete, not as aborted.
    assert 'shadowproxy_mirror_skipped_total{reason="request_incomplete"} 1.0' in metrics
    assert 'reason="client_aborted"' not in metrics
    assert_no_traceback(caplog)
