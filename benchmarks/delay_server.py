"""A slow candidate for the proxy benchmark: answers every request with one file, late.

Used only when nginx's echo module (``echo_sleep``) is not installed. A bare asyncio protocol,
so that thousands of waiting requests cost almost nothing: it parses just enough HTTP/1.1 for
the GET requests the benchmark sends (no request bodies), keeps connections alive and answers
``--delay`` seconds after each request arrives.

    python benchmarks/delay_server.py --port 8081 --delay 0.2 --body candidate.json
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path
from typing import cast


class DelayedResponder(asyncio.Protocol):
    def __init__(self, response: bytes, delay: float) -> None:
        self._response = response
        self._delay = delay
        self._buffer = b""
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        loop = asyncio.get_running_loop()
        while (end := self._buffer.find(b"\r\n\r\n")) >= 0:
            self._buffer = self._buffer[end + 4 :]
            loop.call_later(self._delay, self._answer)

    def _answer(self) -> None:
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write(self._response)

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve(port: int, delay: float, body: bytes) -> None:
    head = (
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    response = head.encode() + body
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: DelayedResponder(response, delay), "127.0.0.1", port, backlog=4096
    )
    async with server:
        await server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.2)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    try:
        import uvloop  # type: ignore[import-not-found]

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.delay, args.body.read_bytes()))


if __name__ == "__main__":
    main()
