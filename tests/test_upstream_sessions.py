"""Upstream sessions send exactly the headers they are given, nothing aiohttp would add."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from aiohttp import web
from multidict import CIMultiDict

from shadowproxy.config import Backend as BackendConfig
from shadowproxy.upstream import SKIP_AUTO_HEADERS, make_session, target_url
from tests.conftest import Backend

Serve = Callable[..., Awaitable[Backend]]


async def ok(request: web.BaseRequest) -> web.Response:
    return web.Response(body=b"{}")


@pytest.mark.parametrize("stream_timeout", [True, False])
@pytest.mark.parametrize(("method", "body"), [("GET", None), ("POST", b'{"a": 1}')])
async def test_no_header_is_added(
    serve: Serve, stream_timeout: bool, method: str, body: bytes | None
) -> None:
    backend = await serve(ok)
    session = make_session(
        BackendConfig(url=backend.url), name="primary", stream_timeout=stream_timeout
    )
    headers = CIMultiDict([("Host", "shop.example"), ("X-Thing", "1")])
    try:
        async with session.request(
            method, target_url(BackendConfig(url=backend.url), "/p?q=1"), headers=headers, data=body
        ) as response:
            assert response.status == 200
        # The caller's headers are not changed either.
        assert list(headers.items()) == [("Host", "shop.example"), ("X-Thing", "1")]
    finally:
        await session.close()
    seen = backend.seen[0]
    names = {name.lower() for name, _ in seen.headers}
    for name in SKIP_AUTO_HEADERS:
        assert name.lower() not in names
    assert seen.header("Host") == "shop.example"
    assert seen.header("X-Thing") == "1"
    assert seen.body == (body or b"")


async def test_headers_the_client_sent_are_kept(serve: Serve) -> None:
    backend = await serve(ok)
    session = make_session(BackendConfig(url=backend.url), name="primary", stream_timeout=True)
    sent = CIMultiDict(
        [
            ("Host", "h"),
            ("User-Agent", "curl/8"),
            ("Accept", "application/json"),
            ("Accept-Encoding", "br"),
            ("Content-Type", "text/plain"),
        ]
    )
    try:
        async with session.post(backend.url + "/", headers=sent, data=b"x"):
            pass
    finally:
        await session.close()
    seen = backend.seen[0]
    for name, value in sent.items():
        assert seen.header(name) == value
