"""Header comparison: names case-insensitive, repeated headers as ordered lists of values.

Values are compared without their surrounding whitespace, and exactly otherwise, except for
headers whose values HTTP defines as case-insensitive tokens: for those, case and whitespace
do not count (``Cache-Control: no-cache, Max-Age=0`` equals ``cache-control: no-cache,max-age=0``).
"""

from __future__ import annotations

from shadowproxy.compare.collect import Collector
from shadowproxy.compare.model import Kind, Where
from shadowproxy.exchange import Headers
from shadowproxy.logsafe import secret_header

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

Values = str | list[str]
"""One value, or the values of a repeated header in order."""


def header_value(headers: Headers, lowered: str) -> str | None:
    """The first value of a header; the length check spares lower() on most names."""
    size = len(lowered)
    for name, value in headers:
        if len(name) == size and name.lower() == lowered:
            return value
    return None


def list_value(headers: Headers, lowered: str) -> str | None:
    """A list-based header's lines joined into one value, as RFC 9110 (5.3) allows:
    ``Content-Encoding: gzip`` then ``Content-Encoding: br`` means ``gzip, br``."""
    size = len(lowered)
    found: str | None = None
    for name, value in headers:
        if len(name) == size and name.lower() == lowered:
            found = value if found is None else f"{found}, {value}"
    return found


def _normal(name: str, value: str) -> str:
    if name in CASE_INSENSITIVE_HEADERS:
        return "".join(value.split()).lower()
    return value.strip()


def _same(name: str, a: Values, b: Values) -> bool:
    if type(a) is str and type(b) is str:
        return _normal(name, a) == _normal(name, b)
    if type(a) is list and type(b) is list and len(a) == len(b):
        return all(_normal(name, x) == _normal(name, y) for x, y in zip(a, b, strict=True))
    return False


def _grouped(headers: Headers, ignore: frozenset[str]) -> dict[str, Values]:
    # Repeated headers are rare: a plain string per name avoids a list for every header.
    grouped: dict[str, Values] = {}
    for name, value in headers:
        key = name.lower()
        if key in ignore:
            continue
        seen = grouped.get(key)
        if seen is None:
            grouped[key] = value
        elif type(seen) is list:
            seen.append(value)
        else:
            grouped[key] = [seen, value]  # type: ignore[list-item]
    return grouped


def _shown(name: str, values: Values) -> Values:
    """Secrets never leave this module."""
    if not secret_header(name):
        return values
    return REDACTED if type(values) is str else [REDACTED] * len(values)


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
        elif values != other and not _same(name, values, other):
            out.add(Where.HEADER, name, Kind.CHANGED, _shown(name, values), _shown(name, other))
    for name, values in b.items():
        if name not in a:
            out.add(Where.HEADER, name, Kind.ADDED, None, _shown(name, values))
