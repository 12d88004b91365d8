"""Undoing Content-Encoding (gzip, deflate, br, zstd), bounded against decompression bombs."""

from __future__ import annotations

import zlib
from collections.abc import Callable

import brotli
import zstandard

_IDENTITY = frozenset({"", "identity"})
_GZIP_WBITS = 16 + zlib.MAX_WBITS
_RAW_DEFLATE_WBITS = -zlib.MAX_WBITS
MAX_MEMBERS = 32
"""gzip members or zstd frames one body may hold. Servers send one; each further one costs a
copy of the rest of the body, so thousands of empty members would take seconds to decode."""


class DecodeError(Exception):
    """The body is not valid in the coding its headers claim, or the coding is unknown."""


class TooLarge(DecodeError):
    """The decoded body would exceed the limit."""


def codings(content_encoding: str | None) -> tuple[str, ...]:
    """The codings applied, in the order they were applied; identity left out."""
    if not content_encoding:
        return ()
    names = (name.strip().lower() for name in content_encoding.split(","))
    return tuple(name for name in names if name not in _IDENTITY)


def _zlib(data: bytes, limit: int, wbits: int) -> bytes:
    out = bytearray()
    for _ in range(MAX_MEMBERS):
        decompressor = zlib.decompressobj(wbits)
        out += decompressor.decompress(data, limit + 1 - len(out))
        if len(out) > limit or decompressor.unconsumed_tail:
            raise TooLarge(f"decoded body exceeds {limit} bytes")
        if not decompressor.eof:
            raise DecodeError("compressed stream ends early")
        data = decompressor.unused_data
        # gzip allows several members one after another; anything else after the end is junk.
        if not data or wbits != _GZIP_WBITS:
            return bytes(out)
    raise DecodeError(f"more than {MAX_MEMBERS} gzip members")


def _gzip(data: bytes, limit: int) -> bytes:
    return _zlib(data, limit, _GZIP_WBITS)


def _deflate(data: bytes, limit: int) -> bytes:
    # RFC 9110 says zlib-wrapped, but some servers send raw deflate; accept both.
    try:
        return _zlib(data, limit, zlib.MAX_WBITS)
    except TooLarge:
        raise
    except (zlib.error, DecodeError):
        return _zlib(data, limit, _RAW_DEFLATE_WBITS)


def _brotli(data: bytes, limit: int) -> bytes:
    decompressor = brotli.Decompressor()
    out = decompressor.process(data, output_buffer_limit=limit + 1)
    if len(out) > limit:
        raise TooLarge(f"decoded body exceeds {limit} bytes")
    if not decompressor.is_finished():
        raise DecodeError("compressed stream ends early")
    return bytes(out)


def _zstd(data: bytes, limit: int) -> bytes:
    # The stream reader bounds the output but does not tell a cut frame from a whole one;
    # once the size is known to be safe, a decompressobj says whether the frame was complete.
    reader = zstandard.ZstdDecompressor().stream_reader(data, read_across_frames=True)
    if len(reader.read(limit + 1)) > limit:
        raise TooLarge(f"decoded body exceeds {limit} bytes")
    decompressor = zstandard.ZstdDecompressor().decompressobj()
    out = decompressor.decompress(data)
    if not decompressor.eof:
        raise DecodeError("compressed stream ends early")
    frames = 1
    while decompressor.unused_data:  # further frames
        frames += 1
        if frames > MAX_MEMBERS:
            raise DecodeError(f"more than {MAX_MEMBERS} zstd frames")
        data = decompressor.unused_data
        decompressor = zstandard.ZstdDecompressor().decompressobj()
        out += decompressor.decompress(data)
        if not decompressor.eof:
            raise DecodeError("compressed stream ends early")
    return out


_DECODERS: dict[str, Callable[[bytes, int], bytes]] = {
    "gzip": _gzip,
    "x-gzip": _gzip,
    "deflate": _deflate,
    "br": _brotli,
    "zstd": _zstd,
}


def head(body: bytes, applied: tuple[str, ...], size: int) -> bytes | None:
    """The first ``size`` bytes of the body with its coding undone, decoding no further; None
    when they cannot be had cheaply (several codings, an unknown one, a broken stream)."""
    if not applied:
        return body[:size]
    if len(applied) > 1:
        return None
    try:
        match applied[0]:
            case "gzip" | "x-gzip":
                return zlib.decompressobj(_GZIP_WBITS).decompress(body, size)
            case "deflate":
                try:
                    return zlib.decompressobj().decompress(body, size)
                except zlib.error:  # raw deflate, as some servers send it
                    return zlib.decompressobj(_RAW_DEFLATE_WBITS).decompress(body, size)
            case "br":
                start: bytes = brotli.Decompressor().process(body, output_buffer_limit=size)
                return start[:size]
            case "zstd":
                with zstandard.ZstdDecompressor().stream_reader(body) as reader:
                    return reader.read(size)
    except (zlib.error, brotli.error, zstandard.ZstdError, ValueError):
        return None
    return None


def decode(body: bytes, applied: tuple[str, ...], limit: int) -> bytes:
    """The body with ``applied`` codings undone, last applied first.

    Raises DecodeError (TooLarge past ``limit`` bytes); never anything else.
    """
    if not body:
        return body  # HEAD, 204 and 304 responses keep their Content-Encoding
    for coding in reversed(applied):
        decoder = _DECODERS.get(coding)
        if decoder is None:
            raise DecodeError(f"unsupported content-coding {coding!r}")
        try:
            body = decoder(body, limit)
        except DecodeError:
            raise
        except (zlib.error, brotli.error, zstandard.ZstdError, ValueError) as error:
            raise DecodeError(f"{coding}: {error}") from None
    return body
