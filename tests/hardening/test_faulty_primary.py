"""A primary that resets, cuts its body short, answers garbage or hangs: the client gets 502 or
504 when nothing was sent yet, or a broken connection (never a complete-looking response: no
final chunk, no early end of a Content-Length body passed off as whole). Nothing is compared
for such a request, and the proxy goes on serving other clients meanwhile."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from tests.conftest import RunningProxy
from tests.e2e.conftest import StartProxy
from tests.hardening.faults import FaultyBackend
from tests.hardening.support import Answer, MakeProxy, Serve, exchange, json_handler

pytestmark = pytest.mark.timeout(30)

OK = b'{"ok": true}'


def request(path: str) -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()


def broken(answer: Answer) -> None:
    """Headers of a 200 went out, then the connection closed before the body was whole."""
    assert answer.status == 200, answer.data
    assert answer.closed
    head = answer.head.lower()
    if b"transfer-encoding: chunked" in head:
        assert not answer.body.endswith(b"0\r\n\r\n"), "the final chunk must not be sent"
    else:
        length = next(
            int(line.split(b":")[1]) for line in head.split(b"\r\n") if b"content-length" in line
        )
        assert len(answer.body) < length


@pytest.fixture
async def proxy(serve: Serve, faulty: FaultyBackend, make_proxy: MakeProxy) -> RunningProxy:
    candidate = await serve(json_handler(OK))
    return await make_proxy(faulty.url, candidate.url, primary={"timeout": 0.5})


@pytest.mark.parametrize(
    ("path", "status", "error"),
    [
        ("/reset-now", 502, "primary_failed"),
        ("/garbage", 502, "primary_invalid_response"),
        ("/hang", 504, "primary_timeout"),
    ],
)
async def test_nothing_sent_yet_gives_502_or_504(
    path: str, status: int, error: str, proxy: RunningProxy
) -> None:
    answer = await exchange(proxy.url, request(path), whole=True)
    assert answer.status == status, answer.data
    assert error.encode() in answer.body
    assert await proxy.records() == []


@pytest.mark.parametrize("path", ["/short", "/cut", "/reset", "/hang-mid"])
async def test_a_body_cut_short_reaches_the_client_broken(path: str, proxy: RunningProxy) -> None:
    answer = await exchange(proxy.url, request(path), wait=5)
    broken(answer)
    assert await proxy.records() == []
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_primary_errors_total{kind="truncated"} 1.0' in metrics
    assert 'shadowproxy_mirror_skipped_total{reason="primary_failed"} 1.0' in metrics


async def test_aiohttp_client_sees_an_error_not_a_short_body(proxy: RunningProxy) -> None:
    async with aiohttp.ClientSession() as session:
        for path in ("/short", "/cut"):
            with pytest.raises(aiohttp.ClientPayloadError):
                async with session.get(proxy.url + path) as response:
                    await response.read()


async def test_other_clients_are_served_while_the_primary_misbehaves(
    proxy: RunningProxy,
) -> None:
    bad = [
        asyncio.create_task(exchange(proxy.url, request(path), wait=5, whole=True))
        for path in ("/hang", "/hang-mid", "/short", "/cut", "/reset", "/garbage") * 3
    ]
    for _ in range(10):
        answer = await exchange(proxy.url, request("/ok"), whole=True)
        assert answer.status == 200
        assert answer.body == b'{"ok": true}'
    await asyncio.gather(*bad)
    records = await proxy.records()
    assert {r["path"] for r in records} == {"/ok"}


@pytest.mark.e2e
@pytest.mark.timeout(60)
async def test_real_process_breaks_the_connection_on_a_short_body(
    serve: Serve, faulty: FaultyBackend, start_proxy: StartProxy
) -> None:
    candidate = await serve(json_handler(OK))
    proxy = await start_proxy(faulty.url, candidate.url, primary={"timeout": 0.5})
    for path in ("/short", "/cut", "/reset", "/hang-mid"):
        broken(await exchange(proxy.url, request(path), wait=5))
    answer = await exchange(proxy.url, request("/ok"), whole=True)
    assert answer.status == 200
    await proxy.wait_records(1)
    assert await proxy.stop() == 0
    assert [r["path"] for r in proxy.records()] == ["/ok"]
