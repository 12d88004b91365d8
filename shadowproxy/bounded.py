"""A bounded copy of a body as it streams past: what the mirror, the comparison and the
capture keep of a body, never more than their limit, while the size counts everything."""

from __future__ import annotations


class BoundedCopy:
    __slots__ = ("chunks", "kept", "limit", "size")

    def __init__(self, limit: int) -> None:
        self.chunks: list[bytes] = []
        self.kept = 0
        self.size = 0
        self.limit = limit

    def add(self, chunk: bytes) -> None:
        self.size += len(chunk)
        room = self.limit - self.kept
        if room > 0:
            piece = chunk if len(chunk) <= room else chunk[:room]
            self.chunks.append(piece)
            self.kept += len(piece)

    @property
    def overflowed(self) -> bool:
        """More arrived than was kept."""
        return self.size > self.kept

    def body(self) -> bytes:
        return b"".join(self.chunks)
