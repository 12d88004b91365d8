"""A backend that misbehaves on purpose, chosen by the request path."""

from __future__ import annotations

import asyncio
import socket
import struct

OK_BODY = b'{"ok": true}'
CHUNK = b"z" * 65536
BIG = 50 * 1024 * 1024


def ok_answer(body: bytes = OK_BODY) -> bytes:
    return (
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset instead of an orderly FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class FaultyBackend:
    """Answers by path:

    ``/ok``        a small JSON body (keep-alive)
    ``/reset``     half a body, then a TCP reset
    ``/reset-now`` a TCP reset before any answer
    ``/garbage``   bytes that are not HTTP
    ``/hang``      nothing at all, until the client gives up
    ``/hang-mid``  headers and half the body, then nothing
    ``/endless``   a chunked body that never ends
    ``/big``       a 50 MB body
    ``/short``     ``Content-Length: 100`` and 40 bytes, then a close
    ``/cut``       two chunks of a chunked body, then a close without the last chunk
    """

    def __init__(self) -> None:
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._connection, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        await asyncio.gather(*self._handlers, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    @property
    def open_connections(self) -> int:
        return len(self._handlers)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                path = head.split(b" ", 2)[1].split(b"?")[0].decode()
                if not await self._answer(path, reader, writer):
                    break
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()
            self._handlers.discard(task)

    async def _answer(
        self, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> bool:
        """Answer one request; False when the connection is done."""
        if path == "/reset-now":
            reset(writer)
            return False
        if path == "/reset":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b"r" * 1000)
            await writer.drain()
            await asyncio.sleep(0.05)
            reset(writer)
            return False
        if path == "/garbage":
            writer.write(b"SSH-2.0-OpenSSH_9.6\r\nProtocol mismatch.\r\n\r\n")
            await writer.drain()
            return False
        if path in ("/hang", "/hang-mid"):
            if path == "/hang-mid":
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"h" * 40)
                await writer.drain()
            await reader.read()  # until the client closes
            return False
        if path == "/endless":
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            while True:
                writer.write(b"%x\r\n%s\r\n" % (len(CHUNK), CHUNK))
                await writer.drain()
        if path == "/big":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % BIG)
            for _ in range(BIG // len(CHUNK)):
                writer.write(CHUNK)
                await writer.drain()
            return True
        if path == "/short":
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"s" * 40)
            await writer.drain()
            return False
        if path == "/cut":
            writer.write(
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                b"5\r\nhello\r\n6\r\n world\r\n"
            )
            await writer.drain()
            return False
        writer.write(ok_answer())
        await writer.drain()
        return True
