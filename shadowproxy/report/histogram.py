"""A fixed-size, log-scaled latency histogram with a known relative error.

Bucket ``i`` holds the values in ``(GAMMA**(i-1), GAMMA**i]`` milliseconds, shifted so that
index 0 is ``MIN_MS``. A percentile is reported as the bucket's value
``2 * GAMMA**i / (GAMMA + 1)``, which is within ``RELATIVE_ERROR`` (1 %) of the exact
nearest-rank percentile of the values added, for any value in ``[MIN_MS, MAX_MS]``. Smaller
values are counted as ``MIN_MS`` and larger ones as ``MAX_MS``. The memory is one list of
``BUCKETS`` integers, whatever the number of values; two histograms merge by adding counts.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

RELATIVE_ERROR = 0.01
GAMMA = (1 + RELATIVE_ERROR) / (1 - RELATIVE_ERROR)
MIN_MS = 0.001
"""One microsecond: below what a proxy can measure."""
MAX_MS = 3_600_000.0
"""One hour: longer than any timeout a proxy would use."""

_LOG_GAMMA = math.log(GAMMA)
_OFFSET = math.ceil(math.log(MIN_MS) / _LOG_GAMMA)
BUCKETS = math.ceil(math.log(MAX_MS) / _LOG_GAMMA) - _OFFSET + 1

DISPLAY_BOUNDS_MS: tuple[float, ...] = tuple(round(10 ** (exp / 10), 6) for exp in range(-20, 61))
"""Upper bounds of the coarse bins charts use: ten per decade from 0.01 ms to 1000 s."""


def bucket_of(value_ms: float) -> int:
    """The index of the bucket that counts ``value_ms``."""
    if value_ms <= MIN_MS:
        return 0
    if value_ms >= MAX_MS:
        return BUCKETS - 1
    return math.ceil(math.log(value_ms) / _LOG_GAMMA) - _OFFSET


def bucket_value(index: int) -> float:
    """The value reported for a bucket: within ``RELATIVE_ERROR`` of anything it holds."""
    if index == 0:
        return MIN_MS
    upper = GAMMA ** (index + _OFFSET)
    return min(2 * upper / (GAMMA + 1), MAX_MS)


class LatencyHistogram:
    """Counts of latencies in log-scaled buckets, plus their exact count, sum and maximum."""

    __slots__ = ("count", "counts", "max", "total")

    def __init__(self) -> None:
        self.counts: list[int] = [0] * BUCKETS
        self.count = 0
        self.total = 0.0
        self.max = 0.0

    def add(self, value_ms: float) -> None:
        # bucket_of inlined: this runs once per backend per log record.
        if value_ms <= MIN_MS:
            index = 0
        elif value_ms >= MAX_MS:
            index = BUCKETS - 1
        else:
            index = math.ceil(math.log(value_ms) / _LOG_GAMMA) - _OFFSET
        self.counts[index] += 1
        self.count += 1
        self.total += value_ms
        if value_ms > self.max:
            self.max = value_ms

    def merge(self, other: LatencyHistogram) -> None:
        self.counts = [a + b for a, b in zip(self.counts, other.counts, strict=True)]
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def quantile(self, q: float) -> float | None:
        """The nearest-rank ``q`` quantile (0 < q <= 1), or None when nothing was added."""
        return self.quantiles((q,))[0]

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """Several quantiles in one walk over the buckets; ``qs`` in any order."""
        if self.count == 0:
            return [None for _ in qs]
        ranks = [max(1, math.ceil(q * self.count)) for q in qs]
        order = sorted(range(len(qs)), key=lambda i: ranks[i])
        results: list[float | None] = [None] * len(qs)
        seen = 0
        pending = iter(order)
        current = next(pending, None)
        for index, n in enumerate(self.counts):
            if not n:
                continue
            seen += n
            while current is not None and ranks[current] <= seen:
                results[current] = bucket_value(index)
                current = next(pending, None)
            if current is None:
                break
        return results

    @property
    def mean(self) -> float | None:
        return self.total / self.count if self.count else None

    def display_bins(self) -> list[int]:
        """Counts re-binned into the coarse bins of ``DISPLAY_BOUNDS_MS`` (last bin open)."""
        bins = [0] * len(DISPLAY_BOUNDS_MS)
        for index, n in enumerate(self.counts):
            if n:
                bins[_DISPLAY_BIN[index]] += n
        return bins


def _display_bin(index: int) -> int:
    value = bucket_value(index)
    for position, bound in enumerate(DISPLAY_BOUNDS_MS):
        if value <= bound:
            return position
    return len(DISPLAY_BOUNDS_MS) - 1


_DISPLAY_BIN = [_display_bin(index) for index in range(BUCKETS)]
