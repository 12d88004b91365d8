"""Mirroring: copies reach the candidate in the background, bounded, and never hurt the client."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import Backend, Handler, RunningProxy

MakeProxy = Callable[..., Awaitable[RunningProxy]]
Serve = Callable[[Handler], Awaitable[Backend]]


def json_handler(document: object, delay: float = 0.0) -> Handler:
    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        if delay:
            await asyncio.sleep(delay)  # the backend under test is slow on purpose
        return web.Response(body=orjson.dumps(document), content_type="application/json")

    return handler


def dead_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


async def timed_gets(
    client: aiohttp.ClientSession, url: str, count: int
) -> tuple[list[float], list[bytes]]:
    latencies, bodies = [], []
    for _ in range(count):
        started = time.perf_counter()
        async with client.get(url) as response:
            bodies.append(await response.read())
        latencies.append(time.perf_counter() - started)
    return latencies, bodies


async def test_mirrored_copy_is_marked_and_compared(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"id": 1, "name": "ada", "tags": ["a"]}))
    candidate = await serve(json_handler({"id": 1, "name": "Ada", "tags": ["a"]}))
    proxy = await make_proxy(primary.url, candidate.url)
    async with client.get(proxy.url + "/users/42?v=1", headers={"Authorization": "Bearer s3"}):
        pass
    [record] = await proxy.records()
    copy = candidate.seen[0]
    assert copy.header("X-Shadow-Request") == "1"
    assert copy.raw_path == "/users/42?v=1"
    assert copy.header("X-Request-Id") == primary.seen[0].header("X-Request-Id") == record["id"]
    assert record["outcome"] == "mismatch"
    assert record["endpoint"] == "GET /users/{id}"
    assert record["path"] == "/users/42?v=1"
    assert record["primary"]["status"] == 200
    assert record["candidate"]["error"] is None
    assert record["differences"] == [
        {"where": "body", "path": "/name", "kind": "changed", "primary": "ada", "candidate": "Ada"}
    ]
    assert "s3" not in proxy.log_path.read_text()


async def test_identical_answers_match(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": [1, 2, {"b": None}]}))
    candidate = await serve(json_handler({"a": [1, 2, {"b": None}]}))
    proxy = await make_proxy(primary.url, candidate.url)
    for _ in range(3):
        async with client.get(proxy.url + "/same"):
            pass
    records = await proxy.records()
    assert [r["outcome"] for r in records] == ["match"] * 3
    assert all(r["differences"] == [] for r in records)
    # How the bodies were compared, for a match as for a mismatch (the first is computed, the
    # others remembered).
    assert [r["body_kind"] for r in records] == ["json"] * 3


@pytest.mark.timeout(60)
async def test_slow_candidate_leaves_client_latency_alone(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    document = {"ok": True}
    primary = await serve(json_handler(document))
    fast = await serve(json_handler(document))
    slow = await serve(json_handler(document, delay=2.0))

    healthy = await make_proxy(primary.url, fast.url)
    baseline, _ = await timed_gets(client, healthy.url + "/x", 20)
    slowed = await make_proxy(primary.url, slow.url, candidate={"timeout": 5})
    latencies, bodies = await timed_gets(client, slowed.url + "/x", 20)

    assert all(b == orjson.dumps(document) for b in bodies)
    # Every single request finished long before the candidate's 2 s answer.
    assert max(latencies) < 0.5, max(latencies)
    assert sorted(latencies)[10] < sorted(baseline)[10] + 0.05
    records = await slowed.records()
    assert len(records) == 20
    assert {r["outcome"] for r in records} == {"match"}
    assert all(r["candidate"]["latency_ms"] >= 2000 for r in records)


async def test_candidate_timeout_is_a_logged_outcome(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    slow = await serve(json_handler({"a": 1}, delay=2.0))
    proxy = await make_proxy(primary.url, slow.url, candidate={"timeout": 0.2})
    async with client.get(proxy.url + "/t") as response:
        assert await response.json() == {"a": 1}
    [record] = await proxy.records()
    assert record["outcome"] == "candidate_error"
    assert record["candidate"]["error"] == "timeout"
    assert record["candidate"]["status"] is None


async def test_candidate_down_leaves_responses_alone(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(primary.url, dead_url())
    _, bodies = await timed_gets(client, proxy.url + "/d", 10)
    assert bodies == [b'{"a":1}'] * 10
    records = await proxy.records()
    assert [r["candidate"]["error"] for r in records] == ["refused"] * 10
    assert {r["outcome"] for r in records} == {"candidate_error"}


async def test_candidate_resetting_connections_is_classified(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    async def reset(request: web.BaseRequest) -> web.StreamResponse:
        assert request.transport is not None
        request.transport.abort()
        return web.Response()

    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(reset)
    proxy = await make_proxy(primary.url, candidate.url)
    async with client.get(proxy.url + "/r") as response:
        assert response.status == 200
    [record] = await proxy.records()
    assert record["candidate"]["error"] == "reset"


async def test_unsafe_methods_not_mirrored_by_default(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(primary.url, candidate.url)
    async with client.post(proxy.url + "/orders", data=b"{}"):
        pass
    async with client.delete(proxy.url + "/orders/1"):
        pass
    async with client.get(proxy.url + "/orders/1"):
        pass
    await proxy.records()
    assert [s.method for s in primary.seen] == ["POST", "DELETE", "GET"]
    assert [s.method for s in candidate.seen] == ["GET"]


async def test_post_mirrored_with_its_body_when_configured(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(primary.url, candidate.url, mirror={"methods": ["GET", "POST"]})
    async with client.post(proxy.url + "/orders", data=b'{"item": 7}'):
        pass
    [record] = await proxy.records()
    assert candidate.seen[0].method == "POST"
    assert candidate.seen[0].body == b'{"item": 7}'
    assert record["outcome"] == "match"


async def test_body_over_mirror_limit_is_proxied_not_mirrored(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(
        primary.url, candidate.url, mirror={"methods": ["POST"], "max_body_bytes": 1000}
    )
    async with client.post(proxy.url + "/big", data=b"x" * 5000) as response:
        assert response.status == 200
    assert await proxy.records() == []
    assert len(primary.seen[0].body) == 5000
    assert candidate.seen == []
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_mirror_skipped_total{reason="body_size"} 1.0' in metrics


async def test_in_flight_cap_drops_and_counts(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def held(_: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(held)
    proxy = await make_proxy(
        primary.url, candidate.url, mirror={"max_in_flight": 2}, candidate={"timeout": 10}
    )
    for _ in range(5):
        async with client.get(proxy.url + "/cap") as response:
            assert response.status == 200
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_mirror_skipped_total{reason="in_flight"} 3.0' in metrics
    release.set()
    assert len(await proxy.records()) == 2


CANDIDATE_TIMEOUT = 0.3


async def test_a_slow_upload_gives_up_its_mirror_slot(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """One client trickling its body must not hold the only in-flight slot for all."""
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        mirror={"methods": ["GET", "POST"], "max_in_flight": 1},
        candidate={"timeout": CANDIDATE_TIMEOUT},
    )
    host, port = proxy.proxy.proxy_address or ("", 0)
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\r\n1")
        await writer.drain()
        # The scenario is time passing: longer than the candidate's timeout, no more bytes.
        await asyncio.sleep(CANDIDATE_TIMEOUT * 2)
        assert proxy.proxy.dispatcher.in_flight == 0
        async with client.get(proxy.url + "/meanwhile") as response:
            assert response.status == 200
        writer.write(b"234")
        await writer.drain()
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    records = await proxy.records()
    assert [r["path"] for r in records] == ["/meanwhile"]
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_mirror_skipped_total{reason="request_incomplete"} 1.0' in metrics
    assert [r.raw_path for r in candidate.seen] == ["/meanwhile"]


async def test_a_mirror_whose_primary_failed_stops_waiting_for_the_candidate(
    make_proxy: MakeProxy, serve: Serve, client: aiohttp.ClientSession
) -> None:
    release = asyncio.Event()

    async def held(_: web.BaseRequest) -> web.StreamResponse:
        await release.wait()
        return web.Response(text="late")

    candidate = await serve(held)
    proxy = await make_proxy(dead_url(), candidate.url, candidate={"timeout": 30})
    try:
        async with client.get(proxy.url + "/x") as response:
            assert response.status == 502
        async with asyncio.timeout(5):  # far below the candidate's 30 s: cancelled, not waiting
            await proxy.proxy.dispatcher.idle()
        assert proxy.proxy.dispatcher.in_flight == 0
    finally:
        release.set()
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_mirror_skipped_total{reason="primary_failed"} 1.0' in metrics
    assert 'reason="shutdown"' not in metrics


@pytest.mark.timeout(60)
async def test_sample_rate_mirrors_a_quarter(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(primary.url, candidate.url, mirror={"sample_rate": 0.25})
    total = 800

    async def one(i: int) -> None:
        async with client.get(f"{proxy.url}/s/{i}") as response:
            await response.read()

    for start in range(0, total, 50):
        await asyncio.gather(*(one(i) for i in range(start, start + 50)))
    mirrored = len(await proxy.records())
    # Binomial(800, 0.25): mean 200, sd 12.2; five sd either side.
    assert 139 <= mirrored <= 261, mirrored
