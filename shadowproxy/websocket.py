"""WebSocket upgrades: relayed to the primary in both directions, never mirrored.

Frames pass as they are (text, binary, ping, pong) and a close from either side is passed on
with its code and reason, so the client sees the primary's conversation; a connection that
breaks off without a close is broken off on the other side too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from typing import Any

import aiohttp
from aiohttp import HttpVersion11, WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from shadowproxy.headers import response_headers
from shadowproxy.pool import ConnectFailed, InvalidResponse

# The handshake's own headers: aiohttp makes new ones for the upstream leg.
HANDSHAKE_HEADERS = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
# A close code the peer did not send (1005 "no status") cannot be sent on; 1000 stands in.
NORMAL_CLOSURE = 1000
# What aiohttp reports for a connection that broke off without a Close frame.
ABNORMAL_CLOSURE = 1006


class UpgradeRefused(Exception):
    """The primary answered the upgrade with something else (a 401, a redirect): the client
    gets that status and its end-to-end headers. The body is not available (aiohttp's
    handshake drops it), so the answer has none."""

    def __init__(self, status: int, headers: CIMultiDict[str]) -> None:
        super().__init__(status)
        self.status = status
        self.headers = headers

    @classmethod
    def by_primary(cls, status: int, headers: Mapping[str, str]) -> UpgradeRefused:
        passed = response_headers(headers.items())
        for name in ("Content-Length", "Content-Encoding"):
            passed.popall(name, None)
        return cls(status, passed)


def refuse_redirects() -> aiohttp.TraceConfig:
    """For the WebSocket session: stop at a redirect of the handshake instead of following it.

    ``ws_connect`` follows redirects and has no option against it; the proxy never follows
    one (the client decides), so the first redirect ends the handshake as `UpgradeRefused`.
    """

    async def on_redirect(
        _session: aiohttp.ClientSession, _context: Any, params: aiohttp.TraceRequestRedirectParams
    ) -> None:
        response = params.response
        response.close()
        raise UpgradeRefused.by_primary(response.status, response.headers)

    trace = aiohttp.TraceConfig()
    trace.on_request_redirect.append(on_redirect)
    return trace


def is_upgrade(request: web.BaseRequest) -> bool:
    # A WebSocket handshake is a GET (RFC 6455, section 4.1), and a server must ignore Upgrade
    # in an HTTP/1.0 request (RFC 9110, section 7.8). Any other goes to the primary as a plain
    # request: relayed, it would reach the primary as an HTTP/1.1 GET.
    if request.method != "GET" or request.version < HttpVersion11:
        return False
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return False
    tokens = {t.strip().lower() for t in request.headers.get("Connection", "").split(",")}
    return "upgrade" in tokens


def _protocols(request: web.BaseRequest) -> tuple[str, ...]:
    value = request.headers.get("Sec-WebSocket-Protocol", "")
    return tuple(p.strip() for p in value.split(",") if p.strip())


async def relay(
    request: web.BaseRequest,
    session: aiohttp.ClientSession,
    url: URL,
    headers: CIMultiDict[str],
    options: Mapping[str, Any],
    *,
    max_message_bytes: int,
    on_open: Callable[[], None] | None = None,
) -> web.StreamResponse:
    """Open the upstream WebSocket first, then accept the client's, then pump both ways.

    ``on_open`` is called once the client has its 101. Each message is held whole on its way
    through, so a side sending one larger than ``max_message_bytes`` has its conversation
    closed with 1009 (message too big); the other side is closed with the same code.
    """
    upstream_headers = CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in HANDSHAKE_HEADERS
    )
    try:
        upstream = await session.ws_connect(
            url,
            headers=upstream_headers,
            protocols=_protocols(request),
            autoping=False,
            autoclose=False,
            max_msg_size=max_message_bytes,
            **options,
        )
    except aiohttp.WSServerHandshakeError as error:
        if error.status == 101 or error.headers is None:
            raise InvalidResponse("the primary's WebSocket handshake is not valid") from None
        raise UpgradeRefused.by_primary(error.status, error.headers) from None
    except aiohttp.ClientConnectorError as error:
        raise ConnectFailed(str(error)) from None
    except aiohttp.ClientError as error:  # closed, or garbage instead of an answer
        raise InvalidResponse(str(error)) from None
    async with upstream:
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False,
            autoclose=False,
            max_msg_size=max_message_bytes,
        )
        # The primary's own fields on its 101 (a load balancer's cookie, say) reach the client
        # too; aiohttp writes the handshake's.
        handshake: aiohttp.ClientResponse | None = getattr(upstream, "_response", None)
        if handshake is not None:
            for name, value in response_headers(handshake.headers.items()).items():
                if name.lower() not in HANDSHAKE_HEADERS:
                    client.headers.add(name, value)
        await client.prepare(request)
        if on_open is not None:
            on_open()
        upstream_connection = handshake.connection if handshake is not None else None
        pumps = [
            asyncio.ensure_future(
                _pump(client, upstream, upstream_connection and upstream_connection.transport)
            ),
            asyncio.ensure_future(_pump(upstream, client, request.transport)),
        ]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            with contextlib.suppress(ConnectionError, RuntimeError):
                await client.close()
    return client


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink_transport: asyncio.Transport | None,
) -> None:
    # receive(), not ``async for``: iterating drops the CLOSE message, and its reason with it.
    while True:
        message = await source.receive()
        if message.type is WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type is WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type is WSMsgType.PING:
            await sink.ping(message.data)
        elif message.type is WSMsgType.PONG:
            await sink.pong(message.data)
        else:  # CLOSE, CLOSING, CLOSED or ERROR: the conversation is over
            break
    code = source.close_code or NORMAL_CLOSURE
    if message.type is WSMsgType.ERROR and isinstance(message.data, aiohttp.WebSocketError):
        # The proxy refused what the source sent (1009 too big, 1002 not the protocol) and
        # told it so; aiohttp reports the end as abnormal, but the sink is told the reason.
        code = message.data.code
    if code == ABNORMAL_CLOSURE:
        # The source's connection broke off without a Close frame, and 1006 must never be sent
        # in one (RFC 6455, section 7.4.1): the sink's is broken off too, so its peer sees the
        # same abnormal closure. Frames still buffered for it are lost, as they would be anyway.
        if sink_transport is not None:
            sink_transport.abort()
        return
    reason = message.extra if message.type is WSMsgType.CLOSE and message.extra else ""
    with contextlib.suppress(ConnectionError, RuntimeError):
        await sink.close(code=code if code != 1005 else NORMAL_CLOSURE, message=reason.encode())
