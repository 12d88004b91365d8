"""Counts over time in at most ``MAX_BUCKETS`` fixed-width buckets.

Buckets are aligned to the epoch, so records may arrive in any order and series built from
different logs merge exactly. When the covered span needs more buckets than allowed, the width
steps up the ladder of ``WIDTHS`` (each divides the next, so old buckets fold without loss).
"""

from __future__ import annotations

from dataclasses import dataclass

MAX_BUCKETS = 240
WIDTHS = (1, 2, 10, 20, 60, 120, 600, 1200, 3600, 7200, 21600, 43200, 86400)
"""Seconds; past the last one the width doubles."""

COMPARED, MISMATCHES, ERRORS = 0, 1, 2


@dataclass(frozen=True, slots=True)
class TimeBucket:
    start: float
    """Epoch seconds."""
    compared: int
    mismatches: int
    candidate_errors: int


def _next_width(width: int) -> int:
    for candidate in WIDTHS:
        if candidate > width:
            return candidate
    return width * 2


class TimeSeries:
    """Compared, mismatching and failed exchanges per time bucket."""

    __slots__ = ("buckets", "high", "low", "width")

    def __init__(self) -> None:
        self.width = WIDTHS[0]
        self.buckets: dict[int, list[int]] = {}
        self.low = 0
        self.high = -1
        """Lowest and highest bucket keys; ``high < low`` while empty."""

    def add(self, epoch: float, column: int = COMPARED) -> None:
        """Count one exchange; ``column`` names the count it adds to besides ``COMPARED``."""
        counts = self.buckets.get(int(epoch // self.width))
        if counts is None:
            counts = self._new_bucket(epoch)
        counts[COMPARED] += 1
        if column != COMPARED:
            counts[column] += 1

    def _new_bucket(self, epoch: float) -> list[int]:
        key = int(epoch // self.width)
        if self.high < self.low:
            self.low = self.high = key
        else:
            self.low, self.high = min(self.low, key), max(self.high, key)
        while self.high - self.low + 1 > MAX_BUCKETS:
            self._widen()
        return self.buckets.setdefault(int(epoch // self.width), [0, 0, 0])

    def _widen(self) -> None:
        new_width = _next_width(self.width)
        factor = new_width // self.width
        folded: dict[int, list[int]] = {}
        for key, counts in self.buckets.items():
            target = folded.setdefault(key // factor, [0, 0, 0])
            for i, n in enumerate(counts):
                target[i] += n
        self.buckets = folded
        self.width = new_width
        self.low //= factor
        self.high //= factor

    def merge(self, other: TimeSeries) -> None:
        while self.width < other.width:
            self._widen()
        for key, counts in other.buckets.items():
            epoch = key * other.width
            target = self.buckets.get(int(epoch // self.width)) or self._new_bucket(epoch)
            for i, n in enumerate(counts):
                target[i] += n

    def snapshot(self) -> list[TimeBucket]:
        """Every bucket from the first to the last, empty ones included, oldest first."""
        empty = (0, 0, 0)
        result = []
        for key in range(self.low, self.high + 1):
            c = self.buckets.get(key, empty)
            result.append(TimeBucket(key * self.width, c[0], c[1], c[2]))
        return result
