"""The detailed comparison of two responses: status, headers, then bodies by content type.

Pure and synchronous. It never raises for anything a backend can send: bodies that fail to
decode or to parse are compared in a simpler form, and a note says so.
"""

from __future__ import annotations

from typing import Any

from shadowproxy.compare import decode, media
from shadowproxy.compare.binary import compare_binary, compare_truncated
from shadowproxy.compare.collect import Collector
from shadowproxy.compare.form import compare_form
from shadowproxy.compare.headers import compare_headers, header_value, list_value
from shadowproxy.compare.json_diff import diff_json
from shadowproxy.compare.json_parse import NotJson, parse_json
from shadowproxy.compare.media import BodyKind
from shadowproxy.compare.model import Comparison, Kind, Where, matching
from shadowproxy.compare.rules import CompiledRules
from shadowproxy.compare.text import compare_text
from shadowproxy.exchange import Response


def decoded_body(
    response: Response, side: str, rules: CompiledRules, out: Collector
) -> bytes | None:
    """The body without its content-coding; None, with a note, when it cannot be decoded."""
    applied = decode.codings(list_value(response.headers, "content-encoding"))
    if not applied:
        return response.body
    try:
        return decode.decode(response.body, applied, rules.max_decoded_bytes)
    except decode.TooLarge:
        out.note(f"{side}_body_decoded_too_large")
    except decode.DecodeError:
        out.note(f"{side}_body_undecodable")
    return None


def content_type(primary: Response, candidate: Response) -> str | None:
    """The primary's type rules; the candidate's is used only when the primary sent none."""
    return header_value(primary.headers, "content-type") or header_value(
        candidate.headers, "content-type"
    )


def _compare_json(
    primary: bytes,
    candidate: bytes,
    rules: CompiledRules,
    out: Collector,
    parsed: tuple[Any, Any] | None = None,
) -> bool:
    """False when either body is not JSON (or too deep to walk); nothing was added then."""
    if parsed is not None:
        a, b = parsed
    else:
        try:
            a, b = parse_json(primary), parse_json(candidate)
        except NotJson:
            return False
    total, listed = out.total, len(out.differences)
    try:
        diff_json(a, b, rules, out)
    except RecursionError:
        out.total = total
        del out.differences[listed:]
        out.note("json_too_deep")
        return False
    return True


def _text(body: bytes, encoding: str) -> str:
    """Undecodable bytes stay distinct (lone surrogates, shown as ``\\xe9`` when recorded):
    with "replace", caf\\xe9 and caf\\xe8 would both read caf\\ufffd and match."""
    try:
        return body.decode(encoding, "surrogateescape")
    except UnicodeDecodeError:  # UTF-16 cut mid-unit: surrogateescape cannot stand in
        return body.decode(encoding, "replace")


def _utf8(body: bytes, response: Response) -> bytes:
    """A JSON body in the charset its Content-Type declares (``charset=iso-8859-1``), as UTF-8;
    as it is when it declares none, or UTF-8, or when it does not decode."""
    if body.isascii():
        return body  # UTF-16 and UTF-32 too are left to the parser, which detects them
    name = media.charset(header_value(response.headers, "content-type"))
    if name == media.DEFAULT_CHARSET:
        return body
    try:
        return body.decode(name).encode()
    except UnicodeError:
        return body


def compare_bodies(
    primary: Response,
    candidate: Response,
    rules: CompiledRules,
    out: Collector,
    parsed: tuple[Any, Any] | None = None,
) -> tuple[BodyKind, str | None]:
    """Add body differences to ``out``; returns how the bodies were compared, and the text
    excerpt if there is one. ``parsed``: both decoded bodies as JSON, when already parsed."""
    if primary.truncated or candidate.truncated:
        compare_truncated(
            primary.body,
            (primary.size, primary.size_known),
            candidate.body,
            (candidate.size, candidate.size_known),
            out,
        )
        return BodyKind.BINARY, None
    body_p = decoded_body(primary, "primary", rules, out)
    body_c = decoded_body(candidate, "candidate", rules, out)
    if body_p is None or body_c is None:
        compare_binary(
            primary.body if body_p is None else body_p,
            candidate.body if body_c is None else body_c,
            out,
        )
        return BodyKind.BINARY, None
    if not body_p and not body_c:
        return BodyKind.EMPTY, None

    declared_type = content_type(primary, candidate)
    declared = media.declared_kind(declared_type)
    if declared is BodyKind.FORM:
        compare_form(body_p, body_c, rules.paths.start, out)
        return BodyKind.FORM, None
    if (
        declared is BodyKind.JSON
        or declared is None
        or (media.looks_like_json(body_p) and media.looks_like_json(body_c))
    ) and _compare_json(_utf8(body_p, primary), _utf8(body_c, candidate), rules, out, parsed):
        return BodyKind.JSON, None
    if declared is BodyKind.JSON:
        out.note("json_invalid")
    if declared in (BodyKind.TEXT, BodyKind.JSON) or (
        declared is None and media.is_text(body_p) and media.is_text(body_c)
    ):
        encoding = media.charset(declared_type)
        text_p, text_c = _text(body_p, encoding), _text(body_c, encoding)
        return BodyKind.TEXT, compare_text(text_p, text_c, out)
    compare_binary(body_p, body_c, out)
    return BodyKind.BINARY, None


def compare_head(
    primary: Response, candidate: Response, rules: CompiledRules, out: Collector
) -> None:
    """Status, then headers."""
    if primary.status != candidate.status:
        out.add(Where.STATUS, "", Kind.CHANGED, primary.status, candidate.status)
    if rules.compare_headers:
        compare_headers(primary.headers, candidate.headers, rules.ignore_headers, out)


def result(out: Collector, body_kind: BodyKind, excerpt: str | None = None) -> Comparison:
    return Comparison(
        differences=tuple(out.differences),
        total=out.total,
        body_kind=body_kind.value,
        notes=tuple(out.notes),
        excerpt=excerpt,
    )


def compare(
    primary: Response,
    other: Response,
    rules: CompiledRules,
    parsed: tuple[Any, Any] | None = None,
) -> Comparison:
    """Compare ``other`` (the candidate) with ``primary`` under ``rules``; ``parsed`` saves
    parsing the decoded bodies again when the caller already has them as JSON."""
    out = Collector(rules.max_differences)
    compare_head(primary, other, rules, out)
    body_kind, excerpt = compare_bodies(primary, other, rules, out, parsed)
    if out.total == 0 and not out.notes:
        return matching(body_kind.value)  # as the fast path answers
    return result(out, body_kind, excerpt)
