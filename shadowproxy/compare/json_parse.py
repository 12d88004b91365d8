"""Parsing JSON bodies: fast with orjson, exact where orjson would round."""

from __future__ import annotations

import json
from typing import Any

import orjson

# orjson reads integers beyond 64 bits as floats, so two different ids could compare equal;
# such digit runs are rare, and the standard library parses them exactly. Mapping every byte
# to "digit or not" and searching for a run is ten times faster than a regular expression.
_DIGIT_OR_NOT = bytes(0x30 if 0x30 <= byte <= 0x39 else 0x20 for byte in range(256))
_LONG_DIGIT_RUN = b"0" * 19


def _has_long_number(body: bytes) -> bool:
    return _LONG_DIGIT_RUN in body.translate(_DIGIT_OR_NOT)


class NotJson(ValueError):
    """The body does not parse as JSON."""


def _reject_constant(name: str) -> Any:
    raise NotJson(f"{name} is not JSON")


def parse_json(body: bytes) -> Any:
    """Parse with orjson, or exactly with the standard library where orjson would round.

    Raises NotJson; NaN and Infinity are refused as JSON refuses them.
    """
    if not _has_long_number(body):
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError:
            pass  # e.g. 1e400: infinite as a double, valid JSON all the same
    try:
        return json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as error:  # UnicodeDecodeError is a ValueError
        raise NotJson(str(error)) from None
