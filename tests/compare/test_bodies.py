"""Bodies other than plain JSON: forms, text, binary, content codings, truncated captures."""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import zlib

import brotli
import pytest
import zstandard

from shadowproxy.compare import IDENTICAL, Difference, Kind, Where, compare, matching
from shadowproxy.compare.binary import sizes_differ
from shadowproxy.compare.fast import quick_compare
from shadowproxy.exchange import Response

from .support import paths, response, rules

FORM = "application/x-www-form-urlencoded"


# --- forms -----------------------------------------------------------------------------------


def test_form_is_a_multimap() -> None:
    a = response("a=1&b=2&b=3&c=", FORM)
    assert compare(a, response("c=&b=2&b=3&a=1", FORM), rules()) is matching("form")
    result = compare(a, response("a=1&b=3&b=2&d=x%2Fy", FORM), rules())
    assert result.body_kind == "form"
    assert result.differences == (
        Difference(Where.BODY, "/b", Kind.CHANGED, ["2", "3"], ["3", "2"]),
        Difference(Where.BODY, "/c", Kind.REMOVED, "", None),
        Difference(Where.BODY, "/d", Kind.ADDED, None, "x/y"),
    )


def test_form_rules_apply_to_keys() -> None:
    a = response("csrf=1&b=2&b=3", FORM)
    b = response("csrf=9&b=3&b=2", FORM)
    assert compare(a, b, rules(ignore=["/csrf"], unordered=["/b"])).matched


# --- text ------------------------------------------------------------------------------------


def test_text_difference_with_summary_and_excerpt() -> None:
    lines = [f"line {i}" for i in range(1, 101)]
    changed = list(lines)
    changed[49] = "line fifty"
    result = compare(
        response("\n".join(lines), "text/plain"),
        response("\n".join(changed), "text/plain"),
        rules(),
    )
    assert result.body_kind == "text"
    (difference,) = result.differences
    assert (difference.path, difference.kind) == ("", Kind.CHANGED)
    assert difference.primary == {"line": 50, "text": "line 50", "lines": 100}
    assert difference.candidate == {"line": 50, "text": "line fifty", "lines": 100}
    assert result.excerpt is not None
    assert "@@ -47,7 +47,7 @@" in result.excerpt
    assert "-line 50\n+line fifty" in result.excerpt


def test_excerpt_is_bounded() -> None:
    a = "\n".join(f"a{i}" * 50 for i in range(5000))
    b = "\n".join(f"b{i}" * 50 for i in range(5000))
    result = compare(response(a, "text/html"), response(b, "text/html"), rules())
    assert result.excerpt is not None
    assert len(result.excerpt) <= 4300
    assert len(result.excerpt.splitlines()) <= 42
    assert result.excerpt.endswith("... (excerpt cut)")


def test_xml_and_html_are_text() -> None:
    for media in ("application/xml", "application/atom+xml", "text/html; charset=utf-8"):
        assert (
            compare(response("<a/>", media), response("<b/>", media), rules()).body_kind == "text"
        )


def test_line_endings_alone_are_noted_not_counted() -> None:
    result = compare(
        response("a\r\nb\r\n", "text/plain"), response("a\nb\n", "text/plain"), rules()
    )
    assert result.matched
    assert result.notes == ("line_endings_differ",)


def test_a_missing_final_newline_is_noted_not_counted() -> None:
    result = compare(response("a\nb\n", "text/plain"), response("a\nb", "text/plain"), rules())
    assert result.matched
    assert result.notes == ("final_newline_differs",)


@pytest.mark.parametrize("separator", ["\x1c", "\x0c", "\u2028", "\x85"])
def test_only_cr_and_lf_end_lines(separator: str) -> None:
    """Form feeds, separators and U+2028 are content: replacing one by a newline is a change."""
    result = compare(
        response(f"a{separator}b", "text/plain"), response("a\nb", "text/plain"), rules()
    )
    assert not result.matched


def test_excerpt_after_inserted_lines_shows_only_the_insertion() -> None:
    lines = [f"line {i}" for i in range(1000)]
    inserted = lines[:10] + [f"new {i}" for i in range(10)] + lines[10:]
    result = compare(
        response("\n".join(lines), "text/plain"),
        response("\n".join(inserted), "text/plain"),
        rules(),
    )
    assert result.excerpt is not None
    changed = [line for line in result.excerpt.splitlines()[2:] if line[:1] in "+-"]
    assert changed == [f"+new {i}" for i in range(10)]


@pytest.mark.parametrize(
    ("a", "b", "media", "shown"),
    [
        (b"caf\xe9", b"caf\xe8", "text/plain", ("caf\\xe9", "caf\\xe8")),
        (b"\xff\xfe", b"\xfe\xff", "text/html; charset=utf-8", ("\\xff\\xfe", "\\xfe\\xff")),
    ],
)
def test_text_bytes_that_do_not_decode_stay_distinct(
    a: bytes, b: bytes, media: str, shown: tuple[str, str]
) -> None:
    result = compare(response(a, media), response(b, media), rules())
    (difference,) = result.differences
    assert (difference.primary["text"], difference.candidate["text"]) == shown
    assert result.excerpt is not None
    assert f"-{shown[0]}\n+{shown[1]}" in result.excerpt


def test_form_bytes_that_do_not_decode_stay_distinct() -> None:
    result = compare(response("name=caf%E9", FORM), response("name=caf%E8", FORM), rules())
    assert result.differences == (
        Difference(Where.BODY, "/name", Kind.CHANGED, "caf\\xe9", "caf\\xe8"),
    )
    raw = compare(response(b"caf\xe9=1", FORM), response(b"caf\xff=1", FORM), rules())
    assert paths(raw) == {("/caf\\xe9", "removed"), ("/caf\\xff", "added")}


def test_json_in_its_declared_charset() -> None:
    media = "application/json; charset=iso-8859-1"
    a = '{"name": "café", "ts": 1}'.encode("latin-1")
    assert compare(
        response(a, media),
        response('{"name": "café", "ts": 2}'.encode("latin-1"), media),
        rules(ignore=["/ts"]),
    ).matched
    result = compare(
        response(a, media), response('{"name": "cafè", "ts": 1}'.encode("latin-1"), media), rules()
    )
    assert result.body_kind == "json"
    assert result.differences == (Difference(Where.BODY, "/name", Kind.CHANGED, "café", "cafè"),)


def test_text_charset_is_honoured() -> None:
    a = response("caf\u00e9".encode("latin-1"), "text/plain; charset=ISO-8859-1")
    b = response("cafe".encode("latin-1"), "text/plain; charset=ISO-8859-1")
    assert compare(a, b, rules()).differences[0].primary["text"] == "caf\u00e9"


@pytest.mark.parametrize("codec", ["idna", "punycode", "undefined"])
@pytest.mark.parametrize("media", ["text/plain", "application/json"])
def test_a_charset_that_cannot_decode_every_body_reads_as_utf8(codec: str, media: str) -> None:
    # Codecs Python knows that raise even with errors="replace": the backend's word for the
    # charset must not turn a comparison into an exception (the exchange would go unrecorded).
    declared = f"{media}; charset={codec}"
    a, b = response('["caf\u00e9"]\n', declared), response('["caf\u00e8"]\n', declared)
    for result in (compare(a, b, rules()), quick_compare(a, b, rules())):
        assert result is None or result.total == 1


def test_untyped_text_is_text_and_untyped_bytes_are_binary() -> None:
    assert compare(response("hello", None), response("world", None), rules()).body_kind == "text"
    result = compare(response(b"\x00\xff", None), response(b"\x00\xfe", None), rules())
    assert result.body_kind == "binary"


# --- binary ----------------------------------------------------------------------------------


def test_binary_by_length_and_sha256() -> None:
    a, b = b"\x89PNG\x00\x01", b"\x89PNG\x00\x02\x03"
    result = compare(response(a, "image/png"), response(b, "image/png"), rules())
    assert result.body_kind == "binary"
    assert result.differences == (
        Difference(
            Where.BODY,
            "",
            Kind.CHANGED,
            {"bytes": 6, "sha256": hashlib.sha256(a).hexdigest()},
            {"bytes": 7, "sha256": hashlib.sha256(b).hexdigest()},
        ),
    )
    assert compare(response(a, "image/png"), response(a, "image/png"), rules()) is matching(
        "binary"
    )


# --- content codings -------------------------------------------------------------------------

DOC = b'{"a": 1, "b": [1, 2, 3], "s": "' + b"x" * 2000 + b'"}'
CHANGED = DOC.replace(b'"a": 1', b'"a": 2')


def _raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


ENCODERS = {
    "gzip": gzip.compress,
    "deflate": zlib.compress,
    "br": brotli.compress,
    "zstd": zstandard.ZstdCompressor().compress,
}


@pytest.mark.parametrize("coding", sorted(ENCODERS))
def test_bodies_are_compared_decoded(coding: str) -> None:
    encode = ENCODERS[coding]
    plain = response(DOC)
    assert compare(plain, response(encode(DOC), encoding=coding), rules()).matched
    assert quick_compare(plain, response(encode(DOC), encoding=coding), rules()) is matching("json")
    result = compare(plain, response(encode(CHANGED), encoding=coding.upper()), rules())
    assert paths(result) == {("/a", "changed")}


def test_raw_deflate_and_stacked_codings() -> None:
    assert compare(response(DOC), response(_raw_deflate(DOC), encoding="deflate"), rules()).matched
    stacked = brotli.compress(gzip.compress(DOC))
    assert compare(response(DOC), response(stacked, encoding="gzip, br"), rules()).matched
    # The same codings on two header lines mean the same thing (RFC 9110, 5.3).
    lines = (("Content-Encoding", "gzip"), ("Content-Encoding", "br"))
    assert compare(response(DOC), response(stacked, headers=lines), rules()).matched
    assert quick_compare(response(DOC), response(stacked, headers=lines), rules()).matched
    assert compare(response(DOC), response(DOC, encoding="identity"), rules()).matched


@pytest.mark.parametrize("coding", ["gzip", "zstd"])
def test_members_beyond_the_cap_are_undecodable(coding: str) -> None:
    """Each member costs a copy of the rest: thousands of empty ones would take seconds."""
    one = ENCODERS[coding](b"")
    assert compare(response(b""), response(one * 32, encoding=coding), rules()).matched
    result = compare(response(b""), response(one * 100_000, encoding=coding), rules())
    assert result.body_kind == "binary"
    assert "candidate_body_undecodable" in result.notes


@pytest.mark.parametrize("coding", [*sorted(ENCODERS), "compress"])
def test_undecodable_body_is_binary_with_a_note(coding: str) -> None:
    broken = ENCODERS.get(coding, gzip.compress)(DOC)[:-8] if coding != "deflate" else b"junk"
    result = compare(response(DOC), response(broken, encoding=coding), rules())
    assert result.body_kind == "binary"
    assert result.notes == ("candidate_body_undecodable",)
    assert result.total == 1


def test_decompression_is_bounded() -> None:
    bomb = gzip.compress(b"0" * 5_000_000)
    r = rules(max_body_bytes=1000)
    result = compare(response(b"0"), response(bomb, encoding="gzip"), r)
    assert result.notes == ("candidate_body_decoded_too_large",)
    assert result.body_kind == "binary"


def test_empty_encoded_bodies() -> None:
    assert compare(response(b"", encoding="gzip"), response(b"", encoding="br"), rules()).matched


# --- truncated captures ----------------------------------------------------------------------


def test_truncated_sizes_differ() -> None:
    a = response(b"x" * 100, size=5000, truncated=True)
    b = response(b"x" * 100, size=6000, truncated=True)
    for result in (compare(a, b, rules()), quick_compare(a, b, rules())):
        assert result is not None
        assert result.differences == (
            Difference(Where.BODY, "", Kind.CHANGED, {"bytes": 5000}, {"bytes": 6000}),
        )
        assert result.notes == ("body_truncated",)


def test_truncated_same_size_same_prefix_is_not_called_equal() -> None:
    a = response(b"x" * 100, size=5000, truncated=True)
    result = compare(a, response(b"x" * 100, size=5000, truncated=True), rules())
    assert result.total == 0
    assert result.notes == ("body_truncated",)
    assert result is not IDENTICAL


def unknown_size(body: bytes, read: int) -> Response:
    """A body cut before its end that declared no length: ``read`` is a lower bound."""
    return dataclasses.replace(response(body, size=read, truncated=True), size_known=False)


@pytest.mark.parametrize(
    ("primary", "candidate", "differ"),
    [
        ((5000, True), (6000, True), True),
        ((5000, True), (5000, True), False),
        ((5000, True), (6000, False), True),  # read past the primary's whole size
        ((5000, True), (4000, False), False),  # may be as large: only the prefix tells
        ((6000, False), (5000, True), True),  # the candidate is whole and shorter
        ((6000, False), (9000, False), False),
    ],
)
def test_sizes_differ_only_when_they_provably_do(
    primary: tuple[int, bool], candidate: tuple[int, bool], differ: bool
) -> None:
    assert sizes_differ(primary, candidate) is differ


def test_a_body_of_unknown_size_is_not_equal_to_a_shorter_whole_one() -> None:
    """Replay reads a live primary up to the cap: a candidate answering only its start is a
    difference, not a match on the prefix."""
    primary = unknown_size(b"x" * 100, read=200)
    candidate = response(b"x" * 100, size=150, truncated=True)
    for result in (
        compare(primary, candidate, rules()),
        quick_compare(primary, candidate, rules()),
    ):
        assert result is not None
        assert result.differences == (
            Difference(Where.BODY, "", Kind.CHANGED, {"bytes_at_least": 200}, {"bytes": 150}),
        )


def test_prefixes_of_unknown_size_that_differ_are_hashed_off_the_loop() -> None:
    primary = response(b"x" * 100, size=5000, truncated=True)
    candidate = unknown_size(b"y" * 100, read=4000)
    assert quick_compare(primary, candidate, rules()) is None
    assert not compare(primary, candidate, rules()).matched


def test_truncated_same_size_different_prefix() -> None:
    a = response(b"x" * 100, size=5000, truncated=True)
    b = response(b"x" * 99 + b"y", size=5000, truncated=True)
    assert quick_compare(a, b, rules()) is None  # hashing is left to a worker
    (difference,) = compare(a, b, rules()).differences
    assert difference.primary["captured"] == 100
    assert difference.primary["sha256"] != difference.candidate["sha256"]
