"""Pure header handling: hop-by-hop removal, forwarded headers, the mirror marker, redaction."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping

from multidict import CIMultiDict

from shadowproxy.logsafe import loggable

# RFC 9110 section 7.6.1: connection-specific fields an intermediary must not forward.
HOP_BY_HOP = frozenset(
    {"connection", "proxy-connection", "keep-alive", "te", "transfer-encoding", "upgrade"}
)

REQUEST_ID = "X-Request-Id"
SHADOW_MARKER = "X-Shadow-Request"
FORWARDED_FOR = "X-Forwarded-For"
FORWARDED_PROTO = "X-Forwarded-Proto"
FORWARDED_HOST = "X-Forwarded-Host"

REDACTED = "[redacted]"


OWN_ANSWER_HEADERS: Mapping[str, str] = {"Server": "shadowproxy"}
"""On the answers the proxy writes itself (a 502 when the primary is down, a 400 for a request
it cannot parse): they tell the primary's errors from the proxy's, without aiohttp's default
``Server`` naming the Python and aiohttp versions to every client."""


def connection_listed(headers: Mapping[str, str] | CIMultiDict[str]) -> frozenset[str]:
    """Header names a sender listed in ``Connection``: hop-by-hop for this one connection."""
    listed: set[str] = set()
    getall = getattr(headers, "getall", None)
    values = getall("Connection", []) if getall else [headers.get("Connection", "")]
    for value in values:
        listed.update(token.strip().lower() for token in value.split(",") if token.strip())
    return frozenset(listed)


def end_to_end(pairs: Iterable[tuple[str, str]], listed: frozenset[str]) -> CIMultiDict[str]:
    """The pairs that may cross the proxy, in order, repeated names kept."""
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in pairs:
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in listed:
            continue
        out.add(name, value)
    return out


def new_request_id() -> str:
    return os.urandom(12).hex()


def request_id_of(headers: Mapping[str, str] | CIMultiDict[str]) -> str:
    """The client's ``X-Request-Id``, or a new one, as the logs and answers name the request.

    Bytes that are not UTF-8 are replaced here only: the backends get the header as it came.
    """
    given = headers.get(REQUEST_ID)
    return loggable(given) if given else new_request_id()


def upstream_request_headers(
    received: CIMultiDict[str] | Mapping[str, str],
    *,
    client_ip: str,
    scheme: str,
    request_id: str,
) -> CIMultiDict[str]:
    """Headers for the primary: the client's end-to-end headers plus forwarding context.

    ``X-Forwarded-For`` is appended to, so a chain of proxies stays visible; ``-Proto`` and
    ``-Host`` are set only when absent, since an ingress in front of us knows better.
    """
    items = received.items()
    headers = end_to_end(items, connection_listed(received))
    previous = headers.getall(FORWARDED_FOR, [])
    if previous:
        del headers[FORWARDED_FOR]
        headers[FORWARDED_FOR] = ", ".join([*previous, client_ip])
    else:
        headers[FORWARDED_FOR] = client_ip
    if FORWARDED_PROTO not in headers:
        headers[FORWARDED_PROTO] = scheme
    host = headers.get("Host")
    if host is not None and FORWARDED_HOST not in headers:
        headers[FORWARDED_HOST] = host
    if REQUEST_ID not in headers:
        headers[REQUEST_ID] = request_id
    return headers


def with_host(headers: CIMultiDict[str], host: str | None) -> CIMultiDict[str]:
    """A copy with ``Host`` replaced when the backend's config names one."""
    if host is None:
        return headers
    copy = headers.copy()
    copy["Host"] = host
    return copy


def mirror_request_headers(upstream: CIMultiDict[str], host: str | None) -> CIMultiDict[str]:
    """The primary's request headers, marked so the candidate can tell dark traffic."""
    headers = upstream.copy()
    headers[SHADOW_MARKER] = "1"
    if host is not None:
        headers["Host"] = host
    return headers


def response_headers(pairs: Iterable[tuple[str, str]]) -> CIMultiDict[str]:
    """The primary's response headers minus hop-by-hop ones, order and repeats kept."""
    materialised = list(pairs)
    listed: set[str] = set()
    for name, value in materialised:
        if name.lower() == "connection":
            listed.update(t.strip().lower() for t in value.split(",") if t.strip())
    return end_to_end(materialised, frozenset(listed))


def head_bytes(status_line: str, headers: Iterable[tuple[str, str]]) -> bytes:
    """A response head as the bytes it was read from: the status line as ISO-8859-1, names
    and values as UTF-8 with the bytes that were not UTF-8 (lone surrogates) restored."""
    lines = [status_line.encode("latin-1", "replace")]
    lines += [f"{name}: {value}".encode("utf-8", "surrogateescape") for name, value in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"
