"""What every log line can hold: text that is valid UTF-8, integers that orjson writes; and
which header values it must not hold.

Values reach the logs from clients and backends: header bytes that are not UTF-8 (decoded with
``surrogateescape``), ``\\ud800`` escapes the standard library's JSON parser accepts, integers
beyond 64 bits. A line that cannot be written must not take its caller down, nor vanish.
"""

from __future__ import annotations

from typing import Any

import orjson

SECRET_HEADER_PARTS = (
    "auth",
    "token",
    "key",
    "secret",
    "password",
    "signature",
    "session",
    "cookie",
)
"""A header whose name holds one of these carries a secret: Authorization, Proxy-Authorization,
Cookie, Set-Cookie, X-Api-Key, X-Auth-Token, X-Session-Id, ..."""

MIN_LOGGED_INT = -(2**63)
MAX_LOGGED_INT = 2**64 - 1
"""The integers orjson writes; others are logged as their digits."""


def secret_header(name: str) -> bool:
    """Whether the value of the header called ``name`` (any case) is kept out of what is
    written (the discrepancy log, captures, the config shown): the one test for all of them."""
    lowered = name.lower()
    return any(part in lowered for part in SECRET_HEADER_PARTS)


def loggable(text: str) -> str:
    """``text`` with lone surrogates, which no UTF-8 line can hold, replaced."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


def scrubbed(value: Any) -> Any:
    """``value`` with every string made `loggable` and every integer orjson cannot write
    turned into its digits, in nested dicts, lists and tuples too."""
    if type(value) is str:
        return loggable(value)
    if type(value) is int:
        return value if MIN_LOGGED_INT <= value <= MAX_LOGGED_INT else str(value)
    if isinstance(value, dict):
        return {scrubbed(k): scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [scrubbed(v) for v in value]
    return value


def dumps(value: Any, **options: Any) -> bytes:
    """``orjson.dumps``; what it refuses is written scrubbed instead. The common case pays
    nothing: the scrub runs only after orjson has refused."""
    try:
        return orjson.dumps(value, **options)
    except TypeError:  # orjson.JSONEncodeError is one
        return orjson.dumps(scrubbed(value), **options)
