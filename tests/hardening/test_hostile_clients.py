"""Hostile and broken clients on raw sockets: each is answered by the proxy (or cut off), never
forwarded, never answered with a traceback, and the proxy goes on serving everyone else."""

from __future__ import annotations

import asyncio
import logging
import random
import time

import orjson
import pytest

from tests.conftest import Backend
from tests.e2e.conftest import StartProxy
from tests.hardening.support import (
    Answer,
    MakeProxy,
    Serve,
    exchange,
    host_port,
    ok,
    raise_fd_limit,
    read_all,
)

pytestmark = pytest.mark.timeout(30)

GET = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"


@pytest.fixture
async def backends(serve: Serve) -> tuple[Backend, Backend]:
    return await serve(ok), await serve(ok)


async def still_serving(url: str) -> None:
    answer = await exchange(url, GET)
    assert answer.status == 200, answer.data
    assert answer.body == b"ok"


def assert_no_traceback(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing logged a traceback or an error, except the test's own backends (aiohttp.server)
    complaining about requests the proxy broke off on purpose."""
    noisy = [
        r
        for r in caplog.records
        if (r.exc_info or r.levelno >= logging.ERROR) and r.name != "aiohttp.server"
    ]
    assert noisy == [], [r.getMessage() for r in noisy]


def error_of(answer: Answer) -> str:
    error = orjson.loads(answer.body)["error"]
    assert isinstance(error, str)
    return error


MALFORMED = {
    "not http": (b"GARBAGE\r\n\r\n", 400),
    "extra in request line": (b"GET / HTTP/1.1 extra\r\nHost: x\r\n\r\n", 400),
    "tls on a plain port": (b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\0" * 64, 400),
    "no host": (b"GET / HTTP/1.1\r\n\r\n", 400),
    "nul in a header": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
    "space before colon": (b"GET / HTTP/1.1\r\nHost: x\r\nX-A : b\r\n\r\n", 400),
    "raw non-ascii in path": (b"GET /caf\xc3\xa9/\xff HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "content-length not a number": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        400,
    ),
    "content-length with sign": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\nhello",
        400,
    ),
    "content-length list": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\nhello",
        400,
    ),
    "two content-lengths": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
        400,
    ),
    "content-length too big for a number": (
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
        400,
    ),
    "bad chunk size": (
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n",
        400,
    ),
    "absolute-form target": (b"GET http://elsewhere/x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "asterisk-form target, not OPTIONS": (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
    "authority-form target": (b"CONNECT internal:443 HTTP/1.1\r\nHost: internal:443\r\n\r\n", 400),
}


@pytest.mark.parametrize(("request_bytes", "status"), MALFORMED.values(), ids=list(MALFORMED))
async def test_malformed_requests_get_an_answer_and_reach_nobody(
    request_bytes: bytes,
    status: int,
    backends: tuple[Backend, Backend],
    make_proxy: MakeProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url)
    answer = await exchange(proxy.url, request_bytes)
    assert answer.status == status, answer.data
    assert answer.closed
    assert error_of(answer) == "bad_request"
    # Nothing the client sent is echoed back, and the proxy names no versions.
    assert b"GARBAGE" not in answer.body
    assert b"elsewhere" not in answer.body
    head = answer.data.partition(b"\r\n\r\n")[0].lower()
    assert b"\r\nserver: shadowproxy\r\n" in head + b"\r\n"
    assert b"aiohttp" not in head
    assert b"python" not in head
    await still_serving(proxy.url)
    assert [s.raw_path for s in primary.seen] == ["/"]
    assert len(candidate.seen) == 1
    assert_no_traceback(caplog)


@pytest.mark.parametrize(
    "request_bytes",
    [b"GET /\r\n\r\n", b"GET / HTTP/0.9\r\nHost: x\r\n\r\n", b"GET / HTTP/2.0\r\nHost: x\r\n\r\n"],
    ids=["http/0.9 simple request", "http/0.9", "http/2.0 in an http/1 request line"],
)
async def test_other_http_versions_get_505_and_reach_nobody(
    request_bytes: bytes, backends: tuple[Backend, Backend], make_proxy: MakeProxy
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url)
    answer = await exchange(proxy.url, request_bytes)
    assert answer.head.split(b" ", 2)[1] == b"505", answer.data  # in the request's version
    assert error_of(answer) == "http_version_not_supported"
    assert answer.closed
    await still_serving(proxy.url)
    assert [s.raw_path for s in primary.seen] == ["/"]  # only still_serving's


SMUGGLING = {
    "cl then te": b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n",
    "te then cl": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
    b"Content-Length: 4\r\n\r\n",
    "te not chunked": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "te identity": b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
    "te with space before colon": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding : chunked\r\n\r\n",
    "te gzip then chunked": b"POST / HTTP/1.1\r\nHost: x\r\n"
    b"Transfer-Encoding: gzip, chunked\r\n\r\n",
}
SMUGGLED = b"0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n"


@pytest.mark.parametrize("head", SMUGGLING.values(), ids=list(SMUGGLING))
async def test_ambiguous_framing_is_rejected_never_forwarded(
    head: bytes,
    backends: tuple[Backend, Backend],
    make_proxy: MakeProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url, mirror={"methods": ["GET", "POST"]})
    answer = await exchange(proxy.url, head + SMUGGLED)
    # 501 for a transfer coding the proxy does not implement, 400 for the rest.
    assert answer.status in (400, 501), answer.data
    assert answer.closed
    assert answer.data.count(b"HTTP/1.") == 1  # the smuggled request got no answer of its own
    await still_serving(proxy.url)
    assert [s.raw_path for s in primary.seen] == ["/"]
    assert [s.raw_path for s in candidate.seen] == ["/"]
    assert_no_traceback(caplog)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 9000 + b"\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\nCookie: " + b"c" * 20000 + b"\r\n\r\n",
    ],
    ids=["long request line", "long header", "huge cookie"],
)
async def test_oversized_head_gets_431(
    request_bytes: bytes,
    backends: tuple[Backend, Backend],
    make_proxy: MakeProxy,
    caplog: pytest.LogCaptureFixture,
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url)
    answer = await exchange(proxy.url, request_bytes)
    assert answer.status == 431, answer.data
    assert error_of(answer) == "request_header_too_large"
    assert b"aaaa" not in answer.body
    assert b"cccc" not in answer.body
    await still_serving(proxy.url)
    assert len(primary.seen) == 1
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_requests_total{status="431"} 1.0' in metrics
    assert 'shadowproxy_client_rejected_total{reason="request_header_too_large"} 1.0' in metrics
    assert_no_traceback(caplog)


async def test_too_many_headers_get_431_and_the_limits_are_configurable(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(
        primary.url, candidate.url, limits={"max_headers": 20, "max_header_size": "2KiB"}
    )
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(30))
    answer = await exchange(proxy.url, b"GET / HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
    assert answer.status == 431
    assert error_of(answer) == "too_many_headers"
    answer = await exchange(
        proxy.url, b"GET / HTTP/1.1\r\nHost: x\r\nX: " + b"v" * 3000 + b"\r\n\r\n"
    )
    assert answer.status == 431
    fields = b"".join(b"X-H%d: v\r\n" % i for i in range(15))
    request = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + fields + b"\r\n"
    assert (await exchange(proxy.url, request)).status == 200


async def test_bad_percent_encoding_passes_to_both_backends_as_sent(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url)
    target = b"/a%ZZ/%/%c3%28/%FF?x=%zz&y=%ff&z=%"
    request = b"GET " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n"
    answer = await exchange(proxy.url, request, whole=True)
    assert answer.status == 200
    [record] = await proxy.records()
    assert primary.seen[0].raw_path == target.decode()
    assert candidate.seen[0].raw_path == target.decode()
    assert record["path"] == target.decode()


async def test_slowloris_is_cut_off_while_others_are_served(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(
        primary.url, candidate.url, limits={"header_timeout": 1.0, "idle_timeout": 30}
    )
    reader, writer = await asyncio.open_connection(*host_port(proxy.url))
    started = time.monotonic()
    head = b"GET / HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"z" * 100
    for byte in head:
        try:
            writer.write(bytes([byte]))
            await writer.drain()
        except ConnectionError:
            break
        await asyncio.sleep(0.1)
        await still_serving(proxy.url)  # everyone else is served meanwhile
        if reader.at_eof() or time.monotonic() - started > 5:
            break
    answer = await read_all(reader, 3)
    cut_off_after = time.monotonic() - started
    writer.close()
    assert answer.closed
    # The 408 is written before the close; a client still writing may get a reset instead.
    assert answer.status == 408 or answer.data == b""
    assert cut_off_after < 4
    assert all(s.raw_path == "/" for s in primary.seen)
    metrics = proxy.proxy.metrics.render().decode()
    assert 'shadowproxy_client_rejected_total{reason="request_timeout"} 1.0' in metrics


async def test_header_timeout_spares_idle_keepalive_and_slow_bodies(
    serve: Serve, make_proxy: MakeProxy
) -> None:
    primary = await serve(ok)
    candidate = await serve(ok)
    proxy = await make_proxy(
        primary.url, candidate.url, limits={"header_timeout": 0.5, "idle_timeout": 30}
    )
    reader, writer = await asyncio.open_connection(*host_port(proxy.url))
    try:
        # A keep-alive connection idle for longer than the header timeout is left alone.
        for _ in range(2):
            writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200")
            assert await reader.readexactly(2) == b"ok"
            await asyncio.sleep(0.8)
        # A body that trickles in after a complete head is not the head timeout's business.
        writer.write(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\n\r\n")
        await writer.drain()
        for byte in b"abcdef":
            await asyncio.sleep(0.2)
            writer.write(bytes([byte]))
            await writer.drain()
        head = await reader.readuntil(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 200")
    finally:
        writer.close()
    assert primary.seen[-1].body == b"abcdef"


@pytest.mark.timeout(60)
async def test_thousands_of_idle_connections_are_closed_and_others_served(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy
) -> None:
    count = 2000
    raise_fd_limit(2 * count + 512)  # both ends of every connection live in this process
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url, limits={"idle_timeout": 1.5})
    host, port = host_port(proxy.url)
    connections: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    try:
        for start in range(0, count, 200):
            opened = await asyncio.gather(
                *(asyncio.open_connection(host, port) for _ in range(start, start + 200))
            )
            connections.extend(opened)
        assert len(proxy.proxy.proxy_server.connections) >= count - 10
        await still_serving(proxy.url)
        results = await asyncio.wait_for(
            asyncio.gather(*(read_all(reader, 8) for reader, _ in connections)), timeout=20
        )
        assert all(r.closed and r.data == b"" for r in results)
        await still_serving(proxy.url)
    finally:
        for _, writer in connections:
            writer.close()
    assert len(proxy.proxy.proxy_server.connections) <= 1


async def test_mutated_requests_never_crash_or_leak_a_traceback(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy, caplog: pytest.LogCaptureFixture
) -> None:
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url, mirror={"methods": ["GET", "POST"]})
    seeds = [
        GET,
        b"POST /p?q=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
        b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        b"5\r\nhello\r\n0\r\n\r\n",
    ]
    rng = random.Random(8)
    alphabet = b"\r\n :;,\x00\x7f\x80\xff%/?#0123456789aAzZ-\t"

    def mutated() -> bytes:
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            action = rng.random()
            if action < 0.4:
                data[at] = rng.choice(alphabet)
            elif action < 0.7:
                data.insert(at, rng.choice(alphabet))
            else:
                del data[at]
        return bytes(data)

    for _ in range(6):
        batch = [mutated() for _ in range(25)]
        answers = await asyncio.gather(
            *(exchange(proxy.url, data, wait=1, whole=True) for data in batch)
        )
        for data, answer in zip(batch, answers, strict=True):
            if answer.data == b"":
                continue  # closed, or still waiting for a body that never comes
            assert answer.status is not None, (data, answer.data[:200])
            assert answer.status < 500 or answer.status == 501, (data, answer.data[:300])
    await still_serving(proxy.url)
    await proxy.records()
    assert_no_traceback(caplog)


async def test_a_request_id_that_is_not_utf8_still_makes_a_record(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy
) -> None:
    """Header bytes pass to the backends as they came; the log, which must be UTF-8, gets the
    id with the undecodable bytes replaced, rather than no record at all."""
    primary, candidate = backends
    proxy = await make_proxy(primary.url, candidate.url)
    request = (
        b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: id-\xff-\xe9\r\nConnection: close\r\n\r\n"
    )
    answer = await exchange(proxy.url, request)
    assert answer.status == 200
    records = await proxy.records()
    assert [r["id"] for r in records] == ["id-?-?"]


@pytest.mark.e2e
async def test_a_request_id_that_is_not_utf8_does_not_break_the_operational_log(
    start_proxy: StartProxy,
) -> None:
    """The primary is down: the real process answers 502 and logs why, with the client's id,
    in its JSON operational log, instead of failing on the log line with a 500."""
    proxy = await start_proxy("http://127.0.0.1:9", "http://localhost:9")
    request = b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: id-\xff\r\nConnection: close\r\n\r\n"
    answer = await exchange(proxy.url, request)
    assert answer.status == 502, answer.data
    assert b'"request_id":"id-?"' in answer.data
    event = await proxy.wait_event("primary_unreachable")
    assert event["request_id"] == "id-?"
    assert await proxy.stop() == 0
    assert not [e for e in proxy.stderr_lines if e.get("event") == "request_failed"]


async def test_an_admin_token_that_is_not_utf8_is_refused_not_a_500(
    backends: tuple[Backend, Backend], make_proxy: MakeProxy
) -> None:
    primary, candidate = backends
    # Off loopback, the admin asks for the token.
    proxy = await make_proxy(
        primary.url, candidate.url, admin="0.0.0.0:0", admin_token="s3cret-token"
    )
    for token in (b"Bearer s3cret-\xff", b"Bearer s3cret-token"):
        request = b"GET /config HTTP/1.1\r\nHost: x\r\nAuthorization: %s\r\n" % token
        answer = await exchange(proxy.admin_url, request + b"Connection: close\r\n\r\n")
        assert answer.status == (200 if token.endswith(b"token") else 401), answer.data
