"""WebSocket upgrades: relayed to the primary in both directions, never mirrored.

Frames pass as they are (text, binary, ping, pong) and a close from either side is passed on
with its code, so the client sees the primary's conversation.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from multidict import CIMultiDict
from yarl import URL

from shadowproxy.headers import OWN_ANSWER_HEADERS

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


def is_upgrade(request: web.BaseRequest) -> bool:
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
) -> web.StreamResponse:
    """Open the upstream WebSocket first, then accept the client's, then pump both ways."""
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
            max_msg_size=0,
            **options,
        )
    except aiohttp.WSServerHandshakeError as error:
        # The primary said no to the upgrade: the client hears the same status.
        return web.Response(
            status=error.status, text=error.message or "", headers=OWN_ANSWER_HEADERS
        )
    async with upstream:
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            autoping=False,
            autoclose=False,
            max_msg_size=0,
        )
        await client.prepare(request)
        pumps = [
            asyncio.ensure_future(_pump(client, upstream)),
            asyncio.ensure_future(_pump(upstream, client)),
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
) -> None:
    async for message in source:
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
    with contextlib.suppress(ConnectionError, RuntimeError):
        await sink.close(code=code if code != 1005 else NORMAL_CLOSURE)
