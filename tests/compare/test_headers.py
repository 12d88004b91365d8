"""Header comparison: what is ignored, what is case-insensitive, repeated headers."""

from __future__ import annotations

from typing import Any

from shadowproxy.compare import Difference, Kind, Where, compare
from shadowproxy.exchange import Response

from .support import response, rules


def head(*pairs: tuple[str, str]) -> Response:
    return response(b"", None, headers=pairs)


def header_diffs(
    a: tuple[tuple[str, str], ...], b: tuple[tuple[str, str], ...], **rule_args: Any
) -> list[Difference]:
    result = compare(head(*a), head(*b), rules(**rule_args))
    return [d for d in result.differences if d.where is Where.HEADER]


def test_default_ignored_headers_do_not_count() -> None:
    a = (("Date", "Mon"), ("Server", "nginx"), ("ETag", '"1"'), ("Content-Length", "10"))
    b = (("Date", "Tue"), ("Server", "envoy"), ("ETag", '"2"'), ("Content-Length", "12"))
    assert header_diffs(a, b) == []


def test_names_are_case_insensitive_and_reported_lower_case() -> None:
    assert header_diffs((("X-Thing", "1"),), (("x-thing", "1"),)) == []
    assert header_diffs((("X-Thing", "1"),), (("x-THING", "2"),)) == [
        Difference(Where.HEADER, "x-thing", Kind.CHANGED, "1", "2")
    ]


def test_added_and_removed() -> None:
    assert header_diffs((("X-Old", "1"),), (("X-New", "2"),)) == [
        Difference(Where.HEADER, "x-old", Kind.REMOVED, "1", None),
        Difference(Where.HEADER, "x-new", Kind.ADDED, None, "2"),
    ]


def test_case_insensitive_values() -> None:
    a = (
        ("Content-Type", "application/json; charset=UTF-8"),
        ("Cache-Control", "no-cache, Max-Age=0"),
    )
    b = (
        ("content-type", "Application/JSON;charset=utf-8"),
        ("cache-control", "no-cache,max-age=0"),
    )
    assert header_diffs(a, b) == []


def test_other_values_are_case_sensitive() -> None:
    assert header_diffs((("Location", "/A"),), (("Location", "/a"),)) == [
        Difference(Where.HEADER, "location", Kind.CHANGED, "/A", "/a")
    ]


def test_repeated_headers_are_ordered_lists() -> None:
    a = (("Link", "<a>"), ("Link", "<b>"))
    assert header_diffs(a, (("link", "<a>"), ("LINK", "<b>"))) == []
    assert header_diffs(a, (("Link", "<b>"), ("Link", "<a>"))) == [
        Difference(Where.HEADER, "link", Kind.CHANGED, ["<a>", "<b>"], ["<b>", "<a>"])
    ]
    assert header_diffs(a, (("Link", "<a>"),)) == [
        Difference(Where.HEADER, "link", Kind.CHANGED, ["<a>", "<b>"], "<a>")
    ]


def test_global_and_endpoint_ignore_headers() -> None:
    a, b = (("X-A", "1"), ("X-B", "1")), (("X-A", "2"), ("X-B", "2"))
    assert header_diffs(a, b, ignore_headers=["X-A", "X-B"]) == []
    only_b = header_diffs(
        a,
        b,
        ignore_headers=[],
        endpoints=[{"match": "GET /things/{id}", "ignore_headers": ["x-a"]}],
    )
    assert [d.path for d in only_b] == ["x-b"]


def test_compare_headers_off() -> None:
    assert header_diffs((("X-A", "1"),), (("X-A", "2"),), compare_headers=False) == []


def test_secret_header_values_are_never_recorded() -> None:
    diffs = header_diffs(
        (("Set-Cookie", "session=abc"),), (("Set-Cookie", "session=xyz"),), ignore_headers=[]
    )
    assert diffs == [
        Difference(Where.HEADER, "set-cookie", Kind.CHANGED, "[redacted]", "[redacted]")
    ]
