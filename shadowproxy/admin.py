"""The admin listener: health, readiness, metrics and the active config, on loopback by default."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from shadowproxy.config import Config
from shadowproxy.metrics import Metrics

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
    )


def build_admin_app(
    *,
    config: Callable[[], Config],
    metrics: Metrics,
    ready: Callable[[], Awaitable[bool]],
) -> web.Application:
    """``config`` and ``ready`` are read per request, so reloads show at once."""

    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if await ready():
            return _json({"status": "ready"})
        return _json({"status": "not ready", "reason": "primary unreachable"}, status=503)

    async def metrics_endpoint(_: web.Request) -> web.Response:
        response = web.Response(body=metrics.render())
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response

    async def config_endpoint(_: web.Request) -> web.Response:
        active = config()
        return _json({"digest": active.digest(), "config": active.redacted()})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/config", config_endpoint)
    return app
