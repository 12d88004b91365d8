"""The supervisor's config channel to a worker: a pipe of length-prefixed config texts.

Workers never read the config file themselves. The supervisor validates the file once and
sends the same text to every worker: the one it starts with, then every reload. Read
separately, a file edited between two workers' reads would leave them running different
configs behind one port. A worker started again after reloads gets the start text, then the
text in force marked as a catch-up: applied like a reload, but not logged or counted as one.
"""

from __future__ import annotations

import asyncio
import io
import os
import struct
from collections.abc import Callable
from typing import Final

from shadowproxy import oplog

_LENGTH: Final = struct.Struct(">I")
_RELOAD: Final = b"r"
_CATCH_UP: Final = b"c"
_HEAD: Final = _LENGTH.size + 1


def frame(text: str, *, catch_up: bool = False) -> bytes:
    """One message: the text's length in four bytes, its kind in one, then the text in UTF-8."""
    data = text.encode()
    return _LENGTH.pack(len(data)) + (_CATCH_UP if catch_up else _RELOAD) + data


def read_frame(fd: int) -> str | None:
    """The next message, read blocking and no further than its end; None at end of file."""
    head = _read_exactly(fd, _HEAD)
    if head is None:
        return None
    (size,) = _LENGTH.unpack_from(head)
    body = _read_exactly(fd, size)
    if body is None:
        return None
    return body.decode()


def _read_exactly(fd: int, size: int) -> bytes | None:
    parts: list[bytes] = []
    missing = size
    while missing:
        part = os.read(fd, missing)
        if not part:
            return None
        parts.append(part)
        missing -= len(part)
    return b"".join(parts)


OnText = Callable[[str, bool], object]
"""Called with a text and whether it is a catch-up."""


class FrameReader(asyncio.Protocol):
    """Calls ``on_text`` with the newest whole message of each read from a pipe.

    Only the newest text counts: messages that queued up while the worker was busy (a burst
    of reloads) would each be applied only to be replaced at once.
    """

    def __init__(self, on_text: OnText) -> None:
        self._on_text = on_text
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        newest: tuple[str, bool] | None = None
        while len(self._buffer) >= _HEAD:
            (size,) = _LENGTH.unpack_from(self._buffer)
            end = _HEAD + size
            if len(self._buffer) < end:
                break
            kind = self._buffer[_LENGTH.size : _HEAD]
            newest = self._buffer[_HEAD:end].decode(), kind == _CATCH_UP
            del self._buffer[:end]
        if newest is not None:
            try:
                self._on_text(*newest)
            except Exception as error:
                # Raised here, it would close the pipe: no later reload would reach the worker.
                oplog.get().error("config_apply_failed", error=f"{type(error).__name__}: {error}")


def _pipe(fd: int, mode: str) -> io.FileIO:
    # An unbuffered file: a transport takes it over and closes it.
    return io.FileIO(fd, mode)


async def receive(fd: int, on_text: OnText) -> asyncio.ReadTransport:
    """Call ``on_text`` with each message that arrives on ``fd`` from now on."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.connect_read_pipe(lambda: FrameReader(on_text), _pipe(fd, "r"))
    return transport


async def sender(fd: int) -> asyncio.WriteTransport:
    """``fd`` as a transport: what the pipe cannot take yet waits in its buffer, never
    blocking the loop, however large the config."""
    loop = asyncio.get_running_loop()
    pipe = _pipe(fd, "w")
    try:
        transport, _ = await loop.connect_write_pipe(asyncio.Protocol, pipe)
    except BaseException:
        pipe.close()
        raise
    return transport
