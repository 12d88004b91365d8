"""Diff rules through the real process: ignored, reordered and tolerated fields match."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp
import orjson
import pytest
from aiohttp import web

from tests.conftest import Backend, Handler
from tests.e2e.conftest import StartProxy

pytestmark = pytest.mark.e2e

Serve = Callable[..., Awaitable[Backend]]

PRIMARY = {
    "order": {"id": 17, "total": 100.0, "currency": "EUR"},
    "items": [
        {"id": 1, "qty": 2, "updated_at": "10:00"},
        {"id": 2, "qty": 1, "updated_at": "10:01"},
    ],
    "tags": ["new", "gift", "express"],
    "trace_id": "aaaa",
    "meta": {"debug": {"trace_id": "bbbb"}},
}
CANDIDATE_EQUIVALENT = {
    "order": {"id": 17, "total": 100.00001, "currency": "EUR"},  # within 0.1%
    "items": [
        {"id": 2, "qty": 1, "updated_at": "11:01"},
        {"id": 1, "qty": 2, "updated_at": "11:00"},
    ],
    "tags": ["express", "new", "gift"],
    "trace_id": "cccc",
    "meta": {"debug": {"trace_id": "dddd"}},
}
RULES = {
    "ignore": ["/items/*/updated_at", "/**/trace_id"],
    "unordered": ["/tags", {"path": "/items", "key": "id"}],
    "tolerance": "0.1%",
}


def json_handler(by_path: dict[str, object]) -> Handler:
    async def handler(request: web.BaseRequest) -> web.StreamResponse:
        body = orjson.dumps(by_path[request.path])
        return web.Response(body=body, content_type="application/json")

    return handler


async def test_rules_cancel_equivalent_differences_and_keep_the_real_one(
    serve: Serve, start_proxy: StartProxy, client: aiohttp.ClientSession
) -> None:
    regressed = {
        **CANDIDATE_EQUIVALENT,
        "order": {**CANDIDATE_EQUIVALENT["order"], "currency": "USD"},
    }
    primary = await serve(json_handler({"/orders/17": PRIMARY, "/orders/18": PRIMARY}))
    candidate = await serve(
        json_handler({"/orders/17": CANDIDATE_EQUIVALENT, "/orders/18": regressed})
    )
    proxy = await start_proxy(
        primary.url,
        candidate.url,
        args=("--workers", "1"),
        diff={"endpoints": [{"match": "GET /orders/{id}", **RULES}]},
    )
    for order in (17, 18):
        async with client.get(f"{proxy.url}/orders/{order}") as response:
            assert await response.json() == PRIMARY
    records = await proxy.wait_records(2)
    assert await proxy.stop() == 0
    by_path = {r["path"]: r for r in records}
    assert by_path["/orders/17"]["outcome"] == "match"
    assert by_path["/orders/17"]["differences"] == []
    assert by_path["/orders/18"]["outcome"] == "mismatch"
    assert by_path["/orders/18"]["differences"] == [
        {
            "where": "body",
            "path": "/order/currency",
            "kind": "changed",
            "primary": "EUR",
            "candidate": "USD",
        }
    ]
