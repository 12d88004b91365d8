"""The fast path, run inline on the event loop: settle cheaply what can be settled cheaply.

Identical bytes cost a memcmp; JSON that differs only in key order or whitespace costs two
orjson parses and two serialisations. Small JSON, form and binary bodies that do differ are
diffed inline too: handing a comparison to a worker process costs the event loop's process
about 0.2 ms of CPU (pickling, pipes, futures), several times what the engine needs for a
1 KB document. Large bodies, and text (whose excerpt runs difflib), go to a worker.

With a `BodyMemo`, a pair of bodies seen before under the same rules costs a digest and a
lookup: only status and headers are compared again.
"""

from __future__ import annotations

import enum
from typing import Any

from shadowproxy.compare import decode, media
from shadowproxy.compare.binary import sizes_differ
from shadowproxy.compare.collect import Collector
from shadowproxy.compare.engine import compare_bodies, compare_head, content_type, result
from shadowproxy.compare.headers import list_value
from shadowproxy.compare.json_diff import canonical_equal
from shadowproxy.compare.json_parse import NotJson, parse_json
from shadowproxy.compare.media import BodyKind
from shadowproxy.compare.memo import DEFERRED, BodyMemo, BodyPart
from shadowproxy.compare.model import Comparison, matching
from shadowproxy.compare.rules import CompiledRules
from shadowproxy.exchange import Response

INLINE_MAX_BYTES = 64 * 1024
"""Bodies up to this size (each, decoded) may be parsed on the event loop to see whether they
are equal: about 0.1 ms of orjson each. Larger ones go to a worker, so one 5 MB document
never stalls the proxy."""
INLINE_ENGINE_MAX_BYTES = 16 * 1024
"""Differing bodies up to this size (each, decoded) are diffed on the event loop: well under
a millisecond even when every value differs, and cheaper than the trip to a worker."""


class _Bodies(enum.Enum):
    EQUAL = "equal"
    SMALL = "small"
    """Different, or not known to be equal, and cheap to diff inline."""
    LARGE = "large"
    """For a worker."""


def _body_kind(primary: Response, candidate: Response) -> BodyKind:
    """How equal bodies would have been compared, without looking at them closely."""
    if not primary.body:
        return BodyKind.EMPTY
    declared = media.declared_kind(content_type(primary, candidate))
    if declared is None:
        return BodyKind.JSON if media.looks_like_json(primary.body) else BodyKind.TEXT
    if declared is not BodyKind.JSON and media.looks_like_json(primary.body):
        return BodyKind.JSON  # only a guess; the engine would have parsed it to be sure
    return declared


def _small_decoded(response: Response) -> bytes | None:
    applied = decode.codings(list_value(response.headers, "content-encoding"))
    if not applied:
        return response.body if len(response.body) <= INLINE_MAX_BYTES else None
    if len(response.body) > INLINE_MAX_BYTES:
        return None
    try:
        return decode.decode(response.body, applied, INLINE_MAX_BYTES)
    except decode.DecodeError:
        return None  # the engine decodes again and notes why it failed


def _bodies(
    primary: Response, candidate: Response, rules: CompiledRules
) -> tuple[_Bodies, tuple[Any, Any] | None]:
    """How the bodies compare at a glance, and both as parsed JSON when they were parsed."""
    if primary.body == candidate.body and list_value(
        primary.headers, "content-encoding"
    ) == list_value(candidate.headers, "content-encoding"):
        return _Bodies.EQUAL, None
    body_p, body_c = _small_decoded(primary), _small_decoded(candidate)
    if body_p is None or body_c is None:
        return _Bodies.LARGE, None
    if body_p == body_c:
        return _Bodies.EQUAL, None
    declared = media.declared_kind(content_type(primary, candidate))
    json_like = media.looks_like_json(body_p) and media.looks_like_json(body_c)
    parsed = None
    if declared is BodyKind.JSON or (declared is not BodyKind.FORM and json_like):
        try:
            parsed = parse_json(body_p), parse_json(body_c)
        except NotJson:
            pass
        else:
            # Python's == equates more than JSON does (1, 1.0, true): unequal for it means
            # different JSON, found at C speed; equal for it still needs the canonical check.
            try:
                if parsed[0] == parsed[1] and canonical_equal(*parsed):
                    return _Bodies.EQUAL, None
            except RecursionError:  # deeper than == walks: the engine says how it differs
                pass
    small = max(len(body_p), len(body_c)) <= INLINE_ENGINE_MAX_BYTES
    maybe_text = declared is BodyKind.TEXT or (declared is None and not json_like)
    # Small is not cheap when unordered arrays may nest deep: that diff is for a worker.
    costly = parsed is not None and rules.paths.unordered_at_any_depth
    return (_Bodies.SMALL if small and not maybe_text and not costly else _Bodies.LARGE), parsed


def _with_head(
    primary: Response, candidate: Response, rules: CompiledRules, body: BodyPart
) -> Comparison:
    """Status and headers compared now, in front of the body's differences: what
    `engine.compare` returns for the pair."""
    out = Collector(rules.max_differences)
    if primary.status != candidate.status or (
        rules.compare_headers and primary.headers != candidate.headers
    ):
        compare_head(primary, candidate, rules, out)
    if out.total == 0 and body.total == 0 and not body.notes:
        return matching(body.kind)
    room = rules.max_differences - len(out.differences)
    return Comparison(
        differences=(*out.differences, *body.differences[:room]),
        total=out.total + body.total,
        body_kind=body.kind,
        notes=body.notes,
        excerpt=body.excerpt,
    )


def _body_part(primary: Response, candidate: Response, rules: CompiledRules) -> BodyPart | None:
    """The body half of the comparison when it is cheap to get, else None (for a worker)."""
    bodies, parsed = _bodies(primary, candidate, rules)
    if bodies is _Bodies.LARGE:
        return None
    if bodies is _Bodies.EQUAL:
        return BodyPart((), 0, _body_kind(primary, candidate).value)
    out = Collector(rules.max_differences)
    kind, excerpt = compare_bodies(primary, candidate, rules, out, parsed)
    return BodyPart.collected(out, kind.value, excerpt)


def quick_compare(
    primary: Response, candidate: Response, rules: CompiledRules, memo: BodyMemo | None = None
) -> Comparison | None:
    """The comparison if it is cheap to get, else None: then call `engine.compare`."""
    if primary.truncated or candidate.truncated:
        # Only sizes and a prefix memcmp, unless the prefixes differ: hashing them is not cheap.
        sizes = (primary.size, primary.size_known), (candidate.size, candidate.size_known)
        if not sizes_differ(*sizes) and primary.body != candidate.body:
            return None
        out = Collector(rules.max_differences)
        compare_head(primary, candidate, rules, out)
        body_kind, _ = compare_bodies(primary, candidate, rules, out)
        return result(out, body_kind)
    if memo is None or primary.body == candidate.body:
        part = _body_part(primary, candidate, rules)
    else:
        part = _remembered_part(primary, candidate, rules, memo)
    return None if part is None else _with_head(primary, candidate, rules, part)


def _remembered_part(
    primary: Response, candidate: Response, rules: CompiledRules, memo: BodyMemo
) -> BodyPart | None:
    key = memo.key(primary, candidate, rules)
    if key is None:
        return _body_part(primary, candidate, rules)
    remembered = memo.get(key)
    if remembered is None:
        part = _body_part(primary, candidate, rules)
        memo.put(key, DEFERRED if part is None else part)
        return part
    return remembered if isinstance(remembered, BodyPart) else None
