"""Gathering differences: all are counted, only the first few are kept, values are bounded."""

from __future__ import annotations

from typing import Any

import orjson

from shadowproxy.compare.model import Difference, Kind, Where
from shadowproxy.logsafe import loggable, scrubbed

MAX_VALUE_CHARS = 512
"""Longer strings are cut in a recorded difference; the log is for reading, not archiving."""
MAX_VALUE_BYTES = 1024
"""Larger objects and arrays are recorded as a summary with their size and type."""


def brief(value: Any) -> Any:
    """The value as recorded: itself when small, otherwise a bounded stand-in."""
    if type(value) is int:
        # Valid JSON beyond 64 bits is recorded as its digits: the log (orjson) stops there.
        value = scrubbed(value)
        if type(value) is int:
            return value
    if type(value) is str:
        value = loggable(value)
        if len(value) > MAX_VALUE_CHARS:
            return f"{value[:MAX_VALUE_CHARS]}... [{len(value) - MAX_VALUE_CHARS} more chars]"
        return value
    if type(value) is dict or type(value) is list:
        try:
            size = len(orjson.dumps(value))
        except orjson.JSONEncodeError:
            size = -1  # too deep, or holding lone surrogates: only a summary is safe to log
        if size > MAX_VALUE_BYTES or size < 0:
            noun = "keys" if type(value) is dict else "items"
            kind = "object" if type(value) is dict else "array"
            summary: dict[str, Any] = {"summary": f"{kind} with {len(value)} {noun}"}
            if size > 0:
                summary["bytes"] = size
            return summary
    return value


class Collector:
    """Counts every difference and keeps the first ``limit``, in the order found."""

    __slots__ = ("differences", "limit", "notes", "total")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.total = 0
        self.differences: list[Difference] = []
        self.notes: list[str] = []

    @property
    def full(self) -> bool:
        return len(self.differences) >= self.limit

    def add(self, where: Where, path: str, kind: Kind, primary: Any, candidate: Any) -> None:
        self.total += 1
        if len(self.differences) < self.limit:
            self.differences.append(
                Difference(where, loggable(path), kind, brief(primary), brief(candidate))
            )

    def note(self, note: str) -> None:
        if note not in self.notes:
            self.notes.append(note)
