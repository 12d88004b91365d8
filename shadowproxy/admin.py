"""The admin listener: health, readiness, metrics, the active config and the live report.

It binds loopback by default. Bound elsewhere, the endpoints that reveal traffic or config
(``/config``, ``/report``, ``/report.json``) require ``Authorization: Bearer <admin_token>``;
on loopback they answer requests whose Host names this machine (or that carry the token).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

import orjson
from aiohttp import web
from yarl import URL

from shadowproxy.config import Config
from shadowproxy.headers import OWN_ANSWER_HEADERS
from shadowproxy.report.html import render_html
from shadowproxy.report.jsonout import to_json
from shadowproxy.report.summary import Summary

PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# How long /readyz waits for a TCP connection to the primary.
READY_PROBE_TIMEOUT = 1.0
REPORT_REFRESH_SECONDS = 5


@dataclass(frozen=True)
class LiveReport:
    """The live report of the running proxy: its summary, taken on the event loop (the only
    place the aggregates change) in steps, then rendered in a thread. A page of a few hundred
    endpoints takes a tenth of a second to make; in one piece on the loop, each refresh would
    hold up every request the process serves for that long."""

    summary: Callable[[], Awaitable[Summary]]
    title: str

    async def html(self, refresh_seconds: int | None) -> str:
        summary = await self.summary()
        return await asyncio.to_thread(render_html, summary, refresh_seconds, title=self.title)

    async def json(self) -> bytes:
        return await asyncio.to_thread(to_json, await self.summary())


def _json(data: object, status: int = 200) -> web.Response:
    return web.Response(
        body=orjson.dumps(data, option=orjson.OPT_INDENT_2),
        status=status,
        content_type="application/json",
    )


async def primary_reachable(config: Config) -> bool:
    primary = config.primary
    try:
        async with asyncio.timeout(READY_PROBE_TIMEOUT):
            if primary.unix_socket is not None:
                _, writer = await asyncio.open_unix_connection(primary.unix_socket)
            else:
                url = URL(primary.url)
                _, writer = await asyncio.open_connection(url.host, url.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def _names_this_machine(host: str) -> bool:
    """Whether a Host header names a loopback address or ``localhost``."""
    try:
        name = urlsplit(f"//{host}").hostname
    except ValueError:
        return False
    if name is None:
        return False
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _authorised(request: web.Request, config: Config) -> web.Response | None:
    """None when the request may see sensitive endpoints, else the refusal to send.

    On a loopback listener no token is needed, but the Host must name this machine: a web
    page whose own name was made to resolve to 127.0.0.1 (DNS rebinding) reaches the listener
    through a local browser, with that name in Host; only a token lets such a request in.
    """
    token = config.effective_admin_token()
    if config.admin.is_loopback and _names_this_machine(request.headers.get("Host", "")):
        return None
    if token is None:
        detail = (
            "the Host header must name this machine (localhost or a loopback address)"
            if config.admin.is_loopback
            else "set admin_token to enable"
        )
        return _json({"error": "forbidden", "detail": detail}, 403)
    sent = request.headers.get("Authorization", "")
    # surrogateescape: the bytes as sent, even when they are not UTF-8 (a wrong token then).
    if hmac.compare_digest(sent.encode("utf-8", "surrogateescape"), f"Bearer {token}".encode()):
        return None
    response = _json({"error": "unauthorized"}, 401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="shadowproxy"'
    return response


async def _name_the_server(_: web.Request, response: web.StreamResponse) -> None:
    # As on the proxy's own answers: no Python and aiohttp versions for whoever can reach it.
    response.headers.update(OWN_ANSWER_HEADERS)


def build_admin_app(
    *,
    config: Callable[[], Config],
    metrics: Callable[[], bytes],
    report: LiveReport | None = None,
    serving: Callable[[], bool] | None = None,
) -> web.Application:
    """``config`` and ``metrics`` are read per request, so reloads and new counts show at once.

    ``serving`` tells a supervisor's admin whether any worker takes requests now; without it,
    this process serves them itself.
    """

    async def healthz(_: web.Request) -> web.Response:
        return _json({"status": "ok"})

    async def readyz(_: web.Request) -> web.Response:
        if serving is not None and not serving():
            return _json({"status": "not ready", "reason": "no worker is serving"}, status=503)
        if await primary_reachable(config()):
            return _json({"status": "ready"})
        return _json({"status": "not ready", "reason": "primary unreachable"}, status=503)

    async def metrics_endpoint(_: web.Request) -> web.Response:
        response = web.Response(body=metrics())
        response.headers["Content-Type"] = PROMETHEUS_CONTENT_TYPE
        return response

    async def config_endpoint(request: web.Request) -> web.Response:
        active = config()
        if refusal := _authorised(request, active):
            return refusal
        return _json({"digest": active.digest(), "config": active.redacted()})

    app = web.Application()
    app.on_response_prepare.append(_name_the_server)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_get("/config", config_endpoint)
    if report is not None:
        live = report

        async def report_html(request: web.Request) -> web.Response:
            if refusal := _authorised(request, config()):
                return refusal
            page = await live.html(REPORT_REFRESH_SECONDS)
            return web.Response(text=page, content_type="text/html")

        async def report_json(request: web.Request) -> web.Response:
            if refusal := _authorised(request, config()):
                return refusal
            return web.Response(body=await live.json(), content_type="application/json")

        app.router.add_get("/report", report_html)
        app.router.add_get("/report.json", report_json)
    return app
