"""Noise through the real process: a secondary cancels non-determinism; without one,
suggest-ignores proposes the noisy fields from the log."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import orjson
import pytest
import yaml
from aiohttp import web

from shadowproxy.compare.model import Where
from shadowproxy.config import parse_config
from shadowproxy.noise import NoiseModel
from tests.conftest import Backend, Handler
from tests.e2e.conftest import StartProxy

pytestmark = pytest.mark.e2e

Serve = Callable[..., Awaitable[Backend]]
REQUESTS = 40


def nondeterministic(plan: str) -> Handler:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = {
            "request_id": str(uuid.uuid4()),
            "generated_at": f"{time.time():.6f}",
            "user": {"id": request.path.rsplit("/", 1)[-1], "plan": plan},
        }
        return web.Response(body=orjson.dumps(body), content_type="application/json")

    return handler


async def alike(serve: Serve) -> tuple[Backend, Backend, Backend]:
    """The primary, the secondary and the candidate, all the same version."""
    return (
        await serve(nondeterministic("gold")),
        await serve(nondeterministic("gold")),
        await serve(nondeterministic("gold")),
    )


async def send(client: aiohttp.ClientSession, url: str) -> None:
    for i in range(REQUESTS):
        async with client.get(f"{url}/users/{i}") as response:
            assert response.status == 200
            await response.read()


async def test_secondary_leaves_only_the_real_difference(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(nondeterministic("gold"))
    secondary = await serve(nondeterministic("gold"))
    candidate = await serve(nondeterministic("silver"))
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "1"), secondary={"url": secondary.url}
    )
    await send(client, proxy.url)
    records = await proxy.wait_records(REQUESTS)
    assert await proxy.stop() == 0
    # From the first few requests on, only the real field is left.
    for record in records[3:]:
        assert [d["path"] for d in record["differences"]] == ["/user/plan"], record
        assert {d["path"] for d in record["noise"]} == {"/request_id", "/generated_at"}
        assert record["outcome"] == "mismatch"
        assert record["secondary"]["status"] == 200


async def test_failed_secondary_keeps_differences_real(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(nondeterministic("gold"))
    candidate = await serve(nondeterministic("gold"))
    proxy = await start_proxy(
        primary.url,
        candidate.url,
        args=("--workers", "1"),
        secondary={"url": "http://127.0.0.1:9", "timeout": 1},
    )
    await send(client, proxy.url)
    records = await proxy.wait_records(REQUESTS)
    assert await proxy.stop() == 0
    for record in records:
        assert record["secondary"]["error"] == "refused"
        assert {d["path"] for d in record["differences"]} == {"/request_id", "/generated_at"}
        assert "noise" not in record


async def test_noise_is_cancelled_again_once_a_failed_secondary_is_back(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(nondeterministic("gold"))
    healthy = nondeterministic("gold")
    down = asyncio.Event()

    async def flaky(request: web.BaseRequest) -> web.StreamResponse:
        if down.is_set():
            return web.Response(status=503, text="down")
        return await healthy(request)

    secondary = await serve(flaky)
    candidate = await serve(nondeterministic("gold"))
    proxy = await start_proxy(
        primary.url, candidate.url, args=("--workers", "1"), secondary={"url": secondary.url}
    )
    sent = 0
    for phase, count in (("up", 5), ("down", 30), ("back", 5)):
        if phase == "down":
            down.set()
        elif phase == "back":
            down.clear()
        for i in range(count):
            async with client.get(f"{proxy.url}/users/{i}") as response:
                await response.read()
        sent += count
        records = await proxy.wait_records(sent)  # mirrored under this phase's secondary
    assert await proxy.stop() == 0
    assert all(r["outcome"] == "mismatch" for r in records[5:35])  # nothing to cancel with
    # The outage taught nothing: the secondary back, its noise is cancelled at once.
    for record in records[35:]:
        assert record["outcome"] == "match", record
        assert {d["path"] for d in record["noise"]} == {"/request_id", "/generated_at"}


async def test_suggest_ignores_proposes_exactly_the_noisy_paths(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(nondeterministic("gold"))
    candidate = await serve(nondeterministic("gold"))
    proxy = await start_proxy(primary.url, candidate.url, args=("--workers", "1"))
    await send(client, proxy.url)
    await proxy.wait_records(REQUESTS)
    assert await proxy.stop() == 0
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "shadowproxy", "suggest-ignores", str(proxy.log_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    stdout, stderr = await process.communicate()
    assert process.returncode == 0, stderr.decode()
    suggestion = yaml.safe_load(stdout)
    rules = suggestion["diff"]["endpoints"] if "diff" in suggestion else suggestion
    [rule] = rules
    assert rule["match"] == "GET /users/{id}"
    assert sorted(rule["ignore"]) == ["/generated_at", "/request_id"]
    # Ready to paste: the proposal is a valid part of a config.
    parse_config(
        {
            "primary": {"url": primary.url},
            "candidate": {"url": candidate.url},
            "diff": {"endpoints": rules},
        }
    )


async def test_learned_noise_survives_a_restart(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary, secondary, candidate = await alike(serve)
    state = tmp_path / "noise.json"
    settings = {"secondary": {"url": secondary.url}, "noise": {"state_path": str(state)}}
    for run in (1, 2):
        proxy = await start_proxy(primary.url, candidate.url, args=("--workers", "1"), **settings)
        await send(client, proxy.url)
        await proxy.wait_records(REQUESTS)
        assert await proxy.stop() == 0
        model = NoiseModel.load(state)
        # The second run starts from what the first learned.
        assert model.requests("GET /users/{id}") == run * REQUESTS
        assert model.is_noise("GET /users/{id}", Where.BODY, "/request_id")
        assert not model.is_noise("GET /users/{id}", Where.BODY, "/user/plan")


async def test_a_file_that_is_not_a_state_file_is_never_written_over(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary, secondary, candidate = await alike(serve)
    named = tmp_path / "discrepancies.jsonl"  # the state_path names the wrong file
    named.write_bytes(b'{"event": "exchange"}\nnot JSON\n')
    proxy = await start_proxy(
        primary.url,
        candidate.url,
        args=("--workers", "1"),
        secondary={"url": secondary.url},
        noise={"state_path": str(named)},
    )
    [event] = proxy.events("noise_state_unreadable")
    assert event["path"] == str(named)
    await send(client, proxy.url)
    records = await proxy.wait_records(REQUESTS)
    assert await proxy.stop() == 0  # the counts changed: saved at exit if anywhere
    assert named.read_bytes() == b'{"event": "exchange"}\nnot JSON\n'
    # No temporary file left beside it either.
    assert sorted(os.listdir(tmp_path)) == sorted(
        [named.name, proxy.config_path.name, proxy.log_path.name]
    )
    # Noise is still cancelled, from the counts in memory.
    assert "noise" in records[-1]


async def test_a_reload_applies_save_interval_at_once_and_keeps_the_state_path(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession, tmp_path: Path
) -> None:
    primary, secondary, candidate = await alike(serve)
    state, elsewhere = tmp_path / "noise.json", tmp_path / "elsewhere.json"
    proxy = await start_proxy(
        primary.url,
        candidate.url,
        args=("--workers", "1"),
        secondary={"url": secondary.url},
        noise={"state_path": str(state), "save_interval": 3600},
        reload={"watch": False},
    )
    await send(client, proxy.url)
    await proxy.wait_records(REQUESTS)
    config = yaml.safe_load(proxy.config_path.read_text())
    config["noise"] = {"state_path": str(elsewhere), "save_interval": 0.05}
    proxy.config_path.write_text(yaml.safe_dump(config))
    proxy.process.send_signal(signal.SIGHUP)
    partial = await proxy.wait_event("config_reload_partial")
    assert partial["keys"] == ["noise.state_path"]
    async with asyncio.timeout(10):
        # A file gives no event to await; poll it. Saved well before the old hour is up.
        while not state.exists():  # noqa: ASYNC110
            await asyncio.sleep(0.05)
    assert NoiseModel.load(state).requests("GET /users/{id}") == REQUESTS
    assert await proxy.stop() == 0
    assert not elsewhere.exists()
