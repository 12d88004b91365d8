"""Header comparison: names case-insensitive, repeated headers as ordered lists of values.

Values are compared exactly, except for headers whose values HTTP defines as
case-insensitive tokens: for those, case and the spaces around ``,``, ``;`` and ``=`` do not
count (``Cache-Control: no-cache, Max-Age=0`` equals ``cache-control: no-cache,max-age=0``).
"""

from __future__ import annotations

import re
from typing import Any

from shadowproxy.compare.collect import Collector
from shadowproxy.compare.model import Kind, Where
from shadowproxy.config import SECRET_HEADERS
from shadowproxy.exchange import Headers

CASE_INSENSITIVE_HEADERS = frozenset(
    {
        # Media types, charsets and parameter names; a multipart boundary, the one
        # case-sensitive parameter, differs between any two responses anyway.
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "content-language",
        "cache-control",
        "pragma",
        "connection",
        "vary",
        "accept-ranges",
        "access-control-allow-headers",
        "access-control-expose-headers",
        "access-control-allow-credentials",
        "strict-transport-security",
        "x-content-type-options",
        "x-frame-options",
        "referrer-policy",
        "cross-origin-opener-policy",
        "cross-origin-resource-policy",
        "cross-origin-embedder-policy",
    }
)
REDACTED = "[redacted]"

_SEPARATOR_SPACE = re.compile(r"\s*([,;=])\s*")


def _normal(name: str, value: str) -> str:
    if name in CASE_INSENSITIVE_HEADERS:
        return _SEPARATOR_SPACE.sub(r"\1", value.strip()).lower()
    return value.strip()


def _grouped(headers: Headers, ignore: frozenset[str]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in headers:
        lowered = name.lower()
        if lowered not in ignore:
            grouped.setdefault(lowered, []).append(value)
    return grouped


def _shown(name: str, values: list[str]) -> Any:
    """One value as a string, repeated ones as a list; secrets never leave this module."""
    if name in SECRET_HEADERS:
        values = [REDACTED] * len(values)
    return values[0] if len(values) == 1 else values


def compare_headers(
    primary: Headers, candidate: Headers, ignore: frozenset[str], out: Collector
) -> None:
    """Add header differences at the lower-case header name to ``out``."""
    if primary == candidate:
        return
    a, b = _grouped(primary, ignore), _grouped(candidate, ignore)
    if a == b:
        return
    for name, values in a.items():
        other = b.get(name)
        if other is None:
            out.add(Where.HEADER, name, Kind.REMOVED, _shown(name, values), None)
        elif values != other and (
            len(values) != len(other)
            or any(_normal(name, x) != _normal(name, y) for x, y in zip(values, other, strict=True))
        ):
            out.add(Where.HEADER, name, Kind.CHANGED, _shown(name, values), _shown(name, other))
    for name, values in b.items():
        if name not in a:
            out.add(Where.HEADER, name, Kind.ADDED, None, _shown(name, values))
