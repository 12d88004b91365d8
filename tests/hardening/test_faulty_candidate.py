"""A candidate that refuses, resets, answers garbage, never answers, streams forever or sends
50 MB: clients get the primary's answers as if nothing happened, each fault is classified in
the record, and afterwards the proxy holds no more file descriptors, tasks or memory than
before."""

from __future__ import annotations

import asyncio
import itertools
import socket
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import psutil
import pytest
from aiohttp import web
from structlog.testing import capture_logs

from shadowproxy.exchange import Failure, FailureKind
from shadowproxy.mirror import candidate_healthy
from tests.conftest import RunningProxy
from tests.e2e.conftest import StartProxy
from tests.hardening.faults import FaultyBackend
from tests.hardening.support import MakeProxy, Serve, json_handler

PRIMARY_BODY = b'{"ok": true, "from": "primary"}'
# Each fault and how the record must name it.
FAULTS = {
    "/reset": "reset",
    "/reset-now": "reset",
    "/garbage": "invalid_response",
    "/hang": "timeout",
    "/hang-mid": "timeout",
    "/endless": "too_large",
    "/big": "too_large",
    "/short": "reset",
    "/cut": "reset",
}
MIB = 1024 * 1024
ROUNDS = 5


async def settle(measure: Callable[[], int], target: int, timeout: float = 5.0) -> int:
    """Wait for ``measure()`` to come down to ``target`` (closing is asynchronous)."""
    deadline = time.monotonic() + timeout
    value = measure()
    while value > target and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
        value = measure()
    return value


async def one(session: aiohttp.ClientSession, url: str) -> tuple[int, bytes]:
    async with session.get(url) as response:
        return response.status, await response.read()


@pytest.mark.timeout(60)
async def test_candidate_faults_leave_clients_alone_and_are_classified_without_leaks(
    serve: Serve, faulty: FaultyBackend, make_proxy: MakeProxy
) -> None:
    primary = await serve(json_handler(PRIMARY_BODY))
    # Idle pooled connections close soon (and the client keeps none), so every descriptor
    # of this process can be counted: "back to baseline" is exact.
    proxy = await make_proxy(
        primary.url,
        faulty.url,
        primary={"keepalive_timeout": 0.2},
        candidate={"timeout": 1.0, "keepalive_timeout": 0.2},
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as client:
        await run_faults(client, proxy, faulty)


async def run_faults(
    client: aiohttp.ClientSession, proxy: RunningProxy, faulty: FaultyBackend
) -> None:
    this = psutil.Process()
    # Warm up: pooled connections, lazily created objects, the first record.
    assert await one(client, proxy.url + "/ok") == (200, PRIMARY_BODY)
    await proxy.records()
    assert await settle(lambda: faulty.open_connections, 0) == 0
    fds, tasks, rss = this.num_fds(), len(asyncio.all_tasks()), this.memory_info().rss

    grown_by: list[int] = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        answers = await asyncio.gather(*(one(client, proxy.url + path) for path in FAULTS))
        elapsed = time.perf_counter() - started
        assert answers == [(200, PRIMARY_BODY)] * len(FAULTS)
        assert elapsed < 0.9, "clients waited on the candidate"  # its timeout is 1 s
        records = await proxy.records()
        grown_by.append(this.memory_info().rss - rss)

    errors: dict[str, set[Any]] = {}
    for record in records[1:]:
        errors.setdefault(record["path"], set()).add(record["candidate"]["error"])
    assert errors == {path: {kind} for path, kind in FAULTS.items()}
    assert all(r["outcome"] == "candidate_error" for r in records[1:])
    assert all(r["primary"]["status"] == 200 for r in records)

    assert await settle(lambda: faulty.open_connections, 0) == 0
    assert await settle(this.num_fds, fds) <= fds
    assert await settle(lambda: len(asyncio.all_tasks()), tasks) <= tasks
    # 50 MB were announced and the endless answer streamed in every round; 10 MiB of each
    # was read and kept. The allocator may keep a higher peak (two
    # captures and their copies), at any round, as one step; a leak grows in every round. So
    # from the second round on, the growth besides the largest step must stay small.
    assert max(grown_by) < 64 * MIB, grown_by
    steps = [later - earlier for earlier, later in itertools.pairwise(grown_by[1:])]
    assert sum(steps) - max(steps) < 8 * MIB, grown_by

    metrics = proxy.proxy.metrics.render().decode()
    for kind in set(FAULTS.values()):
        count = ROUNDS * list(FAULTS.values()).count(kind)
        assert f'shadowproxy_candidate_errors_total{{kind="{kind}"}} {count}.0' in metrics


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
async def test_a_flooding_candidate_is_read_no_further_than_the_comparison_cap(
    framing: str, serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """A candidate that writes a huge body as fast as it can: the proxy stops reading at
    ``diff.max_body_bytes`` and closes the connection, instead of reading it to its end."""
    cap = 256 * 1024
    sent = 0
    closed = asyncio.Event()
    chunk = b"f" * 65536

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        await reader.readuntil(b"\r\n\r\n")
        if framing == "chunked":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            piece = b"%x\r\n%b\r\n" % (len(chunk), chunk)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % (100 * 2**30))
            piece = chunk
        try:
            while True:  # ends when the proxy closes the connection: the write fails
                writer.write(piece)
                await writer.drain()
                sent += len(chunk)
        except ConnectionError:
            closed.set()
        finally:
            writer.close()

    server = await asyncio.start_server(flood, "127.0.0.1", 0)
    try:
        port = server.sockets[0].getsockname()[1]
        primary = await serve(json_handler(PRIMARY_BODY))
        proxy = await make_proxy(
            primary.url,
            f"http://127.0.0.1:{port}",
            candidate={"timeout": 5},
            diff={"max_body_bytes": cap},
        )
        assert await one(client, proxy.url + "/flood") == (200, PRIMARY_BODY)
        [record] = await proxy.records()
        await closed.wait()
    finally:
        server.close()
    assert record["outcome"] == "candidate_error"
    assert record["candidate"]["error"] == "too_large"
    assert "exceeds diff.max_body_bytes" in record["candidate"]["detail"]
    # What the candidate got rid of: the cap, plus what the sockets' buffers held.
    assert sent < 32 * MIB, sent


async def test_bodies_past_the_cap_with_a_length_still_compare_by_size(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """Read only up to the cap, a candidate's body with a Content-Length keeps its size: as
    large as the primary's, it is compared (size and prefix), not an error."""
    body = b"[" + b"1," * MIB + b"1]"
    primary = await serve(json_handler(body))
    candidate = await serve(json_handler(body))
    proxy = await make_proxy(primary.url, candidate.url, diff={"max_body_bytes": 64 * 1024})
    assert await one(client, proxy.url + "/big") == (200, body)
    [record] = await proxy.records()
    assert record["outcome"] == "match"
    assert record["candidate"]["bytes"] == len(body)
    assert "body_truncated" in record["notes"]


def chunked_handler(body: bytes) -> Any:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(request)
        for start in range(0, len(body), 65536):
            await response.write(body[start : start + 65536])
        await response.write_eof()
        return response

    return handler


async def test_bodies_past_the_cap_without_a_length_compare_by_prefix(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """A chunked body is read only up to the cap, so its size stays unknown: against a primary
    as large, the prefixes are compared, and no error is made of it."""
    body = b"[" + b"1," * MIB + b"1]"
    primary = await serve(chunked_handler(body))
    candidate = await serve(chunked_handler(body))
    other = await serve(chunked_handler(body.replace(b"1,", b"2,", 1)))
    proxy = await make_proxy(primary.url, candidate.url, diff={"max_body_bytes": 64 * 1024})
    assert await one(client, proxy.url + "/big") == (200, body)
    [record] = await proxy.records()
    assert record["outcome"] == "match"
    assert "body_truncated" in record["notes"]
    differing = await make_proxy(primary.url, other.url, diff={"max_body_bytes": 64 * 1024})
    assert await one(client, differing.url + "/big") == (200, body)
    [record] = await differing.records()
    assert record["outcome"] == "mismatch"


def test_a_body_too_large_to_compare_does_not_open_the_breaker() -> None:
    """It is an answer all the same: the breaker counts a candidate that is down."""
    assert candidate_healthy(Failure(FailureKind.TOO_LARGE, "body exceeds the cap", 1.0))
    assert not candidate_healthy(Failure(FailureKind.RESET, "reset", 1.0))


async def test_candidate_refusing_connections(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    primary = await serve(json_handler(PRIMARY_BODY))
    proxy = await make_proxy(primary.url, dead)
    for _ in range(3):
        assert await one(client, proxy.url + "/x") == (200, PRIMARY_BODY)
    records = await proxy.records()
    assert [r["candidate"]["error"] for r in records] == ["refused"] * 3


@pytest.mark.e2e
@pytest.mark.timeout(90)
async def test_real_process_returns_to_its_baseline_after_candidate_faults(
    serve: Serve, faulty: FaultyBackend, start_proxy: StartProxy
) -> None:
    primary = await serve(json_handler(PRIMARY_BODY))
    candidate = {"timeout": 1.0, "keepalive_timeout": 0.2}
    proxy = await start_proxy(primary.url, faulty.url, candidate=candidate, diff={"workers": 0})
    process = psutil.Process(proxy.pid)
    async with aiohttp.ClientSession() as session:
        for _ in range(3):
            assert await one(session, proxy.url + "/ok") == (200, PRIMARY_BODY)
        await proxy.wait_records(3)
        assert await settle(lambda: faulty.open_connections, 0) == 0
        fds, rss = process.num_fds(), process.memory_info().rss
        for _ in range(3):
            answers = await asyncio.gather(*(one(session, proxy.url + path) for path in FAULTS))
            assert answers == [(200, PRIMARY_BODY)] * len(FAULTS)
        await proxy.wait_records(3 + 3 * len(FAULTS), timeout=30)
    assert await settle(lambda: faulty.open_connections, 0) == 0
    assert await settle(process.num_fds, fds) <= fds
    assert process.memory_info().rss - rss < 60 * MIB
    assert await proxy.stop() == 0
    kinds = [r["candidate"]["error"] for r in proxy.records()[3:]]
    assert sorted(set(kinds)) == sorted(set(FAULTS.values()))


async def test_numbers_beyond_64_bits_still_make_a_record(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """Valid JSON the log's serialiser cannot hold as numbers: recorded as digits, not lost."""
    big = 2**80
    primary = await serve(json_handler(b'{"n": %d, "ok": true}' % big))
    candidate = await serve(json_handler(b'{"n": %d, "ok": true}' % (big + 1)))
    proxy = await make_proxy(primary.url, candidate.url)
    for _ in range(2):  # the second time, the comparison is a remembered one
        status, body = await one(client, proxy.url + "/x")
        assert (status, body) == (200, b'{"n": %d, "ok": true}' % big)
    records = await proxy.records()
    assert [(r["outcome"], r["differences"]) for r in records] == [
        (
            "mismatch",
            [
                {
                    "where": "body",
                    "path": "/n",
                    "kind": "changed",
                    "primary": str(big),
                    "candidate": str(big + 1),
                }
            ],
        )
    ] * 2


async def test_a_fault_of_the_proxy_in_the_mirror_leg_is_one_logged_line(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, monkeypatch: Any
) -> None:
    """Whatever goes wrong after the client has its answer stays in the background: the next
    requests are served and mirrored, and the failure is an event, not a task's traceback."""
    import shadowproxy.server

    def broken(*_: Any, **__: Any) -> dict[str, Any]:
        raise RuntimeError("record builder broke")

    primary = await serve(json_handler(PRIMARY_BODY))
    candidate = await serve(json_handler(b'{"ok": false}'))
    proxy = await make_proxy(primary.url, candidate.url)
    with capture_logs() as logs:
        monkeypatch.setattr(shadowproxy.server, "build_record", broken)
        assert await one(client, proxy.url + "/x") == (200, PRIMARY_BODY)
        await proxy.proxy.dispatcher.idle()
        monkeypatch.undo()
        assert await one(client, proxy.url + "/x") == (200, PRIMARY_BODY)
        records = await proxy.records()
    failures = [entry for entry in logs if entry["event"] == "mirror_failed"]
    assert [f["error"] for f in failures] == ["RuntimeError: record builder broke"]
    assert [r["outcome"] for r in records] == ["mismatch"]
    assert proxy.proxy.dispatcher.in_flight == 0
