"""A bounded copy of a body as it streams past: what the mirror, the comparison and the
capture keep of a body, never more than their limit, while the size counts everything."""

from __future__ import annotations

from typing import Final

SMALL: Final = 4096
"""Pieces shorter than this are joined as they come. A chunked body arrives a chunk at a time,
and a bytes object costs about 40 bytes besides its content: kept one by one, a body of
2-byte chunks held some 20 times its limit (a 10 MiB cap, 200 MiB)."""


class BoundedCopy:
    __slots__ = ("chunks", "kept", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes | bytearray] = []
        self.kept = 0
        self.size = 0
        self.limit = limit

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.limit - self.kept
        if room > 0:
            piece = chunk if len(chunk) <= room else chunk[:room]
            chunks = self.chunks
            if chunks and len(piece) < SMALL and len(last := chunks[-1]) < SMALL:
                # Every kept piece but the last is SMALL or more, or followed by one that is:
                # the overhead stays a small fraction of what is kept, whatever the chunk sizes.
                if isinstance(last, bytes):
                    last = chunks[-1] = bytearray(last)
                last += piece
            else:
                chunks.append(piece)
            self.kept += len(piece)

    @property
    def overflowed(self) -> bool:
        """More arrived than was kept."""
        return self.size > self.kept

    def body(self) -> bytes:
        return b"".join(self.chunks)
