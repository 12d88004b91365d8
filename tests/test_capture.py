"""Capture: sampled exchanges of the primary path written as HAR entries, redacted, bounded."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from shadowproxy.capture import CapturePolicy, CaptureSink, rotated_files, worker_path
from shadowproxy.config import CaptureConfig
from shadowproxy.har import Captured, parse_entry
from tests.conftest import Backend, RunningProxy
from tests.e2e import conftest as e2e
from tests.e2e.conftest import StartProxy
from tests.hardening.support import exchange as raw_exchange

start_proxy = e2e.start_proxy  # the real process, as the end-to-end tests start it
MakeProxy = Callable[..., Awaitable[RunningProxy]]
Serve = Callable[..., Awaitable[Backend]]
COMMAND_TIMEOUT = 60

SECRETS = (
    b"tok-123-secret",
    b"sid=cookie-secret",
    b"set-cookie-secret",
    b"hunter2",
    b"a@b.example",
    b"qs-secret-9",
)


def lines(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


async def json_backend(serve: Serve, document: dict[str, Any]) -> Backend:
    async def answer(request: web.BaseRequest) -> web.StreamResponse:
        return web.Response(
            body=orjson.dumps(document),
            content_type="application/json",
            headers={"Set-Cookie": "session=set-cookie-secret"},
        )

    return await serve(answer)


async def settle(running: RunningProxy) -> None:
    """Every answered exchange written: the capture closes after its queue is drained."""
    assert running.proxy.capture is not None
    await running.proxy.capture.close()


async def test_the_proxy_captures_exchanges_mirrored_or_not(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await json_backend(serve, {"id": 7, "price": 10})
    candidate = await json_backend(serve, {"id": 7, "price": 10})
    capture = tmp_path / "capture.jsonl"
    running = await make_proxy(primary.url, candidate.url, capture={"path": str(capture)})

    async with client.get(f"{running.url}/items/7?full=1") as response:
        assert response.status == 200
        await response.read()
    async with client.post(f"{running.url}/orders", data=b'{"qty": 2}') as response:
        assert response.status == 200
    await running.proxy.dispatcher.idle()
    await settle(running)

    entries = lines(capture)
    assert [e["request"]["method"] for e in entries] == ["GET", "POST"]
    assert [s.method for s in candidate.seen] == ["GET"]  # POST is not mirrored, but captured
    get, post = (parse_entry(e) for e in entries)
    assert get.path == "/items/7?full=1"
    assert get.response is not None
    assert orjson.loads(get.response.body) == {"id": 7, "price": 10}
    assert post.body == b'{"qty": 2}'
    assert entries[0]["_endpoint"] == "GET /items/{id}"
    assert entries[0]["request"]["url"].startswith("http://127.0.0.1:")
    forwarded = {h["name"].lower() for h in entries[0]["request"]["headers"]}
    assert "x-forwarded-for" in forwarded
    assert running.proxy.capture is not None
    assert running.proxy.capture.written == 2
    metrics = running.proxy.metrics.render().decode()
    assert 'shadowproxy_capture_exchanges_total{result="written"} 2.0' in metrics


async def test_secrets_never_reach_the_capture_file(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await json_backend(serve, {"user": {"email": "a@b.example", "name": "A"}})
    candidate = await json_backend(serve, {})
    capture = tmp_path / "capture.jsonl"
    running = await make_proxy(
        primary.url,
        candidate.url,
        capture={"path": str(capture)},
        log={"redact": ["/**/email", "/password"]},
    )
    headers = {
        "Authorization": "Bearer tok-123-secret",
        "Proxy-Authorization": "Basic tok-123-secret",
        "Cookie": "sid=cookie-secret",
        "Content-Type": "application/json",
    }
    body = b'{"login": "a", "password": "hunter2"}'
    url = f"{running.url}/login?user=ada&access_token=qs-secret-9"
    async with client.post(url, data=body, headers=headers) as response:
        assert response.status == 200
    await settle(running)

    raw = capture.read_bytes()
    for secret in SECRETS:
        assert secret not in raw, secret
    (entry,) = lines(capture)
    request_headers = {h["name"]: h["value"] for h in entry["request"]["headers"]}
    assert request_headers["Authorization"] == "[redacted]"
    assert request_headers["Cookie"] == "[redacted]"
    assert entry["request"]["url"].endswith("/login?user=ada&access_token=[redacted]")
    assert entry["request"]["queryString"] == [
        {"name": "user", "value": "ada"},
        {"name": "access_token", "value": "[redacted]"},
    ]
    assert entry["request"]["postData"]["_redacted"] == ["/password"]
    assert entry["response"]["content"]["_redacted"] == ["/user/email"]
    assert orjson.loads(entry["response"]["content"]["text"])["user"]["name"] == "A"


async def test_header_bytes_that_are_not_utf8_still_make_an_entry(
    serve: Serve, make_proxy: MakeProxy, tmp_path: Path
) -> None:
    """JSON text cannot hold them: the entry keeps the header with those bytes replaced,
    rather than losing the whole exchange."""
    primary = await json_backend(serve, {"id": 1})
    candidate = await json_backend(serve, {"id": 1})
    capture = tmp_path / "capture.jsonl"
    running = await make_proxy(primary.url, candidate.url, capture={"path": str(capture)})
    request = b"GET /legacy HTTP/1.1\r\nHost: x\r\nX-Legacy: caf\xe9\r\nConnection: close\r\n\r\n"
    answer = await raw_exchange(running.url, request)
    assert answer.status == 200
    await settle(running)
    (entry,) = lines(capture)
    headers = {h["name"]: h["value"] for h in entry["request"]["headers"]}
    assert headers["X-Legacy"] == "caf?"
    assert running.proxy.capture is not None
    assert running.proxy.capture.written == 1


async def test_rules_include_and_exclude_routes(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await json_backend(serve, {})
    candidate = await json_backend(serve, {})
    capture = tmp_path / "capture.jsonl"
    rules = [
        {"match": "/health", "capture": False},
        {"match": "GET /search", "sample_rate": 0},
        {"match": "/admin/**", "capture": True, "sample_rate": 1},
    ]
    running = await make_proxy(
        primary.url,
        candidate.url,
        capture={"path": str(capture), "sample_rate": 0, "rules": rules},
    )
    for path in ("/health", "/search?q=x", "/admin/users/1", "/other"):
        async with client.get(running.url + path) as response:
            assert response.status == 200
    await settle(running)
    assert [parse_entry(e).path for e in lines(capture)] == ["/admin/users/1"]


def test_the_sample_rate_is_applied_per_request() -> None:
    draws = iter([0.1, 0.6, 0.49, 0.5])
    policy = CapturePolicy(CaptureConfig(path="x", sample_rate=0.5), rng=lambda: next(draws))
    assert [policy.wants("GET", "/") for _ in range(4)] == [True, False, True, False]


async def test_a_request_body_over_the_cap_is_proxied_whole_and_marked(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await json_backend(serve, {})
    candidate = await json_backend(serve, {})
    capture = tmp_path / "capture.jsonl"
    running = await make_proxy(
        primary.url, candidate.url, capture={"path": str(capture), "max_body_bytes": 100}
    )
    async with client.put(f"{running.url}/blob", data=b"x" * 5000) as response:
        assert response.status == 200
    await settle(running)
    assert primary.seen[0].body == b"x" * 5000
    (entry,) = lines(capture)
    assert entry["request"]["postData"]["_truncated"] is True
    assert entry["request"]["bodySize"] == 5000
    assert "text" not in entry["request"]["postData"]


def exchange(number: int, body: bytes = b"{}") -> Captured:
    return Captured(
        id=f"r{number}",
        endpoint="GET /n/{id}",
        started_at=1_700_000_000 + number,
        method="GET",
        scheme="http",
        raw_path=f"/n/{number}",
        http_version="HTTP/1.1",
        request_headers=(("Host", "h"),),
        request_body=b"",
        request_size=0,
        status=200,
        reason="OK",
        response_headers=(("Content-Type", "application/json"),),
        response_body=body,
        response_size=len(body),
        latency_ms=1.0,
    )


async def test_files_rotate_beside_the_capture_and_old_ones_are_pruned(tmp_path: Path) -> None:
    path = tmp_path / "capture.jsonl"
    sink = CaptureSink(
        CaptureConfig(path=str(path), max_file_bytes=4096, keep_files=2, flush_interval=60)
    )
    sink.start()
    body = b'{"pad": "' + b"p" * 400 + b'"}'
    for number in range(60):
        sink.submit(exchange(number, body))
        if number % 5 == 4:
            sink.flush()  # several writes, as a long-running proxy would make
    await sink.close()

    rotated = rotated_files(str(path))
    assert len(rotated) == 2
    assert sink.rotations > 2
    kept = [*rotated, path]
    for file in kept:
        assert file.stat().st_size <= 4096
        for line in file.read_bytes().splitlines():
            orjson.loads(line)  # whole lines only
    numbers = [int(e["_id"][1:]) for file in kept for e in lines(file)]
    assert numbers == sorted(numbers)  # a sorted listing is oldest first
    assert numbers[-1] == 59
    assert sink.written == 60


async def test_a_full_buffer_drops_and_counts(tmp_path: Path) -> None:
    results: list[tuple[str, int]] = []
    sink = CaptureSink(
        CaptureConfig(path=str(tmp_path / "c.jsonl"), max_buffer_bytes=4000),
        on_result=lambda result, count: results.append((result, count)),
    )  # not started: nothing drains, so the buffer fills
    body = b"b" * 1200  # 2 fit, with their headers
    for number in range(4):
        sink.submit(exchange(number, body))
    assert sink.dropped == 2
    assert sink.pending_bytes <= 4000
    assert ("dropped", 1) in results
    recording = sink.begin(
        request_id="x", method="GET", raw_path="/", scheme="http", http_version="HTTP/1.1",
        headers=(),
    )  # fmt: skip
    assert recording is None  # still full: not even recorded
    assert sink.dropped == 3


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_a_failing_disk_loses_exchanges_but_not_the_proxy() -> None:
    results: list[tuple[str, int]] = []
    sink = CaptureSink(
        CaptureConfig(path="/dev/full"), on_result=lambda r, n: results.append((r, n))
    )
    sink.start()
    sink.submit(exchange(1))
    sink.submit(exchange(2))
    await sink.close()
    assert sink.lost == 2
    assert ("lost", 2) in results


def test_each_worker_writes_its_own_file() -> None:
    assert worker_path("/var/cap/capture.jsonl", None) == "/var/cap/capture.jsonl"
    assert worker_path("/var/cap/capture.jsonl", 3) == "/var/cap/capture.w3.jsonl"
    assert worker_path("capture", 0) == "capture.w0"


@pytest.mark.e2e
async def test_capture_by_the_real_process_then_replay_finds_the_one_changed_field(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await json_backend(serve, {"id": 1, "price": 10, "tags": ["a"]})
    mirror_candidate = await json_backend(serve, {"id": 1, "price": 10, "tags": ["a"]})
    capture = tmp_path / "capture.jsonl"
    process = await start_proxy(
        primary.url,
        mirror_candidate.url,
        capture={"path": str(capture), "flush_interval": 0.05},
        args=("--workers", "1"),
    )
    for number in range(5):
        headers = {"Authorization": "Bearer tok-123-secret"}
        async with client.get(f"{process.url}/items/{number}", headers=headers) as response:
            assert response.status == 200
    assert await process.stop() == 0
    assert b"tok-123-secret" not in capture.read_bytes()
    assert len(lines(capture)) == 5

    changed = await json_backend(serve, {"id": 1, "price": 11, "tags": ["a"]})
    log = tmp_path / "replay.jsonl"
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "shadowproxy", "replay", str(capture),
            "--candidate", changed.url, "--log", str(log), "--no-progress",
        ],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    records = lines(log)
    assert len(records) == 5
    for record in records:
        assert record["outcome"] == "mismatch"
        assert [(d["where"], d["path"]) for d in record["differences"]] == [("body", "/price")]
    # Every replayed request is marked as dark traffic.
    assert all(seen.header("X-Shadow-Request") == "1" for seen in changed.seen)


@pytest.mark.e2e
async def test_each_worker_process_writes_its_own_capture(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await json_backend(serve, {"id": 1})
    candidate = await json_backend(serve, {"id": 1})
    capture = tmp_path / "capture.jsonl"
    process = await start_proxy(
        primary.url, candidate.url, capture={"path": str(capture)}, args=("--workers", "2")
    )
    for number in range(20):
        # A new connection each time, so both workers get requests.
        async with aiohttp.ClientSession() as fresh, fresh.get(f"{process.url}/n/{number}") as r:
            assert r.status == 200
    assert await process.stop() == 0
    names = sorted(n for n in os.listdir(tmp_path) if n.startswith("capture"))
    assert names == ["capture.w0.jsonl", "capture.w1.jsonl"]
    files = [tmp_path / name for name in names]
    assert sum(len(lines(f)) for f in files) == 20

    log = tmp_path / "replay.jsonl"
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable, "-m", "shadowproxy", "replay", str(tmp_path / "capture.w*.jsonl"),
            "--candidate", candidate.url, "--log", str(log), "--no-progress",
        ],
        capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert {r["outcome"] for r in lines(log)} == {"match"}
    assert len(lines(log)) == 20


async def test_bodies_redaction_cannot_reach_are_not_captured_in_clear(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary = await json_backend(serve, {})
    candidate = await json_backend(serve, {})
    capture = tmp_path / "capture.jsonl"
    running = await make_proxy(
        primary.url, candidate.url, capture={"path": str(capture)}, log={"redact": ["/password"]}
    )
    form = aiohttp.FormData({"user": "ada", "password": "hunter2"})
    form.add_field("file", b"data", filename="a.txt")  # makes it multipart/form-data
    async with client.post(f"{running.url}/upload", data=form) as response:
        assert response.status == 200
    async with client.post(
        f"{running.url}/login",
        data=b"user=ada&password=hunter2",
        skip_auto_headers=["Content-Type"],
    ) as response:
        assert response.status == 200
    await settle(running)

    assert b"hunter2" not in capture.read_bytes()
    upload, login = (e["request"] for e in lines(capture))
    assert upload["postData"]["_omitted"] == "multipart bodies are not redacted"
    assert login["postData"]["text"] == "user=ada&password=%5Bredacted%5D"


class Said:
    """Stands in for the operational log: keeps what was said."""

    def __init__(self) -> None:
        self.lines: list[tuple[str, dict[str, Any]]] = []

    def error(self, event: str, **fields: Any) -> None:
        self.lines.append((event, fields))

    warning = info = error


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_a_failing_disk_is_said_once_then_counted_until_close() -> None:
    said = Said()
    sink = CaptureSink(CaptureConfig(path="/dev/full", flush_interval=60), oplog=said)
    sink.start()
    for number in range(5):
        sink.submit(exchange(number))
        sink.flush()  # a batch each: each one fails
    assert [fields["exchanges"] for _, fields in said.lines] == [1]  # not one line per batch
    await sink.close()
    assert [event for event, _ in said.lines] == ["capture_lost", "capture_lost"]
    assert [fields["exchanges"] for _, fields in said.lines] == [1, 4]  # the rest, at close
    assert said.lines[1][1]["reason"] == "No space left on device"
    assert sink.lost == 5


async def test_recordings_under_way_count_against_the_buffer(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    """Uploads held at a slow primary keep their bodies while they wait: with nothing yet
    waiting to be written, those bodies must still fit ``max_buffer_bytes``."""
    uploads, size = 4, 40 * 1024
    arrived: asyncio.Queue[None] = asyncio.Queue()
    release = asyncio.Event()

    async def slow(request: web.BaseRequest) -> web.StreamResponse:
        await request.read()
        arrived.put_nowait(None)
        await release.wait()
        return web.Response(text="ok")

    primary = await serve(slow)
    capture = tmp_path / "capture.jsonl"
    running = await make_proxy(
        primary.url,
        (await serve(slow)).url,
        mirror={"sample_rate": 0},
        capture={"path": str(capture), "max_buffer_bytes": "64KiB", "max_body_bytes": "64KiB"},
    )
    sink = running.proxy.capture
    assert sink is not None

    async def upload(number: int) -> int:
        async with client.put(f"{running.url}/u/{number}", data=b"u" * size) as response:
            await response.read()
            return response.status

    sent = [asyncio.ensure_future(upload(n)) for n in range(uploads)]
    for _ in range(uploads):
        await arrived.get()  # every body has passed the proxy, none is answered yet
    assert sink.dropped == uploads - 1  # only one body fits beside nothing else
    release.set()
    assert await asyncio.gather(*sent) == [200] * uploads  # the primary path is untouched
    await settle(running)
    assert len(lines(capture)) == 1
    assert sink.dropped == uploads - 1
