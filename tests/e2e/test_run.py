"""End to end: the real process, a real config file, real backends, the log file it writes."""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import psutil
import pytest
import yaml
from aiohttp import web

from tests.conftest import Backend, Handler, read_fd_to_end
from tests.e2e.conftest import ProxyProcess, StartProxy

pytestmark = pytest.mark.e2e

Serve = Callable[..., Awaitable[Backend]]
MIB = 1024 * 1024
CHUNK = bytes(range(256)) * 4096  # 1 MiB of a pattern the client can check


def json_handler(document: object) -> Handler:
    async def handler(_: web.BaseRequest) -> web.StreamResponse:
        return web.Response(body=orjson.dumps(document), content_type="application/json")

    return handler


async def test_process_mirrors_compares_and_logs(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"user": {"id": 7, "name": "ada"}, "n": 1}))
    candidate = await serve(json_handler({"user": {"id": 7, "name": "ada"}, "n": 1.0}))
    proxy = await start_proxy(primary.url, candidate.url)
    for user in (7, 8):
        async with client.get(f"{proxy.url}/users/{user}?x=1") as response:
            assert await response.json() == {"user": {"id": 7, "name": "ada"}, "n": 1}
    records = await proxy.wait_records(2)
    assert await proxy.stop() == 0
    first = records[0]
    assert first["event"] == "exchange"
    assert first["endpoint"] == "GET /users/{id}"
    assert first["outcome"] == "mismatch"
    assert first["differences"] == [
        {"where": "body", "path": "/n", "kind": "type", "primary": 1, "candidate": 1.0}
    ]
    assert set(first) >= {"ts", "id", "method", "path", "primary", "candidate"}
    assert first["ts"].endswith("Z")
    assert first["primary"]["status"] == 200
    assert first["primary"]["bytes"] > 0


async def test_healthz_on_admin_listener(serve: Serve, start_proxy: StartProxy) -> None:
    primary = await serve(json_handler({}))
    candidate = await serve(json_handler({}))
    proxy = await start_proxy(primary.url, candidate.url)
    async with aiohttp.ClientSession() as session, session.get(proxy.admin_url + "/healthz") as r:
        assert r.status == 200
        assert (await r.json())["status"] == "ok"
        assert r.headers.getall("Server") == ["shadowproxy"]


async def test_secrets_never_reach_the_log(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    async def primary_handler(_: web.BaseRequest) -> web.StreamResponse:
        body = {"user": {"name": "ada", "password": "primary-secret-pw"}, "token": "p-secret-tok"}
        response = web.json_response(body)
        response.headers.add("Set-Cookie", "session=primary-secret-cookie")
        response.headers["Authorization"] = "Bearer primary-secret-auth"
        return response

    async def candidate_handler(_: web.BaseRequest) -> web.StreamResponse:
        body = {"user": {"name": "bob", "password": "candidate-secret-pw"}, "token": "c-secret-tok"}
        response = web.json_response(body)
        response.headers.add("Set-Cookie", "session=candidate-secret-cookie")
        response.headers["Authorization"] = "Bearer candidate-secret-auth"
        return response

    primary = await serve(primary_handler)
    candidate = await serve(candidate_handler)
    # Compare every header, Set-Cookie included, so a difference in it must be logged redacted.
    proxy = await start_proxy(
        primary.url,
        candidate.url,
        diff={"ignore_headers": ["date", "content-length"]},
        log={"redact": ["/**/password", "/token"]},
    )
    headers = {"Authorization": "Bearer client-secret", "Cookie": "sid=client-cookie"}
    async with client.get(proxy.url + "/secret", headers=headers) as response:
        assert response.headers["Set-Cookie"] == "session=primary-secret-cookie"
    [record] = await proxy.wait_records(1)
    assert await proxy.stop() == 0
    text = proxy.log_path.read_text()
    for secret in ("secret-cookie", "secret-auth", "client-secret", "client-cookie", "secret-pw"):
        assert secret not in text
    assert "secret-tok" not in text
    where = {(d["where"], d["path"]) for d in record["differences"]}
    assert ("header", "set-cookie") in where
    assert ("body", "/user/password") in where
    assert ("body", "/user/name") in where  # a field not named stays visible


@pytest.mark.timeout(180)
async def test_large_bodies_stream_with_bounded_memory(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    download_mib, upload_mib = 200, 100

    async def big(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            digest = hashlib.sha256()
            size = 0
            async for chunk in request.content.iter_any():
                digest.update(chunk)
                size += len(chunk)
            return web.json_response({"bytes": size, "sha256": digest.hexdigest()})
        response = web.StreamResponse(headers={"Content-Length": str(download_mib * MIB)})
        await response.prepare(request)
        for _ in range(download_mib):
            await response.write(CHUNK)
        await response.write_eof()
        return response

    primary = await serve(big, read_body=False)
    candidate = await serve(json_handler({}))
    proxy = await start_proxy(
        primary.url,
        candidate.url,
        args=("--workers", "1"),  # the process measured is the one that serves
        mirror={"methods": ["GET", "POST"], "max_body_bytes": "1MiB"},
    )
    watcher = _PeakMemory(proxy)
    async with watcher:
        expected = hashlib.sha256(CHUNK * download_mib).hexdigest()
        digest, size = hashlib.sha256(), 0
        async with client.get(proxy.url + "/download") as response:
            assert response.headers["Content-Length"] == str(download_mib * MIB)
            async for chunk in response.content.iter_chunked(MIB):
                digest.update(chunk)
                size += len(chunk)
        assert size == download_mib * MIB
        assert digest.hexdigest() == expected

        async def upload() -> object:
            for _ in range(upload_mib):
                yield CHUNK

        async with client.post(proxy.url + "/upload", data=upload()) as response:
            result = await response.json()
        assert result["bytes"] == upload_mib * MIB
        assert result["sha256"] == hashlib.sha256(CHUNK * upload_mib).hexdigest()
    assert watcher.peak < 250 * MIB, f"peak RSS {watcher.peak / MIB:.0f} MiB"
    # The download was mirrored and compared; the upload was too large to mirror.
    [record] = await proxy.wait_records(1)
    assert record["method"] == "GET"
    assert record["primary"]["bytes"] == download_mib * MIB


class _PeakMemory:
    """Samples the proxy's resident memory while a transfer runs."""

    def __init__(self, proxy: ProxyProcess) -> None:
        self._process = psutil.Process(proxy.pid)
        self.peak = 0
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> _PeakMemory:
        self._task = asyncio.get_running_loop().create_task(self._sample())
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self._task is not None
        self._task.cancel()
        self._measure()

    def _measure(self) -> None:
        self.peak = max(self.peak, self._process.memory_info().rss)

    async def _sample(self) -> None:
        while True:
            self._measure()
            await asyncio.sleep(0.02)


async def test_sigterm_finishes_requests_under_way(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    arrived = asyncio.Event()
    release = asyncio.Event()

    async def slow(_: web.BaseRequest) -> web.StreamResponse:
        arrived.set()
        await release.wait()
        return web.Response(text="finished")

    primary = await serve(slow)
    candidate = await serve(json_handler({}))
    proxy = await start_proxy(primary.url, candidate.url)

    async def request() -> str:
        async with client.get(proxy.url + "/slow") as response:
            return await response.text()

    pending = asyncio.ensure_future(request())
    await arrived.wait()
    proxy.process.send_signal(signal.SIGTERM)
    # The listener closes at once, but the request under way still completes.
    await proxy.wait_event("stopping")
    release.set()
    assert await pending == "finished"
    assert await proxy.stop() == 0
    assert any(e.get("event") == "stopped" for e in proxy.stderr_lines)


@pytest.mark.timeout(60)
async def test_a_killed_proxy_leaves_no_comparison_process_behind(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"n": 1}))
    candidate = await serve(json_handler({"n": 2}))
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "1"), diff={"workers": 1}
    )
    async with client.get(proxy.url + "/n") as response:
        assert response.status == 200
    await proxy.wait_records(1)
    helpers = psutil.Process(proxy.pid).children(recursive=True)
    assert helpers  # the comparison worker, and the forkserver it was forked from
    os.kill(proxy.pid, signal.SIGKILL)
    # Its standard error ends only when every process holding it has exited.
    assert await proxy.exited() == -signal.SIGKILL
    _, alive = await asyncio.to_thread(psutil.wait_procs, helpers, timeout=10)
    assert alive == []


@pytest.mark.timeout(60)
@pytest.mark.parametrize("workers", [1, 2])
async def test_a_log_reader_that_is_behind_never_holds_up_clients(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession, workers: int
) -> None:
    primary = await serve(json_handler({"items": list(range(40)), "v": 1}))
    candidate = await serve(json_handler({"items": list(range(40)), "v": 2}))
    read_end, write_end = os.pipe()  # standard output, as under Docker: nobody reads it yet
    proxy = await start_proxy(
        primary.url,
        candidate.url,
        args=("--workers", str(workers)),
        log={"path": "-", "max_buffer_bytes": "4KiB"},
        stdout=write_end,
    )
    os.close(write_end)
    for i in range(400):  # far more lines than the pipe and the buffer hold
        async with asyncio.timeout(5), client.get(f"{proxy.url}/items/{i}") as response:
            assert response.status == 200
    async with client.get(proxy.admin_url + "/metrics") as response:
        metrics = await response.text()
    lost = next(
        float(line.split()[-1])
        for line in metrics.splitlines()
        if line.startswith("shadowproxy_log_records_lost_total ")
    )
    assert lost > 0  # dropped and counted, not waited for
    reading = asyncio.ensure_future(asyncio.to_thread(read_fd_to_end, read_end))
    assert await proxy.stop() == 0
    written = (await reading).splitlines()
    os.close(read_end)
    records = [orjson.loads(line) for line in written]  # whole lines only
    assert all(r["event"] == "exchange" for r in records)
    # With workers, their supervisor passes the lines on: whoever lost one counted it.
    lost = sum(e["log_records_lost"] for e in proxy.events("stopped"))
    assert len(records) + lost == 400  # each written or counted


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this machine")
async def test_ipv6_addresses_are_announced_as_urls_take_them(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"n": 1}))
    candidate = await serve(json_handler({"n": 1}))
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "1"), listen="[::1]:0", admin="[::1]:0"
    )
    assert proxy.url.startswith("http://[::1]:")  # from the 'listening' line, as it is
    async with client.get(proxy.url + "/n") as response:
        assert response.status == 200
    async with client.get(proxy.admin_url + "/healthz") as response:
        assert response.status == 200


@pytest.mark.timeout(60)
async def test_an_operational_log_reader_that_is_behind_never_holds_up_clients(
    tmp_path: Path, client: aiohttp.ClientSession
) -> None:
    # The primary is down: every request is answered 502 and says so on standard error,
    # whose reader (a log collector) stops reading once the proxy listens.
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "listen": "127.0.0.1:0",
                "admin": "127.0.0.1:0",
                "primary": {"url": "http://127.0.0.1:1"},
                "candidate": {"url": "http://127.0.0.1:2"},
                "log": {"path": str(tmp_path / "log.jsonl")},
            }
        )
    )
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowproxy", "run", "--config", str(config), "--workers", "1",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL, stderr=write_end,
    )  # fmt: skip
    os.close(write_end)
    try:
        first = await asyncio.to_thread(read_until, read_end, b'"event":"listening"')
        url = "http://" + orjson.loads(first.splitlines()[-1])["proxy"]
        for _ in range(600):  # some 200 KB of warnings: three times what the pipe holds
            async with asyncio.timeout(5), client.get(url + "/x") as response:
                assert response.status == 502
        process.terminate()
        rest = await asyncio.to_thread(read_fd_to_end, read_end)
        assert await process.wait() == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        os.close(read_end)
    events = [orjson.loads(line)["event"] for line in (first + rest).splitlines()]  # whole
    assert events.count("primary_unreachable") == 600
    assert events[-1] == "stopped"


def read_until(fd: int, marker: bytes) -> bytes:
    """What ``fd`` gives up to the end of the line holding ``marker``."""
    data = b""
    while marker not in data or not data.endswith(b"\n"):
        chunk = os.read(fd, 1)
        if not chunk:
            raise EOFError(data.decode(errors="replace"))
        data += chunk
    return data
