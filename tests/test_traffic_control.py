"""Traffic control through the running proxy: per-route rules, stickiness, rate limit, breaker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import orjson
from aiohttp import web
from structlog.testing import capture_logs
from yarl import URL

from tests.conftest import Backend, RunningProxy, merge, proxy_config
from tests.test_mirror import dead_url, json_handler

MakeProxy = Callable[..., Awaitable[RunningProxy]]
Serve = Callable[..., Awaitable[Backend]]


def metric(proxy: RunningProxy, line: str) -> bool:
    return line in proxy.proxy.metrics.render().decode().splitlines()


async def send(
    client: aiohttp.ClientSession, method: str, url: str | URL, **kwargs: Any
) -> aiohttp.ClientResponse:
    async with client.request(method, url, **kwargs) as response:
        await response.read()
        return response


async def test_post_mirrored_only_for_the_test_tenant_with_headers_changed(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"ok": True}))
    candidate = await serve(json_handler({"ok": True}))
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        mirror={
            "rules": [
                {
                    "match": "POST /tenants/test/**",
                    "allow_unsafe": True,
                    "headers": {
                        "set": {"X-Tenant": "test"},
                        "add": {"X-Tag": "shadow"},
                        "remove": ["Authorization"],
                    },
                }
            ]
        },
    )
    auth = {"Authorization": "Bearer s3cret", "X-Tenant": "client", "X-Tag": "client"}
    response = await send(
        client, "POST", proxy.url + "/tenants/test/orders", data=b'{"n": 1}', headers=auth
    )
    assert response.status == 200
    await send(client, "POST", proxy.url + "/tenants/prod/orders", data=b"{}", headers=auth)
    await send(client, "GET", proxy.url + "/tenants/test/orders", headers=auth)
    records = await proxy.records()

    assert [(s.method, s.raw_path) for s in primary.seen] == [
        ("POST", "/tenants/test/orders"),
        ("POST", "/tenants/prod/orders"),
        ("GET", "/tenants/test/orders"),
    ]
    # The primary got the client's headers, untouched.
    assert all(s.header("Authorization") == "Bearer s3cret" for s in primary.seen)
    assert all(s.header("X-Tenant") == "client" for s in primary.seen)
    # The candidate got the POST for the test tenant, edited, and the GET (mirrored anyway,
    # and not matched by the POST rule, so unedited); never the production tenant's POST.
    post, get = sorted(candidate.seen, key=lambda s: s.method, reverse=True)
    assert (post.method, post.raw_path, post.body) == ("POST", "/tenants/test/orders", b'{"n": 1}')
    assert post.header("Authorization") is None
    assert post.header("X-Tenant") == "test"
    assert [v for k, v in post.headers if k.lower() == "x-tag"] == ["client", "shadow"]
    assert post.header("X-Shadow-Request") == "1"
    assert get.header("Authorization") == "Bearer s3cret"
    assert get.header("X-Tenant") == "client"
    assert sorted(r["method"] for r in records) == ["GET", "POST"]
    assert {r["outcome"] for r in records} == {"match"}
    assert metric(proxy, 'shadowproxy_mirror_skipped_total{reason="method"} 1.0')


async def test_rule_with_mirror_false(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        mirror={
            "rules": [
                {"match": "/static/**", "mirror": False},
                {"match": "/**", "when": {"header": {"X-Debug": "1"}}, "mirror": False},
            ]
        },
    )
    for path in ("/static/app.js", "/static/img/logo.png", "/users/1"):
        assert (await send(client, "GET", proxy.url + path)).status == 200
    await send(client, "GET", proxy.url + "/users/2", headers={"X-Debug": "1"})
    records = await proxy.records()
    assert len(primary.seen) == 4
    assert [s.raw_path for s in candidate.seen] == ["/users/1"]
    assert [r["path"] for r in records] == ["/users/1"]
    assert metric(proxy, 'shadowproxy_mirror_skipped_total{reason="rule"} 3.0')


async def test_prefix_rewrite_seen_by_the_candidate_only(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"id": 7}))
    candidate = await serve(json_handler({"id": 7}))
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        mirror={"rules": [{"match": "/v1/**", "rewrite_prefix": {"from": "/v1", "to": "/v2"}}]},
    )
    await send(client, "GET", URL(proxy.url + "/v1/users/7?fields=a%2Cb", encoded=True))
    await send(client, "GET", proxy.url + "/v10/users/7")
    records = await proxy.records()
    assert [s.raw_path for s in primary.seen] == ["/v1/users/7?fields=a%2Cb", "/v10/users/7"]
    assert sorted(s.raw_path for s in candidate.seen) == [
        "/v10/users/7",
        "/v2/users/7?fields=a%2Cb",
    ]
    # The log names the request as the client sent it, and compares like with like.
    rewritten = next(r for r in records if r["path"].startswith("/v1/"))
    assert rewritten["path"] == "/v1/users/7?fields=a%2Cb"
    assert rewritten["endpoint"] == "GET /v1/users/{id}"
    assert rewritten["outcome"] == "match"


async def test_sticky_sampling_through_the_proxy(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        mirror={"sample_rate": 0.5, "sticky_key": "header:X-User-Id"},
    )
    users = [f"user-{i}" for i in range(30)]
    for _ in range(3):
        for user in users:
            await send(client, "GET", proxy.url + f"/feed?u={user}", headers={"X-User-Id": user})
    await proxy.records()
    per_user = {u: sum(s.header("X-User-Id") == u for s in candidate.seen) for u in users}
    assert set(per_user.values()) <= {0, 3}  # each user all in or all out
    assert 0 < sum(per_user.values()) < 90


async def test_max_rps_bounds_the_number_of_mirrors(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(json_handler({"a": 1}))
    rate, total = 4.0, 40
    proxy = await make_proxy(primary.url, candidate.url, mirror={"max_rps": rate})
    started = time.monotonic()
    for i in range(total):
        assert (await send(client, "GET", proxy.url + f"/r/{i}")).status == 200
    elapsed = time.monotonic() - started
    mirrored = len(await proxy.records())
    assert len(primary.seen) == total
    assert mirrored == len(candidate.seen)
    # A burst of one second's worth, then the rate: never more, whatever the machine's speed.
    assert rate <= mirrored <= rate + rate * elapsed + 1, (mirrored, elapsed)
    skipped = total - mirrored
    assert metric(proxy, f'shadowproxy_mirror_skipped_total{{reason="rate_limit"}} {skipped}.0')


async def test_breaker_opens_when_the_candidate_is_down(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"a": 1}))
    proxy = await make_proxy(
        primary.url, dead_url(), mirror={"breaker": {"failures": 3, "pause": 60}}
    )
    assert metric(proxy, "shadowproxy_breaker_open 0.0")
    with capture_logs() as logs:
        for _ in range(10):
            response = await send(client, "GET", proxy.url + "/d")
            assert response.status == 200
            await proxy.proxy.dispatcher.idle()  # this mirror's result is in
    records = await proxy.records()
    assert [r["candidate"]["error"] for r in records] == ["refused"] * 3
    assert metric(proxy, 'shadowproxy_mirror_skipped_total{reason="breaker"} 7.0')
    assert metric(proxy, "shadowproxy_breaker_open 1.0")
    [opened] = [e for e in logs if e["event"] == "breaker_open"]
    assert opened["log_level"] == "warning"
    assert opened["reason"] == "3 consecutive candidate errors"
    assert opened["pause_seconds"] == 60


async def test_breaker_probes_after_the_pause_and_closes(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    healthy = asyncio.Event()

    async def flaky(_: web.BaseRequest) -> web.StreamResponse:
        if healthy.is_set():
            return web.Response(body=orjson.dumps({"a": 1}), content_type="application/json")
        return web.Response(status=503, text="overloaded")

    primary = await serve(json_handler({"a": 1}))
    candidate = await serve(flaky)
    pause = 0.3
    proxy = await make_proxy(
        primary.url, candidate.url, mirror={"breaker": {"failures": 2, "pause": pause}}
    )
    with capture_logs() as logs:
        for _ in range(4):
            await send(client, "GET", proxy.url + "/f")
            await proxy.proxy.dispatcher.idle()
        assert len(candidate.seen) == 2
        assert metric(proxy, "shadowproxy_breaker_open 1.0")
        healthy.set()
        await asyncio.sleep(pause * 1.5)  # the breaker's pause is time itself: nothing to await
        for _ in range(3):
            await send(client, "GET", proxy.url + "/f")
            await proxy.proxy.dispatcher.idle()
    assert len(candidate.seen) == 5  # the probe, then mirroring as usual
    assert metric(proxy, "shadowproxy_breaker_open 0.0")
    assert metric(proxy, 'shadowproxy_mirror_skipped_total{reason="breaker"} 2.0')
    events = [e["event"] for e in logs if e["event"].startswith("breaker_")]
    assert events == ["breaker_open", "breaker_half_open", "breaker_closed"]
    records = await proxy.records()
    assert [r["outcome"] for r in records] == ["mismatch"] * 2 + ["match"] * 3


async def test_reload_swaps_rules_and_keeps_an_open_breaker(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession, tmp_path: Any
) -> None:
    primary = await serve(json_handler({"a": 1}))
    down = dead_url()
    settings: dict[str, Any] = {"mirror": {"breaker": {"failures": 1, "pause": 60}}}
    proxy = await make_proxy(primary.url, down, **settings)
    await send(client, "GET", proxy.url + "/x")
    await proxy.proxy.dispatcher.idle()
    assert metric(proxy, "shadowproxy_breaker_open 1.0")

    reloaded = proxy_config(
        primary.url,
        down,
        proxy.log_path,
        **merge(settings, {"mirror": {"rules": [{"match": "/off", "mirror": False}]}}),
    )
    proxy.proxy.primary_path.configure(reloaded)
    proxy.proxy.dispatcher.configure(reloaded)
    await send(client, "GET", proxy.url + "/off")
    await send(client, "GET", proxy.url + "/x")
    assert metric(proxy, 'shadowproxy_mirror_skipped_total{reason="rule"} 1.0')
    assert metric(proxy, 'shadowproxy_mirror_skipped_total{reason="breaker"} 1.0')
    assert metric(proxy, "shadowproxy_breaker_open 1.0")

    without = proxy_config(primary.url, down, proxy.log_path)
    proxy.proxy.dispatcher.configure(without)
    assert metric(proxy, "shadowproxy_breaker_open 0.0")


async def test_probe_answered_early_by_the_primary_passes_its_turn(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    """The primary answers before reading the upload: nothing is mirrored, and neither the
    in-flight slot nor the half-open breaker's probe stays taken."""
    healthy = asyncio.Event()

    async def flaky(_: web.BaseRequest) -> web.StreamResponse:
        return web.Response(status=200 if healthy.is_set() else 503)

    async def primary_handler(request: web.BaseRequest) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(status=401)  # without reading the body
        return web.Response(status=200)

    primary = await serve(primary_handler, read_body=False)
    candidate = await serve(flaky)
    pause = 0.2
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        mirror={"methods": ["GET", "POST"], "breaker": {"failures": 1, "pause": pause}},
    )
    await send(client, "GET", proxy.url + "/a")
    await proxy.proxy.dispatcher.idle()
    assert metric(proxy, "shadowproxy_breaker_open 1.0")
    await asyncio.sleep(pause * 1.5)  # the breaker's pause is time itself: nothing to await

    answered = asyncio.Event()

    async def upload() -> AsyncIterator[bytes]:
        yield b"x" * 1024
        await answered.wait()  # the rest of the body comes only after the answer
        yield b"y" * 1024

    async with client.post(proxy.url + "/upload", data=upload()) as response:
        assert response.status == 401
        answered.set()
    await proxy.proxy.dispatcher.idle()
    assert proxy.proxy.dispatcher.in_flight == 0
    assert metric(proxy, 'shadowproxy_mirror_skipped_total{reason="request_incomplete"} 1.0')

    healthy.set()
    await send(client, "GET", proxy.url + "/b")  # the next request is the probe
    await proxy.proxy.dispatcher.idle()
    assert [s.raw_path for s in candidate.seen] == ["/a", "/b"]
    assert metric(proxy, "shadowproxy_breaker_open 0.0")


async def test_rule_diff_overrides_reach_the_comparison(
    serve: Serve, make_proxy: MakeProxy, client: aiohttp.ClientSession
) -> None:
    primary = await serve(json_handler({"id": 1, "ts": "10:00"}))
    candidate = await serve(json_handler({"id": 1, "ts": "11:00"}))
    proxy = await make_proxy(
        primary.url,
        candidate.url,
        mirror={"rules": [{"match": "GET /orders/{id}", "diff": {"ignore": ["/ts"]}}]},
    )
    for path in ("/orders/1", "/other/1"):
        async with client.get(proxy.url + path):
            pass
    outcomes = {r["path"]: r["outcome"] for r in await proxy.records()}
    assert outcomes == {"/orders/1": "match", "/other/1": "mismatch"}
