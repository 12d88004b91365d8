"""Noise through the real process: a secondary cancels non-determinism; without one,
suggest-ignores proposes the noisy fields from the log."""

from __future__ import annotations

import asyncio
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
    primary = await serve(nondeterministic("gold"))
    secondary = await serve(nondeterministic("gold"))
    candidate = await serve(nondeterministic("gold"))
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
