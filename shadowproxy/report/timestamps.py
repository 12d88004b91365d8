"""Timestamps: the log's ISO 8601 ``ts`` to epoch seconds, and the CLI's ``--since`` values."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime

_CACHE_LIMIT = 4096
_second_cache: dict[str, float] = {}

FIRST_EPOCH = datetime(1, 1, 1, tzinfo=UTC).timestamp()
END_EPOCH = datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC).timestamp() + 1
"""Epoch seconds from ``FIRST_EPOCH`` up to, not including, ``END_EPOCH`` are the moments of
years 1 to 9999 UTC: the ones ``format_ts`` can write."""

_RELATIVE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(s|m|h|d|w)\s*", re.IGNORECASE)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_ts(text: str) -> float:
    """Epoch seconds of an ISO 8601 timestamp; naive ones are taken as UTC.

    Raises ValueError (or TypeError for a non-string) when it is not one, or when it falls
    outside years 1 to 9999 UTC (``+14:00`` on the first day of year 1 is in year 0).
    """
    # The proxy writes "YYYY-MM-DDTHH:MM:SS.ffffffZ"; thousands of records share a second, so
    # the calendar arithmetic is done once per second and only the fraction per record.
    if text[-1:] == "Z" and len(text) >= 20 and (len(text) == 20 or text[19] == "."):
        head = text[:19]
        base = _second_cache.get(head)
        if base is None:
            base = _full_parse(head)
            if len(_second_cache) >= _CACHE_LIMIT:
                _second_cache.clear()
            _second_cache[head] = base
        if len(text) == 20:
            return base
        fraction = text[19:-1]
        # Only digits: float() alone would also take ".1e5" (10000 s) or ".1_5".
        if not fraction[1:].isdigit() or not fraction.isascii():
            raise ValueError(f"not a fraction of a second: {text!r}")
        epoch = base + float(fraction)
        if epoch >= END_EPOCH:  # 9999-12-31T23:59:59.9999999Z rounds up to year 10000
            raise ValueError(f"after the year 9999: {text!r}")
        return epoch
    epoch = _full_parse(text)
    if not FIRST_EPOCH <= epoch < END_EPOCH:
        raise ValueError(f"outside the years 1 to 9999 UTC: {text!r}")
    return epoch


def _full_parse(text: str) -> float:
    moment = datetime.fromisoformat(text)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def parse_when(text: str, now: float | None = None) -> float:
    """``--since``/``--until``: ISO 8601, or a duration before now such as ``90s``, ``15m``,
    ``1h``, ``2d``, ``1w``. Raises ValueError with a message fit for the command line."""
    relative = _RELATIVE.fullmatch(text)
    if relative:
        amount, unit = float(relative.group(1)), relative.group(2).lower()
        epoch = (time.time() if now is None else now) - amount * _UNIT_SECONDS[unit]
    else:
        try:
            epoch = _full_parse(text.strip())
        except ValueError:
            raise ValueError(
                f'"{text}" is neither an ISO 8601 time (2026-11-27T18:00:00Z) '
                "nor a duration such as 30m, 1h or 2d"
            ) from None
    # The window is written back as a date in the report, which only years 1 to 9999 have.
    if not FIRST_EPOCH <= epoch < END_EPOCH:
        raise ValueError(f'"{text}" is outside the years 1 to 9999 UTC')
    return epoch


def format_ts(epoch: float, *, micros: bool = False) -> str:
    """Epoch seconds in the log's format, to the millisecond (or microsecond, as the log)."""
    moment = datetime.fromtimestamp(epoch, tz=UTC)
    fraction = f"{moment.microsecond:06d}" if micros else f"{moment.microsecond // 1000:03d}"
    # isoformat, not strftime: %Y writes year 1 as "1" on glibc, which no ISO reader takes.
    return f"{moment.replace(tzinfo=None).isoformat(timespec='seconds')}.{fraction}Z"
