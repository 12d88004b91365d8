"""Header handling is pure: hop-by-hop removal, forwarding context, redaction."""

from __future__ import annotations

from multidict import CIMultiDict

from shadowproxy.headers import (
    head_bytes,
    mirror_request_headers,
    response_headers,
    upstream_request_headers,
    with_host,
)


def received(*pairs: tuple[str, str]) -> CIMultiDict[str]:
    return CIMultiDict(pairs)


def test_hop_by_hop_and_connection_listed_headers_are_dropped() -> None:
    headers = upstream_request_headers(
        received(
            ("Host", "a"),
            ("Connection", "close, X-Private"),
            ("X-Private", "1"),
            ("Keep-Alive", "timeout=1"),
            ("TE", "trailers"),
            ("Transfer-Encoding", "chunked"),
            ("Upgrade", "h2c"),
            ("Proxy-Connection", "keep-alive"),
            ("Accept", "*/*"),
        ),
        client_ip="10.0.0.1",
        scheme="http",
        request_id="rid",
    )
    names = {name.lower() for name in headers}
    assert names == {
        "host", "accept", "x-forwarded-for", "x-forwarded-proto", "x-forwarded-host",
        "x-request-id",
    }  # fmt: skip


def test_repeated_headers_keep_order() -> None:
    headers = upstream_request_headers(
        received(("Accept", "a"), ("X-Multi", "1"), ("X-Multi", "2")),
        client_ip="1.2.3.4",
        scheme="https",
        request_id="r",
    )
    assert headers.getall("X-Multi") == ["1", "2"]


def test_forwarded_for_appends_and_existing_context_is_kept() -> None:
    headers = upstream_request_headers(
        received(
            ("X-Forwarded-For", "203.0.113.1"),
            ("X-Forwarded-For", "198.51.100.2"),
            ("X-Forwarded-Proto", "https"),
            ("X-Request-Id", "client-id"),
        ),
        client_ip="127.0.0.1",
        scheme="http",
        request_id="generated",
    )
    assert headers.getall("X-Forwarded-For") == ["203.0.113.1, 198.51.100.2, 127.0.0.1"]
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Request-Id"] == "client-id"
    assert "X-Forwarded-Host" not in headers  # the client sent no Host


def test_mirror_headers_are_marked_and_host_rewritten_only_for_the_copy() -> None:
    upstream = received(("Host", "public"), ("Authorization", "Bearer x"))
    copy = mirror_request_headers(upstream, host="candidate.internal")
    assert copy["X-Shadow-Request"] == "1"
    assert copy["Host"] == "candidate.internal"
    assert upstream["Host"] == "public"
    assert "X-Shadow-Request" not in upstream
    assert with_host(upstream, None) is upstream


def test_response_headers_drop_hop_by_hop_keep_repeats() -> None:
    pairs = [
        ("Set-Cookie", "a=1"),
        ("Connection", "keep-alive, X-Conn"),
        ("X-Conn", "x"),
        ("Transfer-Encoding", "chunked"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "3"),
    ]
    out = response_headers(pairs)
    assert list(out.items()) == [
        ("Set-Cookie", "a=1"),
        ("Set-Cookie", "b=2"),
        ("Content-Length", "3"),
    ]


def test_head_bytes_restores_what_text_could_not_carry() -> None:
    raw_value = b"r\xe9sum\xe9 \xff"
    headers = [
        ("X-Latin", raw_value.decode("utf-8", "surrogateescape")),
        ("X-Utf8", "caf\u00e9"),
    ]
    reason = b"Tr\xe8s bien".decode("latin-1")
    assert head_bytes(f"HTTP/1.1 200 {reason}", headers) == (
        b"HTTP/1.1 200 Tr\xe8s bien\r\nX-Latin: " + raw_value + b"\r\nX-Utf8: caf\xc3\xa9\r\n\r\n"
    )
